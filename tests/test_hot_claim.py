"""Deliveries claimed at ingest (docs/architecture.md, "A delivery"): the ingest batch writes a
fresh event's deliveries already claimed by this node for subscriptions with room in the
dispatcher's lanes, and hands them to the dispatcher in memory after its commit, with no read of
what is due and no claim transaction. Caps, probation, disabled and FIFO subscriptions hold as
before; a rolled-back batch gives its room back; a node killed after the commit loses nothing.
Both stores; the cross-node cap runs on PostgreSQL."""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from ipaddress import ip_network
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send

from service.core.models import JobStatus, ProviderUpdate, SubscriptionStatus
from service.core.retry import RetrySchedule
from service.delivery import dispatcher as dispatcher_module
from service.delivery.dispatcher import PREFETCH, QUIET_AFTER, Dispatcher
from service.delivery.publisher import Publisher
from service.delivery.sender import Sender
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import Update, apply_updates
from service.storage import deliveries, jobs, subscriptions
from service.storage.announcements import Work
from service.storage.database import Database
from tests.conftest import SettingsFactory
from tests.helpers.jobs import make_job
from tests.servers import read_body, run_lifespan, run_server
from tests.support import TEST_SECRET, subscription_row

pytestmark = pytest.mark.anyio


def _no_file(digest: str, media_type: str) -> str:
    return ""


@dataclass
class Subscriber:
    """Answers 204; requests to a path in ``held`` wait until it is removed (and :meth:`let`
    called). Records the order of arrival and the most requests open at once per path."""

    held: set[str] = field(default_factory=set)
    arrived: list[tuple[str, str]] = field(default_factory=list)  # (path, job id)
    open_now: Counter[str] = field(default_factory=Counter)
    most_open: Counter[str] = field(default_factory=Counter)
    changed: anyio.Event = field(default_factory=anyio.Event)
    requests: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        body = await read_body(receive)
        path: str = scope["path"]
        self.open_now[path] += 1
        self.most_open[path] = max(self.most_open[path], self.open_now[path])
        job_id = body.split(b'"id":"', 1)[-1].split(b'"', 1)[0].decode()
        self.requests.append((body, {k.decode(): v.decode() for k, v in scope["headers"]}))
        self.arrived.append((path, job_id))
        self._note()
        try:
            while path in self.held:
                await self.changed.wait()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.open_now[path] -= 1
            self._note()

    def _note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def let(self, path: str) -> None:
        self.held.discard(path)
        self._note()

    def count(self, path: str) -> int:
        return sum(1 for arrived, _ in self.arrived if arrived == path)

    async def wait_for(self, path: str, count: int, within: float = 20.0) -> None:
        with anyio.fail_after(within):
            while self.count(path) < count:
                await self.changed.wait()


@dataclass
class Node:
    db: Database
    dispatcher: Dispatcher
    ingest: Ingest
    publisher: Publisher


@asynccontextmanager
async def node(
    db: Database,
    *,
    per_subscription: int = 8,
    concurrency: int = 64,
    quiet_after: float = QUIET_AFTER,
) -> AsyncIterator[Node]:
    """A dispatcher and the ingest writer on ``db``, wired as the app wires them."""
    publisher = Publisher(_no_file)
    async with Sender.session(
        allow=[ip_network("127.0.0.0/8")], timeout=30, concurrency=concurrency
    ) as session:
        dispatcher = Dispatcher(
            db,
            Sender(session),
            RetrySchedule.for_deliveries((0.0, 0.2)),
            clock=time.time,
            lease=60,
            concurrency=concurrency,
            per_subscription=per_subscription,
            publisher=publisher,
            quiet_after=quiet_after,
        )
        ingest = Ingest(
            db,
            publisher,
            clock=time.time,
            capacity=100,
            batch_size=50,
            mirror=False,
            hot=dispatcher.hot_claims,
        )
        db.subscribe(Work.DELIVERIES, dispatcher.wake)
        async with anyio.create_task_group() as tg:
            tg.start_soon(db.run)
            if db.dialect == "postgresql":
                with anyio.fail_after(10):
                    await db.listening.wait()  # type: ignore[attr-defined]
            tg.start_soon(dispatcher.run)
            tg.start_soon(ingest.run)
            with anyio.fail_after(10):
                while dispatcher.hot_claims() is None:  # noqa: ASYNC110 - started in the group
                    await anyio.sleep(0.01)
            try:
                yield Node(db, dispatcher, ingest, publisher)
            finally:
                await dispatcher.stop()
                tg.cancel_scope.cancel()


