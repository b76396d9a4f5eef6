"""Retention: events, delivery attempts and raw callbacks (unmatched account-webhook documents
too) older than ``REELHOOK_RETENTION`` are deleted in the background, in small batches, and the
WAL is truncated after each pass.

Jobs and subscriptions are kept. A delivery still pending or in flight is never deleted, nor its
event, nor its attempts, however old. Between passes the task sleeps until the oldest row it kept
for being too young comes of age (at least a minute, so steady traffic is pruned in batches, not
row by row).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiosqlite
import anyio

from service.core.clock import Clock
from service.core.worker import Wakeup, run_worker
from service.ops.metrics import Metrics
from service.storage import retention
from service.storage.database import Database
from service.storage.retention import Batch

log = logging.getLogger(__name__)

MIN_PASS_INTERVAL = 60.0

Pruner = Callable[..., Awaitable[Batch]]
# Events first: pruning an event takes its attempts along, leaving less for the attempts pass.
_PASSES: tuple[Pruner, ...] = (
    retention.prune_events,
    retention.prune_attempts,
    retention.prune_callbacks,
    retention.prune_unmatched,
)


class Retention:
    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        clock: Clock,
        max_age: float,
        batch_size: int = 100,
        pause: float = 0.02,
    ) -> None:
        """``max_age`` seconds (0 keeps everything); ``pause`` seconds between batches, so the
        writer is never held for long. 100 rows a batch keeps each transaction to a few
        milliseconds (about 30 ms at worst on 2 cores with ``synchronous=FULL``)."""
        self._db = db
        self._metrics = metrics
        self._clock = clock
        self._max_age = max_age
        self._batch_size = batch_size
        self._pause = pause
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """Start a pass now instead of at the next due time."""
        self._wakeup.set()

    async def run(self) -> None:
        """Prune until cancelled (returns at once when retention is off)."""
        if self._max_age <= 0:
            return
        await run_worker("retention", self._step, self._wakeup, backoff=MIN_PASS_INTERVAL)

    async def _step(self) -> float:
        next_due = await self.prune(self._clock())
        delay = self._max_age if next_due is None else next_due - self._clock()
        return max(MIN_PASS_INTERVAL, delay)

    async def prune(self, now: float) -> float | None:
        """One pass over every table as of ``now``; return when the next row comes of age
        (None: nothing left to age)."""
        cutoff = now - self._max_age
        totals: dict[str, int] = {}
        young: list[float] = []
        for prune_batch in _PASSES:
            after = 0
            while True:
                async with self._db.transaction() as conn:
                    batch = await _run(prune_batch, conn, cutoff, after, self._batch_size)
                for name, count in batch.deleted.items():
                    totals[name] = totals.get(name, 0) + count
                    self._metrics.pruned.labels(table=name).inc(count)
                after = batch.last
                if batch.finished:
                    if batch.young_at is not None:
                        young.append(batch.young_at)
                    break
                await anyio.sleep(self._pause)
        if any(totals.values()):
            truncated = await self._db.checkpoint()
            log.info(
                "retention pruned %s older than %.0f s%s",
                ", ".join(f"{count} {name}" for name, count in sorted(totals.items())),
                self._max_age,
                "" if truncated else " (WAL busy; truncated at the next pass)",
            )
        return min(young) + self._max_age if young else None


async def _run(
    prune_batch: Pruner, conn: aiosqlite.Connection, cutoff: float, after: int, limit: int
) -> Batch:
    return await prune_batch(conn, cutoff=cutoff, after=after, limit=limit)
