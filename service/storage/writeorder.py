"""The order in which one node's write transactions take their turn: background ones last.

Within a node write transactions run one at a time (on SQLite there is one writer; on
PostgreSQL the node keeps its in-process order, see docs/scaling.md). With a plain FIFO lock a
callback's commit, which a provider is waiting on, queued behind every claim and outcome batch
the dispatcher had asked for before it. Here the dispatcher's bookkeeping is *background*: it
takes its turn only when no other transaction waits, so the ingest batch (and any transaction a
request waits on) waits at most for the transaction in progress (docs/architecture.md,
"Isolation of the hot path"). Foreground transactions keep their FIFO order among themselves:
a job's submission and the provider's callback for it commit in the order they asked.

So that the foreground cannot starve the background, a waiting background transaction goes
next after ``fair_share`` foreground ones in a row have passed it.
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
        self._foreground: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self._passed = 0  # foreground turns in a row taken while a background one waited
        self.overtaken = 0  # for tests and metrics: turns taken ahead of a waiting background one

    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> tuple[int, int]:
        """(foreground, background) transactions waiting for their turn."""
        return len(self._foreground), len(self._background)

    async def acquire(self, *, background: bool = False) -> None:
        if not self._locked and not self._foreground and not self._background:
            self._locked = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._background if background else self._foreground
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
        """Hand the turn to the next waiter (foreground first, within the fair share), or
        unlock."""
        if not self._locked:
            raise RuntimeError("release of an unlocked WriteOrder")
        while True:
            if self._foreground and (not self._background or self._passed < self._fair_share):
                waiter = self._foreground.popleft()
                if waiter.done():
                    continue  # cancelled while waiting
                if self._background:
                    self._passed += 1
                    self.overtaken += 1
                else:
                    self._passed = 0
            elif self._background:
                waiter = self._background.popleft()
                if waiter.done():
                    continue
                self._passed = 0
            else:
                self._locked = False
                return
            waiter.set_result(None)  # the lock stays held: it is now the waiter's
            return

    @asynccontextmanager
    async def hold(self, *, background: bool = False) -> AsyncIterator[None]:
        await self.acquire(background=background)
        try:
            yield
        finally:
            self.release()
