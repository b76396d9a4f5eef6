"""Several nodes on one PostgreSQL database: each guarantee SQLite's single writer gave for free,
held across nodes (docs/scaling.md). Every test here fails without the mechanism it names.

A node is a :class:`PostgresDatabase` of its own (own pool, own write order, own node id), as a
``reelhook serve`` process has; the cluster is the session's throwaway PostgreSQL
(tests/postgres.py), so these run whatever ``--store`` says.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from service.access.callers import hash_key
from service.app import bootstrap
from service.core.ids import new_id
from service.core.models import (
    Cost,
    DeliveryStatus,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Output,
    ProviderUpdate,
)
from service.core.retry import RetrySchedule
from service.delivery.publisher import Publisher
from service.jobs import lifecycle
from service.jobs.held_requests import HeldRequests
from service.ops.metrics import Metrics
from service.ops.ratelimit import SharedRateLimiter
from service.storage import deliveries, events, jobs, submissions, subscriptions
from service.storage.announcements import Work
from service.storage.blobs import LocalBlobStore
from service.storage.deliveries import AttemptOutcome, Claimed
from service.storage.events import NewEvent
from service.storage.postgres import PostgresDatabase
from service.storage.submissions import SubmitClaim
from tests.conftest import settings_for
from tests.support import ADMIN_KEY

pytestmark = pytest.mark.anyio

NOW = time.time()


@asynccontextmanager
async def cluster(
    url: str, count: int, *, node_timeout: float = 10.0
) -> AsyncIterator[list[PostgresDatabase]]:
    """``count`` nodes on the database at ``url``."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                PostgresDatabase.open_url(url, node_timeout=node_timeout)
            )
            for _ in range(count)
        ]


async def subscription(db: PostgresDatabase) -> str:
    sub_id = new_id("sub")
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO subscriptions (id, owner_key_id, url, secret, created_at, updated_at) "
            "VALUES (?, 'key_test', 'http://127.0.0.1:9/hook', 'whsec_test', ?, ?)",
            (sub_id, NOW, NOW),
        )
    return sub_id


async def due_deliveries(db: PostgresDatabase, sub_id: str, count: int) -> None:
    batch = [
        NewEvent(new_id("evt"), "ping", None, NOW, b"{}", [sub_id], first_attempt_at=NOW)
        for _ in range(count)
    ]
    async with db.transaction() as conn:
        await events.append(conn, batch)


async def claim(db: PostgresDatabase, *, cap: int = 8, limit: int = 64) -> list[Claimed]:
    async with db.transaction(durable=False) as conn:
        now = time.time()
        ready = await deliveries.due_subscriptions(conn, skip=[], now=now, cap=cap * 4, limit=limit)
        claimed = await deliveries.claim_due(
            conn,
            now=now,
            lease_until=now + 60,
            rooms=deliveries.rooms_for(ready, {}, per_subscription=cap * 4, limit=limit),
            owner=db.node_id,
            cluster_cap=cap,
        )
    return claimed


async def in_flight(db: PostgresDatabase) -> list[tuple[str, str, int]]:
    rows = await db.reader.execute_fetchall(
        "SELECT id, lease_owner, claim_token FROM deliveries WHERE status = 'inflight' ORDER BY id"
    )
    return [(row["id"], row["lease_owner"], row["claim_token"]) for row in rows]


def succeeded(delivery: Claimed) -> AttemptOutcome:
    return AttemptOutcome(
        delivery_id=delivery.id,
        subscription_id=delivery.subscription_id,
        attempted_at=time.time(),
        latency_ms=1.0,
        status=DeliveryStatus.SUCCEEDED,
        status_code=200,
        token=delivery.token,
    )


async def record(db: PostgresDatabase, outcomes: list[AttemptOutcome]) -> list[AttemptOutcome]:
    async with db.transaction(durable=False) as conn:
        return await deliveries.record(conn, outcomes)


