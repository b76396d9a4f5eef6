"""What ``GET /readyz`` and a ``GET /metrics`` scrape cost over a large backlog
(docs/performance-journal.md, "/readyz and /metrics over a million due deliveries").

``python -m bench.outboxstats --store sqlite|postgresql [--rows N] [--calls K]`` seeds ``N`` due
deliveries (events of one delivery each to one disabled subscription, so the dispatcher leaves
them where they are, as a saturated subscriber's backlog stays) and ``N`` submitted jobs through
reelhook's own storage code, then serves the app in-process and times ``K`` calls of each
endpoint: wall time per call, and CPU per call of this process (the app and its aiosqlite
threads) plus, on PostgreSQL, of the server's processes (read from /proc). It prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from bench.backlog import seed_due
from bench.pgcluster import throwaway_cluster
from bench.procs import cpu_times
from bench.seed import seed_jobs
from service.app.factory import create_app
from service.app.settings import load_settings
from service.core.models import Subscription, SubscriptionStatus
from service.storage import deliveries, stats, subscriptions
from service.storage.database import Database

ADMIN_KEY = "rh_bench_admin_key_0123456789abcdef"
SUBSCRIPTION = "sub_bench_outbox_stats"


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _server_cpu(postmaster: int | None) -> float:
    if postmaster is None:
        return 0.0
    # The postmaster's reaped children too (cutime, cstime): parallel workers end within a call.
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    for pid in [postmaster, *_children(postmaster)]:
        with contextlib.suppress(OSError):  # a backend that ended meanwhile
            total += cpu_times(pid).total
    return total


async def _seed(env: dict[str, str], rows: int) -> None:
    settings = load_settings(env)
    now = time.time()
    async with Database.open(settings.database_url) as db, db.transaction() as conn:
        await subscriptions.insert(
            conn,
            Subscription(
                id=SUBSCRIPTION,
                owner_key_id="key_bench",
                url="http://127.0.0.1:9/",
                secret="whsec_" + "0" * 32,
                event_types=(),
                models=(),
                headers={},
                description="",
                status=SubscriptionStatus.DISABLED,
                created_at=now,
                updated_at=now,
            ),
        )
    await seed_due(env, SUBSCRIPTION, rows)
    await seed_jobs(env, 0, rows)


async def _measure(env: dict[str, str], calls: int, postmaster: int | None) -> dict[str, object]:
    app = create_app(load_settings(env))
    figures: dict[str, object] = {}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://bench.test"
        ) as http,
    ):
        for path in ("/readyz", "/metrics"):
            first = await http.get(path)
            walls, cpus = [], []
            for _ in range(calls):
                cpu0, server0, wall0 = (
                    time.process_time(),
                    _server_cpu(postmaster),
                    time.perf_counter(),
                )
                response = await http.get(path)
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.process_time() - cpu0 + _server_cpu(postmaster) - server0)
                assert response.status_code == 200, response.text
            figures[path] = {
                "wall_ms_median": round(statistics.median(walls) * 1000, 2),
                "wall_ms_max": round(max(walls) * 1000, 2),
                "cpu_ms_median": round(statistics.median(cpus) * 1000, 2),
                "cpu_ms_max": round(max(cpus) * 1000, 2),
                "first_call_ms": round(first.elapsed.total_seconds() * 1000, 2)
                if hasattr(first, "elapsed")
                else None,
            }
            if path == "/readyz":
                figures["readyz_cluster"] = first.json()["cluster"]
            else:
                figures["metrics_outbox"] = [
                    line
                    for line in first.text.splitlines()
                    if line.startswith(("reelhook_outbox", "reelhook_oldest", "reelhook_jobs{"))
                ]
    figures["read"] = await _read_beside_the_dispatcher(env, postmaster)
    return figures


async def _read_beside_the_dispatcher(env: dict[str, str], postmaster: int | None) -> object:
    """The gauges' read as /metrics does it (jobs by status, then the outbox), timed alone, and
    how long the dispatcher's read of what is due waits on the same reader meanwhile (asked
    every 5 ms; its worst and median latency)."""
    rounds = []
    async with Database.open(load_settings(env).database_url) as db:
        for _ in range(3):
            waits: list[float] = []
            stop = asyncio.Event()

            async def dispatcher(waits: list[float], stop: asyncio.Event) -> None:
                while not stop.is_set():
                    asked = time.perf_counter()
                    await deliveries.due_subscriptions(
                        db.reader, skip=[], now=time.time(), cap=32, limit=100
                    )
                    waits.append(time.perf_counter() - asked)
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(dispatcher(waits, stop))
            await asyncio.sleep(0.05)
            cpu0, server0, wall0 = time.process_time(), _server_cpu(postmaster), time.perf_counter()
            await stats.jobs_by_status(db.reader)
            await stats.outbox(db.reader)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0 + _server_cpu(postmaster) - server0
            stop.set()
            await task
            rounds.append(
                {
                    "wall_ms": round(wall * 1000, 1),
                    "cpu_ms": round(cpu * 1000, 1),
                    "due_read_ms_max": round(max(waits) * 1000, 1),
                    "due_read_ms_median": round(statistics.median(waits) * 1000, 2),
                }
            )
    return rounds


@contextmanager
def _store(kind: str, folder: Path) -> Iterator[tuple[dict[str, str], int | None]]:
    env = {
        "REELHOOK_DATA_DIR": str(folder / "data"),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SECRET_KEYS": "bench-secret-key-0123456789",
        "REELHOOK_MIRROR_OUTPUTS": "false",
    }
    if kind == "sqlite":
        yield env, None
        return
    with ExitStack() as stack:
        cluster = stack.enter_context(throwaway_cluster(durable=False))
        env["REELHOOK_DATABASE_URL"] = cluster.create_database("reelhook")
        yield env, cluster.postmaster_pid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="seed into (or reuse) this folder (SQLite)")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")))
        )
        env, postmaster = stack.enter_context(_store(args.store, folder))
        seeded = (folder / "data" / "reelhook.db").exists() and args.store == "sqlite"
        started = time.perf_counter()
        if not seeded:
            asyncio.run(_seed(env, args.rows))
        seed_seconds = time.perf_counter() - started
        figures = asyncio.run(_measure(env, args.calls, postmaster))
    print(
        json.dumps(
            {"store": args.store, "rows": args.rows, "seed_s": round(seed_seconds, 1), **figures},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
