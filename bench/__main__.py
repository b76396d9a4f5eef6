"""``python -m bench``: run every benchmark, write ``bench/results/latest.{md,json}``.

Each figure is measured in the same run as its bare baseline, so ratios compare like with like.
Every scenario keeps a ledger (sent = acknowledged = stored; deliveries = events x subscribers);
a scenario whose ledger does not balance is reported as void. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import report
from bench.backlog import seed_backlog
from bench.load import callback_body, percentiles
from bench.procs import Process, free_port, run_load, start_bare, start_service, start_sink
from bench.seed import database_bytes, disk_fsync_probe, job_id, seed_jobs

ADMIN_KEY = "rh_bench_admin_key_not_secret"
SECRET_KEY = "bench-secret-key-0123456789abcdef"


@dataclass
class Sizes:
    """How much work each scenario does; ``--quick`` shrinks it for a smoke run."""

    jobs: int = 100_000
    ingest: int = 30_000
    ack_rate: int = 1_000
    ack_seconds: int = 10
    burst: int = 10_000
    lag_rate: int = 500
    lag_seconds: int = 10
    fanout: tuple[tuple[int, int], ...] = ((1, 20_000), (10, 2_000), (100, 200))
    big_jobs: int = 1_000_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            jobs=20_000,
            ingest=3_000,
            ack_seconds=2,
            burst=2_000,
            lag_seconds=2,
            fanout=((1, 1_000), (10, 100), (100, 10)),
            big_jobs=40_000,
        )


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str
    met: bool
    baseline: float | None = None
    ratio: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ledger:
    scenario: str
    entries: dict[str, int]
    balanced: bool


def throughput(
    name: str, rate: float, unit: str, bare: float, balanced: bool, detail: dict[str, Any]
) -> Figure:
    """A throughput figure against docs/contract.md §9: at least 5,000/s and half of the bare
    baseline."""
    return Figure(
        name,
        rate,
        unit,
        "≥ 5,000/s and ≥ 50 % of bare",
        balanced and rate >= 5000 and rate >= 0.5 * bare,
        baseline=bare,
        ratio=rate / bare,
        detail=detail,
    )


class RssSampler:
    """The peak resident set size of a process, sampled every 100 ms in a thread."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.process.rss_mb())
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, work: Path, sizes: Sizes) -> None:
        self.work = work
        self.sizes = sizes
        self.data = work / "data"
        self.log = work / "processes.log"
        self.figures: list[Figure] = []
        self.ledgers: list[Ledger] = []
        self.port = free_port()
        self.next_job = 0
        self.env = {
            **os.environ,
            "REELHOOK_DATA_DIR": str(self.data),
            "REELHOOK_HOST": "127.0.0.1",
            "REELHOOK_PORT": str(self.port),
            "REELHOOK_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "REELHOOK_ADMIN_KEY": ADMIN_KEY,
            "REELHOOK_SECRET_KEYS": SECRET_KEY,
            "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
            "REELHOOK_MIRROR_OUTPUTS": "false",
            "REELHOOK_LOG_LEVEL": "WARNING",
            "REELHOOK_RATE_LIMIT": "0",
        }

    def take_jobs(self, count: int) -> int:
        """The first index of ``count`` seeded jobs no scenario has used yet."""
        first = self.next_job
        self.next_job += count
        if self.next_job > self.sizes.big_jobs:
            raise RuntimeError("the scenarios need more seeded jobs than exist")
        return first

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data / 'reelhook.db'}?mode=ro", uri=True)

    def video_url(self, sink: Process) -> str:
        return f"{sink.url}/files/clip.mp4"

    def callbacks(self, url: str, sink: Process, first: int, count: int, **spec: Any) -> Any:
        return run_load(
            {
                "target": "callbacks",
                "base_url": url,
                "secret_key": SECRET_KEY,
                "first": first,
                "count": count,
                "video_url": self.video_url(sink),
                **spec,
            }
        )

    def stored(self, first: int, count: int) -> tuple[int, int]:
        """(jobs succeeded, callbacks applied) for the seeded jobs ``first..first+count-1``."""
        low, high = job_id(first), job_id(first + count - 1)
        with self.db() as conn:
            jobs = conn.execute(
                "SELECT count(*) FROM jobs WHERE id BETWEEN ? AND ? AND status = 'succeeded'",
                (low, high),
            ).fetchone()[0]
            applied = conn.execute(
                "SELECT count(*) FROM callbacks"
                " WHERE job_id BETWEEN ? AND ? AND outcome = 'applied'",
                (low, high),
            ).fetchone()[0]
        return int(jobs), int(applied)

    def ledger(self, scenario: str, **entries: int) -> bool:
        balanced = len(set(entries.values())) == 1
        self.ledgers.append(Ledger(scenario, entries, balanced))
        return balanced

    # -- scenarios -------------------------------------------------------------------------------

    def ingest(self, service: Process, sink: Process) -> None:
        count = self.sizes.ingest
        with start_bare(self.log) as bare:
            base = self.callbacks(bare.url, sink, 0, count, mode="closed", concurrency=50)
        first = self.take_jobs(count)
        got = self.callbacks(service.url, sink, first, count, mode="closed", concurrency=50)
        jobs, applied = self.stored(first, count)
        ok = self.ledger(
            "ingest", sent=got["sent"], acked=got["acked"], stored=jobs, applied=applied
        )
        self.figures.append(
            throughput(
                "1. durable ingest (closed loop, c=50)",
                got["rate_per_s"],
                "callbacks/s",
                base["rate_per_s"],
                ok,
                {"reelhook": got, "bare": base},
            )
        )

    def ack_latency(self, service: Process, sink: Process) -> None:
        rate, seconds = self.sizes.ack_rate, self.sizes.ack_seconds
        count = rate * seconds
        with start_bare(self.log) as bare:
            base = self.callbacks(bare.url, sink, 0, count, mode="open", rate=rate, connections=200)
        first = self.take_jobs(count)
        got = self.callbacks(
            service.url, sink, first, count, mode="open", rate=rate, connections=200
        )
        jobs, applied = self.stored(first, count)
        ok = self.ledger(
            "ack latency", sent=got["sent"], acked=got["acked"], stored=jobs, applied=applied
        )
        p99, p50 = got["latency_ms"]["p99"], got["latency_ms"]["p50"]
        self.figures.append(
            Figure(
                f"2. ack latency p99 at {rate:,}/s (open loop; p50 {p50:.1f} ms)",
                p99,
                "ms",
                "p99 ≤ 25 ms",
                ok and p99 <= 25,
                baseline=base["latency_ms"]["p99"],
                ratio=p99 / base["latency_ms"]["p99"],
                detail={"reelhook": got, "bare": base},
            )
        )

    def burst(self, service: Process, sink: Process) -> None:
        count = self.sizes.burst
        first = self.take_jobs(count)
        got = self.callbacks(
            service.url,
            sink,
            first,
            count,
            mode="open",
            rate=count,
            connections=500,
            retry_503=True,
        )
        jobs, applied = self.stored(first, count)
        ok = self.ledger(
            "burst", sent=got["sent"], acked=got["acked"], stored=jobs, applied=applied
        )
        allowed = all(s.startswith("2") or s == "503" for s in got["statuses"])
        refused = got["statuses"].get("503", 0)
        self.figures.append(
            Figure(
                f"3. burst of {count:,} in 1 s: lost (503 answered: {refused:,}, "
                f"p99 {got['latency_ms']['p99']:.0f} ms)",
                count - jobs,
                "callbacks",
                "none lost; only 2xx or 503 + Retry-After",
                ok and allowed and jobs == count,
                detail={"reelhook": got},
            )
        )

    def lag(self, service: Process, sink: Process) -> None:
        rate, seconds, subscribers = self.sizes.lag_rate, self.sizes.lag_seconds, 3
        count = rate * seconds
        ids = [self.subscribe(service, f"{sink.url}/lag/{n}") for n in range(subscribers)]
        reset(sink)
        first = self.take_jobs(count)
        got = self.callbacks(
            service.url,
            sink,
            first,
            count,
            mode="open",
            rate=rate,
            connections=200,
            record_send_times=True,
        )
        records = wait_for_records(sink, count * subscribers)
        sent_at = dict(got["send_times"])
        lags = [(t - sent_at[job]) * 1000 for _, _, job, t in records if job in sent_at]
        unique = len({(path, event) for path, event, _, _ in records})
        ok = self.ledger(
            "end-to-end lag",
            expected=count * subscribers,
            received_unique=unique,
            delivered_in_db=self.delivered(ids),
        )
        for sub in ids:
            self.unsubscribe(service, sub)
        spread = percentiles(lags)
        self.figures.append(
            Figure(
                f"5. end-to-end lag p50 at {rate}/s x {subscribers} subscribers",
                spread["p50"],
                "ms",
                "p50 ≤ 20 ms",
                ok and spread["p50"] <= 20,
                detail={"lag_ms": spread, "load": {**got, "send_times": []}},
            )
        )
        self.figures.append(
            Figure(
                f"5. end-to-end lag p99 at {rate}/s x {subscribers} subscribers",
                spread["p99"],
                "ms",
                "p99 ≤ 100 ms",
                ok and spread["p99"] <= 100,
            )
        )

    def fanout(self, sink: Process) -> None:
        for subscribers, events in self.sizes.fanout:
            with start_service(self.env, self.log) as service:
                ids = [
                    self.subscribe(service, f"{sink.url}/fan/{subscribers}/{n}")
                    for n in range(subscribers)
                ]
            first = self.take_jobs(events)
            # The backlog goes in through reelhook's own callback code while the service is down,
            # so what is timed below is the dispatcher draining it, not ingest.
            asyncio.run(seed_backlog(self.env, first, events, self.video_url(sink)))
            reset(sink)
            expected = subscribers * events
            with start_service(self.env, self.log) as service:
                records = wait_for_records(sink, expected, within=240)
                times = sorted(t for *_, t in records)
                rate = expected / (times[-1] - times[0]) if len(times) > 1 else 0.0
                unique = len({(path, event) for path, event, _, _ in records})
                ok = self.ledger(
                    f"fan-out x {subscribers}",
                    expected=expected,
                    received_unique=unique,
                    delivered_in_db=self.delivered(ids),
                )
                for sub in ids:
                    self.unsubscribe(service, sub)
            concurrency = min(256, 8 * subscribers)
            payload = len(callback_body(first, self.video_url(sink))) + 600
            base = run_load(
                {
                    "target": "sink",
                    "mode": "closed",
                    "base_url": sink.url,
                    "paths": [f"/base/{subscribers}/{n}" for n in range(subscribers)],
                    "count": expected,
                    "concurrency": concurrency,
                    "body_bytes": payload,
                }
            )
            self.figures.append(
                throughput(
                    f"4. fan-out to {subscribers} subscriber(s) ({expected:,} deliveries)",
                    rate,
                    "deliveries/s",
                    base["rate_per_s"],
                    ok,
                    {"bare": base, "client_concurrency": concurrency},
                )
            )

    def memory(self, sink: Process, at_jobs: int, label: str) -> float:
        """Peak RSS while serving a short steady load with ``at_jobs`` jobs stored."""
        with start_service(self.env, self.log) as service, RssSampler(service) as rss:
            count = 2_000
            first = self.take_jobs(count)
            self.callbacks(service.url, sink, first, count, mode="open", rate=1000)
            with httpx.Client(base_url=service.url, headers=self.auth()) as client:
                for status in ("succeeded", "submitted"):
                    client.get("/v1/jobs", params={"status": status, "limit": 100})
        sizes = database_bytes(self.data)
        self.figures.append(
            Figure(
                f"6. RSS with {at_jobs:,} stored jobs ({label}; DB {sizes['db'] / 2**20:,.0f} MiB,"
                f" WAL {sizes['db_wal'] / 2**20:,.1f} MiB)",
                rss.peak,
                "MiB",
                "≤ 150 MB, flat as jobs grow",
                rss.peak <= 150,
                detail=sizes,
            )
        )
        return rss.peak

    # -- helpers ---------------------------------------------------------------------------------

    def auth(self) -> dict[str, str]:
        return {"X-API-Key": ADMIN_KEY}

    def subscribe(self, service: Process, url: str) -> str:
        answer = httpx.post(
            f"{service.url}/v1/subscriptions",
            json={"url": url, "event_types": ["job.succeeded"]},
            headers=self.auth(),
        )
        answer.raise_for_status()
        sub_id: str = answer.json()["id"]
        return sub_id

    def unsubscribe(self, service: Process, sub_id: str) -> None:
        httpx.delete(f"{service.url}/v1/subscriptions/{sub_id}", headers=self.auth())

    def delivered(self, subscription_ids: list[str]) -> int:
        marks = ",".join("?" * len(subscription_ids))
        with self.db() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
                f" AND subscription_id IN ({marks})",
                subscription_ids,
            ).fetchone()
        return int(row[0])

    def run(self) -> None:
        self.fsync = disk_fsync_probe(self.work)
        asyncio.run(seed_jobs(self.env, 0, self.sizes.jobs))
        with start_sink(self.log) as sink:
            with start_service(self.env, self.log) as service, RssSampler(service) as rss:
                self.ingest(service, sink)
                self.ack_latency(service, sink)
                self.burst(service, sink)
                self.lag(service, sink)
            self.under_load_rss = rss.peak
            self.fanout(sink)
            small = self.memory(sink, self.sizes.jobs, "short steady load")
            asyncio.run(seed_jobs(self.env, self.sizes.jobs, self.sizes.big_jobs))
            self.next_job = self.sizes.jobs
            big = self.memory(sink, self.sizes.big_jobs, "same load")
            self.figures.append(
                Figure(
                    f"6. RSS growth from {self.sizes.jobs:,} to {self.sizes.big_jobs:,} jobs",
                    big - small,
                    "MiB",
                    "flat (≤ 10 % of the smaller)",
                    big - small <= 0.1 * small,
                )
            )


