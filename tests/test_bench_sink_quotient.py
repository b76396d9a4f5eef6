"""Figure 4's server CPU per delivery over the sink's (``python -m bench``): reported only when
both were measured, never as a quotient of nothing."""

from __future__ import annotations

import pytest

from bench.__main__ import sink_quotient


def test_the_quotient_and_what_100_us_would_need_of_the_sink() -> None:
    figure = sink_quotient(10, cpu=96.0, sink_cpu=45.0, bare_sink=31.0)
    assert figure is not None
    assert figure.value == pytest.approx(96.0 / 45.0)
    assert figure.unit == "x"
    assert figure.target == "reported: 100 µs needs the sink at ≤ 47 µs"
    assert "10 subscriber(s)" in figure.name
    assert "the sink's in the bare run: 31 µs" in figure.name
    assert figure.cpu_us == {"reelhook": 96.0, "sink": 45.0}


@pytest.mark.parametrize(("cpu", "sink_cpu"), [(254.0, 0.0), (0.0, 40.0), (0.0, 0.0)])
def test_a_drain_too_short_for_procs_ticks_reports_no_quotient(cpu: float, sink_cpu: float) -> None:
    # --quick's drain of 1,000 deliveries read no tick of the sink's CPU and had reported 0.00x
    # and "100 µs needs the sink at ≤ 0 µs".
    assert sink_quotient(10, cpu=cpu, sink_cpu=sink_cpu, bare_sink=40.0) is None
