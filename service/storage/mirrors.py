"""SQL for the mirror queue: provider-hosted outputs waiting to be copied into the blob store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.core.models import MirrorStatus
from service.storage.announcements import Work, announce
from service.storage.database import Connection


@dataclass(frozen=True, slots=True)
class MirrorTask:
    """One output of one job to download; ``attempts`` counts the tries already made."""

    job_id: str
    output_index: int
    url: str
    attempts: int


async def enqueue(
    conn: Connection, job_id: str, outputs: Sequence[tuple[int, str]], now: float
) -> None:
    """Queue ``(output index, url)`` pairs of ``job_id``, due now, in the caller's transaction."""
    await conn.executemany(
        "INSERT INTO mirrors (job_id, output_index, url, next_attempt_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(job_id, index, url, now, now, now) for index, url in outputs],
    )
    announce(conn, Work.MIRRORS)


async def due(conn: Connection, now: float, limit: int) -> list[MirrorTask]:
    """Pending downloads due at ``now``, oldest due first."""
    async with conn.execute(
        "SELECT job_id, output_index, url, attempts FROM mirrors "
        "WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        (now, limit),
    ) as cursor:
        rows = await cursor.fetchall()
    return [MirrorTask(r["job_id"], r["output_index"], r["url"], r["attempts"]) for r in rows]


async def next_due_after(conn: Connection, now: float) -> float | None:
    """When the next pending download that is not yet due falls due, if any."""
    async with conn.execute(
        "SELECT min(next_attempt_at) FROM mirrors WHERE status = 'pending' AND next_attempt_at > ?",
        (now,),
    ) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def retry_later(
    conn: Connection, task: MirrorTask, at: float, error: str, now: float
) -> None:
    await conn.execute(
        "UPDATE mirrors SET attempts = attempts + 1, next_attempt_at = ?, error = ?, "
        "updated_at = ? WHERE job_id = ? AND output_index = ? AND status = 'pending'",
        (at, error, now, task.job_id, task.output_index),
    )


async def defer(conn: Connection, task: MirrorTask, at: float, error: str, now: float) -> None:
    """Try the download again at ``at`` without counting this attempt (the failure was
    reelhook's, not the download's)."""
    await conn.execute(
        "UPDATE mirrors SET next_attempt_at = ?, error = ?, updated_at = ? "
        "WHERE job_id = ? AND output_index = ? AND status = 'pending'",
        (at, error, now, task.job_id, task.output_index),
    )


async def finish(conn: Connection, task: MirrorTask, *, error: str | None, now: float) -> bool:
    """Close the download: ``done`` without ``error``, ``failed`` with it.

    Returns False when it was already closed (a second worker finished the same task), so the
    caller can leave everything else as the first one left it.
    """
    async with conn.execute(
        "UPDATE mirrors SET status = ?, attempts = attempts + 1, error = ?, updated_at = ? "
        "WHERE job_id = ? AND output_index = ? AND status = 'pending'",
        (
            MirrorStatus.DONE if error is None else MirrorStatus.FAILED,
            error,
            now,
            task.job_id,
            task.output_index,
        ),
    ) as cursor:
        return cursor.rowcount == 1


async def open_for_job(conn: Connection, job_id: str) -> int:
    """How many of ``job_id``'s downloads are still pending."""
    async with conn.execute(
        "SELECT count(*) FROM mirrors WHERE job_id = ? AND status = 'pending'", (job_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
