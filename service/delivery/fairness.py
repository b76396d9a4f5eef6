"""Fair sharing of the dispatcher's outbound capacity: a subscriber that times out loses its claim
on it (docs/architecture.md, "Fair sharing of outbound capacity").

Each subscription sends through a *lane* whose width is how many of its deliveries may be in
flight at once. A lane starts at the full ``per_subscription`` width. An attempt that times out
narrows it to one and puts the subscription *on probation*: its one attempt at a time then also
needs a slot of a small shared probation pool (a quarter of the send pool), and it may have only
one delivery claimed. A success widens the lane again, doubling up to the full width, and ends
the probation. So however many subscribers hang, they hold at most a quarter of the send slots
(and of the claims) once each has timed out once, and healthy subscriptions keep the rest.

The widths live in memory: after a restart every subscription starts at full width again, which
costs one timeout per hanging subscriber before it is narrowed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class _Lane:
    """A FIFO semaphore whose width can change while deliveries wait in it."""

    __slots__ = ("active", "waiters", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.active < self.width and not self.waiters:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted, then cancelled before it could be used
            elif waiter in self.waiters:  # wake() may have dropped it already
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        while self.waiters and self.active < self.width:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiters


class Lanes:
    """The per-subscription lanes and the probation pool of one dispatcher (one event loop)."""

    def __init__(self, *, per_subscription: int, concurrency: int) -> None:
        self._full = per_subscription
        # Only lanes in use are kept; widths only of subscriptions below full width.
        self._lanes: dict[str, _Lane] = {}
        self._narrowed: dict[str, int] = {}
        self.probation_slots = max(1, concurrency // 4)
        self._probation = asyncio.Semaphore(self.probation_slots)

    def width(self, subscription_id: str) -> int:
        """How many of the subscription's deliveries may be in flight at once now."""
        return self._narrowed.get(subscription_id, self._full)

    def over_width(self, subscription_id: str) -> bool:
        """Whether more of the subscription's deliveries hold lane slots than its width now
        allows (it was narrowed after they got them)."""
        lane = self._lanes.get(subscription_id)
        return lane is not None and lane.active > lane.width

    def on_probation(self, subscription_id: str) -> bool:
        """Whether the subscription's last attempt timed out (and none has succeeded since)."""
        return self._narrowed.get(subscription_id) == 1

    @property
    def on_probation_ids(self) -> list[str]:
        return [sub for sub, width in self._narrowed.items() if width == 1]

    @asynccontextmanager
    async def slot(self, subscription_id: str) -> AsyncIterator[None]:
        """Hold one of the subscription's lane slots (and a probation slot if it is on
        probation) for one attempt."""
        probation = await self.acquire(subscription_id)
        try:
            yield
        finally:
            self.release(subscription_id, probation)

    async def acquire(self, subscription_id: str) -> bool:
        """Take one of the subscription's lane slots (and a probation slot if it is on
        probation); return whether a probation slot was taken, for :meth:`release`. What
        :meth:`slot` does, without a context manager's generator per attempt on the
        dispatcher's per-delivery path (docs/performance.md §4)."""
        lane = self._lanes.get(subscription_id)
        if lane is None:
            lane = self._lanes[subscription_id] = _Lane(self.width(subscription_id))
        await lane.acquire()
        if self._narrowed.get(subscription_id) != 1:
            return False
        try:
            await self._probation.acquire()
        except BaseException:
            self._release_lane(subscription_id, lane)
            raise
        return True

    def release(self, subscription_id: str, probation: bool) -> None:
        """Give back what :meth:`acquire` took."""
        if probation:
            self._probation.release()
        self._release_lane(subscription_id, self._lanes[subscription_id])

    def _release_lane(self, subscription_id: str, lane: _Lane) -> None:
        lane.release()
        if lane.idle:
            del self._lanes[subscription_id]

    def observe(self, subscription_id: str, *, succeeded: bool, timed_out: bool) -> None:
        """Adapt the lane to an attempt's outcome: a timeout narrows it to one, a success
        doubles it back towards full width; other failures (a quick 500) change nothing."""
        if timed_out:
            self._set_width(subscription_id, 1)
        elif succeeded and subscription_id in self._narrowed:
            self._set_width(subscription_id, min(self._full, 2 * self._narrowed[subscription_id]))

    def _set_width(self, subscription_id: str, width: int) -> None:
        if width >= self._full:
            self._narrowed.pop(subscription_id, None)
        else:
            self._narrowed[subscription_id] = width
        lane = self._lanes.get(subscription_id)
        if lane is not None:
            lane.width = width
            lane.wake()
