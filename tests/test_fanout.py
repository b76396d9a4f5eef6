"""Deferred fan-out: an event matching many subscriptions is stored with one ``event_fanouts`` row,
which the dispatcher expands into ordinary delivery rows in bounded steps (docs/architecture.md,
"A delivery"). Every subscription gets every event exactly once, FIFO subscriptions in order, a
subscription deleted before expansion gets nothing, a restart in between loses nothing, and the
outbox depth, retention and copies count what is not expanded yet. Both stores; the two-node
expansion runs on PostgreSQL.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.core.models import Cost, Job, JobStatus, SubscriptionStatus
from service.core.retry import RetrySchedule
from service.delivery.dispatcher import Dispatcher
from service.delivery.publisher import FANOUT_THRESHOLD, Publisher
from service.delivery.sender import Sender
from service.ops.backup import backup, restore
from service.storage import fanouts, retention, stats, subscriptions
from service.storage.announcements import Work
from service.storage.database import Database
from service.storage.transfer import copy_store
from tests.conftest import SettingsFactory
from tests.servers import Sink, loopback_socket, run_server
from tests.support import served, subscription_row

pytestmark = pytest.mark.anyio


def _no_file(digest: str, media_type: str) -> str:
    return ""


def sub_ids(count: int, prefix: str = "sub_p") -> list[str]:
    return [f"{prefix}{n:03d}" for n in range(count)]


async def add_subscriptions(
    db: Database, ids: Sequence[str], url: str, ordering: str = "none"
) -> None:
    async with db.transaction() as conn:
        for sub_id in ids:
            await subscriptions.insert(
                conn, subscription_row(sub_id, f"{url}/{sub_id}", at=time.time(), ordering=ordering)
            )


async def publish(db: Database, publisher: Publisher, count: int, first: int = 0) -> list[str]:
    """``count`` job events (``data.n`` numbered from ``first``), one transaction; their ids."""
    async with db.transaction() as conn:
        return [
            await publisher.publish(conn, "job.succeeded", time.time(), data={"n": n})
            for n in range(first, first + count)
        ]


async def count(db: Database, sql: str, params: Sequence[Any] = ()) -> int:
    rows = await db.reader.execute_fetchall(sql, params)
    return int(next(iter(rows))[0])


async def until(db: Database, sql: str, expected: int) -> None:
    """Read ``sql``'s count until it is ``expected``; fail after 10 s."""
    with anyio.fail_after(10):
        while await count(db, sql) != expected:  # noqa: ASYNC110 - a store has no event to await
            await anyio.sleep(0.05)


async def pairs(db: Database) -> Counter[tuple[str, str]]:
    """How many delivery rows each (event, subscription) has."""
    rows = await db.reader.execute_fetchall("SELECT event_id, subscription_id FROM deliveries")
    return Counter((row[0], row[1]) for row in rows)


@asynccontextmanager
async def dispatching(db: Database) -> AsyncIterator[Dispatcher]:
    """A dispatcher on ``db``, woken by its commits as the app wires it, until the block ends."""
    async with Sender.session(
        allow=[ip_network("127.0.0.0/8")], timeout=30, concurrency=64
    ) as session:
        dispatcher = Dispatcher(
            db,
            Sender(session),
            RetrySchedule.for_deliveries((0.0, 0.2)),
            clock=time.time,
            lease=60,
            concurrency=64,
            per_subscription=8,
            publisher=Publisher(_no_file),
        )
        db.subscribe(Work.DELIVERIES, dispatcher.wake)
        db.subscribe(Work.FANOUTS, dispatcher.expand_fanouts)
        async with anyio.create_task_group() as tg:
            # The store's own work: on PostgreSQL the LISTEN connection that delivers wake-ups.
            tg.start_soon(db.run)
            if db.dialect == "postgresql":
                with anyio.fail_after(10):
                    await db.listening.wait()  # type: ignore[attr-defined]
            tg.start_soon(dispatcher.run)
            try:
                yield dispatcher
            finally:
                await dispatcher.stop()
                tg.cancel_scope.cancel()


def received(sink: Sink) -> Counter[tuple[str, int]]:
    """How many requests each (subscription path, event number) got."""
    return Counter((r.path.rsplit("/", 1)[-1], r.json()["data"]["n"]) for r in sink.received)


