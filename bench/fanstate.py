"""Figure 4's drain on two stores: the one ``--fanout-only`` starts from against the one a full
run's fan-out starts from (docs/performance-journal.md, "Figure 4 in the full run against
standalone").

``python -m bench.fanstate prepare DIR`` writes two data directories: ``DIR/A``, the seeded jobs
alone, and ``DIR/B``, the same after scenarios 1-3 and 5 (as ``make bench`` runs them).
``python -m bench.fanstate drain DIR A|B SUBSCRIBERS EVENTS`` copies one of them and runs one
``Bench.fan`` drain on it with a fresh sink, printing one JSON line: CPU µs per delivery (all
threads, the event loop's) and the served process's ``/proc/<pid>/io`` over the drain, so two
stores can be compared by the work done as well as by its CPU. Alternate the arms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.__main__ import Bench, Sizes
from bench.procs import CpuTimes, Process, start_service, start_sink
from bench.seed import seed_jobs


def prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, prior in (("A", False), ("B", True)):
        with tempfile.TemporaryDirectory(prefix="fanstate-") as work:
            bench = Bench(Path(work), Sizes())
            asyncio.run(seed_jobs(bench.env, 0, bench.sizes.jobs))
            if prior:
                with start_sink(bench.log) as sink, start_service(bench.env, bench.log) as service:
                    bench.ingest(service, sink)
                    bench.ack_latency(service, sink)
                    bench.burst(service, sink)
                    bench.lag(service, sink)
            shutil.copytree(bench.data, folder / name)
            (folder / f"{name}.next_job").write_text(str(bench.next_job))


def proc_io(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {name: int(value) for name, value in (line.split(":") for line in lines)}


def drain(folder: Path, name: str, subscribers: int, events: int) -> dict[str, Any]:
    # Bench.fan reads the served process's CPU before and after the drain: the I/O counters
    # are read beside it.
    readings: list[dict[str, int]] = []
    cpu = Process.cpu

    def metered(process: Process) -> CpuTimes:
        readings.append(proc_io(process.popen.pid))
        return cpu(process)

    Process.cpu = metered  # type: ignore[method-assign, assignment]
    with tempfile.TemporaryDirectory(prefix="fanstate-") as work:
        bench = Bench(Path(work), Sizes())
        shutil.copytree(folder / name, bench.data)
        bench.next_job = int((folder / f"{name}.next_job").read_text())
        with start_sink(bench.log) as sink:
            rate, ok, per_delivery, _ = bench.fan(sink, subscribers, events, "plain")
    before, after = readings[-2], readings[-1]
    return {
        "store": name,
        "subscribers": subscribers,
        "at": time.strftime("%H:%M:%S", time.gmtime()),
        "cpu_us": round(per_delivery, 1),
        "loop_us": round(bench.fan_loop_cpu, 1),
        "deliveries_per_s": round(rate),
        "balanced": ok,
        "io": {key: after[key] - before[key] for key in after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanstate", description=__doc__)
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("prepare").add_argument("folder", type=Path)
    one = steps.add_parser("drain")
    one.add_argument("folder", type=Path)
    one.add_argument("store", choices=["A", "B"])
    one.add_argument("subscribers", type=int)
    one.add_argument("events", type=int)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.folder)
    else:
        print(json.dumps(drain(args.folder, args.store, args.subscribers, args.events)))


if __name__ == "__main__":
    main()
