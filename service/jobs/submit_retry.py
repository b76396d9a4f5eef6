"""Whether a refused or unanswered submit is sent to its provider again, and when: a value.

Providers throttle (429), fail (5xx), time out or cannot be reached. Those submits are retried on
``REELHOOK_SUBMIT_RETRY_SCHEDULE`` (a :class:`~service.core.retry.RetrySchedule`) with jitter,
never sooner than the provider's ``Retry-After``, and never past the job's deadline: a retry that
could not happen before it is not scheduled, and the job fails with the provider's refusal.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from service.core.models import Job
from service.core.retry import RetrySchedule
from service.providers.base import Refusal


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Send the job again at ``at`` (epoch seconds)."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Fail the job with ``refusal`` (its message says how many attempts were made, when the
    retries ran out)."""

    refusal: Refusal


Decision = RetryAt | GiveUp


def decide(
    job: Job,
    refusal: Refusal,
    attempts_made: int,
    now: float,
    schedule: RetrySchedule,
    rng: Callable[[], float] = random.random,
) -> Decision:
    """What to do after attempt ``attempts_made`` of ``job`` ended in ``refusal``."""
    if not refusal.retryable:
        return GiveUp(refusal)
    at = schedule.next_attempt_at(
        attempts_made, now, retry_after=refusal.retry_after, deadline=job.deadline_at, rng=rng
    )
    if at is not None:
        return RetryAt(at)
    plural = "s" if attempts_made > 1 else ""
    message = (
        f"{job.provider} did not accept the job after {attempts_made} attempt{plural}: "
        f"{refusal.message}"
    )
    return GiveUp(replace(refusal, message=message))
