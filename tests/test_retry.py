"""The delivery retry schedule (schedule, jitter, back-off floor, Retry-After) and Retry-After
parsing, pure."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from service.core.retry import RetrySchedule
from service.providers.base import parse_retry_after

NOW = 1_700_000_000.0
RetryPolicy = RetrySchedule.for_deliveries
SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


def exact() -> float:
    """The rng value that gives no jitter at all: 1 + 0.2 * (2 * 0.5 - 1) == 1."""
    return 0.5


def lowest() -> float:
    return 0.0


def highest() -> float:
    return 1.0


def delay(
    policy: RetrySchedule,
    attempts_made: int,
    *,
    overloaded: bool = False,
    retry_after: float | None = None,
    rng: float = 0.5,
) -> float:
    at = policy.next_attempt_at(
        attempts_made, NOW, overloaded=overloaded, retry_after=retry_after, rng=lambda: rng
    )
    assert at is not None, f"attempt {attempts_made + 1} should still be scheduled"
    return at - NOW


@pytest.mark.parametrize("attempts_made", range(len(SCHEDULE)))
def test_attempts_made_indexes_the_schedule(attempts_made: int) -> None:
    """``schedule[n]`` is the wait before attempt n + 1, so after one attempt it is schedule[1]."""
    policy = RetryPolicy(SCHEDULE)
    at = policy.next_attempt_at(attempts_made, NOW, rng=exact)
    assert at == pytest.approx(NOW + SCHEDULE[attempts_made])


def test_the_first_retry_after_one_attempt_uses_the_second_entry() -> None:
    policy = RetryPolicy((0.0, 7.0, 11.0))
    assert policy.next_attempt_at(1, NOW, rng=exact) == pytest.approx(NOW + 7.0)
    assert policy.next_attempt_at(2, NOW, rng=exact) == pytest.approx(NOW + 11.0)


@pytest.mark.parametrize("attempts_made", [1, 2, 3])
def test_jitter_stays_within_twenty_percent(attempts_made: int) -> None:
    policy = RetryPolicy(SCHEDULE, jitter=0.2)
    scheduled = SCHEDULE[attempts_made]
    assert delay(policy, attempts_made, rng=0.0) == pytest.approx(0.8 * scheduled)
    assert delay(policy, attempts_made, rng=1.0) == pytest.approx(1.2 * scheduled)
    assert delay(policy, attempts_made, rng=0.5) == pytest.approx(scheduled)
    assert 0.8 * scheduled <= delay(policy, attempts_made, rng=0.25) < scheduled
    assert scheduled < delay(policy, attempts_made, rng=0.75) <= 1.2 * scheduled


def test_jitter_never_makes_an_immediate_attempt_negative() -> None:
    policy = RetryPolicy(SCHEDULE)
    for rng in (lowest, exact, highest):
        assert policy.next_attempt_at(0, NOW, rng=rng) == pytest.approx(NOW)


@pytest.mark.parametrize("schedule", [(0.0,), (0.0, 0.2, 0.2), SCHEDULE])
def test_an_exhausted_schedule_gives_up(schedule: tuple[float, ...]) -> None:
    policy = RetryPolicy(schedule)
    assert policy.next_attempt_at(len(schedule) - 1, NOW, rng=exact) is not None
    assert policy.next_attempt_at(len(schedule), NOW, rng=exact) is None
    assert policy.next_attempt_at(len(schedule) + 5, NOW, rng=exact) is None


def test_exhaustion_wins_over_overload_and_retry_after() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert policy.next_attempt_at(len(SCHEDULE), NOW, overloaded=True, retry_after=10.0) is None


@pytest.mark.parametrize("rng", [0.0, 0.5, 1.0])
def test_overload_waits_at_least_the_floor(rng: float) -> None:
    policy = RetryPolicy(SCHEDULE, overload_floor=60.0)
    assert delay(policy, 1, overloaded=True, rng=rng) == pytest.approx(60.0)
    assert delay(policy, 0, overloaded=True, rng=rng) == pytest.approx(60.0)


def test_overload_floor_does_not_shorten_a_longer_scheduled_delay() -> None:
    policy = RetryPolicy(SCHEDULE, overload_floor=60.0)
    assert delay(policy, 2, overloaded=True) == pytest.approx(300.0)
    assert delay(policy, 2, overloaded=True, rng=0.0) == pytest.approx(240.0)


def test_without_overload_the_floor_does_not_apply() -> None:
    policy = RetryPolicy(SCHEDULE, overload_floor=60.0)
    assert delay(policy, 1) == pytest.approx(5.0)


def test_retry_after_lengthens_the_delay() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert delay(policy, 1, retry_after=100.0) == pytest.approx(100.0)
    assert delay(policy, 1, retry_after=100.0, rng=1.0) == pytest.approx(100.0)


def test_retry_after_is_capped_at_the_longest_scheduled_delay() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert delay(policy, 1, retry_after=10 * 86400.0) == pytest.approx(max(SCHEDULE))
    assert delay(policy, 1, retry_after=1800.0) == pytest.approx(1800.0)
    assert delay(policy, 1, retry_after=1800.5) == pytest.approx(1800.0)


def test_a_short_retry_after_does_not_shorten_the_scheduled_delay() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert delay(policy, 2, retry_after=1.0) == pytest.approx(300.0)
    assert delay(policy, 2, retry_after=0.0) == pytest.approx(300.0)
    assert delay(policy, 2, retry_after=1.0, rng=1.0) == pytest.approx(360.0)


def test_retry_after_does_not_undercut_the_overload_floor() -> None:
    policy = RetryPolicy(SCHEDULE, overload_floor=60.0)
    assert delay(policy, 1, overloaded=True, retry_after=0.0) == pytest.approx(60.0)
    assert delay(policy, 1, overloaded=True, retry_after=120.0) == pytest.approx(120.0)


def test_the_time_is_relative_to_now() -> None:
    policy = RetryPolicy(SCHEDULE)
    assert policy.next_attempt_at(1, 0.0, rng=exact) == pytest.approx(5.0)
    assert policy.next_attempt_at(1, 1000.0, rng=exact) == pytest.approx(1005.0)


# parse_retry_after


@pytest.mark.parametrize(
    ("value", "seconds"), [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("86400", 86400.0)]
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date_is_relative_to_now() -> None:
    header = formatdate(NOW + 90, usegmt=True)  # e.g. "Tue, 14 Nov 2023 22:14:50 GMT"
    assert parse_retry_after(header, NOW) == pytest.approx(90.0)
    assert parse_retry_after(header, NOW + 30) == pytest.approx(60.0)


def test_an_http_date_in_the_past_means_now() -> None:
    header = formatdate(NOW - 3600, usegmt=True)
    assert parse_retry_after(header, NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1.5e3", "Tomorrow, 25:99"])
def test_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None
