"""``clock.isoformat``: the text ``datetime`` gives, built faster (docs/performance.md §4)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from service.core.clock import isoformat


def _datetime_text(timestamp: float) -> str:
    """What isoformat returned when it went through datetime for every call."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    "timestamp",
    [
        0,
        0.0,
        1,
        -1,
        -0.5,
        -1.5,
        -0.0000005,
        0.0000005,
        0.0000015,
        1.9999995,  # rounds up into the next second
        1.9999994999,
        1764950000.9995,
        1764950000.9999995,
        253402300799.999,  # the last second datetime can show
        -62135596800.0,  # the first
    ],
)
def test_edges_read_as_datetime_reads_them(timestamp: float) -> None:
    assert isoformat(timestamp) == _datetime_text(timestamp)


def test_random_timestamps_read_as_datetime_reads_them() -> None:
    rnd = random.Random(16)
    for _ in range(20_000):
        for timestamp in (
            rnd.uniform(-2e9, 4e9),
            round(rnd.uniform(1.7e9, 1.8e9), rnd.randint(0, 7)),
            float(rnd.randint(0, 2**34)) + 0.5e-6 * rnd.randint(0, 2_000_000),
        ):
            assert isoformat(timestamp) == _datetime_text(timestamp), timestamp


def test_none_and_out_of_range() -> None:
    assert isoformat(None) is None
    with pytest.raises((ValueError, OverflowError, OSError)):
        isoformat(1e20)
