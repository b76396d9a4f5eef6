"""The one worker loop: a wake-up is never lost, a failing step is logged and tried again."""

from __future__ import annotations

import logging
from functools import partial

import anyio
import anyio.lowlevel
import pytest

from service.core.worker import Step, Wakeup, run_worker, until

pytestmark = pytest.mark.anyio


async def run_until_cancelled(steps: list[str], step_fn: Step, wakeup: Wakeup) -> None:
    # The bound only turns a lost wake-up into a failure instead of a hang.
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_worker, "test worker", step_fn, wakeup, backoff=0.0))
            while "done" not in steps:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()


async def test_a_wakeup_set_while_the_step_runs_is_not_lost() -> None:
    wakeup = Wakeup()
    steps: list[str] = []

    async def step() -> float | None:
        steps.append("done" if steps else "first")
        if len(steps) == 1:
            wakeup.set()  # e.g. a commit announced work while the step was reading
        return None  # sleep until woken

    await run_until_cancelled(steps, step, wakeup)
    assert steps == ["first", "done"]


async def test_a_failing_step_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    wakeup = Wakeup()
    steps: list[str] = []

    async def step() -> float | None:
        steps.append("done" if steps else "first")
        if len(steps) == 1:
            raise RuntimeError("the database hiccuped")
        return None

    with caplog.at_level(logging.ERROR):
        await run_until_cancelled(steps, step, wakeup)
    assert steps == ["first", "done"]
    assert "test worker failed; trying again" in caplog.text


async def test_a_step_asking_for_no_sleep_runs_again_at_once() -> None:
    wakeup = Wakeup()
    steps: list[str] = []

    async def step() -> float | None:
        steps.append("done" if len(steps) == 2 else "more")
        return 0.0

    await run_until_cancelled(steps, step, wakeup)
    assert steps == ["more", "more", "done"]


async def test_a_wakeup_is_used_up_by_the_wait_it_ends() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await wakeup.wait(None)  # returns at once: it was set
    with anyio.move_on_after(0.01) as waited:
        await wakeup.wait(None)
    assert waited.cancelled_caught, "a used wake-up ended a second wait"


def test_until_is_never_negative() -> None:
    assert until(None, 10.0) is None
    assert until(15.0, 10.0) == 5.0
    assert until(5.0, 10.0) == 0.0
