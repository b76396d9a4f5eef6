"""SQL for retention: deleting old events, attempts and raw callbacks in small batches.

Each function runs one batch in the caller's write transaction. A batch walks its table in key
order from ``after`` (keys grow with time, so the old rows come first) and stops at the first row
that is still young enough to keep. Deliveries still pending or in flight are never deleted, nor
the events they belong to, nor their attempts, nor an event whose deferred fan-out is not fully
expanded yet (its deliveries are still to be written).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.models import DeliveryStatus
from service.storage import fanouts
from service.storage.database import Connection, marks
from service.storage.deliveries import lock_in_id_order

_OPEN = "('queued', 'pending', 'inflight')"


@dataclass(frozen=True, slots=True)
class Batch:
    """What one batch did. ``last`` is the key to continue after; ``young_at`` is the time of
    the first row kept for being too young (None when the batch reached the end of the table
    without meeting one); ``finished`` says whether the pass over this table is over."""

    deleted: dict[str, int]
    last: int
    young_at: float | None
    finished: bool


async def _walk(
    conn: Connection, select: str, after: int, cutoff: float, limit: int
) -> tuple[list[tuple[int, str]], int, float | None, bool]:
    """Rows (key, id) older than ``cutoff`` from one ordered batch of ``select``."""
    async with conn.execute(select, (after, limit)) as cursor:
        rows = list(await cursor.fetchall())
    old: list[tuple[int, str]] = []
    last = after
    for row in rows:
        if row[2] >= cutoff:
            return old, last, float(row[2]), True
        old.append((int(row[0]), str(row[1])))
        last = int(row[0])
    return old, last, None, len(rows) < limit


async def prune_events(conn: Connection, *, cutoff: float, after: int, limit: int) -> Batch:
    """Delete events created before ``cutoff`` whose deliveries are all settled (and written: a
    pending fan-out keeps its event), with those deliveries and their attempts."""
    old, last, young_at, finished = await _walk(
        conn,
        "SELECT seq, id, created_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        after,
        cutoff,
        limit,
    )
    ids = [event_id for _, event_id in old]
    if not ids:
        return Batch({}, last, young_at, finished)
    async with conn.execute(
        f"SELECT DISTINCT event_id FROM deliveries WHERE event_id IN ({marks(ids)}) "
        f"AND status IN {_OPEN}",
        ids,
    ) as cursor:
        held = {row[0] for row in await cursor.fetchall()}
    held |= await fanouts.pending_of(conn, ids)
    ids = [event_id for event_id in ids if event_id not in held]
    if not ids:
        return Batch({}, last, young_at, finished)
    listed = marks(ids)
    attempts = await conn.execute(
        f"DELETE FROM attempts WHERE delivery_id IN "
        f"(SELECT id FROM deliveries WHERE event_id IN ({listed}))",
        ids,
    )
    await lock_in_id_order(conn, f"event_id IN ({listed})", ids)
    deliveries = await conn.execute(f"DELETE FROM deliveries WHERE event_id IN ({listed})", ids)
    events = await conn.execute(f"DELETE FROM events WHERE id IN ({listed})", ids)
    deleted = {
        "events": events.rowcount,
        "deliveries": deliveries.rowcount,
        "attempts": attempts.rowcount,
    }
    return Batch(deleted, last, young_at, finished)


async def prune_attempts(conn: Connection, *, cutoff: float, after: int, limit: int) -> Batch:
    """Delete attempts made before ``cutoff`` by deliveries that are settled (the attempts of
    an event that must stay because another of its deliveries is still open)."""
    async with conn.execute(
        "SELECT a.id, d.status, a.attempted_at FROM attempts a "
        "JOIN deliveries d ON d.id = a.delivery_id WHERE a.id > ? ORDER BY a.id LIMIT ?",
        (after, limit),
    ) as cursor:
        rows = list(await cursor.fetchall())
    doomed: list[int] = []
    last = after
    for row in rows:
        if row[2] >= cutoff:
            return await _delete_attempts(conn, doomed, last, float(row[2]), True)
        if not DeliveryStatus(row[1]).under_way:
            doomed.append(int(row[0]))
        last = int(row[0])
    return await _delete_attempts(conn, doomed, last, None, len(rows) < limit)


async def _delete_attempts(
    conn: Connection, doomed: list[int], last: int, young_at: float | None, done: bool
) -> Batch:
    if not doomed:
        return Batch({}, last, young_at, done)
    cursor = await conn.execute(f"DELETE FROM attempts WHERE id IN ({marks(doomed)})", doomed)
    return Batch({"attempts": cursor.rowcount}, last, young_at, done)


async def prune_callbacks(conn: Connection, *, cutoff: float, after: int, limit: int) -> Batch:
    """Delete raw callbacks received before ``cutoff`` (the jobs they moved are kept)."""
    return await _prune_received(conn, "callbacks", cutoff=cutoff, after=after, limit=limit)


async def prune_unmatched(conn: Connection, *, cutoff: float, after: int, limit: int) -> Batch:
    """Delete account-webhook documents received before ``cutoff`` that never found their job
    (or were applied long ago): by then no submit answer will record their provider job id."""
    return await _prune_received(
        conn, "unmatched_callbacks", cutoff=cutoff, after=after, limit=limit
    )


async def _prune_received(
    conn: Connection, table: str, *, cutoff: float, after: int, limit: int
) -> Batch:
    """One batch of ``table`` (a table of received documents: ``id``, ``received_at``), rows
    received before ``cutoff`` deleted; ``table`` is one of this module's names, never input."""
    old, last, young_at, finished = await _walk(
        conn,
        f"SELECT id, id, received_at FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
        after,
        cutoff,
        limit,
    )
    if not old:
        return Batch({}, last, young_at, finished)
    keys = [key for key, _ in old]
    cursor = await conn.execute(f"DELETE FROM {table} WHERE id IN ({marks(keys)})", keys)
    return Batch({table: cursor.rowcount}, last, young_at, finished)
