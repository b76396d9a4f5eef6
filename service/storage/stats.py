"""SQL behind the scrape-time gauges: each query reads an index, not the whole table."""

from __future__ import annotations

from service.core.models import DeliveryStatus
from service.storage.database import Connection


async def jobs_by_status(conn: Connection) -> dict[str, int]:
    """The number of stored jobs in each status (a scan of the ``jobs_status`` index)."""
    async with conn.execute("SELECT status, count(*) FROM jobs GROUP BY status") as cursor:
        return {row[0]: int(row[1]) for row in await cursor.fetchall()}


async def outbox(conn: Connection) -> tuple[int, float | None]:
    """Deliveries waiting or in flight, and when the oldest of them was created; the deliveries
    of deferred fan-outs not yet expanded count as waiting (service/storage/fanouts.py).

    One statement, so one snapshot: counted by separate statements, a delivery claimed between
    the pending and the in-flight count was counted twice. Each status is still its own branch
    of the UNION, so each reads its own partial index (``deliveries_pending``,
    ``deliveries_lease``); the status is a literal, which is what the planner matches partial
    indexes on.
    """
    statuses = (DeliveryStatus.QUEUED, DeliveryStatus.PENDING, DeliveryStatus.INFLIGHT)
    sql = " UNION ALL ".join(
        [
            f"SELECT count(*), min(created_at) FROM deliveries WHERE status = '{status.value}'"
            for status in statuses
        ]
        + ["SELECT coalesce(sum(total - expanded), 0), min(created_at) FROM event_fanouts"]
    )
    depth = 0
    oldest: float | None = None
    for count, created in await conn.execute_fetchall(sql):
        depth += int(count)
        if created is not None:
            oldest = created if oldest is None else min(oldest, created)
    return depth, oldest
