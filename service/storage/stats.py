"""SQL behind ``/readyz``'s outbox figure and the scrape-time gauges: the gauges count index
entries only, ``/readyz`` reads at most its cap's worth of rows per status, and on SQLite no
statement reads more than a bounded number of entries, so a backlog of millions never holds its
one reader connection for long (docs/performance-journal.md, "/readyz and /metrics over a
million due deliveries")."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.models import DeliveryStatus, JobStatus
from service.storage.database import Connection

CHUNK = 10_000
"""Index entries one counting statement reads at most (a few ms of SQLite's time here): between
two statements the reader serves everyone else, the dispatcher's read of what is due first."""

SUBSCRIPTIONS_PAGE = 500
"""Subscriptions one statement of :func:`outbox` looks at (six index seeks each)."""

_WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.PENDING, DeliveryStatus.INFLIGHT)


@dataclass(frozen=True)
class Depth:
    """A bounded count: ``count`` is exact when ``capped`` is false, else a floor."""

    count: int
    capped: bool


def depth_up_to_sql(cap: int) -> str:
    """The statement of :func:`outbox_depth_up_to`: one row per branch, each a count."""
    branches = [
        f"SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE status = '{status.value}' "
        f"LIMIT {int(cap) + 1}) AS w"
        for status in _WAITING
    ]
    branches.append(
        "SELECT coalesce(sum(total - expanded), 0) FROM "
        f"(SELECT total, expanded FROM event_fanouts LIMIT {int(cap) + 1}) AS f"
    )
    return " UNION ALL ".join(branches)


async def outbox_depth_up_to(conn: Connection, cap: int) -> Depth:
    """Deliveries waiting or in flight (unexpanded deferred fan-outs included), counted up to
    ``cap``: at most ``cap + 1`` entries per status and ``cap + 1`` fan-out rows are read,
    whatever the backlog. One statement, so one snapshot.

    Each status is its own branch on a literal, which is what the planner matches the partial
    indexes (``deliveries_queue``, ``deliveries_pending``, ``deliveries_lease``) on. They do not
    hold ``status``, so SQLite reads each entry's table row too (``SCAN deliveries USING INDEX``,
    not a covering index; docs/performance-journal.md): bounded by the cap all the same. A fan-out
    row is deleted once expanded, so each row read stands for at least one delivery.
    """
    rows = await conn.execute_fetchall(depth_up_to_sql(cap))
    total = sum(int(row[0]) for row in rows)
    return Depth(cap, True) if total > cap else Depth(total, False)


def _chunk_end_sql(table: str, where: str) -> str:
    # The last id of the next chunk, by a walk of the index without reading the rows it passes
    # (4-5x less CPU than counting the chunk's rows and taking their max(id), measured in
    # docs/performance-journal.md, "/readyz and /metrics over a million due deliveries").
    return f"SELECT id FROM {table} WHERE {where} AND id > ? ORDER BY id LIMIT 1 OFFSET ?"


def _rest_sql(table: str, where: str) -> str:
    # Bounded and in id order like the chunks, so the planner reads the same index (PostgreSQL
    # picked a partial index and filtered every row of the status on id otherwise).
    return (
        f"SELECT count(*) FROM (SELECT id FROM {table} WHERE {where} AND id > ? "
        "ORDER BY id LIMIT ?) AS rest"
    )


JOBS_COUNT = "SELECT count(*) FROM jobs WHERE status = ?"
"""Jobs in one status, in one statement: PostgreSQL's way (see :func:`_count_chunked`)."""

DELIVERIES_COUNT = "SELECT count(*) FROM deliveries WHERE subscription_id = ? AND status = ?"
"""One subscription's deliveries in one status, in one statement: PostgreSQL's way."""

JOBS_CHUNK_END = _chunk_end_sql("jobs", "status = ?")
"""The id ending the next chunk of jobs in one status after an id, if there are that many.
Parameters (status, after, chunk - 1); reads the ``jobs_status`` index (status, id) only."""

JOBS_REST = _rest_sql("jobs", "status = ?")
"""Jobs in one status after an id, up to a chunk (what is left when :data:`JOBS_CHUNK_END` finds
no chunk's end). Parameters (status, after, chunk); reads ``jobs_status`` only."""

DELIVERIES_CHUNK_END = _chunk_end_sql("deliveries", "subscription_id = ? AND status = ?")
"""The id ending the next chunk of one subscription's deliveries in one status after an id.
Parameters (subscription, status, after, chunk - 1); reads the ``deliveries_subscription``
index (subscription_id, status, id) only."""

DELIVERIES_REST = _rest_sql("deliveries", "subscription_id = ? AND status = ?")
"""One subscription's deliveries in one status after an id, up to a chunk. Parameters
(subscription, status, after, chunk); reads ``deliveries_subscription`` only."""


def _page_columns() -> str:
    columns = []
    for status in _WAITING:
        open_ = f"d.subscription_id = s.id AND d.status = '{status.value}'"
        columns.append(
            f"(SELECT count(*) FROM (SELECT 1 FROM deliveries d WHERE {open_} LIMIT ?) AS c)"
        )
        columns.append(
            f"(SELECT d.created_at FROM deliveries d WHERE {open_} ORDER BY d.id LIMIT 1)"
        )
    return ", ".join(columns)