async def add_subscriptions(db: Database, url: str, names: Sequence[str], **kw: Any) -> None:
    async with db.transaction() as conn:
        for name in names:
            await subscriptions.insert(
                conn, subscription_row(f"sub_{name}", f"{url}/{name}", at=time.time(), **kw)
            )


async def add_jobs(db: Database, count: int, first: int = 0) -> list[str]:
    """``count`` running trinetra jobs; their ids."""
    ids = []
    async with db.transaction() as conn:
        for n in range(first, first + count):
            job = make_job(n, provider_job_id=f"pj_{n}", status=JobStatus.RUNNING)
            await jobs.insert(conn, job)
            ids.append(job.id)
    return ids


def finish(job_id: str) -> Update:
    """The callback that fails ``job_id`` (a ``job.failed`` event to every subscription)."""
    n = int(job_id[-8:])
    update = ProviderUpdate(provider_job_id=f"pj_{n}", status=JobStatus.FAILED)
    return Update(job_id, "trinetra", update, b"{}", "job")


async def rows(db: Database, where: str = "1 = 1") -> list[Any]:
    return list(
        await db.reader.execute_fetchall(
            f"SELECT id, subscription_id, status, attempts, lease_owner FROM deliveries "
            f"WHERE {where} ORDER BY id"
        )
    )


async def until_settled(db: Database, total: int) -> None:
    with anyio.fail_after(20):
        while True:
            done = await rows(db, "status = 'succeeded'")
            if len(done) == total:
                return
            await anyio.sleep(0.05)


class Counting:
    """Counts the claim loop's claim transactions, its reads of what is due, and those reads
    that found something (monkeypatched in)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claims = 0
        self.due_reads = 0
        self.found_due = 0
        claim_due, due_subscriptions = deliveries.claim_due, deliveries.due_subscriptions

        async def counted_claim(*args: Any, **kwargs: Any) -> Any:
            self.claims += 1
            return await claim_due(*args, **kwargs)

        async def counted_due(*args: Any, **kwargs: Any) -> Any:
            self.due_reads += 1
            ready = await due_subscriptions(*args, **kwargs)
            self.found_due += bool(ready)
            return ready

        monkeypatch.setattr(deliveries, "claim_due", counted_claim)
        monkeypatch.setattr(deliveries, "due_subscriptions", counted_due)


async def test_a_fresh_events_deliveries_are_sent_without_a_claim(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three subscriptions with room: each callback's event reaches all three, each delivery
    sent once and recorded as delivered, without one claim transaction, and no read of what is
    due ever finds one of them."""
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["a", "b", "c"])
        job_ids = await add_jobs(db, 5)
        counting = Counting(monkeypatch)
        async with node(db) as running:
            for job_id in job_ids:
                await running.ingest.store(finish(job_id))
            await until_settled(db, 15)
            assert counting.claims == 0
            assert counting.found_due == 0  # no delivery was ever due unclaimed
            assert running.dispatcher.hot_claimed == 15
        for name in ("a", "b", "c"):
            assert sorted(job for path, job in subscriber.arrived if path == f"/{name}") == sorted(
                job_ids
            )
        assert {(row["status"], row["attempts"]) for row in await rows(db)} == {("succeeded", 1)}
        # Signed as a claimed delivery is: each verifies with the subscription's secret.
        for body, headers in subscriber.requests:
            Webhook(TEST_SECRET).verify(body, headers)


