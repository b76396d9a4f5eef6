"""Where a durable commit's tail goes with SQLite's WAL checkpoints: ``python -m bench.walfold``.

The storage side of figure 2 (ack latency at 1,000 callbacks/s) without HTTP, the event loop
or the load generator, so that the disk's part can be read on a shared machine: callbacks
"arrive" every millisecond (open loop); one writer thread group-commits whatever has arrived
(up to 50) in one ``synchronous = FULL`` transaction shaped like an ingest batch (two job rows
updated through an index, an event row inserted per callback); each callback's latency is from
its arrival to its batch's commit. Arms, interleaved round by round:

- ``inline``: SQLite's default, the writer checkpoints inside the commit crossing 1,000 pages
  (reelhook before ``ops/logfolding.py``);
- ``fold``: the writer's checkpoint only as a backstop (16,384 pages) and a second connection
  folding the WAL with PASSIVE checkpoints every 0.25 s, folding the rest in a turn between
  commits past 4,096 frames (what ``SqliteDatabase.fold_log`` does);
- ``none``: no checkpoint at all during the run (a lower bound; the WAL grows).

Loopback-free, local files only; prints one line per run and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BATCH = 50


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _connect(path: Path, autocheckpoint: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
    return conn


def _seed(path: Path, jobs: int) -> None:
    conn = _connect(path, 1000)
    conn.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT, updated REAL, body BLOB);"
        "CREATE INDEX jobs_status ON jobs (status, updated);"
        "CREATE TABLE events (id INTEGER PRIMARY KEY, job INTEGER, at REAL, payload BLOB);"
        "CREATE INDEX events_job ON events (job, at);"
    )
    body = os.urandom(450)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs VALUES (?, 'running', ?, ?)",
        ((n, float(n), body) for n in range(jobs)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def run_arm(path: Path, arm: str, *, rate: int, seconds: float, jobs: int) -> dict[str, Any]:
    # "fold" folds every 0.25 s as reelhook does; "fold@0.05" every 0.05 s, and so on.
    folding_every = float(arm.partition("@")[2] or 0.25) if arm.startswith("fold") else None
    writer = _connect(path, 0 if arm == "none" else 16_384 if folding_every is not None else 1000)
    folder = _connect(path, 0) if folding_every is not None else None
    lock = threading.Lock()  # the write turn, as reelhook's write order
    stop = threading.Event()
    folds: list[float] = []

    def fold() -> None:
        assert folder is not None and folding_every is not None
        while not stop.wait(folding_every):
            started = time.perf_counter()
            frames = folder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if frames >= 4096:
                with lock:
                    folder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            folds.append((time.perf_counter() - started) * 1000)

    folding = threading.Thread(target=fold) if folder is not None else None
    if folding is not None:
        folding.start()
    payload = os.urandom(900)
    rng = random.Random(1)
    count = int(rate * seconds)
    started = time.perf_counter()
    arrivals = [started + n / rate for n in range(count)]
    latencies: list[float] = []
    commits: list[float] = []
    taken = 0
    while taken < count:
        now = time.perf_counter()
        if arrivals[taken] > now:
            time.sleep(arrivals[taken] - now)
            now = time.perf_counter()
        batch: list[float] = []
        while taken < count and arrivals[taken] <= now and len(batch) < BATCH:
            batch.append(arrivals[taken])
            taken += 1
        with lock:
            began = time.perf_counter()
            writer.execute("BEGIN IMMEDIATE")
            for arrived in batch:
                job = rng.randrange(jobs)
                writer.execute(
                    "UPDATE jobs SET status = 'succeeded', updated = ? WHERE id = ?",
                    (arrived, job),
                )
                writer.execute(
                    "INSERT INTO events (job, at, payload) VALUES (?, ?, ?)",
                    (job, arrived, payload),
                )
            writer.execute("COMMIT")
            done = time.perf_counter()
        commits.append((done - began) * 1000)
        latencies += [(done - arrived) * 1000 for arrived in batch]
    stop.set()
    if folding is not None:
        folding.join()
    wal = Path(f"{path}-wal")
    result = {
        "arm": arm,
        "callbacks": count,
        "batches": len(commits),
        "latency_ms": {q: _pct(latencies, v) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "latency_p999_ms": _pct(latencies, 0.999),
        "commit_ms": {q: _pct(commits, v) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "folds": len(folds),
        "fold_ms_p50": _pct(folds, 0.5) if folds else None,
        "wal_mib": wal.stat().st_size / 2**20 if wal.exists() else 0.0,
        "load": Path("/proc/loadavg").read_text().split()[0],
    }
    writer.close()
    if folder is not None:
        folder.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.walfold", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument(
        "--arms", default="inline,fold,none", help="also fold@SECONDS: fold that often"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="reelhook-walfold-") as folder:
        for round_ in range(args.rounds):
            for arm in args.arms.split(","):
                path = Path(folder) / f"{arm.replace('@', '-')}-{round_}.db"
                _seed(path, args.jobs)
                got = run_arm(path, arm, rate=args.rate, seconds=args.seconds, jobs=args.jobs)
                results.append(got)
                lat, com = got["latency_ms"], got["commit_ms"]
                print(
                    f"{arm:9} round {round_ + 1}: latency p50 {lat['p50']:.2f} p99 "
                    f"{lat['p99']:.2f} p99.9 {got['latency_p999_ms']:.1f} ms; "
                    f"{got['batches']} commits p50 {com['p50']:.2f} p99 {com['p99']:.1f} ms; "
                    f"folds {got['folds']}; WAL {got['wal_mib']:.1f} MiB; load {got['load']}",
                    flush=True,
                )
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
