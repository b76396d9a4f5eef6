"""A recurring warning (a full disk failing every write) is logged at most once per interval,
and the next line says how many were left out (service/core/lograte.py)."""

from __future__ import annotations

import logging

import pytest

from service.core.lograte import Occasional


def test_a_recurring_warning_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    occasional = Occasional(logging.getLogger("test.lograte"), every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.lograte"):
        logged = [occasional.warning("batch of %d: out of space", n) for n in range(50)]
        now[0] += 9.9
        logged.append(occasional.warning("batch of %d: out of space", 50))
        now[0] += 0.1
        logged.append(occasional.warning("batch of %d: out of space", 51))
        logged.append(occasional.warning("batch of %d: out of space", 52))
    assert logged.count(True) == 2 and logged[0] and logged[51]
    assert [r.getMessage() for r in caplog.records] == [
        "batch of 0: out of space",
        "batch of 51: out of space (and 50 more like it since the last such line)",
    ]
    assert occasional.left_out == 1