async def declare_dead(db: PostgresDatabase, node_id: str) -> None:
    """Age a node's heartbeat past any timeout, as if it had stopped (SIGSTOP, SIGKILL)."""
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE nodes SET heartbeat_at = heartbeat_at - 3600 WHERE id = ?", (node_id,)
        )


# --- trap 1: per-subscription caps -------------------------------------------------------------


async def test_a_subscription_cap_holds_across_four_nodes_claiming_at_once(
    pg_database: str,
) -> None:
    """Four nodes claim at once for one subscription capped at 8: 8 in flight in all, not 8 per
    node (unlocked claimers counting in their own snapshots put 32 in flight)."""
    async with cluster(pg_database, 4) as nodes:
        sub_id = await subscription(nodes[0])
        await due_deliveries(nodes[0], sub_id, 100)
        claims: list[list[Claimed]] = [[] for _ in nodes]

        async def claim_on(index: int) -> None:
            claims[index] = await claim(nodes[index], cap=8)

        async with anyio.create_task_group() as tg:
            for index in range(len(nodes)):
                tg.start_soon(claim_on, index)
        assert sum(len(c) for c in claims) == 8
        assert len(await in_flight(nodes[0])) == 8
        # A second round claims nothing until one of the eight is recorded; then exactly one.
        assert [len(await claim(node, cap=8)) for node in nodes] == [0, 0, 0, 0]
        first = next(c for c in claims if c)[0]
        owner = next(node for node, c in zip(nodes, claims, strict=True) if first in c)
        assert await record(owner, [succeeded(first)])
        assert sum([len(await claim(node, cap=8)) for node in nodes]) == 1


# --- trap 3: leases owned by a node, fenced claims --------------------------------------------


async def test_a_late_outcome_from_a_node_that_lost_its_lease_is_refused(pg_database: str) -> None:
    """Node A claims, stalls past its heartbeat; the leader hands A's lease back, B claims the
    delivery under a new token; A's late outcome is refused, B's is recorded."""
    async with cluster(pg_database, 2) as (a, b):
        sub_id = await subscription(a)
        await due_deliveries(a, sub_id, 1)
        (mine,) = await claim(a)
        await declare_dead(b, a.node_id)
        await b.upkeep_once()  # B leads (no one else renews the lease) and sweeps A out
        assert b.is_leader
        (taken,) = await claim(b)
        assert taken.id == mine.id and taken.token != mine.token

        assert await record(a, [succeeded(mine)]) == []
        assert await in_flight(a) == [(mine.id, b.node_id, taken.token)]
        attempts = await a.reader.execute_fetchall("SELECT count(*) FROM attempts")
        assert attempts[0][0] == 0, "the refused outcome left no attempt behind"

        outcome = succeeded(taken)
        assert await record(b, [outcome]) == [outcome]
        assert await in_flight(a) == []
        # A's heartbeat finds out it was declared dead, and A counts as alive again afterwards.
        await a.upkeep_once()
        assert not a.is_leader


async def test_a_node_declared_dead_acts_on_none_of_the_claims_of_its_old_life(
    pg_database: str,
) -> None:
    """A node paused past its heartbeat (SIGSTOP) and swept learns at its next heartbeat that it
    was declared dead: claims made before are no longer its own, so its dispatcher drops them
    unsent instead of sending what another node now sends (tests/test_multinode.py shows it
    with real processes); claims of its new life are its own again."""
    async with cluster(pg_database, 2) as (a, b):
        before = a.life
        assert await a.still_holds(before)
        await declare_dead(b, a.node_id)
        await b.upkeep_once()  # B leads and sweeps A out
        await a.upkeep_once()  # A's heartbeat finds its row gone
        assert a.life != before
        assert not await a.still_holds(before)
        assert await a.still_holds(a.life)


