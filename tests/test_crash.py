"""Crash safety (docs/contract.md §5): reelhook as a real process, killed with SIGKILL in the
middle of a fan-out and started again. Every event must reach every subscriber at least once, and
the only duplicates allowed are deliveries that were in flight (claimed, outcome not yet recorded)
at the moment of the kill.

How the numbers are bounded: a delivery is sent only after it has been claimed, which marks it
``inflight`` in SQLite; its outcome is recorded (``succeeded``) in a later transaction. A delivery
can therefore reach a subscriber twice only if the kill fell between the two: the subscriber got it
but the database still says ``inflight``. After the kill, before the restart, the test counts the
``inflight`` rows in the killed process's database; that count is the bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.types import Receive, Scope, Send

from tests.servers import free_port, read_body, run_lifespan, run_server
from tests.support import ADMIN_KEY

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.slow]

# Where the processes keep their state: the SQLite file in their data directory, or (under
# ``--store postgresql``, and for the two-node test) a PostgreSQL database URL.
Store = Path | str

JOBS = 250  # two events each (job.submitted, job.succeeded), each to every subscriber
PINGS_EACH = 125  # test events, each to one subscriber
SUBSCRIBERS = 4
KILL_AT = 0.4  # the share of all deliveries received when the process is killed


@dataclass
class Counting:
    """A lean subscriber for many deliveries: counts each (path, webhook-id) and keeps the first
    request per path for a signature check. Requests wait at ``gate`` until it opens."""

    gate: anyio.Event = field(default_factory=anyio.Event)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    total: int = 0
    held: int = 0  # requests that reached the gate (counted or not)
    first: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        body = await read_body(receive)
        self.held += 1
        self.changed.set()
        self.changed = anyio.Event()
        await self.gate.wait()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path: str = scope["path"]
        self.counts[(path, headers["webhook-id"])] += 1
        self.total += 1
        self.first.setdefault(path, (body, headers))
        self.changed.set()
        self.changed = anyio.Event()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for_held(self, held: int, within: float) -> None:
        with anyio.fail_after(within):
            while self.held < held:
                await self.changed.wait()

    async def wait_for_total(self, total: int, within: float) -> None:
        with anyio.fail_after(within):
            while self.total < total:
                await self.changed.wait()


def environment(tmp_path: Path, port: int, store: Store | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REELHOOK_") and "proxy" not in k.lower()
    }
    env.update(
        REELHOOK_DATA_DIR=str(tmp_path / "data"),
        REELHOOK_PORT=str(port),
        REELHOOK_ADMIN_KEY=ADMIN_KEY,
        REELHOOK_SECRET_KEYS="crash-test-secret-key-0123456789",
        REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS="127.0.0.0/8",
        REELHOOK_SIM_DELAY="0.1",
        # Long enough that nothing times out while the gate is shut (two nodes on PostgreSQL on a
        # busy machine take minutes to produce everything); retries are never needed.
        REELHOOK_DELIVERY_TIMEOUT="600",
        REELHOOK_RETRY_SCHEDULE="0,0.5,0.5,0.5",
        REELHOOK_LOG_LEVEL="WARNING",
        # Thousands of API calls in a few seconds: a benchmark-like client, not a tenant to limit.
        REELHOOK_RATE_LIMIT="0",
    )
    if isinstance(store, str):
        # A killed node counts as dead five seconds after its last heartbeat (a busy node on
        # this shared machine can miss a beat for longer than one).
        env.update(REELHOOK_DATABASE_URL=store, REELHOOK_NODE_TIMEOUT="5")
    return env


@asynccontextmanager
async def reelhook_process(
    env: dict[str, str], log: Path
) -> AsyncIterator[tuple[anyio.abc.Process, httpx.AsyncClient]]:
    """``python -m service`` with ``env``, once it answers /healthz; SIGTERM on exit if alive."""
    with log.open("ab") as log_file:
        process = await anyio.open_process(
            [sys.executable, "-m", "service", "serve"], env=env, stdout=log_file, stderr=log_file
        )
    base_url = f"http://127.0.0.1:{env['REELHOOK_PORT']}"
    try:
        async with httpx.AsyncClient(
            base_url=base_url, headers={"X-API-Key": ADMIN_KEY}, trust_env=False, timeout=30
        ) as http:
            with anyio.fail_after(15):
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"reelhook exited; see {log}")
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
            yield process, http
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(15):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def read_db(store: Store, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(store, str):

        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(store)
            try:
                return [tuple(row) for row in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(fetch())  # in a worker thread (see query): no loop runs there
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql).fetchall()


async def query(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return await anyio.to_thread.run_sync(read_db, store, sql)


async def produce(http: httpx.AsyncClient, subscription_ids: list[str]) -> None:
    """Create the events through the API: jobs the simulator finishes (each event fans out to
    every subscriber) and test pings (one subscriber each), 32 requests at a time."""
    limit = anyio.Semaphore(32)

    async def submit(number: int) -> None:
        async with limit:
            job = {"model": "trinetra/kling-v2.5", "input": {"prompt": f"shot {number}"}}
            response = await http.post("/v1/jobs", json=job)
            assert response.status_code == 202, response.text

    async def ping(subscription_id: str) -> None:
        async with limit:
            response = await http.post(f"/v1/subscriptions/{subscription_id}/test")
            assert response.status_code == 202, response.text

    async with anyio.create_task_group() as tg:
        for number in range(JOBS):
            tg.start_soon(submit, number)
            for subscription_id in subscription_ids if number < PINGS_EACH else ():
                tg.start_soon(ping, subscription_id)


async def eventually_count(database: Store, sql: str, count: int, within: float) -> None:
    with anyio.fail_after(within):
        while True:
            if (await query(database, sql))[0][0] >= count:
                return
            await anyio.sleep(0.1)


async def until_no_delivery_is_left(http: httpx.AsyncClient) -> None:
    """Wait (a minute at most) until the API lists no pending and no in-flight delivery."""
    with anyio.fail_after(60):
        while True:
            left = [
                (await http.get("/v1/deliveries", params={"status": s, "limit": "1"})).json()[
                    "data"
                ]
                for s in ("pending", "inflight")
            ]
            if left == [[], []]:
                return
            await anyio.sleep(0.1)


async def test_a_sigkill_mid_fan_out_loses_nothing_and_duplicates_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    """One process, killed and started again on its store (SQLite, or PostgreSQL under
    ``--store postgresql``, where the new start is another node and the killed one's leases
    come back once it counts as dead)."""
    await sigkill_mid_fan_out(tmp_path, os.environ.get("REELHOOK_TEST_DATABASE_URL"))


async def test_deliveries_claimed_at_ingest_survive_a_sigkill(tmp_path: Path) -> None:
    """Callbacks' deliveries are written claimed by the ingest batch and sent at once
    (docs/architecture.md, "A delivery"); the subscribers hold every request; the process is
    SIGKILLed, so those rows stay in flight under its lease. The next start (under ``--store
    postgresql`` another node, once the dead one's heartbeat is stale) hands them back: every
    delivery arrives, the only duplicates are what was in flight at the kill."""
    subscriber = Counting()
    url = os.environ.get("REELHOOK_TEST_DATABASE_URL")
    database: Store = url if url is not None else tmp_path / "data" / "reelhook.db"
    # Mirroring off: with it, ``job.succeeded`` is published by the mirroring worker once the
    # outputs are copied, not by the ingest batch.
    env = {**environment(tmp_path, free_port(), database), "REELHOOK_MIRROR_OUTPUTS": "false"}
    log = tmp_path / "reelhook.log"
    jobs, subscribers = 20, 2
    by_status = "SELECT status, count(*) FROM deliveries GROUP BY status"
    expected = jobs * subscribers
    async with AsyncExitStack() as servers:
        paths = [f"/hook/{n}" for n in range(subscribers)]
        urls = [await servers.enter_async_context(run_server(subscriber)) for _ in paths]
        async with reelhook_process(env, log) as (process, http):
            path_of = {}
            for base, path in zip(urls, paths, strict=True):
                created = await http.post(
                    "/v1/subscriptions",
                    json={"url": f"{base}{path}", "event_types": ["job.succeeded"]},
                )
                assert created.status_code == 201, created.text
                path_of[created.json()["id"]] = path
            for number in range(jobs):
                job = {"model": "trinetra/kling-v2.5", "input": {"prompt": f"shot {number}"}}
                response = await http.post("/v1/jobs", json=job)
                assert response.status_code == 202, response.text
            # Each job's success arrives as the simulator's callback, through the ingest batch.
            await eventually_count(database, "SELECT count(*) FROM deliveries", expected, 30)
            metrics = (await http.get("/metrics")).text
            claimed = next(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("reelhook_deliveries_claimed_at_ingest_total ")
            )
            assert claimed > 0
            # Deliveries claimed at ingest went out at once, as many as each subscription's lane
            # lets out (8 by default): those are held at the gate, the rest wait claimed.
            await subscriber.wait_for_held(min(int(claimed), 8 * subscribers), within=30)
            assert subscriber.total == 0
            process.send_signal(signal.SIGKILL)
            await process.wait()
        at_kill = dict(await query(database, by_status))
        assert at_kill.get("inflight", 0) >= claimed, at_kill
        assert "succeeded" not in at_kill, at_kill
        subscriber.gate.set()
        async with reelhook_process(env, log) as (_, http):
            await until_no_delivery_is_left(http)
        after = dict(await query(database, by_status))
        pairs = await query(database, "SELECT event_id, subscription_id FROM deliveries")
    assert after == {"succeeded": expected}, after
    missing = [(e, s) for e, s in pairs if subscriber.counts[(path_of[s], e)] == 0]
    assert missing == []
    duplicates = sum(n - 1 for n in subscriber.counts.values() if n > 1)
    assert duplicates <= at_kill.get("inflight", 0)


async def test_a_sigkilled_nodes_fan_out_is_finished_by_the_surviving_node(
    tmp_path: Path, pg_database: str
) -> None:
    """Two nodes on PostgreSQL share the fan-out; one is SIGKILLed part-way. The other, never
    restarted, takes the dead node's leases over within seconds and finishes everything; the
    only duplicates are what the dead node had in flight."""
    await sigkill_mid_fan_out(tmp_path, pg_database, survivor=True)


async def sigkill_mid_fan_out(tmp_path: Path, url: str | None, *, survivor: bool = False) -> None:
    subscriber = Counting()
    database: Store = url if url is not None else tmp_path / "data" / "reelhook.db"
    env = environment(tmp_path, free_port(), database)
    log = tmp_path / "reelhook.log"
    events = 2 * JOBS + SUBSCRIBERS * PINGS_EACH
    expected = 2 * JOBS * SUBSCRIBERS + SUBSCRIBERS * PINGS_EACH
    by_status = "SELECT status, count(*) FROM deliveries GROUP BY status"
    async with AsyncExitStack() as servers:
        # Several subscriber servers, one path each, all counted by the same app.
        paths = [f"/hook/{n}" for n in range(SUBSCRIBERS)]
        urls = [await servers.enter_async_context(run_server(subscriber)) for _ in paths]
        # The second node (two-node test): running throughout, never killed.
        other: httpx.AsyncClient | None = None
        if survivor:
            other_env = environment(tmp_path / "other", free_port(), database)
            _, other = await servers.enter_async_context(
                reelhook_process(other_env, tmp_path / "survivor.log")
            )
        # Before the node to be killed starts, the only node alive is the survivor.
        survivors = (
            {row[0] for row in await query(database, "SELECT id FROM nodes")} if survivor else set()
        )

        # 1. Subscribe, then produce every event while the subscribers hold their requests, so
        #    that all of the fan-out is still to come when the last event exists.
        async with reelhook_process(env, log) as (process, http):
            secrets, path_of = {}, {}
            for url, path in zip(urls, paths, strict=True):
                created = await http.post("/v1/subscriptions", json={"url": f"{url}{path}"})
                assert created.status_code == 201, created.text
                secrets[path] = created.json()["secret"]
                path_of[created.json()["id"]] = path
            await produce(http, list(path_of))
            await eventually_count(database, "SELECT count(*) FROM events", events, within=30)
            await eventually_count(database, "SELECT count(*) FROM deliveries", expected, 5)

            # 2. Let the fan-out run, and kill the process part-way through it.
            subscriber.gate.set()
            await subscriber.wait_for_total(int(expected * KILL_AT), within=60)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        received_at_kill = subscriber.total
        at_kill = dict(await query(database, by_status))
        in_flight_at_kill = at_kill.get("inflight", 0)
        if survivor:
            # The bound is what the killed node held, not the survivor's own claims.
            owners = dict(
                await query(
                    database,
                    "SELECT lease_owner, count(*) FROM deliveries WHERE status = 'inflight' "
                    "GROUP BY lease_owner",
                )
            )
            in_flight_at_kill = sum(n for owner, n in owners.items() if owner not in survivors)
        # On a loaded machine a request held at the gate can outlast the delivery timeout: that
        # attempt is recorded as failed and sent again, a duplicate at-least-once allows. Each
        # such attempt is on record, so the bound below stays exact.
        failed_before_kill = (
            await query(database, "SELECT count(*) FROM attempts WHERE status_code IS NULL")
        )[0][0]

        # 3. Start again on the same data (one node), or let the survivor go on (two nodes);
        #    wait until no delivery is left to do.
        async with AsyncExitStack() as restarted:
            if other is None:
                _, other = await restarted.enter_async_context(reelhook_process(env, log))
            assert other is not None
            await until_no_delivery_is_left(other)
        after = dict(await query(database, by_status))
        pairs = await query(database, "SELECT event_id, subscription_id FROM deliveries")
        fan_out = dict(await query(database, "SELECT type, count(*) FROM events GROUP BY type"))

    # Every job event went to all subscribers, every ping to its own: the outbox was complete.
    pings = SUBSCRIBERS * PINGS_EACH
    assert fan_out == {"job.submitted": JOBS, "job.succeeded": JOBS, "ping": pings}, fan_out
    assert len(pairs) == expected
    # Killed mid-way: some deliveries were done, some were not.
    assert 0 < at_kill.get("succeeded", 0) < expected, at_kill
    assert after == {"succeeded": expected}, after
    missing = [(e, s) for e, s in pairs if subscriber.counts[(path_of[s], e)] == 0]
    assert missing == [], f"{len(missing)} deliveries never reached their subscriber"
    strays = set(subscriber.counts) - {(path_of[s], e) for e, s in pairs}
    assert strays == set()
    duplicates = sum(n - 1 for n in subscriber.counts.values() if n > 1)
    assert duplicates <= in_flight_at_kill + failed_before_kill, (
        duplicates,
        in_flight_at_kill,
        failed_before_kill,
    )
    assert subscriber.total == expected + duplicates
    for path, (body, headers) in subscriber.first.items():
        Webhook(secrets[path]).verify(body, headers)
    print(
        f"\ncrash test: {events} events, {expected} deliveries; killed after {received_at_kill} "
        f"received; at the kill {at_kill}; {duplicates} duplicates (bound {in_flight_at_kill})"
    )
