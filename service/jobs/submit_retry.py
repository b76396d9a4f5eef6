"""When to send a refused or unanswered submit to its provider again.

Providers throttle (429), fail (5xx), time out or cannot be reached. Those submits are retried on
``REELHOOK_SUBMIT_RETRY_SCHEDULE`` with jitter, never sooner than the provider's ``Retry-After``,
and never past the job's deadline: a retry that could not happen before it is not scheduled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubmitRetryPolicy:
    """``schedule[n]`` is the delay in seconds before resubmission ``n + 1``; its length is the
    retry budget. Each delay gets ±``jitter`` (a fraction) so that jobs refused together by one
    outage do not all come back at the same instant."""

    schedule: tuple[float, ...]
    jitter: float = 0.2

    @property
    def attempts(self) -> int:
        """How many submit attempts a job gets in all (the first one and every retry)."""
        return 1 + len(self.schedule)

    def next_attempt_at(
        self,
        attempts_made: int,
        now: float,
        *,
        deadline: float,
        retry_after: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """When to make attempt ``attempts_made + 1``; None when the budget is spent or the attempt
        could not be made before ``deadline``."""
        if not 1 <= attempts_made <= len(self.schedule):
            return None
        delay = self.schedule[attempts_made - 1] * (1 + self.jitter * (2 * rng() - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        due = now + delay
        return due if due < deadline else None