async def test_a_delivery_claimed_at_ingest_is_signed_with_both_secrets_during_a_rotation(
    settings_factory: SettingsFactory,
) -> None:
    """While a rotated secret's grace period lasts, a delivery claimed at ingest carries a
    signature by each secret, as a claimed one does; after it, only the current one's."""
    current = "whsec_" + base64.b64encode(b"c" * 24).decode()
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        async with db.transaction() as conn:
            for name, until in (("grace", time.time() + 3600), ("over", time.time() - 1)):
                row = subscription_row(f"sub_{name}", f"{url}/{name}", at=time.time())
                await subscriptions.insert(conn, row)
                await subscriptions.rotate_secret(
                    conn, row.id, current, previous_until=until, now=time.time()
                )
        job_ids = await add_jobs(db, 1)
        async with node(db) as running:
            await running.ingest.store(finish(job_ids[0]))
            await until_settled(db, 2)
            assert running.dispatcher.hot_claimed == 2
    arrived = zip(subscriber.arrived, subscriber.requests, strict=True)
    signed = {path: request for (path, _), request in arrived}
    for secret in (current, TEST_SECRET):
        Webhook(secret).verify(*signed["/grace"])
    Webhook(current).verify(*signed["/over"])
    with pytest.raises(WebhookVerificationError):
        Webhook(TEST_SECRET).verify(*signed["/over"])


async def test_a_subscription_of_width_one_never_has_two_in_flight(
    settings_factory: SettingsFactory,
) -> None:
    """Width 1: the first event's delivery is claimed at ingest and held by the subscriber; the
    next events find no room and take the ordinary path; the subscriber never sees two requests
    at once, and every event arrives once."""
    subscriber = Subscriber(held={"/a"})
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["a"])
        job_ids = await add_jobs(db, 6)
        async with node(db, per_subscription=1) as running:
            await running.ingest.store(finish(job_ids[0]))
            await subscriber.wait_for("/a", 1)
            assert running.dispatcher.hot_claimed == 1
            for job_id in job_ids[1:]:
                await running.ingest.store(finish(job_id))
            # No room while the first is out: the others took the ordinary path (the claim loop
            # may claim a few ahead of the lane, as always; they wait for its one slot).
            assert running.dispatcher.hot_claimed == 1
            assert subscriber.count("/a") == 1
            subscriber.let("/a")
            await until_settled(db, 6)
        assert subscriber.most_open["/a"] == 1
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)


async def test_a_burst_is_claimed_past_the_lanes_width_and_sent_within_it(
    settings_factory: SettingsFactory,
) -> None:
    """One batch of six events to a subscription of width 2: three are claimed at ingest on
    SQLite (just below the claim loop's top-up mark, PREFETCH x 2 / 2), two on PostgreSQL (the
    width: the cap across nodes bounds claims there), the others take the claim loop's path;
    the subscriber never has more than two requests open, and gets all six."""
    subscriber = Subscriber(held={"/a"})
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["a"])
        job_ids = await add_jobs(db, 6)
        async with node(db, per_subscription=2) as running:
            hot = running.dispatcher.hot_claims()
            assert hot is not None
            async with db.transaction() as conn:
                await apply_updates(
                    conn,
                    running.publisher,
                    [finish(job_id) for job_id in job_ids],
                    time.time(),
                    hot=hot,
                )
            hot.commit()
            # On PostgreSQL the cap counted across nodes bounds claims, not only sends
            # (docs/scaling.md), so the room there is the width.
            claimed = 2 if db.dialect == "postgresql" else PREFETCH * 2 // 2 - 1
            assert running.dispatcher.hot_claimed == claimed
            await subscriber.wait_for("/a", 2)
            subscriber.let("/a")
            await until_settled(db, 6)
        assert subscriber.most_open["/a"] == 2
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)