def reset(sink: Process) -> None:
    httpx.post(f"{sink.url}/_reset").raise_for_status()


def wait_for_records(
    sink: Process, expected: int, within: float = 120
) -> list[tuple[str, str, str, float]]:
    """The sink's records once ``expected`` unique deliveries arrived (or the time ran out)."""
    deadline = time.monotonic() + within
    while True:
        records = [
            (str(path), str(event), str(job), float(at))
            for path, event, job, at in httpx.get(f"{sink.url}/_records", timeout=30).json()
        ]
        unique = {(path, event) for path, event, _, _ in records}
        if len(unique) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="reelhook-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (not a report)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    sizes = Sizes.quick() if args.quick else Sizes()
    started = time.time()
    with workdir(args.keep) as work:
        bench = Bench(work, sizes)
        try:
            bench.run()
        except Exception:
            print(f"benchmark failed; process log:\n{bench.log.read_text()[-4000:]}")
            raise
    result = {
        "started_at": started,
        "duration_s": time.time() - started,
        "quick": args.quick,
        "machine": report.machine(),
        "versions": report.versions(),
        "fsync": bench.fsync,
        "rss_under_load_mb": bench.under_load_rss,
        "figures": [asdict(f) for f in bench.figures],
        "ledgers": [asdict(entry) for entry in bench.ledgers],
    }
    name = "quick" if args.quick else "latest"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(report.markdown(result))
    print(report.markdown(result))


if __name__ == "__main__":
    main()
