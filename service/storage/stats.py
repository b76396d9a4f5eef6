"""SQL behind the scrape-time gauges: each query reads an index, not the whole table."""

from __future__ import annotations

import aiosqlite

from service.core.models import DeliveryStatus


async def jobs_by_status(conn: aiosqlite.Connection) -> dict[str, int]:
    """The number of stored jobs in each status (a scan of the ``jobs_status`` index)."""
    async with conn.execute("SELECT status, count(*) FROM jobs GROUP BY status") as cursor:
        return {row[0]: int(row[1]) for row in await cursor.fetchall()}


async def outbox(conn: aiosqlite.Connection) -> tuple[int, float | None]:
    """Deliveries waiting or in flight, and when the oldest of them was created.

    One query per status so each reads its own partial index (``deliveries_pending``,
    ``deliveries_lease``).
    """
    depth = 0
    oldest: float | None = None
    for status in (DeliveryStatus.QUEUED, DeliveryStatus.PENDING, DeliveryStatus.INFLIGHT):
        # A literal status, not a parameter: the planner matches partial indexes on literals.
        async with conn.execute(
            f"SELECT count(*), min(created_at) FROM deliveries WHERE status = '{status.value}'"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            continue
        depth += int(row[0])
        if row[1] is not None:
            oldest = row[1] if oldest is None else min(oldest, row[1])
    return depth, oldest
