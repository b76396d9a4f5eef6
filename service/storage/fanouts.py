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
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from service.core.models import Subscription, SubscriptionStatus
from service.storage import subscriptions
from service.storage.announcements import Work, announce
from service.storage.database import Connection, Row
from service.storage.deliveries import HotLease, NewRow, insert_claimed, insert_new

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
class Claiming:
    """What an :func:`expand` step may write already claimed (SQLite, one node): the (event id,
    subscription id) pairs the dispatcher reserved room for after reading the step ahead
    (:func:`upcoming`), the lease they are written under, and the subscriptions it refused room
    while saturated, whose rows written pending need not announce themselves (``quiet``, as
    :func:`deliveries.insert_new` takes it)."""

    pairs: frozenset[tuple[str, str]]
    lease: HotLease
    quiet: frozenset[str]
    now: float


HotRow = tuple[str, str, Subscription, bytes]
"""A delivery an expansion step wrote claimed: (delivery id, event id, subscription, payload)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one :func:`expand` did: delivery rows written, subscriptions skipped because they
    were deleted since the event, fan-out rows finished (deleted), and whether more may be
    left (call again)."""

    written: int
    skipped: int
    finished: int
    more: bool
    claimed: tuple[HotRow, ...] = ()
    """With ``claiming``: the rows written claimed, for the caller to send."""


