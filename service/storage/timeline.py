"""SQL for what happened to one job: the callbacks that arrived for it and the events it caused."""

from __future__ import annotations

from dataclasses import dataclass

from service.storage.database import Connection
from service.storage.health import excerpt_text

# Enough of a raw callback to recognise it; the whole body stays in the database for audit.
EXCERPT_BYTES = 2048


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    provider: str
    received_at: float
    outcome: str
    excerpt: str
    size: int
    #: How many times the same body came again for the job (stored once, counted).
    replays: int = 0


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: str
    type: str
    created_at: float


async def callbacks_of(conn: Connection, job_id: str) -> list[CallbackRecord]:
    """Every stored callback (or held answer) for the job, oldest first."""
    async with conn.execute(
        "SELECT provider, received_at, outcome, substr(body, 1, ?) AS excerpt, "
        "length(body) AS size, replays FROM callbacks WHERE job_id = ? ORDER BY id",
        (EXCERPT_BYTES, job_id),
    ) as cursor:
        rows = await cursor.fetchall()
    return [
        CallbackRecord(
            provider=row["provider"],
            received_at=row["received_at"],
            outcome=row["outcome"],
            excerpt=excerpt_text(row["excerpt"]),
            size=row["size"],
            replays=row["replays"],
        )
        for row in rows
    ]


async def events_of(conn: Connection, job_id: str) -> list[EventRecord]:
    """The events about the job, in log order."""
    async with conn.execute(
        "SELECT id, type, created_at FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
    ) as cursor:
        rows = await cursor.fetchall()
    return [EventRecord(row["id"], row["type"], row["created_at"]) for row in rows]