async def test_a_rolled_back_batch_gives_its_room_back(settings_factory: SettingsFactory) -> None:
    """A batch whose transaction fails after reserving room writes nothing and keeps no room:
    at width 1, the next event is still claimed at ingest and delivered."""
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["a"])
        job_ids = await add_jobs(db, 2)
        async with node(db, per_subscription=1) as running:
            hot = running.dispatcher.hot_claims()
            assert hot is not None
            with pytest.raises(RuntimeError, match="after the deliveries"):
                try:
                    async with db.transaction() as conn:
                        await apply_updates(
                            conn, running.publisher, [finish(job_ids[0])], time.time(), hot=hot
                        )
                        # The lane's one place is taken by this batch until it ends.
                        probe = running.dispatcher.hot_claims()
                        assert probe is not None
                        assert not probe.reserve(subscription_row("sub_a", at=time.time()))
                        raise RuntimeError("failed after the deliveries were written")
                except BaseException:
                    hot.abort()
                    raise
            assert await rows(db) == []
            await running.ingest.store(finish(job_ids[1]))
            await until_settled(db, 1)
            assert running.dispatcher.hot_claimed == 1
        assert [job for _, job in subscriber.arrived] == [job_ids[1]]


async def test_room_is_reserved_until_commit_and_refused_when_there_is_none(
    settings_factory: SettingsFactory,
) -> None:
    """What :meth:`HotClaims.reserve` refuses: a disabled subscription, a FIFO one, one on
    probation, and one whose room is taken, counting the reservations of batches not yet
    committed; giving them back makes room again. At full width the room reaches just below
    the claim loop's top-up mark (PREFETCH x width / 2), so the claim loop keeps room to claim
    the subscription's older due deliveries; a narrowed lane's room is its width."""
    width = 4
    async with (
        Database.open(settings_factory().database_url) as db,
        node(db, per_subscription=width) as running,
    ):
        lanes = running.dispatcher._lanes
        plain = subscription_row("sub_plain", at=time.time())
        disabled = replace(plain, id="sub_off", status=SubscriptionStatus.DISABLED)
        fifo = replace(plain, id="sub_fifo", ordering="fifo")
        slow = replace(plain, id="sub_slow")
        hot = running.dispatcher.hot_claims()
        assert hot is not None
        assert not hot.reserve(disabled)
        assert not hot.reserve(fifo)
        lanes.observe("sub_slow", succeeded=False, timed_out=True)
        assert not hot.reserve(slow)  # on probation
        lanes.observe("sub_slow", succeeded=True, timed_out=False)
        assert lanes.width("sub_slow") == 2
        assert hot.reserve(slow) and hot.reserve(slow)
        assert not hot.reserve(slow)  # a narrowed lane: its width
        # On PostgreSQL the room is the width (the cap across nodes bounds claims there).
        top_up_mark = width + 1 if db.dialect == "postgresql" else PREFETCH * width // 2
        assert hot.reserve(plain)
        other = running.dispatcher.hot_claims()
        assert other is not None
        for _ in range(top_up_mark - 2):
            assert other.reserve(plain)  # a second batch shares the same room
        assert not hot.reserve(plain)
        assert not other.reserve(plain)
        other.abort()
        assert hot.reserve(plain)
        hot.abort()
        assert all(hot.reserve(plain) for _ in range(top_up_mark - 1))
        assert not hot.reserve(plain)
        hot.abort()


async def test_fifo_subscriptions_keep_the_ordinary_path_and_their_order(
    settings_factory: SettingsFactory,
) -> None:
    """A FIFO subscription's deliveries are never claimed at ingest: they arrive in event order,
    while a plain subscription beside it gets its deliveries claimed at ingest."""
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["plain"])
        await add_subscriptions(db, url, ["fifo"], ordering="fifo")
        job_ids = await add_jobs(db, 8)
        async with node(db) as running:
            for job_id in job_ids:
                await running.ingest.store(finish(job_id))
            await until_settled(db, 16)
            assert running.dispatcher.hot_claimed == 8
        assert [job for path, job in subscriber.arrived if path == "/fifo"] == job_ids