async def expand(
    conn: Connection,
    *,
    budget: int = EXPAND_ROWS,
    claiming: Claiming | None = None,
) -> Step:
    """Write the next delivery rows of the oldest pending fan-outs, at most ``budget``, in the
    caller's write transaction.

    With ``claiming`` (SQLite only; ignored on PostgreSQL), the rows of its pairs that are due
    by its ``now`` and go to an active subscription that does not deliver in order are written
    already claimed (:func:`deliveries.insert_claimed`) and returned in :attr:`Step.claimed`,
    as ingest writes a fresh event's deliveries: no claim (a read of what is due, then the
    claim's read and ``UPDATE`` of each row) between writing a row and sending it
    (docs/performance.md §5, "Wide fan-out"). The rest are written pending as without it.

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
    ahead = await _ahead(conn, budget)
    if ahead is None:
        return Step(0, 0, 0, False)
    heads, chosen, wanted = ahead
    sub_ids = sorted({sub for _, sub, _, _ in wanted})
    if claiming is None or conn.dialect != "sqlite":
        claiming = None
        ordering = await _still_there(conn, sub_ids)
        found: dict[str, Subscription] = {}
    else:
        found = await subscriptions.by_ids(conn, sub_ids)
        ordering = {sub_id: sub.ordering for sub_id, sub in found.items()}
    rows: list[NewRow] = [row for row in wanted if row[1] in ordering]
    fifo = {sub for sub, order in ordering.items() if order == "fifo"}
    claimed: tuple[HotRow, ...] = ()
    if claiming is None:
        written = await insert_new(conn, rows, fifo)
    else:
        claimed, written = await _insert_hot(conn, rows, fifo, found, claiming)
    finished: list[int] = []
    advanced: list[tuple[int, int]] = []
    for seq, _, expanded, take, total, _, _, _ in chosen:
        if expanded + take >= total:
            finished.append(seq)
        else:
            advanced.append((expanded + take, seq))
    if finished:
        await conn.execute(f"DELETE FROM event_fanouts WHERE seq IN ({_marks(finished)})", finished)
    if advanced:
        await conn.executemany("UPDATE event_fanouts SET expanded = ? WHERE seq = ?", advanced)
    more = bool(advanced) or len(heads) == _SCAN
    return Step(written, len(wanted) - len(rows), len(finished), more, claimed)


async def _insert_hot(
    conn: Connection,
    rows: Sequence[NewRow],
    fifo: Collection[str],
    found: dict[str, Subscription],
    claiming: Claiming,
) -> tuple[tuple[HotRow, ...], int]:
    """SQLite: ``rows`` written as :func:`insert_new` writes them, except those ``claiming``
    reserved room for that are due by its ``now`` and go to an active subscription that does
    not deliver in order, written claimed under its lease; (the rows written claimed, how many
    rows were written in all)."""
    claimable: list[NewRow] = []
    pending: list[NewRow] = []
    for row in rows:
        sub = found[row[1]]
        if (
            (row[0], row[1]) in claiming.pairs
            and row[2] <= claiming.now
            and row[1] not in fifo
            and sub.status == SubscriptionStatus.ACTIVE
        ):
            claimable.append(row)
        else:
            pending.append(row)
    written = await insert_new(conn, pending, fifo, claiming.quiet)
    if not claimable:
        return (), written
    payloads = {
        str(row[0]): bytes(row[1])
        for row in await conn.execute_fetchall(
            "SELECT id, payload FROM events WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted({row[0] for row in claimable})),),
        )
    }
    # One node on SQLite: every row is written claimed (insert_claimed).
    done = await insert_claimed(conn, claimable, claiming.lease, claiming.now)
    return (
        tuple((id_, event_id, found[sub], payloads[event_id]) for id_, event_id, sub in done),
        written + len(done),
    )


_Chosen = tuple[int, str, int, int, int, int, float, float]
"""A fan-out a step takes rows of: (seq, event id, expanded before, to take now, total, width,
due, created)."""


async def _ahead(
    conn: Connection, budget: int
) -> tuple[list[Row], list[_Chosen], list[NewRow]] | None:
    """The next step: the oldest fan-out rows (locked on PostgreSQL), how many rows of each it
    takes, and the rows (event id, subscription id, due, created); None when none is left."""
    heads = await conn.execute_fetchall(
        "SELECT seq, event_id, total, expanded, width, first_attempt_at, created_at "
        f"FROM event_fanouts ORDER BY seq LIMIT ?{conn.skip_locked}",
        (_SCAN,),
    )
    if not heads:
        return None
    left = budget
    # Each event taken gets an equal share of the step: the same few subscriptions' rows for
    # several events, not one event's rows for hundreds of subscriptions. Each subscription's
    # rows sit together in its indexes (deliveries_pending, deliveries_subscription), so a step
    # dirties a few index pages per subscription it touches, and a commit writes every page it
    # dirtied: one event across 256 subscriptions cost ~18 µs of CPU per row, 16 events across
    # 16 subscriptions about half that (docs/performance.md §4).
    share = -(-budget // len(heads))
    chosen: list[_Chosen] = []
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
    wanted: list[NewRow] = []
    for seq, event_id, _, _, _, _, due, created in chosen:
        wanted.extend((event_id, sub, due, created) for sub in slices[seq].split())
    return list(heads), chosen, wanted


async def upcoming(
    conn: Connection, *, now: float, budget: int = EXPAND_ROWS
) -> list[tuple[str, Subscription]]:
    """SQLite, on the reader: the rows the next :func:`expand` step is to write that are due by
    ``now``, as (event id, subscription), for the dispatcher to reserve room for before the
    step (``Dispatcher._expand_claiming``). One node expands on SQLite, so the step writes
    these unless a fan-out committed meanwhile changed the shares; a reservation the step does
    not use only gives its room back."""
    ahead = await _ahead(conn, budget)
    if ahead is None:
        return []
    due = [(event_id, sub_id) for event_id, sub_id, at, _ in ahead[2] if at <= now]
    found = await subscriptions.by_ids(conn, sorted({sub_id for _, sub_id in due}))
    return [(event_id, found[sub_id]) for event_id, sub_id in due if sub_id in found]


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


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


async def pending_of(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Those of ``event_ids`` whose fan-out is not fully expanded yet."""
    if not event_ids:
        return set()
    rows = await conn.execute_fetchall(
        f"SELECT event_id FROM event_fanouts WHERE event_id IN ({_marks(event_ids)})",
        list(event_ids),
    )
    return {str(row[0]) for row in rows}
