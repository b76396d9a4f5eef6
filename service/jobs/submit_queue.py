"""Claim and attempt: the worker that takes due provider submits from the store and makes them.

Both kinds of submit run on it: the retries of callback providers' submits
(:mod:`service.jobs.submission`) and Segmind's held requests (:mod:`service.jobs.held_requests`).
It sleeps until the earliest due submit or a ``Work.SUBMITS`` wake-up, claims what is due (up to
its concurrency) in one transaction, runs ``attempt`` for each claimed job in its own task, and
is woken again when one ends. A wake-up with nothing due costs one read, never the write lock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.abc

from service.core.clock import Clock
from service.core.models import Job
from service.core.worker import Wakeup, run_worker, until
from service.storage.database import Connection, Database

log = logging.getLogger(__name__)

#: Claims up to ``limit`` due jobs as of ``now`` inside a write transaction: (job, attempt number).
Claim = Callable[[Connection, float, int], Awaitable[list[tuple[Job, int]]]]
#: When the earliest job ``Claim`` would take is due (None: none is waiting).
NextDue = Callable[[Connection], Awaitable[float | None]]
Attempt = Callable[[Job, int], Awaitable[None]]


class SubmitQueue:
    def __init__(
        self,
        db: Database,
        *,
        clock: Clock,
        name: str,
        claim: Claim,
        next_due: NextDue,
        attempt: Attempt,
        concurrency: int,
    ) -> None:
        self._db = db
        self._clock = clock
        self._name = name
        self._claim = claim
        self._next_due = next_due
        self._attempt = attempt
        self._concurrency = concurrency
        self._running = 0
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """A submit may be due sooner than the worker sleeps (``Work.SUBMITS``)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and attempt due submits until cancelled."""
        async with anyio.create_task_group() as tg:
            await run_worker(self._name, partial(self._step, tg), self._wakeup)

    async def _step(self, tg: anyio.abc.TaskGroup) -> float | None:
        capacity = self._concurrency - self._running
        due = await self._next_due(self._db.reader)
        now = self._clock()
        if capacity > 0 and due is not None and due <= now:
            async with self._db.transaction() as conn:
                claimed = await self._claim(conn, now, capacity)
            for job, number in claimed:
                self._running += 1
                tg.start_soon(self._run_attempt, job, number)
            due = await self._next_due(self._db.reader)
        now = self._clock()
        if due is not None and due <= now and self._running >= self._concurrency:
            return None  # every slot is busy: a finishing attempt wakes us
        return until(due, now)

    async def _run_attempt(self, job: Job, number: int) -> None:
        try:
            await self._attempt(job, number)
        except Exception:
            log.exception(
                "%s: attempt %d of job %s failed unexpectedly", self._name, number, job.id
            )
        finally:
            self._running -= 1
            self._wakeup.set()
