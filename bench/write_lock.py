"""``python -m bench.write_lock``: does one node gain from running its PostgreSQL write
transactions at once, instead of one at a time behind a per-node lock (docs/scaling.md)?

One node (a :class:`PostgresDatabase`) on a durable throwaway cluster runs, for a fixed time,
what a busy node runs together: an ingest writer appending events with their deliveries (64 per
transaction, as the group commit does), the dispatcher claiming due deliveries and recording
their outcomes, and API-like single-row writes. Once with the writes serialised in the node (a
lock around every write transaction, as the node runs them) and once at once (up to half the
pool of 8); items per second of each.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import anyio

from bench.pgcluster import throwaway_cluster
from service.core.ids import new_id
from service.core.models import DeliveryStatus
from service.storage import deliveries, events
from service.storage.deliveries import AttemptOutcome
from service.storage.events import NewEvent
from service.storage.postgres import PostgresDatabase


async def workload(db: PostgresDatabase, seconds: float) -> dict[str, float]:
    now = time.time()
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (id, owner_key_id, url, secret, created_at, updated_at) "
            "VALUES ('sub_bench', 'key_bench', 'http://127.0.0.1:9/', 'whsec_x', ?, ?)",
            (now, now),
        )
    counts = {"events": 0, "deliveries recorded": 0, "single writes": 0}
    stop = time.monotonic() + seconds

    async def ingest() -> None:
        while time.monotonic() < stop:
            batch = [
                NewEvent(new_id("evt"), "ping", None, time.time(), b"{}", ["sub_bench"], 0.0)
                for _ in range(64)
            ]
            async with db.transaction() as conn:
                await events.append(conn, batch)
            counts["events"] += len(batch)

    async def dispatch() -> None:
        while time.monotonic() < stop:
            at = time.time()
            async with db.transaction(durable=False) as conn:
                claimed = await deliveries.claim_due(
                    conn,
                    now=at,
                    lease_until=at + 60,
                    rooms={"sub_bench": 64},
                    owner=db.node_id,
                    cluster_cap=256,
                )
            if not claimed:
                await anyio.sleep(0.001)
                continue
            outcomes = [
                AttemptOutcome(
                    delivery_id=c.id,
                    subscription_id=c.subscription_id,
                    attempted_at=time.time(),
                    latency_ms=1.0,
                    status=DeliveryStatus.SUCCEEDED,
                    token=c.token,
                    status_code=204,
                )
                for c in claimed
            ]
            async with db.transaction(durable=False) as conn:
                counts["deliveries recorded"] += len(await deliveries.record(conn, outcomes))

    async def single() -> None:
        while time.monotonic() < stop:
            async with db.transaction() as conn:
                await conn.execute(
                    "UPDATE subscriptions SET updated_at = ? WHERE id = 'sub_bench'",
                    (time.time(),),
                )
            counts["single writes"] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ingest)
        tg.start_soon(dispatch)
        for _ in range(4):
            tg.start_soon(single)
    return {name: value / seconds for name, value in counts.items()}


async def measure(url: str, serialised: bool, seconds: float) -> dict[str, float]:
    async with PostgresDatabase.open_url(url) as db:
        # One write transaction at a time in the node (what it does), or up to half its pool.
        db.writers = anyio.Semaphore(1 if serialised else 4)
        return await workload(db, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.write_lock", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with throwaway_cluster(durable=True) as cluster:
        for round_ in range(args.rounds):
            for serialised in (True, False):
                name = f"r{round_}{'s' if serialised else 'c'}"
                url = cluster.create_database(name)
                got = asyncio.run(measure(url, serialised, args.seconds))
                label = "serialised" if serialised else "concurrent"
                print(label, ", ".join(f"{k} {v:,.0f}/s" for k, v in got.items()), flush=True)


if __name__ == "__main__":
    main()