OUTBOX_PAGE = (
    f"SELECT s.id, {_page_columns()} FROM subscriptions s WHERE s.id > ? ORDER BY s.id LIMIT ?"
)
"""A page of subscriptions after an id, each with, per waiting status (queued, pending, in
flight), its deliveries counted up to a chunk and the creation time of its lowest id.
Parameters (chunk, chunk, chunk, after, page size)."""


async def _count_chunked(
    conn: Connection,
    sqls: tuple[str, str, str],
    params: tuple[str, ...],
    chunk: int,
) -> int:
    """The rows of ``params`` in an index. ``sqls`` are the one-statement count, the chunk's end
    and the rest (:data:`JOBS_COUNT`, :data:`JOBS_CHUNK_END`, :data:`JOBS_REST`, or the
    deliveries' three).

    On SQLite, ``chunk`` entries per statement: the chunk's end finds where each full chunk ends
    (keyset: each starts after the end of the one before), and the rest counts what is left
    when no full chunk is; SQLite's reader is one connection, which the dispatcher's read of
    what is due waits for. On PostgreSQL, one count: its reader is a pool, so a long statement
    holds up no other read, and its executor walks an OFFSET at ~3x the CPU of a count
    (docs/performance-journal.md, "/readyz and /metrics over a million due deliveries")."""
    count_sql, end_sql, rest_sql = sqls
    if conn.dialect == "postgresql":
        rows = await conn.execute_fetchall(count_sql, params)
        return int(rows[0][0])
    total, after = 0, ""
    while True:
        rows = await conn.execute_fetchall(end_sql, (*params, after, chunk - 1))
        if not rows:
            rest = await conn.execute_fetchall(rest_sql, (*params, after, chunk))
            return total + int(rest[0][0])
        total += chunk
        after = rows[0][0]


async def jobs_by_status(conn: Connection, *, chunk: int = CHUNK) -> dict[str, int]:
    """The number of stored jobs in each status (statuses with none are left out), counted from
    the ``jobs_status`` index (on SQLite ``chunk`` entries per statement; see
    :func:`_count_chunked`).

    Several statements, so not one snapshot: a job changing status meanwhile may be counted in
    both statuses or in neither (off by the jobs that moved during the read)."""
    counts = {}
    for status in JobStatus:
        counted = await _count_chunked(
            conn, (JOBS_COUNT, JOBS_CHUNK_END, JOBS_REST), (status.value,), chunk
        )
        if counted:
            counts[status.value] = counted
    return counts


async def outbox(conn: Connection, *, chunk: int = CHUNK) -> tuple[int, float | None]:
    """Deliveries waiting or in flight, and when the oldest of them was created; the deliveries
    of deferred fan-outs not yet expanded count as waiting (service/storage/fanouts.py).

    Read subscription by subscription from the ``deliveries_subscription`` index
    (subscription_id, status, id), :data:`SUBSCRIPTIONS_PAGE` subscriptions per statement
    (:data:`OUTBOX_PAGE`): per subscription and status, a count of at most ``chunk`` entries and
    one seek to the lowest id; then a stretch of ``chunk`` or more is counted again (on SQLite
    ``chunk`` entries per statement; see :func:`_count_chunked`). No table row is read for a
    count; on SQLite no statement's work grows with the backlog. The whole read is
    O(subscriptions + waiting deliveries).

    The oldest is the creation time of each stretch's lowest id (ids are time-ordered: the
    first written of what waits), or of the oldest unexpanded fan-out. A deferred fan-out's rows
    are written when expanded, possibly after a newer event's rows to the same subscription, so
    the age can read low by the expansion's lag (the fan-out itself counts until expanded). An
    open delivery's subscription exists: deleting a subscription cancels its open deliveries
    (service/storage/subscriptions.py).

    Several statements, so not one snapshot: a delivery changing status meanwhile may be counted
    twice or not at all (off by the deliveries that moved during the read).
    """
    depth = 0
    created: list[float] = []  # the creation time of each stretch's first, and the fan-outs'
    long_stretches: list[tuple[str, str]] = []
    after = ""
    while True:
        rows = await conn.execute_fetchall(
            OUTBOX_PAGE, (chunk, chunk, chunk, after, SUBSCRIPTIONS_PAGE)
        )
        for row in rows:
            for index, status in enumerate(_WAITING):
                counted, first = int(row[1 + 2 * index]), row[2 + 2 * index]
                if counted >= chunk:
                    long_stretches.append((row[0], status.value))
                else:
                    depth += counted
                if first is not None:
                    created.append(first)
        if len(rows) < SUBSCRIPTIONS_PAGE:
            break
        after = rows[-1][0]
    for sub_id, status_value in long_stretches:
        depth += await _count_chunked(
            conn,
            (DELIVERIES_COUNT, DELIVERIES_CHUNK_END, DELIVERIES_REST),
            (sub_id, status_value),
            chunk,
        )
    # A fan-out row is deleted once expanded, so the table holds only the ones in progress.
    fanout_rows = await conn.execute_fetchall(
        "SELECT coalesce(sum(total - expanded), 0), min(created_at) FROM event_fanouts"
    )
    depth += int(fanout_rows[0][0])
    if fanout_rows[0][1] is not None:
        created.append(fanout_rows[0][1])
    return depth, min(created, default=None)
