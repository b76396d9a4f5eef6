"""The deadline timer: a job with no terminal callback by its deadline becomes ``expired``.

reelhook never asks a provider how a job is doing, so silence is the only sign of a lost job. The
timer sleeps until the earliest deadline of an unfinished job and is woken when a job is stored
(``Work.DEADLINES``), to read the earliest deadline again; it never polls on a fixed tick.
"""

from __future__ import annotations

import logging

from service.core.clock import Clock
from service.core.worker import Wakeup, run_worker, until
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import expire_overdue
from service.storage import jobs
from service.storage.database import Database

log = logging.getLogger(__name__)

BATCH = 200  # jobs expired per transaction, so a long outage does not hold the writer for long


class DeadlineTimer:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        *,
        clock: Clock,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._clock = clock
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """A job was stored: its deadline may be the earliest (subscribed to ``Work.DEADLINES``)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Expire overdue jobs until cancelled."""
        await run_worker("the deadline timer", self._step, self._wakeup)

    async def _step(self) -> float | None:
        if not self._db.is_leader:
            # A singleton: only the leader node expires jobs (docs/scaling.md); look again when
            # leadership may have moved.
            return self._db.node_timeout / 4
        if await self._expire_overdue():
            return 0  # a full batch: more may be overdue
        return until(await jobs.next_deadline(self._db.reader), self._clock())

    async def _expire_overdue(self) -> bool:
        """Expire one batch of overdue jobs; return whether the batch was full."""
        expired = await expire_overdue(self._db, self._publisher, self._clock(), BATCH)
        if expired:
            for job in expired:
                log.info("job %s expired: no terminal callback by its deadline", job.id)
        return len(expired) == BATCH