async def test_above_the_threshold_an_event_is_one_fanout_row_and_at_or_below_it_rows(
    settings_factory: SettingsFactory,
) -> None:
    url = "http://127.0.0.1:9"
    async with Database.open(settings_factory().database_url) as db:
        await add_subscriptions(db, sub_ids(FANOUT_THRESHOLD), url)
        publisher = Publisher(_no_file)
        (direct,) = await publish(db, publisher, 1)
        assert await count(db, "SELECT count(*) FROM event_fanouts") == 0
        assert await count(db, "SELECT count(*) FROM deliveries WHERE event_id = ?", (direct,)) == (
            FANOUT_THRESHOLD
        )
        await add_subscriptions(db, ["sub_q000"], url)
        (deferred,) = await publish(db, publisher, 1)
        assert (
            await count(db, "SELECT count(*) FROM deliveries WHERE event_id = ?", (deferred,)) == 0
        )
        rows = await db.reader.execute_fetchall(
            "SELECT event_id, total, expanded, subscription_ids FROM event_fanouts"
        )
        assert [(r[0], r[1], r[2]) for r in rows] == [(deferred, FANOUT_THRESHOLD + 1, 0)]
        assert sorted(rows[0][3].split()) == sorted([*sub_ids(FANOUT_THRESHOLD), "sub_q000"])


@pytest.mark.parametrize("threshold", [0, FANOUT_THRESHOLD])
async def test_one_batch_of_job_events_reaches_each_events_own_matching_subscriptions(
    settings_factory: SettingsFactory, threshold: int
) -> None:
    """Matching is decided once per batch for what does not depend on the event (type, model),
    and per event for payload filters and a job's own one-off subscription."""
    now = time.time()
    job = Job(
        id="job_01JTESTFANOUT00000000000A",
        owner_key_id="key_test",
        model="trinetra/kling-v3",
        provider="trinetra",
        status=JobStatus.SUCCEEDED,
        input={"prompt": "A cat"},
        cost=Cost(estimated=50.0, unit="credits"),
        created_at=now,
        deadline_at=now + 3600,
        metadata={"tier": "gold"},
    )
    other = replace(
        job, id="job_01JTESTFANOUT00000000000B", model="trinetra/kling-v2.5", metadata={}
    )
    plain = subscription_row("sub_all", "http://127.0.0.1:9/all", at=time.time())
    other_model = replace(plain, id="sub_v25", models=("trinetra/kling-v2.5",))
    gold = replace(plain, id="sub_gold", filter={"path": "data.metadata.tier", "eq": "gold"})
    own = replace(plain, id="sub_own", job_id=job.id)
    async with Database.open(settings_factory().database_url) as db:
        async with db.transaction() as conn:
            for sub in (plain, other_model, gold, own):
                await subscriptions.insert(conn, sub)
        publisher = Publisher(_no_file, fanout_threshold=threshold)
        async with db.transaction() as conn:
            first, second, third = await publisher.publish_jobs(
                conn,
                [
                    ("job.succeeded", job),
                    ("job.succeeded", other),
                    ("job.failed", replace(other, metadata={"tier": "gold"})),
                ],
                now,
            )
        async with db.transaction() as conn:
            while (await fanouts.expand(conn)).more:
                pass
        assert await pairs(db) == Counter(
            {
                (first, "sub_all"): 1,
                (first, "sub_gold"): 1,
                (first, "sub_own"): 1,
                (second, "sub_all"): 1,
                (second, "sub_v25"): 1,
                (third, "sub_all"): 1,
                (third, "sub_v25"): 1,
                (third, "sub_gold"): 1,
            }
        )


async def test_expansion_in_bounded_steps_writes_each_delivery_once_and_the_depth_counts_the_rest(
    settings_factory: SettingsFactory,
) -> None:
    # Ids of several lengths: each is padded to the longest in the packed list.
    subs = [*sub_ids(18), "sub_x", "sub_a_much_longer_id_000000000000"]
    async with Database.open(settings_factory().database_url) as db:
        await add_subscriptions(db, subs, "http://127.0.0.1:9")
        event_ids = await publish(db, Publisher(_no_file, fanout_threshold=0), 3)
        depth, oldest = await stats.outbox(db.reader)
        assert depth == 60 and oldest is not None
        steps = []
        while True:
            async with db.transaction() as conn:
                step = await fanouts.expand(conn, budget=7)
            steps.append(step.written)
            # Expanded or not, every delivery is counted once.
            assert (await stats.outbox(db.reader))[0] == 60
            if not step.more:
                break
        assert max(steps) <= 7 and sum(steps) == 60
        assert await pairs(db) == Counter({(e, s): 1 for e in event_ids for s in subs})
        assert await count(db, "SELECT count(*) FROM event_fanouts") == 0
        # Nothing is left: a further step writes nothing.
        async with db.transaction() as conn:
            assert await fanouts.expand(conn) == fanouts.Step(0, 0, 0, False)