async def test_starting_a_node_never_releases_a_live_nodes_leases(pg_database: str) -> None:
    """A node starting up hands back only leases of dead or unknown nodes: a running node's
    claims stay its own (releasing every lease at start-up would steal them)."""
    async with cluster(pg_database, 1) as (a,):
        sub_id = await subscription(a)
        await due_deliveries(a, sub_id, 3)
        claimed = await claim(a)
        assert len(claimed) == 3
        async with (
            cluster(pg_database, 1) as (b,),
            b.transaction() as conn,
        ):
            # What a dispatcher does as it starts (service/delivery/dispatcher.py).
            assert await deliveries.release_orphaned(conn, time.time(), node_timeout=10) == 0
        held = await in_flight(a)
        assert [(owner, token) for _, owner, token in held] == [(a.node_id, claimed[0].token)] * 3
        # ... while the leases of a node that died are handed back at once.
        await declare_dead(a, a.node_id)
        async with a.transaction() as conn:
            assert await deliveries.release_orphaned(conn, time.time(), node_timeout=10) == 3


async def test_a_dead_nodes_work_is_taken_over_within_seconds(pg_database: str) -> None:
    """A node stops heartbeating (killed); the other node's own upkeep loop finds it dead after
    the node timeout and its deliveries become claimable again, without anyone restarting."""
    async with cluster(pg_database, 2, node_timeout=0.5) as (a, b):
        sub_id = await subscription(a)
        await due_deliveries(a, sub_id, 5)
        assert len(await claim(a)) == 5
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)  # A runs no upkeep at all: as good as dead
            with anyio.fail_after(10):
                while len(taken := await claim(b)) < 5:  # noqa: ASYNC110 - asks the database
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert {owner for _, owner, _ in await in_flight(b)} == {b.node_id}
        assert len(taken) == 5


# --- trap 2: the event log has no gaps ---------------------------------------------------------


async def test_a_reader_tailing_the_log_misses_no_event_of_concurrent_appenders(
    pg_database: str,
) -> None:
    """A takes seq n and commits late; B takes n+1 meanwhile. Unserialised, a reader sees n+1,
    moves its cursor past n and never sees n. Appends serialised to commit order: no gap."""
    async with cluster(pg_database, 3) as (a, b, reader):
        sub_id = await subscription(a)
        first = NewEvent(new_id("evt"), "ping", None, NOW, b"{}", [sub_id], NOW)
        second = NewEvent(new_id("evt"), "ping", None, NOW, b"{}", [sub_id], NOW)
        seen: list[str] = []

        async def tail() -> None:
            after = seen_seq[0]
            rows = await events.list_page(
                reader.reader, after_seq=after, types=[], owner_key_id=None, limit=100
            )
            for row in rows:
                seen.append(row["id"])
                seen_seq[0] = row["seq"]

        seen_seq = [0]
        b_done = anyio.Event()

        async def append_on_b() -> None:
            async with b.transaction() as conn:
                await events.append(conn, [second])
            b_done.set()

        async with anyio.create_task_group() as tg, a.transaction() as conn:
            await events.append(conn, [first])
            tg.start_soon(append_on_b)
            # B either finished (unserialised) or waits for A's lock: the reader tails then.
            with anyio.fail_after(10):
                while not b_done.is_set() and not await waiting_for_a_lock(reader):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await tail()
            # A committed; B goes on.
        await tail()
        assert seen == [first.id, second.id]


async def waiting_for_a_lock(db: PostgresDatabase) -> bool:
    rows = await db.reader.execute_fetchall(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )
    return bool(rows[0][0])


# --- trap 4: read-modify-write under concurrent nodes ------------------------------------------


def a_job(number: int) -> Job:
    return Job(
        id=f"job_01JTESTCLUSTER{number:012d}",
        owner_key_id="key_test",
        model="trinetra/kling-x",
        provider="trinetra",
        status=JobStatus.SUBMITTED,
        input={"prompt": "A lighthouse"},
        cost=Cost(estimated=1.0, unit="credits"),
        created_at=NOW,
        deadline_at=NOW - 1,  # overdue
        provider_job_id=f"tri-{number}",
    )


