"""The data disk while a scenario runs: fsync latency and the kernel's dirty pages.

The ack of a durable callback waits for an fsync, so its tail follows the disk's. On a shared
machine the disk also carries what earlier scenarios (and the neighbours) left to write back.
``DiskSampler`` samples, on a thread of the bench's own process, a 1 KiB write + ``fdatasync``
on the data disk every ``every`` seconds and ``Dirty``/``Writeback`` from ``/proc/meminfo``;
``settle`` asks the kernel to write back what is dirty and waits until it has.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any


def dirty_kib() -> tuple[int, int]:
    """``Dirty`` and ``Writeback`` from /proc/meminfo, in KiB."""
    found = {"Dirty:": 0, "Writeback:": 0}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name in found:
            found[name] = int(rest.split()[0])
    return found["Dirty:"], found["Writeback:"]


def _pct(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class DiskSampler:
    """A 1 KiB write + fdatasync in ``folder`` and the dirty pages every ``every`` seconds,
    from ``start`` to ``stop``; ``summary`` gives their percentiles (fsync in ms, pages in
    MiB). At the default 50 ms it adds 20 small fsyncs a second to the disk it measures."""

    def __init__(self, folder: Path, every: float = 0.05) -> None:
        self.path = folder / "disk-probe"
        self.every = every
        self.fsync_ms: list[float] = []
        self.dirty_mib: list[float] = []
        self.writeback_mib: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DiskSampler:
        self._thread = threading.Thread(target=self._sample, name="disk-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        block = b"x" * 1024
        try:
            while not self._stop.wait(self.every):
                dirty, writeback = dirty_kib()
                self.dirty_mib.append(dirty / 1024)
                self.writeback_mib.append(writeback / 1024)
                started = time.perf_counter()
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                self.fsync_ms.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": len(self.fsync_ms),
            "fsync_ms": {
                "p50": _pct(self.fsync_ms, 0.5),
                "p99": _pct(self.fsync_ms, 0.99),
                "max": max(self.fsync_ms, default=0.0),
            },
            "dirty_mib": {
                "p50": _pct(self.dirty_mib, 0.5),
                "max": max(self.dirty_mib, default=0.0),
            },
            "writeback_mib": {
                "p50": _pct(self.writeback_mib, 0.5),
                "max": max(self.writeback_mib, default=0.0),
            },
        }


def settle(*, below_mib: float = 64, within: float = 120) -> dict[str, float]:
    """``sync`` and wait (at most ``within`` seconds) until dirty + writeback pages are below
    ``below_mib``: what an earlier scenario left for the disk is written before the next
    measures. Returns the pages before and after (MiB) and the seconds it took."""
    started = time.monotonic()
    before = sum(dirty_kib()) / 1024
    os.sync()
    after = sum(dirty_kib()) / 1024
    while after >= below_mib and time.monotonic() - started < within:
        time.sleep(0.5)
        os.sync()
        after = sum(dirty_kib()) / 1024
    return {"before_mib": before, "after_mib": after, "seconds": time.monotonic() - started}