async def test_a_failed_expansion_step_changes_nothing(settings_factory: SettingsFactory) -> None:
    subs = sub_ids(20)
    async with Database.open(settings_factory().database_url) as db:
        await add_subscriptions(db, subs, "http://127.0.0.1:9")
        await publish(db, Publisher(_no_file, fanout_threshold=0), 2)
        with pytest.raises(RuntimeError, match="crash"):
            async with db.transaction() as conn:
                assert (await fanouts.expand(conn, budget=30)).written == 30
                raise RuntimeError("crash")
        assert await count(db, "SELECT count(*) FROM deliveries") == 0
        assert await count(db, "SELECT sum(total - expanded) FROM event_fanouts") == 40


async def test_every_subscription_gets_every_event_once_and_fifo_ones_in_order(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink()
    plain, fifo = sub_ids(30), sub_ids(3, "sub_f")
    async with (
        run_server(sink.app()) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, plain, url)
        await add_subscriptions(db, fifo, url, ordering="fifo")
        publisher = Publisher(_no_file, fanout_threshold=0)
        # Published before the dispatcher runs: the rows wait in event_fanouts.
        first = await publish(db, publisher, 5)
        assert await count(db, "SELECT count(*) FROM event_fanouts") == 5
        # FIFO subscriptions keep their rows at ingest, in event order.
        assert await count(db, "SELECT count(*) FROM deliveries") == 5 * len(fifo)
        async with dispatching(db):
            # And more while it runs: each commit wakes the expansion.
            later = await publish(db, publisher, 5, first=5)
            total = 10 * (len(plain) + len(fifo))
            await sink.wait_for(lambda s: len(s.received) >= total, within=30)
            # Outcomes are recorded in batches after the answers arrive.
            await until(db, "SELECT count(*) FROM deliveries WHERE status = 'succeeded'", total)
        got = received(sink)
        assert got == Counter({(s, n): 1 for s in [*plain, *fifo] for n in range(10)})
        for sub in fifo:
            order = [r.json()["data"]["n"] for r in sink.on(f"/{sub}")]
            assert order == list(range(10))
        assert await pairs(db) == Counter(
            {(e, s): 1 for e in [*first, *later] for s in [*plain, *fifo]}
        )
        assert await count(db, "SELECT count(*) FROM event_fanouts") == 0
        assert (await stats.outbox(db.reader))[0] == 0


async def test_a_subscription_deleted_before_expansion_gets_nothing_and_a_disabled_one_waits(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink()
    subs = sub_ids(20)
    gone, paused = subs[:3], subs[3]
    async with (
        run_server(sink.app()) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, subs, url)
        event_ids = await publish(db, Publisher(_no_file, fanout_threshold=0), 4)
        async with db.transaction() as conn:
            for sub in gone:
                assert await subscriptions.delete(conn, sub)
            await subscriptions.set_status(
                conn, paused, SubscriptionStatus.DISABLED, reason="test", now=time.time()
            )
        async with dispatching(db):
            live = 16 * 4
            await sink.wait_for(lambda s: len(s.received) >= live, within=30)
            # The disabled one's deliveries were written and wait, as its pending rows would.
            await until(db, "SELECT count(*) FROM event_fanouts", 0)
            assert (
                await count(
                    db,
                    "SELECT count(*) FROM deliveries "
                    "WHERE subscription_id = ? AND status = 'pending'",
                    (paused,),
                )
                == 4
            )
            async with db.transaction() as conn:
                await subscriptions.set_status(
                    conn, paused, SubscriptionStatus.ACTIVE, reason=None, now=time.time()
                )
            await sink.wait_for(lambda s: len(s.received) >= live + 4, within=30)
        assert received(sink) == Counter({(s, n): 1 for s in subs[3:] for n in range(4)})
        assert await pairs(db) == Counter({(e, s): 1 for e in event_ids for s in subs[3:]})


async def test_fanouts_committed_before_a_crash_are_delivered_after_the_restart(
    settings_factory: SettingsFactory,
) -> None:
    """Events are committed with their fan-outs and reelhook stops before expanding them (as a
    crash right after the commit leaves them); the next start delivers every one."""
    sink = Sink()
    subs = sub_ids(25)
    async with run_server(sink.app()) as url:
        with loopback_socket() as sock:
            settings = settings_factory()
            async with Database.open(settings.database_url) as db:
                await add_subscriptions(db, subs, url)
                await publish(db, Publisher(_no_file, fanout_threshold=0), 4)
                assert (await stats.outbox(db.reader))[0] == 100
            async with served(settings, sock, fanout_threshold=0) as http:
                await sink.wait_for(lambda s: len(s.received) >= 100, within=30)
                # Nothing is left counted once the outcomes are recorded.
                with anyio.fail_after(10):
                    while (await http.get("/readyz")).json()["cluster"]["outbox_depth"]:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
        assert received(sink) == Counter({(s, n): 1 for s in subs for n in range(4)})
        async with Database.open(settings.database_url) as db:
            assert await count(db, "SELECT count(*) FROM event_fanouts") == 0


async def test_retention_keeps_an_event_while_its_fanout_is_pending(
    settings_factory: SettingsFactory,
) -> None:
    async with Database.open(settings_factory().database_url) as db:
        await add_subscriptions(db, sub_ids(20), "http://127.0.0.1:9")
        await publish(db, Publisher(_no_file, fanout_threshold=0), 2)
        future = time.time() + 3600
        async with db.transaction() as conn:
            batch = await retention.prune_events(conn, cutoff=future, after=0, limit=100)
        assert batch.deleted == {}
        assert await count(db, "SELECT count(*) FROM events") == 2
        # Expanded and settled, the events may go.
        async with db.transaction() as conn:
            await fanouts.expand(conn)
            await conn.execute("UPDATE deliveries SET status = 'succeeded'")
        async with db.transaction() as conn:
            batch = await retention.prune_events(conn, cutoff=future, after=0, limit=100)
        assert batch.deleted["events"] == 2 and batch.deleted["deliveries"] == 40


@pytest.mark.sqlite_only("backups copy the SQLite file; PostgreSQL has pg_dump")
def test_a_backup_and_its_restore_carry_a_pending_fanout(tmp_path: Path) -> None:
    source = tmp_path / "live" / "reelhook.db"

    async def seed() -> None:
        async with Database.open(source) as db:
            await add_subscriptions(db, sub_ids(20), "http://127.0.0.1:9")
            await publish(db, Publisher(_no_file, fanout_threshold=0), 3)

    anyio.run(seed)
    copy = backup(source, tmp_path / "backup.db").path
    restored_dir = tmp_path / "restored"
    restore(copy, restored_dir, force=False)

    async def check() -> tuple[int, int]:
        async with Database.open(restored_dir / "reelhook.db") as db:
            return (await stats.outbox(db.reader))[0], await count(
                db, "SELECT count(*) FROM event_fanouts"
            )

    assert anyio.run(check) == (60, 3)


async def test_reelhook_copy_carries_a_pending_fanout(tmp_path: Path, pg_database: str) -> None:
    # A SQLite file as the source by design: reelhook copy moves a SQLite deployment onto
    # PostgreSQL (it asks for pg_database, so it runs in the PostgreSQL pass).
    async with Database.open(tmp_path / "source.db") as source:
        await add_subscriptions(source, sub_ids(20), "http://127.0.0.1:9")
        await publish(source, Publisher(_no_file, fanout_threshold=0), 3)
        async with Database.open(pg_database) as target:
            copied = await copy_store(source, target)
            assert copied["event_fanouts"] == 3
            assert (await stats.outbox(target.reader))[0] == 60
            # The copy expands as the source would have, and goes on numbering after it.
            async with target.transaction() as conn:
                assert (await fanouts.expand(conn)).written == 60
            await publish(target, Publisher(_no_file, fanout_threshold=0), 1)
            assert await count(target, "SELECT count(*) FROM event_fanouts") == 1


async def test_two_nodes_expanding_the_same_fanouts_write_each_delivery_once(
    pg_database: str,
) -> None:
    subs = sub_ids(40)
    async with Database.open(pg_database) as one, Database.open(pg_database) as two:
        await add_subscriptions(one, subs, "http://127.0.0.1:9")
        event_ids = await publish(one, Publisher(_no_file, fanout_threshold=0), 30)
        written = {"one": 0, "two": 0}

        async def expand_all(name: str, db: Database) -> None:
            while True:
                step = await db.run_transaction(
                    lambda conn: fanouts.expand(conn, budget=13), durable=False, background=True
                )
                written[name] += step.written
                if not step.more and not await count(db, "SELECT count(*) FROM event_fanouts"):
                    return
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(expand_all, "one", one)
            tg.start_soon(expand_all, "two", two)
        assert written["one"] + written["two"] == 30 * 40
        assert await pairs(one) == Counter({(e, s): 1 for e in event_ids for s in subs})


async def test_two_nodes_dispatching_the_same_fanouts_deliver_each_once(pg_database: str) -> None:
    """Two nodes on one database, both expanding and sending while events arrive: every
    subscription gets every event once."""
    sink = Sink()
    subs = sub_ids(40)
    async with (
        run_server(sink.app()) as url,
        Database.open(pg_database) as one,
        Database.open(pg_database) as two,
    ):
        await add_subscriptions(one, subs, url)
        publisher = Publisher(_no_file, fanout_threshold=0)
        async with dispatching(one), dispatching(two):
            for first in range(0, 20, 5):
                await publish(one if first % 10 else two, publisher, 5, first=first)
            await sink.wait_for(lambda s: len(s.received) >= 20 * len(subs), within=60)
            await until(one, "SELECT count(*) FROM deliveries WHERE status = 'succeeded'", 800)
        assert received(sink) == Counter({(s, n): 1 for s in subs for n in range(20)})
        assert await count(one, "SELECT count(*) FROM event_fanouts") == 0


async def test_a_deletion_racing_an_expansion_on_another_node_cancels_what_it_wrote(
    pg_database: str,
) -> None:
    """Node one's expansion has read the subscription and not committed; node two deletes it
    meanwhile. The deletion waits for the expansion, then cancels the rows it wrote: none is
    left pending for a subscription that no longer exists."""
    subs = sub_ids(20)
    async with Database.open(pg_database) as one, Database.open(pg_database) as two:
        await add_subscriptions(one, subs, "http://127.0.0.1:9")
        await publish(one, Publisher(_no_file, fanout_threshold=0), 2)
        deleted = anyio.Event()

        async def delete() -> None:
            async with two.transaction() as conn:
                assert await subscriptions.delete(conn, subs[0])
            deleted.set()

        async with anyio.create_task_group() as tg, one.transaction() as conn:
            assert (await fanouts.expand(conn)).written == 40
            tg.start_soon(delete)
            # The deletion is waiting for this transaction's lock on the subscription.
            await until(
                two,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'",
                1,
            )
            assert not deleted.is_set()
        with anyio.fail_after(10):
            await deleted.wait()
        assert (
            await count(
                one,
                "SELECT count(*) FROM deliveries WHERE subscription_id = ? AND status = 'canceled'",
                (subs[0],),
            )
            == 2
        )
        assert await count(one, "SELECT count(*) FROM deliveries WHERE status = 'pending'") == 2 * (
            len(subs) - 1
        )


async def test_a_backlog_deeper_than_the_cap_drains_without_a_backstop_wake_up(
    settings_factory: SettingsFactory,
) -> None:
    """Each subscription has three times its cap (8) of deliveries due. On PostgreSQL the claim
    counts every delivery in flight in the store against the cap (docs/scaling.md), so while the
    first eight of each are out, claiming more finds no room, and only their recorded outcomes
    make room again. Recording them must wake the dispatcher: before, nothing did (a success
    announces no work), and one node waited for the LISTEN backstop (5 s; an hour here) with
    its backlog due, which is what held a single PostgreSQL node's fan-out to ~400/s
    (docs/scaling.md)."""
    subs = sub_ids(2)
    events = 24
    held: list[str] = []
    first_round = anyio.Event()
    release = anyio.Event()

    async def receive(request: Request) -> Response:
        body = await request.json()
        held.append(f"{request.url.path.rsplit('/', 1)[-1]}:{body['data']['n']}")
        if len(held) == 8 * len(subs):
            first_round.set()
        if not release.is_set():
            await release.wait()
        return Response(status_code=204)

    app = Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
    async with (
        run_server(app) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        if db.dialect == "postgresql":
            db.backstop = 3600.0  # type: ignore[attr-defined]
        await add_subscriptions(db, subs, url)
        # Below the fan-out threshold: the delivery rows are written with the events.
        await publish(db, Publisher(_no_file), events)
        async with dispatching(db):
            with anyio.fail_after(30):
                await first_round.wait()
            # The first answers are held a moment: the dispatcher, meanwhile, claims again
            # and (on PostgreSQL) finds every subscription at its cap.
            await anyio.sleep(0.3)
            release.set()
            total = events * len(subs)
            await until(db, "SELECT count(*) FROM deliveries WHERE status = 'succeeded'", total)
        assert sorted(held) == sorted(f"{s}:{n}" for s in subs for n in range(events))
