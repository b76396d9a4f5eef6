"""The loop every background worker runs: a step, then sleep until it is due again or woken.

A worker's step does what is due and says how long to sleep: seconds, 0 to run again at once, or
None to sleep until woken. A :class:`Wakeup` set while the step runs is not lost: the sleep after
it ends at once. A failing step is logged and retried after ``backoff`` seconds, doubling with
each failure in a row up to ``max_backoff`` (:class:`Backoff`), so one bad row or a database
hiccup never ends a worker, and a failure it cannot even record (a full disk) does not become a
hot loop of retries and tracebacks. Nothing polls on a fixed tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[float | None]]


class Wakeup:
    """A level-triggered wake-up: :meth:`set` (cheap, from anywhere on the event loop) makes the
    current or the next :meth:`wait` return.

    Plain asyncio (an ``asyncio.Event`` and one timer handle per sleep): the dispatcher and its
    outcome recorder wait on one of these between batches, and anyio's ``Event`` (which asks
    sniffio for the backend on every creation) and ``move_on_after`` (a cancel scope) cost
    several times more per wake-up (docs/performance.md §4)."""

    def __init__(self) -> None:
        self._set = False
        # Created only while someone waits, so a Wakeup is bound to no event loop.
        self._event: asyncio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self, delay: float | None) -> None:
        """Return once set (since the last wait returned) or after ``delay`` seconds (None: no
        limit); either way the wake-up is used up."""
        try:
            if self._set or (delay is not None and delay <= 0):
                # Still a checkpoint: a worker with work at once must let other tasks run.
                await asyncio.sleep(0)
                return
            event = self._event = asyncio.Event()
            timer = (
                None if delay is None else asyncio.get_running_loop().call_later(delay, event.set)
            )
            try:
                await event.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            self._set = False
            self._event = None


class Backoff:
    """Delays after failures in a row: ``first``, then doubling up to ``most``; a success
    (:meth:`reset`) starts again from ``first``."""

    def __init__(self, first: float, most: float = 60.0) -> None:
        self._first = first
        self._most = max(first, most)
        self._next = first
        self.failures = 0

    def next(self) -> float:
        """The delay after one more failure."""
        delay = self._next
        self._next = min(self._most, max(self._next * 2, 0.0))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self._next = self._first
        self.failures = 0


async def run_worker(
    name: str, step: Step, wakeup: Wakeup, *, backoff: float = 1.0, max_backoff: float = 60.0
) -> NoReturn:
    """Run ``step`` until cancelled, sleeping as it asks between runs (see the module docstring)."""
    delays = Backoff(backoff, max_backoff)
    while True:
        try:
            delay = await step()
        except Exception:
            wait = delays.next()
            if delays.failures == 1 or wait >= max_backoff:
                log.exception("%s failed; trying again in %g s", name, wait)
            else:
                # The traceback was logged with the first failure; the rest are one line each.
                log.error(
                    "%s failed again (%d in a row); trying again in %g s",
                    name,
                    delays.failures,
                    wait,
                )
            await anyio.sleep(wait)
            continue
        delays.reset()
        await wakeup.wait(delay)


def until(due: float | None, now: float) -> float | None:
    """Seconds from ``now`` to ``due`` (never negative); None when nothing is due."""
    return None if due is None else max(0.0, due - now)