async def test_a_deletion_locks_its_deliveries_in_the_order_outcome_recording_does(
    pg_database: str,
) -> None:
    """Deleting a subscription cancels its open deliveries; recording outcomes locks rows in id
    order. Were the deletion to lock in the order its plan reads rows, a node recording outcomes
    on one node and a deletion on another could each hold a row the other waits for: a deadlock,
    one of them aborted. Here the row read first has the higher id; while the recorder holds the
    lower one, the waiting deletion must not hold the higher (taken in id order, it waits first
    for the lower)."""
    async with cluster(pg_database, 2) as (a, b):
        sub_id = await subscription(a)
        await due_deliveries(a, sub_id, 2)
        async with a.transaction() as conn:
            [(low,), (high,)] = await conn.execute_fetchall("SELECT id FROM deliveries ORDER BY id")
            # Whatever the plan, a scan now meets the higher id first: the lower one moves to the
            # end of the table, and the higher one is in flight ('inflight' sorts before
            # 'pending' in the (subscription_id, status, id) index).
            lowest = "del_" + "0" * (len(low) - 4)
            await conn.execute("UPDATE deliveries SET id = ? WHERE id = ?", (lowest, low))
            await conn.execute(
                "UPDATE deliveries SET status = 'inflight', claim_token = 1 WHERE id = ?", (high,)
            )
        async with a.connection() as holder:
            holding = holder.raw.transaction()
            await holding.start()
            await holder.raw.fetch("SELECT id FROM deliveries WHERE id = $1 FOR UPDATE", lowest)

            async def delete() -> None:
                async with b.transaction() as conn:
                    assert await subscriptions.delete(conn, sub_id)

            probe = await asyncpg.connect(pg_database)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(delete)
                    with anyio.fail_after(10):
                        while True:  # until the deletion waits for the held row
                            waiting = await probe.fetchval(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event_type = 'Lock'"
                            )
                            if waiting:
                                break
                            await anyio.sleep(0.02)
                    async with probe.transaction():
                        # NOWAIT: raises if the waiting deletion already holds the higher row.
                        await probe.fetch(
                            "SELECT id FROM deliveries WHERE id = $1 FOR UPDATE NOWAIT", high
                        )
                    await holding.commit()  # the deletion goes on
            finally:
                await probe.close()
        rows = await a.reader.execute_fetchall("SELECT status FROM deliveries")
        assert [row["status"] for row in rows] == ["canceled", "canceled"]


@pytest.mark.parametrize("configured", [True, False], ids=["REELHOOK_ADMIN_KEY", "generated"])
async def test_nodes_starting_together_on_an_empty_database_make_one_admin_key(
    pg_database: str, tmp_path: Path, configured: bool
) -> None:
    """Each starting node makes sure an admin key exists. Four at once on an empty database: the
    configured key is registered once (before, the second insert failed on the unique digest and
    its node did not start), or one key is generated (not one per node)."""
    settings = settings_for(
        tmp_path / "data", DATABASE_URL=pg_database, ADMIN_KEY=ADMIN_KEY if configured else ""
    )
    async with cluster(pg_database, 4) as nodes:
        generated: list[str | None] = []

        async def start(node: PostgresDatabase) -> None:
            generated.append(await bootstrap.admin_key(node, settings, time.time))

        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(start, node)
        rows = await nodes[0].reader.execute_fetchall("SELECT key_hash FROM api_keys")
    assert len(rows) == 1
    made = [key for key in generated if key is not None]
    if configured:
        assert made == [] and rows[0]["key_hash"] == hash_key(ADMIN_KEY)
    else:
        assert len(made) == 1 and rows[0]["key_hash"] == hash_key(made[0])


