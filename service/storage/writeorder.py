"""The order in which one node's write transactions take their turn: urgent ones first.

Within a node write transactions run one at a time (on SQLite there is one writer; on
PostgreSQL the node keeps its in-process order, see docs/scaling.md). With a plain FIFO lock a
callback's commit, which a provider is waiting on, queued behind every claim and outcome batch
the dispatcher had asked for before it. Here a transaction marked *urgent* (the ingest batch, see
:mod:`service.jobs.ingest`) goes before every waiting non-urgent one, so its wait is at most the
transaction in progress (docs/architecture.md, "Isolation of the hot path").

So that urgent work cannot starve the rest, a waiting non-urgent transaction goes next after
``fair_share`` urgent ones in a row have passed it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WriteOrder:
    """A lock with two queues; one event loop. Waiters in each queue are served in order."""

    def __init__(self, *, fair_share: int = 4) -> None:
        self._fair_share = fair_share
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()
        self._passed = 0  # urgent turns in a row taken while a non-urgent one waited
        self.urgent_turns = 0  # for tests and metrics: turns given to urgent waiters
        self.overtaken = 0  # turns an urgent waiter took ahead of an earlier non-urgent one

    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> tuple[int, int]:
        """(urgent, non-urgent) transactions waiting for their turn."""
        return len(self._urgent), len(self._normal)

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._locked and not self._urgent and not self._normal:
            self._locked = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it could be used: pass it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the turn to the next waiter (urgent first, within the fair share), or unlock."""
        if not self._locked:
            raise RuntimeError("release of an unlocked WriteOrder")
        while True:
            if self._urgent and (not self._normal or self._passed < self._fair_share):
                waiter = self._urgent.popleft()
                if waiter.done():
                    continue  # cancelled while waiting
                if self._normal:
                    self._passed += 1
                    self.overtaken += 1
                else:
                    self._passed = 0
                self.urgent_turns += 1
            elif self._normal:
                waiter = self._normal.popleft()
                if waiter.done():
                    continue
                self._passed = 0
            else:
                self._locked = False
                return
            waiter.set_result(None)  # the lock stays held: it is now the waiter's
            return

    @asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()