async def test_a_node_killed_after_the_commit_loses_nothing(
    settings_factory: SettingsFactory,
) -> None:
    """Deliveries written claimed whose node died right after the commit (never handed over,
    never released) are rows in flight under that node's lease, exactly like claimed ones; the
    next start (SQLite) or another node once the dead one's heartbeat is stale (PostgreSQL)
    hands them back, and they are delivered once."""
    subscriber = Subscriber()
    url_of_store = settings_factory().database_url
    async with run_server(subscriber) as url:
        async with Database.open(url_of_store, node_timeout=1.0) as db:
            await add_subscriptions(db, url, ["a", "b"])
            job_ids = await add_jobs(db, 3)
            async with node(db) as running:
                hot = running.dispatcher.hot_claims()
                assert hot is not None
                async with db.transaction() as conn:
                    await apply_updates(
                        conn,
                        running.publisher,
                        [finish(job_id) for job_id in job_ids],
                        time.time(),
                        hot=hot,
                    )
                # Killed here: the commit landed, hot.commit() never runs, nothing is released.
                held = await rows(db)
                assert {(row["status"], row["lease_owner"]) for row in held} == {
                    ("inflight", db.node_id)
                }
                assert len(held) == 6
        assert subscriber.arrived == []
        async with Database.open(url_of_store, node_timeout=1.0) as db, node(db) as running:
            await until_settled(db, 6)
            assert running.dispatcher.hot_claimed == 0
        assert sorted(subscriber.arrived) == sorted(
            (f"/{name}", job_id) for name in ("a", "b") for job_id in job_ids
        )


async def test_the_cap_across_nodes_holds_for_deliveries_claimed_at_ingest(
    pg_database: str,
) -> None:
    """PostgreSQL, two nodes, width 1: node one holds the subscription's delivery in flight;
    node two's lanes have room, but the cap counted across nodes has none, so its next event's
    delivery is written pending, and sent only after the first is done."""
    subscriber = Subscriber(held={"/a"})
    async with (
        run_server(subscriber) as url,
        Database.open(pg_database) as one,
        Database.open(pg_database) as two,
    ):
        await add_subscriptions(one, url, ["a"])
        job_ids = await add_jobs(one, 2)
        async with node(one, per_subscription=1) as first, node(two, per_subscription=1) as second:
            await first.ingest.store(finish(job_ids[0]))
            await subscriber.wait_for("/a", 1)
            await second.ingest.store(finish(job_ids[1]))
            statuses = Counter(row["status"] for row in await rows(one))
            assert statuses == {"inflight": 1, "pending": 1}
            assert (first.dispatcher.hot_claimed, second.dispatcher.hot_claimed) == (1, 0)
            await anyio.sleep(0.3)
            assert subscriber.count("/a") == 1
            subscriber.let("/a")
            await until_settled(one, 2)
        assert subscriber.most_open["/a"] == 1
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)


