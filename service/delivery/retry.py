"""When to try a failed delivery again: a schedule with jitter, back-off floors and Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``schedule[n]`` is the delay in seconds before attempt ``n + 1`` (``schedule[0]`` before the
    first). Each retry delay gets ±``jitter`` (a fraction); after a timeout or a 429 it is at least
    ``overload_floor``; a ``Retry-After`` lengthens it up to the longest scheduled delay.
    """

    schedule: tuple[float, ...]
    jitter: float = 0.2
    overload_floor: float = 60.0

    def next_attempt_at(
        self,
        attempts_made: int,
        now: float,
        *,
        overloaded: bool = False,
        retry_after: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """When to make attempt ``attempts_made + 1``, or None when the schedule is exhausted."""
        if attempts_made >= len(self.schedule):
            return None
        delay = self.schedule[attempts_made] * (1 + self.jitter * (2 * rng() - 1))
        if overloaded:
            delay = max(delay, self.overload_floor)
        if retry_after is not None:
            delay = max(delay, min(retry_after, max(self.schedule)))
        return now + delay
