"""The job lifecycle: how a provider update moves a job, applied in one durable transaction.

A terminal state never changes again. Duplicate, late and out-of-order callbacks are stored for
audit with their outcome and change nothing, so each job announces each state at most once.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from service.events import Publisher
from service.models import Job, JobStatus, ProviderUpdate, event_type_for
from service.storage import jobs
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
