"""SQL for durable provider submits: which pending jobs are due, claimed under a lease, and when.

A pending job's ``next_submit_at`` is when its next submit attempt is due; while an attempt is in
flight it is that attempt's lease, so a crash leaves the job to be sent again (with the same
idempotency key) once the lease runs out instead of losing it.

A held request (Segmind) is claimed without a lease: while it is held, ``next_submit_at`` is NULL,
and a job found like that at start-up was in flight when reelhook stopped. One the provider
refused before doing any work waits as a submitted job with ``next_submit_at`` set.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import aiosqlite

from service.core.models import Job, JobStatus
from service.storage import jobs
from service.storage.announcements import Work, announce


async def schedule(
    conn: aiosqlite.Connection,
    job_id: str,
    *,
    next_at: float | None,
    attempts: int | None = None,
    last_error: str | None = None,
) -> None:
    """Set when ``job_id``'s next submit is due, and if given its attempt count and last error."""
    await _set_due(conn, job_id, next_at, attempts, last_error)
    if next_at is not None:
        announce(conn, Work.SUBMITS)


async def _set_due(
    conn: aiosqlite.Connection,
    job_id: str,
    next_at: float | None,
    attempts: int | None = None,
    last_error: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE jobs SET next_submit_at = ?, "
        "submit_attempts = COALESCE(?, submit_attempts), "
        "last_submit_error = COALESCE(?, last_submit_error) WHERE id = ?",
        (next_at, attempts, last_error, job_id),
    )


async def claim_due(
    conn: aiosqlite.Connection,
    *,
    providers: Collection[str],
    now: float,
    lease_until: float | None,
    limit: int,
    statuses: Sequence[JobStatus] = (JobStatus.PENDING,),
) -> list[tuple[Job, int]]:
    """Claim up to ``limit`` jobs of ``providers`` in ``statuses`` whose submit is due.

    Each claimed job counts one more attempt and is leased until ``lease_until`` (None: held, no
    lease). Returns the jobs with their attempt numbers (1 for the first attempt). Run inside a
    write transaction.
    """
    if not providers or limit <= 0:
        return []
    marks = ", ".join("?" for _ in providers)
    rows: list[tuple[float, str, int]] = []
    for status in statuses:
        # The status is written into the SQL (an enum value, never input) so that SQLite can
        # use the partial index made for it.
        async with conn.execute(
            "SELECT id, submit_attempts, next_submit_at FROM jobs "
            f"WHERE status = '{status.value}' AND next_submit_at IS NOT NULL "
            f"AND next_submit_at <= ? AND provider IN ({marks}) "
            "ORDER BY next_submit_at LIMIT ?",
            (now, *providers, limit),
        ) as cursor:
            rows += [(row[2], row[0], int(row[1]) + 1) for row in await cursor.fetchall()]
    rows = sorted(rows)[:limit]
    claimed = []
    for _, job_id, attempt in rows:
        # A lease or a held request is no new work: the claiming worker is awake.
        await _set_due(conn, job_id, lease_until, attempt)
        job = await jobs.get(conn, job_id)
        if job is not None:
            claimed.append((job, attempt))
    return claimed


async def next_due_at(
    conn: aiosqlite.Connection,
    providers: Collection[str],
    statuses: Sequence[JobStatus] = (JobStatus.PENDING,),
) -> float | None:
    """When the earliest submit of ``providers`` in ``statuses`` is due, or None if none waits."""
    if not providers or not statuses:
        return None
    marks = ", ".join("?" for _ in providers)
    # One MIN per status, its value written into the SQL (an enum value, never input): each can
    # use its partial index (jobs_submit_due, jobs_resend_due), where ``status IN (?)`` could not.
    per_status = " UNION ALL ".join(
        f"SELECT MIN(next_submit_at) AS t FROM jobs WHERE status = '{status.value}' "
        f"AND next_submit_at IS NOT NULL AND provider IN ({marks})"
        for status in statuses
    )
    params = [provider for _ in statuses for provider in providers]
    async with conn.execute(f"SELECT MIN(t) FROM ({per_status})", params) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def in_flight(conn: aiosqlite.Connection, providers: Collection[str]) -> list[Job]:
    """Held requests claimed and not answered: submitted or running jobs of ``providers`` with no
    next submit due (see the module docstring)."""
    if not providers:
        return []
    marks = ", ".join("?" for _ in providers)
    async with conn.execute(
        "SELECT id FROM jobs WHERE status IN (?, ?) AND next_submit_at IS NULL "
        f"AND provider IN ({marks}) ORDER BY id",
        (JobStatus.SUBMITTED.value, JobStatus.RUNNING.value, *providers),
    ) as cursor:
        ids = [row[0] for row in await cursor.fetchall()]
    found = await jobs.get_many(conn, ids)
    return [found[job_id] for job_id in ids if job_id in found]


async def attempts_of(conn: aiosqlite.Connection, job_id: str) -> tuple[int, float | None] | None:
    """``(submit_attempts, next_submit_at)`` of a job, or None if there is no such job."""
    async with conn.execute(
        "SELECT submit_attempts, next_submit_at FROM jobs WHERE id = ?", (job_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return (int(row[0]), row[1]) if row else None
