"""The job lifecycle: how a provider update moves a job, applied in one durable transaction.

A terminal state never changes again. Duplicate, late and out-of-order callbacks are stored for
audit with their outcome and change nothing, so each job announces each state at most once.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from service.events import Publisher
from service.models import Job, JobError, JobStatus, ProviderUpdate, event_type_for
from service.storage import jobs, submissions
from service.storage.database import Database


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the same terminal state again
    LATE = "late"  # anything after a terminal state
    STALE = "stale"  # a non-terminal state the job has already passed


class UnknownJob(Exception):
    """The callback names a job reelhook does not have."""


class JobMismatch(Exception):
    """The callback's provider job id is not the one stored for the job."""


def transition(job: Job, update: ProviderUpdate, now: float) -> tuple[Job | None, Outcome]:
    """The job after ``update`` (None when unchanged) and how the update was classified."""
    if job.status.terminal:
        same = update.status is job.status
        return None, Outcome.DUPLICATE if same else Outcome.LATE
    if update.status.terminal:
        cost = job.cost
        if update.charged is not None:
            cost = dataclasses.replace(cost, charged=update.charged)
        elif update.status is not JobStatus.SUCCEEDED:
            cost = dataclasses.replace(cost, charged=0)
        return (
            dataclasses.replace(
                job,
                status=update.status,
                provider_job_id=job.provider_job_id or update.provider_job_id,
                outputs=update.outputs,
                error=update.error,
                cost=cost,
                completed_at=now,
                submitted_at=job.submitted_at or now,
            ),
            Outcome.APPLIED,
        )
    if update.status is JobStatus.RUNNING and job.status is not JobStatus.RUNNING:
        changed = dataclasses.replace(
            job,
            status=JobStatus.RUNNING,
            provider_job_id=job.provider_job_id or update.provider_job_id,
            submitted_at=job.submitted_at or now,
        )
        return changed, Outcome.APPLIED
    return None, Outcome.STALE


async def apply_update(
    db: Database,
    publisher: Publisher,
    *,
    job_id: str,
    provider: str,
    update: ProviderUpdate,
    raw: bytes,
    now: float,
) -> tuple[Job, Outcome]:
    """Store ``raw``, move the job and append its event with deliveries, all in one transaction.

    Raises :class:`UnknownJob` or :class:`JobMismatch` before anything is written.
    """
    async with db.transaction() as conn:
        job = await jobs.get(conn, job_id)
        if job is None or job.provider != provider:
            raise UnknownJob(job_id)
        if (
            job.provider_job_id is not None
            and update.provider_job_id is not None
            and job.provider_job_id != update.provider_job_id
        ):
            raise JobMismatch(job_id)
        changed, outcome = transition(job, update, now)
        await jobs.record_callback(
            conn, job_id=job_id, provider=provider, received_at=now, outcome=outcome, body=raw
        )
        if changed is None:
            return job, outcome
        await jobs.save(conn, changed, now)
        event_type = event_type_for(changed.status)
        if event_type is not None:
            await publisher.publish(conn, event_type, now, job=changed)
        return changed, outcome


async def mark_submitted(
    db: Database, publisher: Publisher, job_id: str, provider_job_id: str | None, now: float
) -> tuple[Job | None, bool]:
    """The provider accepted a pending job: move it to submitted and announce it.

    Returns the job as it now is and whether it moved. A callback that overtook the provider's
    answer has already moved the job on; then only its provider job id is filled in.
    """
    async with db.transaction() as conn:
        current = await jobs.get(conn, job_id)
        if current is None:
            return None, False
        if current.status is not JobStatus.PENDING:
            if current.provider_job_id is None and provider_job_id is not None:
                current = dataclasses.replace(current, provider_job_id=provider_job_id)
                await jobs.save(conn, current, now)
            return current, False
        submitted = dataclasses.replace(
            current,
            status=JobStatus.SUBMITTED,
            provider_job_id=provider_job_id or current.provider_job_id,
            submitted_at=current.submitted_at or now,
        )
        await jobs.save(conn, submitted, now)
        if current.submitted_at is None:
            # Announced once: a held request sent again after the provider throttled it is no news.
            await publisher.publish(conn, "job.submitted", now, job=submitted)
        return submitted, True


async def refuse(
    db: Database, publisher: Publisher, job_id: str, error: JobError, now: float
) -> bool:
    """The provider refused a pending job: fail it (nothing charged) and announce it.

    A job that is no longer pending was moved on by a callback, which is the better witness of
    what the provider did, so it is left alone. Returns whether the job was failed.
    """
    async with db.transaction() as conn:
        current = await jobs.get(conn, job_id)
        if current is None or current.status is not JobStatus.PENDING:
            return False
        failed = dataclasses.replace(
            current,
            status=JobStatus.FAILED,
            error=error,
            cost=dataclasses.replace(current.cost, charged=0),
            completed_at=now,
        )
        await jobs.save(conn, failed, now)
        await publisher.publish(conn, "job.failed", now, job=failed)
        return True


async def defer_submit(
    db: Database, job_id: str, next_at: float, reason: str, now: float, *, requeue: bool = False
) -> bool:
    """Schedule another submit attempt of a job the provider throttled or did not answer.

    A pending job stays pending, due again at ``next_at``. With ``requeue``, a submitted job (a
    held request the provider refused before doing any work) goes back to pending; it keeps its
    ``submitted_at``, so it is not announced twice. A job a callback has moved on is left alone.
    Returns whether the attempt was scheduled.
    """
    async with db.transaction() as conn:
        current = await jobs.get(conn, job_id)
        if current is None:
            return False
        if current.status is JobStatus.SUBMITTED and requeue:
            await jobs.save(conn, dataclasses.replace(current, status=JobStatus.PENDING), now)
        elif current.status is not JobStatus.PENDING:
            return False
        await submissions.schedule(conn, job_id, next_at=next_at, last_error=reason[:500])
        return True
