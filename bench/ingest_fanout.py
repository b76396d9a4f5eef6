"""Figure 4i on its own: the storage side of ingest with many matching subscribers, and what
expanding the deferred fan-outs costs afterwards (docs/performance-journal.md).

``python -m bench.ingest_fanout [--subscribers 100,1000] [--callbacks 2000,200] [--rounds 3]``

For each size, in a fresh SQLite data directory: ``subscribers`` subscriptions hearing every job
event, then ``callbacks`` success callbacks applied through reelhook's own code in batches of the
ingest writer's size (bench/backlog.py, as ``make bench`` does), then (where the code defers
fan-out) the expansion steps the dispatcher would run, until every delivery row is written.
Reports callbacks/s and CPU µs (this process, every thread, from /proc) per callback for ingest,
and per delivery row for the expansion. One JSON line per round on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.backlog import INGEST_BATCH, seed_backlog
from bench.seed import seed_jobs
from service.app.settings import load_settings
from service.core.ids import new_id
from service.core.models import Subscription, SubscriptionStatus
from service.storage import keys, subscriptions
from service.storage.database import Database


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread: what /proc/self/stat counts, read
    through ``CLOCK_PROCESS_CPUTIME_ID`` (nanoseconds, where /proc counts 10 ms ticks: a batch of
    20 callbacks takes about one)."""
    return time.process_time()


def environment(data_dir: Path) -> dict[str, str]:
    return {
        "REELHOOK_DATA_DIR": str(data_dir),
        "REELHOOK_ADMIN_KEY": "rh_bench_admin_key_0123456789abcdef",
        "REELHOOK_SECRET_KEYS": "bench-secret-key-0123456789",
    }


async def subscribe_all(env: dict[str, str], count: int) -> None:
    """``count`` subscriptions of the admin key hearing every job event."""
    settings = load_settings(env)
    async with Database.open(settings.database_url) as db:
        rows = await db.reader.execute_fetchall("SELECT id FROM api_keys LIMIT 1")
        owner = str(next(iter(rows))[0])
        now = time.time()
        async with db.transaction() as conn:
            for n in range(count):
                await subscriptions.insert(
                    conn,
                    Subscription(
                        id=new_id("sub"),
                        owner_key_id=owner,
                        url=f"http://127.0.0.1:9/fan/{n}",
                        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                        event_types=(),
                        models=(),
                        headers={},
                        description="",
                        status=SubscriptionStatus.ACTIVE,
                        created_at=now,
                        updated_at=now,
                    ),
                )


async def expand_all(env: dict[str, str]) -> tuple[int, list[float], float]:
    """Run the dispatcher's expansion steps until nothing is left: (rows, each step's seconds,
    seconds in all); nothing where this code has no deferred fan-out."""
    try:
        from service.storage import fanouts
    except ImportError:
        return 0, [], 0.0
    settings = load_settings(env)
    rows = 0
    steps = []
    async with Database.open(settings.database_url) as db:
        started = time.perf_counter()
        while True:
            began = time.perf_counter()
            step = await db.run_transaction(fanouts.expand, durable=False, background=True)
            steps.append(time.perf_counter() - began)
            rows += step.written
            if not step.more:
                break
        return rows, steps, time.perf_counter() - started


async def one_round(subscribers: int, callbacks: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="reelhook-4i-") as folder:
        env = environment(Path(folder) / "data")
        await seed_jobs(env, 0, callbacks)
        await subscribe_all(env, subscribers)
        cpu = cpu_seconds()
        seconds = await seed_backlog(env, 0, callbacks, "https://cdn.example.test/clip.mp4")
        ingest_cpu = cpu_seconds() - cpu
        cpu = cpu_seconds()
        rows, steps, expand_seconds = await expand_all(env)
        steps.sort()
        expand_cpu = cpu_seconds() - cpu
        settings = load_settings(env)
        async with Database.open(settings.database_url) as db:
            written = await db.reader.execute_fetchall("SELECT count(*) FROM deliveries")
        return {
            "code": str(Path(keys.__file__).parents[2]),
            "subscribers": subscribers,
            "callbacks": callbacks,
            "batch": INGEST_BATCH,
            "callbacks_per_s": round(callbacks / seconds, 1),
            "ingest_cpu_us_per_callback": round(ingest_cpu / callbacks * 1e6, 1),
            "expanded_rows": rows,
            "expand_steps": len(steps),
            "expand_rows_per_s": round(rows / expand_seconds, 1) if expand_seconds else 0,
            "expand_cpu_us_per_row": round(expand_cpu / rows * 1e6, 2) if rows else 0,
            "step_ms": {
                name: round(steps[int(q * (len(steps) - 1))] * 1000, 2) if steps else 0
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "delivery_rows": int(next(iter(written))[0]),
            "expected_rows": subscribers * callbacks,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="100,1000")
    parser.add_argument("--callbacks", default="2000,200")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sizes = list(
        zip(
            [int(n) for n in args.subscribers.split(",")],
            [int(n) for n in args.callbacks.split(",")],
            strict=True,
        )
    )
    for _ in range(args.rounds):
        for subscribers, callbacks in sizes:
            print(json.dumps(asyncio.run(one_round(subscribers, callbacks))), flush=True)


if __name__ == "__main__":
    main()