async def test_one_callback_at_two_nodes_yields_one_terminal_event(pg_database: str) -> None:
    """The same terminal callback applied by two nodes at once: the job moves once, one
    job.succeeded (without row locks both read 'submitted' and both announce)."""
    publisher = Publisher(lambda digest, media_type: "")
    update = ProviderUpdate(
        "tri-1", JobStatus.SUCCEEDED, outputs=(Output(url="https://cdn.example/a.mp4"),)
    )
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            await jobs.insert(conn, a_job(1))
        for _ in range(3):  # rounds, so the race gets its chances

            async def apply(node: PostgresDatabase) -> None:
                await lifecycle.apply_update(
                    node,
                    publisher,
                    job_id=a_job(1).id,
                    provider="trinetra",
                    update=update,
                    raw=b"{}",
                    now=time.time(),
                )

            async with anyio.create_task_group() as tg:
                for node in (a, b, a, b):
                    tg.start_soon(apply, node)
        rows = await a.reader.execute_fetchall(
            "SELECT type FROM events WHERE job_id = ?", (a_job(1).id,)
        )
        assert [row["type"] for row in rows] == ["job.succeeded"]


async def test_a_callback_replayed_at_two_nodes_at_once_is_stored_once(pg_database: str) -> None:
    """The same verified body stored by two nodes at once (a provider retrying against a
    load balancer): one stored copy, the others counted on it (the unique index decides, where
    a look-up first would let both insert)."""
    publisher = Publisher(lambda digest, media_type: "")
    update = ProviderUpdate("tri-1", JobStatus.RUNNING)
    raw = b'{"id": "tri-1", "status": "processing"}'
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            await jobs.insert(conn, a_job(1))

        async def apply(node: PostgresDatabase) -> None:
            await lifecycle.apply_update(
                node,
                publisher,
                job_id=a_job(1).id,
                provider="trinetra",
                update=update,
                raw=raw,
                now=time.time(),
            )

        async with anyio.create_task_group() as tg:
            for node in (a, b) * 4:
                tg.start_soon(apply, node)
        rows = await a.reader.execute_fetchall(
            "SELECT replays, body FROM callbacks WHERE job_id = ?", (a_job(1).id,)
        )
        assert [(row["replays"], bytes(row["body"])) for row in rows] == [(7, raw)]


async def test_two_nodes_expiring_at_once_expire_each_job_once(pg_database: str) -> None:
    """Two nodes that both believe they lead (a paused leader resuming) expire the same overdue
    jobs at once: exactly one job.expired each."""
    publisher = Publisher(lambda digest, media_type: "")
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            for number in range(40):
                await jobs.insert(conn, dataclasses.replace(a_job(number), provider_job_id=None))
        expired: list[int] = []

        async def expire(node: PostgresDatabase) -> None:
            while batch := await lifecycle.expire_overdue(node, publisher, time.time(), 5):
                expired.append(len(batch))

        async with anyio.create_task_group() as tg:
            tg.start_soon(expire, a)
            tg.start_soon(expire, b)
        rows = await a.reader.execute_fetchall(
            "SELECT job_id, count(*) AS n FROM events WHERE type = 'job.expired' GROUP BY job_id"
        )
        assert len(rows) == 40 and {row["n"] for row in rows} == {1}
        assert sum(expired) == 40


# --- singletons -------------------------------------------------------------------------------


async def test_one_leader_at_a_time_and_the_lease_moves_when_it_leaves(pg_database: str) -> None:
    async with cluster(pg_database, 1) as (a,):
        async with cluster(pg_database, 2) as (b, c):
            for node in (b, c, b, c):
                await node.upkeep_once()
            assert [b.is_leader, c.is_leader] == [True, False]
        # B left (its lease with it): the next to renew takes over.
        await a.upkeep_once()
        assert a.is_leader


async def test_metrics_show_the_nodes_alive_and_whether_this_one_leads(pg_database: str) -> None:
    async with cluster(pg_database, 3) as nodes:
        for node in nodes:
            await node.upkeep_once()
        metrics = Metrics()
        metrics.cluster(await nodes[1].nodes_alive(), nodes[1].is_leader)
        text = metrics.render(None)[0].decode()
        assert "reelhook_cluster_nodes_alive 3.0" in text
        assert "reelhook_cluster_leader 0.0" in text
        await declare_dead(nodes[0], nodes[2].node_id)
        assert await nodes[0].nodes_alive() == 2


