"""When to try again: one retry schedule for deliveries, provider submits and output downloads.

One index convention everywhere: ``schedule[n]`` is the wait in seconds before attempt ``n + 1``,
so ``schedule[0]`` comes before the first attempt (0 for work that starts at once) and
``len(schedule)`` is the number of attempts in all. After ``attempts_made`` attempts, the next one
waits ``schedule[attempts_made]``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Each wait gets ±``jitter`` (a fraction) so that work refused together by one outage does
    not all come back at the same instant. After an overload (a timeout or a 429) the wait is at
    least ``overload_floor``; a ``Retry-After`` lengthens it, up to ``retry_after_cap`` when one is
    set. No attempt is scheduled at or after a ``deadline``."""

    schedule: tuple[float, ...]
    jitter: float = 0.2
    overload_floor: float = 0.0
    retry_after_cap: float | None = None

    @classmethod
    def for_deliveries(
        cls, schedule: Sequence[float], *, jitter: float = 0.2, overload_floor: float = 60.0
    ) -> RetrySchedule:
        """``REELHOOK_RETRY_SCHEDULE``: its first entry delays the first attempt; a subscriber's
        ``Retry-After`` is obeyed up to the longest scheduled wait."""
        return cls(
            tuple(schedule),
            jitter=jitter,
            overload_floor=overload_floor,
            retry_after_cap=max(schedule, default=0.0),
        )

    @classmethod
    def for_retries(cls, delays: Sequence[float], *, jitter: float = 0.2) -> RetrySchedule:
        """A first attempt made at once, then one retry after each of ``delays`` (e.g.
        ``REELHOOK_SUBMIT_RETRY_SCHEDULE``); a provider's ``Retry-After`` is a floor."""
        return cls((0.0, *delays), jitter=jitter)

    @property
    def attempts(self) -> int:
        """How many attempts there are in all (the first one and every retry)."""
        return len(self.schedule)

    def next_attempt_at(
        self,
        attempts_made: int,
        now: float,
        *,
        overloaded: bool = False,
        retry_after: float | None = None,
        deadline: float = math.inf,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """When to make attempt ``attempts_made + 1``; None when the schedule is spent or the
        attempt could not be made before ``deadline``."""
        if not 0 <= attempts_made < len(self.schedule):
            return None
        delay = self.schedule[attempts_made] * (1 + self.jitter * (2 * rng() - 1))
        if overloaded:
            delay = max(delay, self.overload_floor)
        if retry_after is not None:
            cap = self.retry_after_cap
            delay = max(delay, retry_after if cap is None else min(retry_after, cap))
        due = now + delay
        return due if due < deadline else None
