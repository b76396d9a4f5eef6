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

A turn is also held back from the background for a foreground transaction that is about to
ask (:meth:`WriteOrder.foreground_pending`): the ingest writer ends its batch's transaction
and, with callbacks queued meanwhile, asks again at once, but a plain release handed the freed
turn to the claim or outcome batch waiting, so nearly every ingest batch under fan-out waited
for one of them (741 of 745 batches in isolation scenario e, docs/performance.md §4). The
held-back turn lasts one pass of the event loop at most and counts against the fair share.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager


class WriteOrder:
    """A lock with two queues; one event loop. Waiters in each queue are served in order."""

    def __init__(self, *, fair_share: int = 4) -> None:
        self._fair_share = fair_share
        self._locked = False
        self._foreground: deque[asyncio.Future[None]] = deque()
        self._background: deque[asyncio.Future[None]] = deque()
        self._passed = 0  # foreground turns in a row taken while a background one waited
        self.overtaken = 0  # for tests and metrics: turns taken ahead of a waiting background one
        self._pending: list[Callable[[], bool]] = []
        self.held_back = 0  # for tests and metrics: freed turns kept for a pending foreground one
        # When a foreground transaction last asked for a turn (time.monotonic()).
        self.foreground_at = -math.inf

    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> tuple[int, int]:
        """(foreground, background) transactions waiting for their turn."""
        return len(self._foreground), len(self._background)

    @contextmanager
    def foreground_pending(self, pending: Callable[[], bool]) -> Iterator[None]:
        """While the block runs, ``pending()`` true says a foreground transaction is about to
        ask for a turn (the ingest writer's, with callbacks queued): a turn freed then is not
        handed to a waiting background transaction, within the fair share. If no foreground
        transaction takes it by the next pass of the event loop, the background one gets it."""
        self._pending.append(pending)
        try:
            yield
        finally:
            self._pending.remove(pending)
            self._resume_background()

    async def acquire(self, *, background: bool = False) -> None:
        if not background:
            self.foreground_at = time.monotonic()
        if not self._locked and not self._foreground:
            if not self._background:
                self._locked = True
                return
            if not background:
                # A turn held back for the foreground (see release): this one takes it.
                self._locked = True
                self._passed += 1
                self.overtaken += 1
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
                if self._passed < self._fair_share and any(p() for p in self._pending):
                    # Held back for the foreground transaction about to ask; it takes the turn
                    # in acquire. Should none ask, the background gets it on the next pass.
                    self._locked = False
                    self.held_back += 1
                    asyncio.get_running_loop().call_soon(self._resume_background)
                    return
                waiter = self._background.popleft()
                if waiter.done():
                    continue
                self._passed = 0
            else:
                self._locked = False
                return
            waiter.set_result(None)  # the lock stays held: it is now the waiter's
            return

    def _resume_background(self) -> None:
        """Hand a turn held back for the foreground to the background when no one took it."""
        while not self._locked and not self._foreground and self._background:
            waiter = self._background.popleft()
            if waiter.done():
                continue
            self._locked = True
            self._passed = 0
            waiter.set_result(None)

    @asynccontextmanager
    async def hold(self, *, background: bool = False) -> AsyncIterator[None]:
        await self.acquire(background=background)
        try:
            yield
        finally:
            self.release()