async def test_a_stalled_leader_loses_the_lease_once_it_expires(pg_database: str) -> None:
    async with cluster(pg_database, 2, node_timeout=0.3) as (a, b):
        await a.upkeep_once()
        await b.upkeep_once()
        assert (a.is_leader, b.is_leader) == (True, False)
        await anyio.sleep(0.4)  # A stalls past its lease (no renewal)
        await b.upkeep_once()
        await a.upkeep_once()
        assert (a.is_leader, b.is_leader) == (False, True)


# --- wake-ups across nodes ----------------------------------------------------------------------


async def test_a_commit_on_one_node_wakes_the_others_even_after_the_listener_dropped(
    pg_database: str,
) -> None:
    """Work committed on A wakes B's workers through LISTEN/NOTIFY; when B's listening
    connection is killed, B reconnects, wakes every worker once (work may have been committed
    meanwhile) and hears A again."""
    async with cluster(pg_database, 2) as (a, b):
        woken = anyio.Event()

        def wake() -> None:
            woken.set()

        b.subscribe(Work.DELIVERIES, wake)
        b.backstop = 3600.0  # only a notification (or a reconnect) may wake B here
        sub_id = await subscription(a)
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)
            with anyio.fail_after(10):
                await b.listening.wait()
                woken = anyio.Event()
                await due_deliveries(a, sub_id, 1)
                await woken.wait()
            woken = anyio.Event()
            async with a.connection() as conn:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            with anyio.fail_after(10):
                await woken.wait()  # the reconnect's wake-up
                while not b.listening.is_set():  # noqa: ASYNC110 - a new Event per connection
                    await anyio.sleep(0.01)
                woken = anyio.Event()
                await due_deliveries(a, sub_id, 1)
                await woken.wait()
            tg.cancel_scope.cancel()


# --- the per-key rate limit ---------------------------------------------------------------------


async def test_a_keys_rate_limit_is_shared_by_every_node(pg_database: str) -> None:
    """Three nodes serving one key with a burst of 10 (and almost no refill) allow 10 requests
    in all, not 10 each."""
    async with cluster(pg_database, 3) as nodes:
        limiters = [SharedRateLimiter(node, rate=0.001, burst=10, chunk=2) for node in nodes]
        allowed = 0
        for _ in range(10):
            for limiter in limiters:
                allowed += await limiter.acquire("key_shared") == 0.0
        assert allowed == 10
        refused = await limiters[0].acquire("key_shared")
        assert refused > 0, "a refused request is told how long to wait"


# --- Segmind held requests ----------------------------------------------------------------------


async def hold(node: PostgresDatabase, publisher: Publisher) -> list[SubmitClaim]:
    async with node.transaction() as conn:
        return await lifecycle.hold_due_requests(
            conn,
            publisher,
            ["segmind"],
            time.time(),
            10,
            held_by=node.node_id,
            node_timeout=node.node_timeout,
        )


async def test_a_held_request_is_recovered_only_once_its_node_is_dead(pg_database: str) -> None:
    """Node A holds a Segmind job's request; B starting up leaves it alone while A lives (ending
    it 'interrupted' would fail a job A is about to finish), and recovers it once A is dead."""
    publisher = Publisher(lambda digest, media_type: "")
    held = dataclasses.replace(
        a_job(7), provider="segmind", status=JobStatus.PENDING, provider_job_id=None
    )
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            await jobs.insert(conn, held)
            await submissions.schedule(conn, held.id, next_at=NOW - 1)
        claimed = await hold(a, publisher)
        assert [claim.job.id for claim in claimed] == [held.id]
        assert await submissions.in_flight(b.reader, ["segmind"], alive_within=10) == []
        await declare_dead(b, a.node_id)
        (orphan,) = await submissions.in_flight(b.reader, ["segmind"], alive_within=10)
        assert orphan.id == held.id
        # One process owns a SQLite file: there every held request is the previous run's.
        assert len(await submissions.in_flight(b.reader, ["segmind"])) == 1


