"""Awaiting with a deadline whose timer is made only if the awaited work has to wait.

``asyncio.timeout`` makes a timer on the event loop every time (uvloop: a libuv timer started
and closed again) and costs ~3.9 µs of CPU even when what it guards never waits (this costs
~0.4 µs then). A provider's callback body has almost always arrived whole before the route
reads it, so the body read finishes in its first step and that timer was pure cost
(docs/performance-journal.md, "The ingest path's sixth pass"). :func:`within` runs that first
step at once and enters ``asyncio.timeout`` only if the work suspends: the same deadline,
measured from the moment the work first waits, which is the moment it starts (no time passes
on the loop before it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def within(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """``await work`` under ``asyncio.timeout(seconds)`` (``TimeoutError`` when it expires),
    except that no timer is made when ``work`` finishes without waiting."""
    try:
        pending = work.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    except BaseException:
        work.close()
        raise
    async with asyncio.timeout(seconds):
        rest: T = await _Rest(work, pending)
    return rest


class _Rest:
    """The rest of a coroutine that has been stepped once and yielded ``pending``: awaiting this
    drives it as ``await`` would have (``yield from``): what it yields goes to the task, what
    the task sends or throws (a cancellation) goes back into it."""

    __slots__ = ("_pending", "_work")

    def __init__(self, work: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._work = work
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        work, pending = self._work, self._pending
        self._pending = None
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                work.close()
                raise
            except BaseException as exc:
                try:
                    pending = work.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = work.send(sent)
                except StopIteration as done:
                    return done.value
