"""The deadline timer: a job with no terminal callback by its deadline becomes ``expired``.

reelhook never asks a provider how a job is doing, so silence is the only sign of a lost job. The
timer sleeps until the earliest deadline of an unfinished job and is woken when a job is stored
(``Work.DEADLINES``), to read the earliest deadline again; it never polls on a fixed tick.
"""

from __future__ import annotations

import logging

import anyio

from service.core.clock import Clock
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
        self._wake = anyio.Event()
        # The deadline the timer sleeps towards; None while no job is unfinished.
        self._target: float | None = None

    def wake(self) -> None:
        """A job was stored: its deadline may be the earliest (subscribed to ``Work.DEADLINES``)."""
        self._wake.set()

    async def run(self) -> None:
        """Expire overdue jobs until cancelled."""
        while True:
            self._wake = anyio.Event()
            if not self._db.is_leader:
                # A singleton: only the leader node expires jobs (docs/scaling.md); look again
                # when leadership may have moved.
                await anyio.sleep(self._db.node_timeout / 4)
                continue
            try:
                if await self._expire_overdue():
                    continue  # a full batch: more may be overdue
                self._target = await jobs.next_deadline(self._db.reader)
            except Exception:
                log.exception("the deadline timer failed; retrying in a second")
                await anyio.sleep(1)
                continue
            timeout = None if self._target is None else max(0.0, self._target - self._clock())
            with anyio.move_on_after(timeout):
                await self._wake.wait()

    async def _expire_overdue(self) -> bool:
        """Expire one batch of overdue jobs; return whether the batch was full."""
        expired = await expire_overdue(self._db, self._publisher, self._clock(), BATCH)
        if expired:
            for job in expired:
                log.info("job %s expired: no terminal callback by its deadline", job.id)
        return len(expired) == BATCH