def held_requests(node: PostgresDatabase, blobs: Path, client: httpx.AsyncClient) -> HeldRequests:
    """A node's Segmind worker with Segmind not configured: only its recovery runs."""
    return HeldRequests(
        db=node,
        publisher=Publisher(lambda digest, media_type: ""),
        client=client,
        blobs=LocalBlobStore(blobs),
        endpoint=None,
        clock=time.time,
        concurrency=1,
        timeout=60,
        max_bytes=1 << 20,
        retry_schedule=RetrySchedule.for_retries((1.0,)),
    )


async def test_the_leaders_sweep_recovers_a_dead_nodes_held_request_while_the_others_run(
    pg_database: str, tmp_path: Path
) -> None:
    """A holds a Segmind request; B leads. While A heartbeats, B's recovery leaves the request
    alone; once A stops, B's stale-node sweep declares it dead and B ends the job
    'interrupted', with no node starting (before, only a starting node recovered it)."""
    publisher = Publisher(lambda digest, media_type: "")
    held = dataclasses.replace(
        a_job(8), provider="segmind", status=JobStatus.PENDING, provider_job_id=None
    )
    async with cluster(pg_database, 2, node_timeout=2.0) as (a, b), httpx.AsyncClient() as client:
        async with a.transaction() as conn:
            await jobs.insert(conn, held)
            await submissions.schedule(conn, held.id, next_at=NOW - 1)
        await hold(a, publisher)
        await b.upkeep_once()
        await a.upkeep_once()
        assert (a.is_leader, b.is_leader) == (False, True)
        recovery = held_requests(b, tmp_path, client)
        await recovery.sweep_once()  # the leader, while A is alive: nothing to recover
        job = await jobs.get(b.reader, held.id)
        assert job is not None and job.status is JobStatus.SUBMITTED
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)  # B heartbeats, leads and sweeps; A has stopped
            tg.start_soon(recovery.run)
            with anyio.fail_after(15):
                while (job := await jobs.get(b.reader, held.id)) is not None and (  # noqa: ASYNC110 - asks the database
                    job.status is JobStatus.SUBMITTED
                ):
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error is not None and job.error.kind is ErrorKind.INTERRUPTED
        rows = await b.reader.execute_fetchall(
            "SELECT type FROM events WHERE job_id = ? ORDER BY seq", (held.id,)
        )
        assert [row["type"] for row in rows] == ["job.submitted", "job.failed"]


# --- provider submit retries: owned and fenced claims --------------------------------------------


async def claim_submit(
    node: PostgresDatabase, now: float, skip: tuple[str, ...] = ()
) -> list[SubmitClaim]:
    async with node.transaction() as conn:
        return await submissions.claim_due(
            conn,
            providers=["trinetra"],
            now=now,
            lease_until=now + 60,
            limit=10,
            owner=node.node_id,
            node_timeout=node.node_timeout,
            skip=skip,
        )


async def test_a_submit_in_flight_on_a_live_node_is_never_claimed_again(pg_database: str) -> None:
    """A claims a job's submit and the provider is slow: long after the lease ran out, neither B
    nor A's own retry worker claims it again while A lives and runs the attempt (before, the
    expired lease made it due and the paid request went out twice)."""
    pending = dataclasses.replace(a_job(20), status=JobStatus.PENDING, provider_job_id=None)
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            await jobs.insert(conn, pending)
            await submissions.schedule(conn, pending.id, next_at=NOW - 1)
        (mine,) = await claim_submit(a, time.time())
        later = time.time() + 3600  # the lease is long over; A is alive and still sending
        assert await claim_submit(b, later) == []
        assert (
            await submissions.next_due_at(
                b.reader, ["trinetra"], owner=b.node_id, node_timeout=b.node_timeout
            )
            is None
        ), "B is not woken for a claim it may not take"
        assert await claim_submit(a, later, skip=(pending.id,)) == []
        # Once A's attempt is over (or failed without an outcome), A may take it again.
        (again,) = await claim_submit(a, later)
        assert again.token != mine.token and again.attempt == mine.attempt + 1


