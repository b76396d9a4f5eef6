"""Claim and attempt: the worker that takes due provider submits from the store and makes them.

Both kinds of submit run on it: the retries of callback providers' submits
(:mod:`service.jobs.submission`) and Segmind's held requests (:mod:`service.jobs.held_requests`).
It sleeps until the earliest due submit or a ``Work.SUBMITS`` wake-up, claims what is due (up to
its concurrency) in one transaction, runs ``attempt`` for each claimed job in its own task, and
is woken again when one ends. A wake-up with nothing due costs one read, never the write lock.

Claims are owned by this node and fenced (:mod:`service.storage.submissions`): the queue knows
which jobs it is attempting (:meth:`SubmitQueue.attempting`, the first attempt made as a job is
created included), and never claims one of them again, even once its lease has run out: a slow
provider answer must not lead to the request being sent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from functools import partial

import anyio
import anyio.abc

from service.core.clock import Clock
from service.core.worker import Wakeup, run_worker, until
from service.storage.database import Connection, Database
from service.storage.submissions import SubmitClaim

log = logging.getLogger(__name__)

#: Claims up to ``limit`` due jobs as of ``now`` inside a write transaction, leaving out the jobs
#: this node is attempting (the last argument).
Claim = Callable[[Connection, float, int, Collection[str]], Awaitable[list[SubmitClaim]]]
#: When the earliest job ``Claim`` would take is due (None: none is waiting), leaving out the
#: jobs this node is attempting.
NextDue = Callable[[Connection, Collection[str]], Awaitable[float | None]]
Attempt = Callable[[SubmitClaim], Awaitable[None]]


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
        self._attempting: set[str] = set()
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """A submit may be due sooner than the worker sleeps (``Work.SUBMITS``)."""
        self._wakeup.set()

    @contextmanager
    def attempting(self, job_id: str) -> Iterator[None]:
        """Within the block this node attempts ``job_id``'s submit (outside the queue, as the
        first attempt is made when the job is created): the queue does not claim it."""
        self._attempting.add(job_id)
        try:
            yield
        finally:
            self._attempting.discard(job_id)
            self._wakeup.set()  # its lease may be due: claimable again

    async def run(self) -> None:
        """Claim and attempt due submits until cancelled."""
        async with anyio.create_task_group() as tg:
            await run_worker(self._name, partial(self._step, tg), self._wakeup)

    async def _step(self, tg: anyio.abc.TaskGroup) -> float | None:
        capacity = self._concurrency - self._running
        due = await self._next_due(self._db.reader, set(self._attempting))
        now = self._clock()
        if capacity > 0 and due is not None and due <= now:
            async with self._db.transaction() as conn:
                claimed = await self._claim(conn, now, capacity, set(self._attempting))
            for claim in claimed:
                self._running += 1
                self._attempting.add(claim.job.id)
                tg.start_soon(self._run_attempt, claim)
            due = await self._next_due(self._db.reader, set(self._attempting))
        now = self._clock()
        if due is not None and due <= now and self._running >= self._concurrency:
            return None  # every slot is busy: a finishing attempt wakes us
        return until(due, now)

    async def _run_attempt(self, claim: SubmitClaim) -> None:
        try:
            await self._attempt(claim)
        except Exception:
            log.exception(
                "%s: attempt %d of job %s failed unexpectedly",
                self._name,
                claim.attempt,
                claim.job.id,
            )
        finally:
            self._running -= 1
            # Settled, or left to be claimed again once its lease runs out.
            self._attempting.discard(claim.job.id)
            self._wakeup.set()
