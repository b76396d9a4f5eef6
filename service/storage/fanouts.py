"""SQL for deferred fan-out: one row per event that matched many subscriptions, expanded into
ordinary delivery rows in bounded steps.

Writing one delivery row per matching subscription inside the ingest transaction made ingest
O(subscribers): ~14 µs of SQLite time per row (docs/performance.md §4), 28 callbacks/s with
1,000 subscribers. An event matching more than a few subscriptions is stored instead with ONE
``event_fanouts`` row naming them (decided in the ingest transaction, so an acknowledged event
can no more be lost than its delivery rows could), and the dispatcher turns it into delivery
rows in short background transactions, oldest first (docs/architecture.md, "A delivery").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from service.storage.announcements import Work, announce
from service.storage.database import Connection, marks
from service.storage.deliveries import NewRow, insert_new

EXPAND_ROWS = 256
"""Delivery rows written per expansion transaction: ~14 µs each on SQLite, so a step holds the
writer for a few milliseconds and a callback's commit waits at most that long behind it."""

_SCAN = 16
"""Fan-out rows taken (and, on PostgreSQL, locked) per step: an event reaches the deferred path
with more than a handful of subscriptions, so a step of :data:`EXPAND_ROWS` rows spans at most
this many events; fewer locked leaves more for the other nodes."""


NewFanout = tuple[str, Sequence[str], float, float]
"""A fan-out to store: (event id, subscription ids, first attempt due at, event created at)."""


async def add(conn: Connection, fanouts: Sequence[NewFanout]) -> None:
    """Store one fan-out row per event, in the caller's (ingest) transaction, and announce it."""
    if not fanouts:
        return
    await conn.executemany(
        "INSERT INTO event_fanouts (event_id, subscription_ids, width, total, first_attempt_at, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (event_id, *_packed(subs), len(subs), due, created)
            for event_id, subs, due, created in fanouts
        ],
    )
    announce(conn, Work.FANOUTS)


def _packed(subs: Sequence[str]) -> tuple[str, int]:
    """The ids as one text of fixed-width fields (padded with spaces, which ids never hold:
    service.core.ids), and the width: id ``i`` is at ``i * width``, so a step reads only its
    slice (``substr``) instead of the whole list, ~31 kB at 1,000 subscriptions."""
    lengths = set(map(len, subs))
    width = max(lengths) + 1
    if len(lengths) == 1:
        # Every id as long as the others (as reelhook's own are): a join pads them already.
        return " ".join(subs) + " ", width
    return "".join(sub.ljust(width) for sub in subs), width


@dataclass(frozen=True, slots=True)
class Step:
    """What one :func:`expand` did: delivery rows written, subscriptions skipped because they
    were deleted since the event, fan-out rows finished (deleted), and whether more may be
    left (call again)."""

    written: int
    skipped: int
    finished: int
    more: bool