async def test_a_batch_for_a_saturated_subscription_wakes_no_claim_and_loses_no_delivery(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription holding all the claim loop claims ahead of it (a slow subscriber): on
    SQLite, ingest batches that write its deliveries pending wake no read of what is due (the
    claim loop could claim none of them); once its deliveries finish, every one is sent."""
    subscriber = Subscriber(held={"/a"})
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        await add_subscriptions(db, url, ["a"])
        job_ids = await add_jobs(db, 10)
        counting = Counting(monkeypatch)
        async with node(db, per_subscription=1) as running:
            # The first is claimed at ingest, the second by the claim loop: the subscription
            # then holds what it is topped up to (half its prefetch), so it is saturated. On
            # PostgreSQL the cap across nodes (its width, 1) bounds what is claimed.
            saturated = 1 if db.dialect == "postgresql" else PREFETCH * 1 // 2
            for job_id in job_ids[:saturated]:
                await running.ingest.store(finish(job_id))
            with anyio.fail_after(10):
                while len(await rows(db, "status = 'inflight'")) < saturated:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # any wake-up still under way has run
            before = counting.due_reads
            for job_id in job_ids[saturated:]:
                await running.ingest.store(finish(job_id))
            await anyio.sleep(0.1)
            if db.dialect == "sqlite":
                assert counting.due_reads == before
            assert len(await rows(db, "status = 'pending'")) == len(job_ids) - saturated
            subscriber.let("/a")
            await until_settled(db, len(job_ids))
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)
        assert subscriber.most_open["/a"] == 1


async def drain_backlog(
    db: Database, url: str, monkeypatch: pytest.MonkeyPatch, *, quiet_after: float
) -> tuple[Counting, list[str]]:
    """60 finished jobs' deliveries to one subscription ``a`` at ``url``, written pending while
    no dispatcher runs (the backlog the claim loop drains), then drained by a node whose top-ups
    grow once the writer has been quiet for ``quiet_after``: what the drain counted, and the
    jobs. Nothing of it is claimed at ingest."""
    await add_subscriptions(db, url, ["a"])
    job_ids = await add_jobs(db, 60)
    async with db.transaction() as conn:
        await apply_updates(
            conn, Publisher(_no_file), [finish(job_id) for job_id in job_ids], time.time()
        )
    counting = Counting(monkeypatch)
    async with node(db, per_subscription=2, quiet_after=quiet_after) as running:
        await until_settled(db, len(job_ids))
        assert running.dispatcher.hot_claimed == 0
    return counting, job_ids


async def test_a_subscription_with_more_due_is_topped_up_without_reading_what_is_due(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog several prefetches deep to one subscriber (the claim loop's path): once a
    claim got all it asked for, each top-up is a claim alone, without a read of what is due
    first; the read comes back when a claim finds less than it asked for. Every delivery is
    sent once."""
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        # Top-ups to the prefetch, as beside ingest (never the larger ones of a quiet writer).
        counting, job_ids = await drain_backlog(db, url, monkeypatch, quiet_after=math.inf)
        # 60 deliveries, topped up from 3 to 8 claimed (PREFETCH x 2): about a dozen claims.
        assert counting.claims >= len(job_ids) // (PREFETCH * 2)
        if db.dialect == "sqlite":
            assert counting.due_reads * 3 <= counting.claims
        # (On PostgreSQL the cap across nodes, the width, cuts every claim short: each claim
        # is made after recording outcomes freed room, and reads what is due first.)
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)


async def test_while_no_foreground_write_comes_top_ups_claim_twice_the_prefetch(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same backlog while no ingest batch or API write has asked for the writer (for
    ``quiet_after``, here at once): on SQLite each top-up claims up to twice the prefetch, so
    about half as many claims drain it; every delivery is still sent once and recorded."""
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        counting, job_ids = await drain_backlog(db, url, monkeypatch, quiet_after=0.0)
        if db.dialect == "sqlite":
            # A first claim of 8 (PREFETCH x 2), then top-ups from 3 to 16 claimed: 13 each, and
            # one that finds less than it asked for; at the prefetch it took a dozen.
            assert counting.claims <= len(job_ids) // (PREFETCH * 2)
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)
        assert len(subscriber.arrived) == len(job_ids)


async def test_a_slow_subscription_keeps_top_ups_of_the_prefetch_while_the_writer_is_quiet(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same backlog and a quiet writer, but the subscription counts as slow (topped up
    again later than ``BRISK_WITHIN`` after its last claim; here every top-up is): its top-ups
    stay at the prefetch, as a slow subscriber's beside a large backlog must."""
    monkeypatch.setattr(dispatcher_module, "BRISK_WITHIN", 0.0)
    subscriber = Subscriber()
    async with (
        run_server(subscriber) as url,
        Database.open(settings_factory().database_url) as db,
    ):
        counting, job_ids = await drain_backlog(db, url, monkeypatch, quiet_after=0.0)
        assert counting.claims >= len(job_ids) // (PREFETCH * 2)
        assert sorted(job for _, job in subscriber.arrived) == sorted(job_ids)
