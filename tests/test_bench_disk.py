"""The bench's disk sampler and settle step (bench/disk.py), used by `python -m bench isolation`
to show what the data disk was doing under scenario e."""

from __future__ import annotations

import time
from pathlib import Path

from bench.disk import DiskSampler, dirty_kib, settle


def test_the_sampler_times_fsyncs_and_reads_dirty_pages_then_cleans_up(tmp_path: Path) -> None:
    with DiskSampler(tmp_path, every=0.005) as disk:
        deadline = time.monotonic() + 30  # bounds a hang; nothing is timed
        while len(disk.fsync_ms) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = disk.summary()
    assert summary["samples"] >= 3
    assert 0 < summary["fsync_ms"]["p50"] <= summary["fsync_ms"]["max"]
    assert summary["dirty_mib"]["max"] >= 0 and summary["writeback_mib"]["max"] >= 0
    assert not (tmp_path / "disk-probe").exists()


def test_an_idle_sampler_summarises_nothing(tmp_path: Path) -> None:
    summary = DiskSampler(tmp_path).summary()
    assert summary["samples"] == 0
    assert summary["fsync_ms"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_settle_syncs_and_reports_the_pages_before_and_after() -> None:
    dirty, writeback = dirty_kib()
    assert dirty >= 0 and writeback >= 0
    settled = settle(below_mib=1e9)  # any amount will do: one sync, no waiting
    assert set(settled) == {"before_mib", "after_mib", "seconds"}
    assert settled["before_mib"] >= 0 and settled["after_mib"] >= 0
