"""A per-API-key request rate limit: a token bucket per key, kept in memory.

Memory holds one small entry per key that has made a request, and keys are created by admins, so
the table stays small. :class:`RateLimiter` is per process (SQLite: one process); several nodes on
PostgreSQL share one bucket per key through :class:`SharedRateLimiter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from service.storage import ratelimits
from service.storage.database import Database


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

    async def acquire(self, key: str) -> float:
        """:meth:`take`, in the form every limiter offers (see :class:`SharedRateLimiter`)."""
        return self.take(key)


class SharedRateLimiter:
    """The per-key limit of :class:`RateLimiter` for several nodes on PostgreSQL: one token
    bucket per key in the database (table ``rate_buckets``, the database's clock), so a key gets
    about ``rate`` requests per second in total however many nodes serve it, not N times that.

    Each node takes up to ``chunk`` tokens per round trip and spends them locally, so the shared
    row is written once per ``chunk`` requests; at most ``chunk`` tokens per node are held back
    (docs/scaling.md). Refused requests are told when a whole token will have accrued.
    """

    def __init__(self, db: Database, rate: float, burst: float, chunk: int | None = None) -> None:
        self._db = db
        self._rate = rate
        self._burst = max(burst, 1.0)
        # A tenth of a second's worth per trip, at least one, never more than a burst.
        self._chunk = chunk or max(1, min(int(rate / 10), int(self._burst)))
        self._local: dict[str, int] = {}
        self._trips: dict[str, anyio.Lock] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    async def acquire(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        if self._spend_local(key):
            return 0.0
        # One trip to the database per key at a time: requests arriving meanwhile spend the
        # chunk it brings instead of each taking one (and being refused once the bucket is dry).
        async with self._trips.setdefault(key, anyio.Lock()):
            if self._spend_local(key):
                return 0.0
            async with self._db.transaction(durable=False) as conn:
                granted, tokens = await ratelimits.take(
                    conn, key, want=self._chunk, rate=self._rate, burst=self._burst
                )
        if granted == 0:
            return (1.0 - tokens) / self._rate
        self._local[key] = self._local.get(key, 0) + granted - 1
        return 0.0

    def _spend_local(self, key: str) -> bool:
        if self._local.get(key, 0) > 0:
            self._local[key] -= 1
            return True
        return False

    def forget(self, key: str) -> None:
        self._local.pop(key, None)
        self._trips.pop(key, None)


Limiter = RateLimiter | SharedRateLimiter
