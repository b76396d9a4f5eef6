"""A per-API-key request rate limit: a token bucket per key, kept in memory.

Memory holds one small entry per key that has made a request, and keys are created by admins, so
the table stays small. The limit is per process; with several reelhook nodes each enforces its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """``rate`` requests per second per key on average, with bursts of up to ``burst``.

    A ``rate`` of 0 turns the limit off. ``clock`` is monotonic seconds (injectable for tests).
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s allowance: 0.0 when allowed, otherwise the seconds until
        the next request would be (nothing is spent then)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (its key was revoked)."""
        self._buckets.pop(key, None)