async def test_a_late_submit_outcome_from_a_node_that_lost_its_claim_is_refused(
    pg_database: str,
) -> None:
    """A claims a submit and stalls past its heartbeat; the leader's sweep hands the claim back at
    once, B claims it under a new token; A's late acceptance is refused, B's is recorded: one
    job.submitted, B's provider job id."""
    publisher = Publisher(lambda digest, media_type: "")
    pending = dataclasses.replace(a_job(21), status=JobStatus.PENDING, provider_job_id=None)
    async with cluster(pg_database, 2) as (a, b):
        async with a.transaction() as conn:
            await jobs.insert(conn, pending)
            await submissions.schedule(conn, pending.id, next_at=NOW - 1)
        (mine,) = await claim_submit(a, time.time())
        await declare_dead(b, a.node_id)
        await b.upkeep_once()  # B leads and sweeps A out: its claim is due now, unowned
        assert b.is_leader
        (taken,) = await claim_submit(b, time.time())
        assert taken.token != mine.token

        late, moved = await lifecycle.mark_submitted(
            a, publisher, pending.id, "tri-from-a", time.time(), token=mine.token
        )
        assert not moved and late is not None and late.status is JobStatus.PENDING
        assert not await lifecycle.defer_submit(
            a, pending.id, time.time() + 5, "timeout", time.time(), token=mine.token
        )
        assert not await lifecycle.refuse(
            a, publisher, pending.id, JobError(ErrorKind.PROVIDER_ERROR, "x"), time.time(),
            token=mine.token,
        )  # fmt: skip
        current, moved = await lifecycle.mark_submitted(
            b, publisher, pending.id, "tri-from-b", time.time(), token=taken.token
        )
        assert moved and current is not None and current.provider_job_id == "tri-from-b"
        rows = await a.reader.execute_fetchall(
            "SELECT type FROM events WHERE job_id = ?", (pending.id,)
        )
        assert [row["type"] for row in rows] == ["job.submitted"]


# --- Idempotency-Key ----------------------------------------------------------------------------


async def test_one_idempotency_key_on_two_nodes_at_once_makes_one_job(pg_database: str) -> None:
    """Two nodes create a job under one Idempotency-Key at once, as Submitter.create does (hold
    the key, look it up, insert): B waits for A's key and then finds A's job. Without the key's
    lock B finds nothing and its insert breaks the unique index once A commits (a 500)."""
    async with cluster(pg_database, 2) as (a, b):
        found_by_b: list[tuple[Job, str] | None] = []
        a_inserted = anyio.Event()

        async def create_on_b() -> None:
            await a_inserted.wait()
            async with b.transaction() as conn:
                await jobs.lock_idempotency_key(conn, "key_test", "order-1")
                found = await jobs.find_by_idempotency_key(conn, "key_test", "order-1", NOW - 60)
                found_by_b.append(found)
                if found is None:
                    await jobs.insert(conn, a_job(31), idempotency_key="order-1", request_hash="h")

        async with anyio.create_task_group() as tg:
            tg.start_soon(create_on_b)
            async with a.transaction() as conn:
                await jobs.lock_idempotency_key(conn, "key_test", "order-1")
                assert await jobs.find_by_idempotency_key(conn, "key_test", "order-1", 0) is None
                await jobs.insert(conn, a_job(30), idempotency_key="order-1", request_hash="h")
                a_inserted.set()
                with anyio.fail_after(10):
                    while not await waiting_for_a_lock(a):  # noqa: ASYNC110 - asks the database
                        await anyio.sleep(0.01)
        ((replayed, request_hash),) = [found for found in found_by_b if found is not None]
        assert (replayed.id, request_hash) == (a_job(30).id, "h")
        rows = await a.reader.execute_fetchall("SELECT count(*) FROM jobs")
        assert rows[0][0] == 1
