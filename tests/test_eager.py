"""``within``: a deadline whose timer is made only if the awaited work has to wait."""

from __future__ import annotations

import asyncio

import pytest

from service.core.eager import within

pytestmark = pytest.mark.anyio


class _Timers:
    """Counts the timers the running loop makes (``call_at``, which ``asyncio.timeout`` uses)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made = 0
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counting(*args: object, **kwargs: object) -> asyncio.TimerHandle:
            self.made += 1
            return call_at(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "call_at", counting)


async def test_work_that_never_waits_is_answered_without_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = _Timers(monkeypatch)

    async def ready() -> bytes:
        return b"whole body"

    assert await within(ready(), 30) == b"whole body"
    assert timers.made == 0


async def test_work_that_waits_gets_its_result_under_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = _Timers(monkeypatch)
    arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def later() -> bytes:
        first = await arrived
        await asyncio.sleep(0)  # a bare yield, as well as a future
        return first + b" and the rest"

    asyncio.get_running_loop().call_soon(arrived.set_result, b"the start")
    assert await within(later(), 30) == b"the start and the rest"
    assert timers.made == 1


async def test_work_that_waits_too_long_times_out_and_is_closed() -> None:
    closed = asyncio.Event()

    async def never() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            closed.set()

    with pytest.raises(TimeoutError):
        await within(never(), 0.01)
    assert closed.is_set()


async def test_errors_come_out_as_they_would_from_await() -> None:
    async def fails_at_once() -> None:
        raise ValueError("refused before waiting")

    async def fails_after_waiting() -> None:
        await asyncio.sleep(0)
        raise KeyError("refused after waiting")

    with pytest.raises(ValueError, match="refused before waiting"):
        await within(fails_at_once(), 30)
    with pytest.raises(KeyError, match="refused after waiting"):
        await within(fails_after_waiting(), 30)


async def test_a_cancelled_caller_cancels_the_work_and_is_not_a_timeout() -> None:
    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.ensure_future(within(waits(), 30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


async def test_work_may_handle_what_is_thrown_in_and_go_on() -> None:
    async def recovers() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "gave up waiting"
        return "waited"

    task = asyncio.ensure_future(within(recovers(), 30))
    await asyncio.sleep(0)
    task.cancel()
    # The work swallowed the cancellation and returned; as with ``await``, that is its answer.
    assert await task == "gave up waiting"