async def expand(conn: Connection, *, budget: int = EXPAND_ROWS) -> Step:
    """Write the next delivery rows of the oldest pending fan-outs, at most ``budget``, in the
    caller's write transaction.

    Rows are the ones ingest would have written (:func:`deliveries.insert_new`, FIFO check
    included). A subscription deleted since the event gets none: deleting cancels a
    subscription's open deliveries, and a delivery not yet written has nothing to cancel. One
    disabled meanwhile gets its rows, which wait as any of its pending deliveries do.

    On PostgreSQL several nodes expand at once: the fan-out rows are taken ``FOR UPDATE SKIP
    LOCKED``, so each is advanced by one transaction at a time and each (event, subscription)
    gets one row; the subscriptions are read ``FOR KEY SHARE``, so a deletion racing the step
    waits for its commit and then cancels what it wrote (:func:`subscriptions.delete` cancels
    after deleting).
    """
    heads = await conn.execute_fetchall(
        "SELECT seq, event_id, total, expanded, width, first_attempt_at, created_at "
        f"FROM event_fanouts ORDER BY seq LIMIT ?{conn.skip_locked}",
        (_SCAN,),
    )
    if not heads:
        return Step(0, 0, 0, False)
    left = budget
    # Each event taken gets an equal share of the step: the same few subscriptions' rows for
    # several events, not one event's rows for hundreds of subscriptions. Each subscription's
    # rows sit together in its indexes (deliveries_pending, deliveries_subscription), so a step
    # dirties a few index pages per subscription it touches, and a commit writes every page it
    # dirtied: one event across 256 subscriptions cost ~18 µs of CPU per row, 16 events across
    # 16 subscriptions about half that (docs/performance.md §4).
    share = -(-budget // len(heads))
    # (seq, event id, expanded before, to take now, total, width, due, created)
    chosen: list[tuple[int, str, int, int, int, int, float, float]] = []
    for seq, event_id, total, expanded, width, due, created in heads:
        if left <= 0:
            break
        take = min(int(total) - int(expanded), share, left)
        chosen.append(
            (
                int(seq),
                event_id,
                int(expanded),
                take,
                int(total),
                int(width),
                float(due),
                float(created),
            )
        )
        left -= take
    slices = await _slices(conn, [(c[0], c[2] * c[5] + 1, c[3] * c[5]) for c in chosen])
    wanted: list[tuple[str, str, float, float]] = []
    for seq, event_id, _, _, _, _, due, created in chosen:
        wanted.extend((event_id, sub, due, created) for sub in slices[seq].split())
    ordering = await _still_there(conn, sorted({sub for _, sub, _, _ in wanted}))
    rows: list[NewRow] = [row for row in wanted if row[1] in ordering]
    fifo = {sub for sub, order in ordering.items() if order == "fifo"}
    written = await insert_new(conn, rows, fifo)
    finished: list[int] = []
    advanced: list[tuple[int, int]] = []
    for seq, _, expanded, take, total, _, _, _ in chosen:
        if expanded + take >= total:
            finished.append(seq)
        else:
            advanced.append((expanded + take, seq))
    if finished:
        await conn.execute(f"DELETE FROM event_fanouts WHERE seq IN ({marks(finished)})", finished)
    if advanced:
        await conn.executemany("UPDATE event_fanouts SET expanded = ? WHERE seq = ?", advanced)
    more = bool(advanced) or len(heads) == _SCAN
    return Step(written, len(wanted) - len(rows), len(finished), more)


async def _slices(conn: Connection, wanted: Sequence[tuple[int, int, int]]) -> dict[int, str]:
    """For each (seq, start, length): that stretch of the fan-out's packed ids (``substr``
    counts from 1; ids are ASCII, so characters are bytes on both engines), in one statement."""
    if conn.dialect == "postgresql":
        rows = await conn.execute_fetchall(
            "SELECT f.seq, substr(f.subscription_ids, w.start, w.length) "
            "FROM unnest(?::bigint[], ?::int[], ?::int[]) AS w(seq, start, length) "
            "JOIN event_fanouts f ON f.seq = w.seq",
            ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]),
        )
    else:
        rows = await conn.execute_fetchall(
            "SELECT f.seq, substr(f.subscription_ids, json_extract(w.value, '$[1]'), "
            "json_extract(w.value, '$[2]')) "
            "FROM json_each(?) AS w JOIN event_fanouts f ON f.seq = json_extract(w.value, '$[0]')",
            (json.dumps(wanted),),
        )
    return {int(row[0]): str(row[1]) for row in rows}


async def _still_there(conn: Connection, sub_ids: list[str]) -> dict[str, str]:
    """The ordering of each of ``sub_ids`` that still exists (PostgreSQL: key-share locked, in
    id order, so a deletion waits for this transaction instead of missing its rows)."""
    if not sub_ids:
        return {}
    if conn.dialect == "postgresql":
        found = await conn.execute_fetchall(
            "SELECT id, ordering FROM subscriptions WHERE id = ANY(?::text[]) "
            "ORDER BY id FOR KEY SHARE",
            (sub_ids,),
        )
    else:
        # json_each keeps one statement text (and SQLite's prepared statement) for any count.
        found = await conn.execute_fetchall(
            "SELECT id, ordering FROM subscriptions WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(sub_ids),),
        )
    return {str(row[0]): str(row[1]) for row in found}


async def pending_of(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Those of ``event_ids`` whose fan-out is not fully expanded yet."""
    if not event_ids:
        return set()
    rows = await conn.execute_fetchall(
        f"SELECT event_id FROM event_fanouts WHERE event_id IN ({marks(event_ids)})",
        list(event_ids),
    )
    return {str(row[0]) for row in rows}
