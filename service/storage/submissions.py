"""SQL for durable provider submits: which pending jobs are due, claimed under a lease, and when.

A pending job's ``next_submit_at`` is when its next submit attempt is due; while an attempt is in
flight it is that attempt's lease, so a crash leaves the job to be sent again (with the same
idempotency key) once the lease runs out instead of losing it.
"""

from __future__ import annotations

from collections.abc import Collection

from service.core.models import Job, JobStatus
from service.storage import jobs
from service.storage.database import Connection


async def schedule(
    conn: Connection,
    job_id: str,
    *,
    next_at: float | None,
    attempts: int | None = None,
    last_error: str | None = None,
) -> None:
    """Set when ``job_id``'s next submit is due, and if given its attempt count and last error."""
    await conn.execute(
        "UPDATE jobs SET next_submit_at = ?, "
        "submit_attempts = COALESCE(?, submit_attempts), "
        "last_submit_error = COALESCE(?, last_submit_error) WHERE id = ?",
        (next_at, attempts, last_error, job_id),
    )


async def claim_due(
    conn: Connection,
    *,
    providers: Collection[str],
    now: float,
    lease_until: float,
    limit: int,
) -> list[tuple[Job, int]]:
    """Claim up to ``limit`` pending jobs of ``providers`` whose submit is due.

    Each claimed job counts one more attempt and is leased until ``lease_until``. Returns the jobs
    with their attempt numbers (1 for the first attempt). Run inside a write transaction.
    """
    if not providers or limit <= 0:
        return []
    marks = ", ".join("?" for _ in providers)
    async with conn.execute(
        "SELECT id, submit_attempts FROM jobs "
        f"WHERE status = ? AND next_submit_at <= ? AND provider IN ({marks}) "
        f"ORDER BY next_submit_at LIMIT ?{conn.skip_locked}",
        (JobStatus.PENDING.value, now, *providers, limit),
    ) as cursor:
        rows = [(row[0], int(row[1]) + 1) for row in await cursor.fetchall()]
    claimed = []
    for job_id, attempt in rows:
        await schedule(conn, job_id, next_at=lease_until, attempts=attempt)
        job = await jobs.get(conn, job_id)
        if job is not None:
            claimed.append((job, attempt))
    return claimed


async def next_due_at(conn: Connection, providers: Collection[str]) -> float | None:
    """When the earliest pending submit of ``providers`` is due, or None if none is pending."""
    if not providers:
        return None
    marks = ", ".join("?" for _ in providers)
    async with conn.execute(
        f"SELECT MIN(next_submit_at) FROM jobs WHERE status = ? AND provider IN ({marks})",
        (JobStatus.PENDING.value, *providers),
    ) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def attempts_of(conn: Connection, job_id: str) -> tuple[int, float | None] | None:
    """``(submit_attempts, next_submit_at)`` of a job, or None if there is no such job."""
    async with conn.execute(
        "SELECT submit_attempts, next_submit_at FROM jobs WHERE id = ?", (job_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return (int(row[0]), row[1]) if row else None
