"""Time as reelhook sees it: an injectable clock so schedules can be tested without sleeping."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds since the Unix epoch."""
        ...


def system_clock() -> float:
    return time.time()


def isoformat(timestamp: float | None) -> str | None:
    """Format epoch seconds as ISO-8601 UTC with millisecond precision, or None.

    The same text as ``datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")``
    with ``Z`` for ``+00:00`` (``tests/test_clock.py`` compares them), built from the whole second,
    which is formatted once and remembered, and the milliseconds: a job document formats three
    times, ~5 µs each through ``datetime``, on every callback that moves a job
    (docs/performance.md §4).
    """
    if timestamp is None:
        return None
    # datetime's own split (CPython's _PyTime_DoubleToDenominator, half-even): microseconds
    # rounded, carried into the second, then truncated to milliseconds by isoformat.
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        micros -= 1_000_000
        second += 1
    elif micros < 0:
        micros += 1_000_000
        second -= 1
    return f"{_second(second)}.{micros // 1000:03d}Z"


@lru_cache(maxsize=1024)
def _second(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole epoch second (a pure function, remembered: timestamps
    written together fall in few seconds)."""
    return datetime.fromtimestamp(second, UTC).isoformat().removesuffix("+00:00")
