"""Streams that cost nothing while idle: one shared tail of the event log, fanned out in memory,
wakes a stream only for events it may see (service/delivery/eventfeed.py).

Real components: this pass's store (a SQLite file in tmp_path, or PostgreSQL), the feed's tail
task and the streams' generators; the feed's counters show who read and who was woken."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio.abc import TaskGroup

from service.access.callers import Caller
from service.access.scopes import Scope
from service.core.ids import new_id
from service.core.jsonutil import dumps_bytes
from service.delivery.eventfeed import EventFeed
from service.delivery.eventlog import KEEPALIVE_SLOTS, EventLog, first_keepalive
from service.storage import events, jobs
from service.storage.announcements import Work
from service.storage.database import Database
from service.storage.events import UNKNOWN_OWNER, _Unknown
from service.storage.postgres import PostgresDatabase
from service.storage.sqlite import SqliteConnection
from tests.helpers.jobs import make_job
from tests.support import store_target

pytestmark = pytest.mark.anyio

ADMIN = Caller("key_admin", (Scope.ADMIN,))
READER = Caller("key_reader", (Scope.READ,))


async def append(
    db: Database,
    type_: str,
    count: int = 1,
    *,
    job_id: str | None = None,
    owner: str | Literal[_Unknown.OWNER] | None = UNKNOWN_OWNER,
) -> None:
    """``count`` events of ``type_``, one commit each; ``owner``: the owner the commit tells the
    tail (the job's, as the publisher does; by default not told, so the tail reads)."""
    for _ in range(count):
        now = time.time()
        async with db.transaction() as conn:
            await events.append(
                conn,
                [
                    events.NewEvent(
                        id=new_id("evt"),
                        type=type_,
                        job_id=job_id,
                        created_at=now,
                        payload=b'{"type": "%s", "data": {}}' % type_.encode(),
                        subscription_ids=[],
                        first_attempt_at=now,
                        owner_key_id=owner,
                    )
                ],
            )


async def next_chunk(stream: AsyncIterator[bytes]) -> bytes:
    with anyio.fail_after(10):
        return await anext(stream)


async def drain(stream: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def hearing(db: Database, tg: TaskGroup) -> None:
    """On PostgreSQL, where commits are heard through ``NOTIFY``: start the node's LISTEN
    connection, without the backstop's wake-up of every worker every few seconds (which the
    tests would count as wake-ups and reads), and wait until it listens. On SQLite a commit
    wakes the listeners itself."""
    if isinstance(db, PostgresDatabase):
        db.backstop = 3600
        tg.start_soon(db.run)
        with anyio.fail_after(10):
            await db.listening.wait()


class OwnReads:
    """The streams' own reads of the log (``events.list_page`` and ``events.seq_of``, the
    queries ``FROM events e WHERE``) from :meth:`start` on, on either store, as (function, the
    owner the stream's key is restricted to: None for an admin key); the shared tail reads
    through ``events.tail``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self._recording = False
        for name in ("list_page", "seq_of"):
            monkeypatch.setattr(events, name, self._counted(name, getattr(events, name)))

    def _counted(self, name: str, read: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self._recording:
                owner = kwargs.get("owner_key_id", args[2] if len(args) > 2 else None)
                self.calls.append((name, owner))
            return await read(*args, **kwargs)

        return counted

    def start(self) -> None:
        self._recording = True


async def trace_reader(db: Database, statements: list[str]) -> None:
    """On SQLite, also every statement its reader runs (its trace callback)."""
    if isinstance(db.reader, SqliteConnection):
        await db.reader.raw.set_trace_callback(statements.append)


async def untrace_reader(db: Database) -> None:
    if isinstance(db.reader, SqliteConnection):
        await db.reader.raw.set_trace_callback(lambda sql: None)


async def test_idle_streams_are_neither_woken_nor_read_for_events_they_do_not_want(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty streams wait for ``job.succeeded``; thirty commits of pings wake none of them and
    cost one tail read each (or fewer), not one per stream; then one ``job.succeeded`` wakes
    each exactly once, and none of them queried the log itself."""
    feed = EventFeed()
    statements: list[str] = []
    own = OwnReads(monkeypatch)
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe(Work.EVENTS, feed.notify)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        await append(db, "ping", 3)
        streams = [log.follow(ADMIN, ["job.succeeded"], after_seq=3) for _ in range(20)]
        received: list[list[bytes]] = [[] for _ in streams]
        for stream, into in zip(streams, received, strict=True):
            assert b"id: 3" in await next_chunk(stream)  # the position block
            tg.start_soon(drain, stream, into)
        await until(lambda: len(feed.listeners) == 20 and feed.head == 3)
        await anyio.sleep(0.1)  # let the streams settle into their wait
        woken = {id(listener): listener.wakes for listener in feed.listeners}
        reads = feed.reads
        await trace_reader(db, statements)
        own.start()
        await append(db, "ping", 30)
        await until(lambda: feed.head == 33)
        quiet = {id(listener): listener.wakes for listener in feed.listeners}
        await append(db, "job.succeeded")
        await until(lambda: all(any(b"job.succeeded" in c for c in r) for r in received))
        after = {id(listener): listener.wakes for listener in feed.listeners}
        await untrace_reader(db)
        tg.cancel_scope.cancel()
    assert quiet == woken  # no stream was woken by the pings
    assert all(after[key] == woken[key] + 1 for key in woken)
    assert feed.reads - reads <= 31
    own_reads = [sql for sql in statements if "FROM events e WHERE" in sql]
    assert own_reads == []  # the streams never queried the log themselves
    assert own.calls == []
    for chunks in received:
        text = b"".join(chunks)
        assert text.count(b"event: job.succeeded") == 1 and b"ping" not in text, text


async def test_an_idle_stream_left_behind_by_the_tail_does_not_read_the_log_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Far more events than the tail keeps in memory pass that five streams may not see; their
    keep-alive wake-ups then move them past those events instead of reading the log from where
    they were (which every idle stream did at every keep-alive); an event they may see still
    reaches each exactly once."""
    feed = EventFeed(keep=4)
    statements: list[str] = []
    own = OwnReads(monkeypatch)
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe(Work.EVENTS, feed.notify)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=0.02, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        streams = [log.follow(ADMIN, ["job.succeeded"], after_seq=0) for _ in range(5)]
        received: list[list[bytes]] = [[] for _ in streams]
        for stream, into in zip(streams, received, strict=True):
            assert b"id: 0" in await next_chunk(stream)
            tg.start_soon(drain, stream, into)
        await until(lambda: len(feed.listeners) == 5 and feed.head == 0)
        await trace_reader(db, statements)
        own.start()
        await append(db, "ping", 30)
        await until(lambda: feed.head == 30)
        # Several keep-alives each, all after the pings were read by the tail.
        marks = [len(r) for r in received]
        await until(
            lambda: all(
                b"".join(r[m:]).count(b"keep-alive") >= 3
                for r, m in zip(received, marks, strict=True)
            )
        )
        own_reads = [sql for sql in statements if "FROM events e WHERE" in sql]
        own_calls = list(own.calls)
        await append(db, "job.succeeded")
        await until(lambda: all(any(b"job.succeeded" in c for c in r) for r in received))
        await untrace_reader(db)
        tg.cancel_scope.cancel()
    assert own_reads == []
    assert own_calls == []
    for chunks in received:
        text = b"".join(chunks)
        assert text.count(b"event: job.succeeded") == 1 and b"ping" not in text, text
        assert b"id: 31" in text


async def test_the_tail_does_no_work_per_idle_stream_of_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hundred streams of a read-only key, behind a tail that keeps four events: thirty
    commits of events that key may not see are not matched against any of its streams (the tail
    looks only at the streams of the events' owners and of admin keys), the streams' keep-alives
    move them past those events without reading the log, and an admin stream still gets each
    event. Before, every stream was matched against every batch the tail read: 200 x 30 here,
    1,000 streams x every commit in isolation scenario b."""
    feed = EventFeed(keep=4)
    statements: list[str] = []
    own = OwnReads(monkeypatch)
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe(Work.EVENTS, feed.notify)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=0.05, max_streams_per_key=1000)
        tg.start_soon(feed.run, db.reader)
        idle = [log.follow(READER, [], after_seq=0) for _ in range(200)]
        admin = log.follow(ADMIN, ["ping"], after_seq=0)
        received: list[list[bytes]] = [[] for _ in range(len(idle) + 1)]
        for stream, into in zip([*idle, admin], received, strict=True):
            assert b"id: 0" in await next_chunk(stream)
            tg.start_soon(drain, stream, into)
        await until(lambda: len(feed.listeners) == 201 and feed.head == 0)
        await trace_reader(db, statements)
        own.start()
        looked_at, reads = feed.looked_at, feed.reads
        await append(db, "ping", 30)
        await until(lambda: feed.head == 30)
        await until(lambda: b"".join(received[-1]).count(b"event: ping") == 30)
        marks = [len(r) for r in received[:-1]]
        await until(lambda: all(len(r) >= m + 2 for r, m in zip(received, marks, strict=False)))
        await untrace_reader(db)
        tg.cancel_scope.cancel()
    # Only the admin stream was matched, at most once per tail read (a read may find nothing).
    assert 1 <= feed.looked_at - looked_at <= feed.reads - reads <= 31
    # None of the read-only key's streams read the log. A read of it, if any, is the admin
    # stream's own: a tail read that takes more than the four events it keeps (commits heard
    # several at a time: NOTIFY on PostgreSQL, a busy loop on SQLite) can leave that stream
    # behind, and a stream behind the tail reads the log itself.
    log_reads = [sql for sql in statements if "FROM events e WHERE" in sql]
    assert len(log_reads) <= len(own.calls), (log_reads, own.calls)
    assert all(owner is None for _, owner in own.calls), own.calls
    for chunks in received[:-1]:
        assert b"event:" not in b"".join(chunks)


async def test_the_tail_renders_only_the_events_a_stream_sends(tmp_path: Path) -> None:
    """Thirty pings pass two hundred streams that may not see them: the tail reads them but
    renders none (rendering every event was most of its CPU); then an admin stream that may see
    them gets each, as the same message GET /v1/events would list, and only those are
    rendered."""
    feed = EventFeed()
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe(Work.EVENTS, feed.notify)
        tg.start_soon(db.run)  # PostgreSQL: the LISTEN connection that hears the commits
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=1000)
        tg.start_soon(feed.run, db.reader)
        idle = [log.follow(READER, [], after_seq=0) for _ in range(200)]
        received: list[list[bytes]] = [[] for _ in idle]
        for stream, into in zip(idle, received, strict=True):
            assert b"id: 0" in await next_chunk(stream)
            tg.start_soon(drain, stream, into)
        await until(lambda: len(feed.listeners) == 200 and feed.head == 0)
        await append(db, "ping", 30)
        await until(lambda: feed.head == 30)
        read = feed.since(0)
        assert read is not None and len(read) == 30
        assert not any(event.rendered for event in read)
        await append(db, "job.succeeded")
        await until(lambda: feed.head == 31)
        admin = log.follow(ADMIN, ["ping"], after_seq=0)
        assert b"id: 0" in await next_chunk(admin)
        sent = await next_chunk(admin)
        page = await log.page(ADMIN, ["ping"], cursor=None, after=None, limit=100)
        tg.cancel_scope.cancel()
    assert sent.count(b"event: ping") == 30 and b"job.succeeded" not in sent
    assert len(page.items) == 30
    for item in page.items:
        assert b"\ndata: " + dumps_bytes(item) + b"\n" in sent
    read_after = feed.since(0)
    assert read_after is not None
    assert [event.rendered for event in read_after] == [True] * 30 + [False]
    for chunks in received:
        assert b"event:" not in b"".join(chunks)


def test_streams_opened_together_spread_their_first_keep_alives() -> None:
    """The first keep-alive of each stream comes after 50-100 % of the interval, at one of
    KEEPALIVE_SLOTS instants of that half; a thousand streams opened at once use every instant,
    none more than one and a half times its share."""
    interval = 15.0
    firsts = [first_keepalive(number, interval) for number in range(1, 1001)]
    assert all(interval / 2 <= first < interval for first in firsts)
    instants = Counter(firsts)
    assert len(instants) == KEEPALIVE_SLOTS
    assert max(instants.values()) <= 1.5 * 1000 / KEEPALIVE_SLOTS


async def test_commits_while_no_stream_listens_do_not_wake_the_tail(tmp_path: Path) -> None:
    """Every ingest commit announces its events; with no stream listening the tail is not even
    woken (docs/performance.md §4). The first stream starts it, and it follows from there."""
    feed = EventFeed()
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe(Work.EVENTS, feed.notify)
        tg.start_soon(db.run)  # PostgreSQL: the LISTEN connection that hears the commits
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        await append(db, "ping", 5)
        await anyio.wait_all_tasks_blocked()
        assert (feed.wakeups, feed.reads) == (0, 0)
        stream = log.follow(ADMIN, ["job.succeeded"], after_seq=5)
        assert b"id: 5" in await next_chunk(stream)
        received: list[bytes] = []
        tg.start_soon(drain, stream, received)
        await until(lambda: feed.head == 5)
        await append(db, "job.succeeded")
        await until(lambda: any(b"event: job.succeeded" in chunk for chunk in received))
        assert feed.wakeups >= 2 and feed.reads >= 1
        tg.cancel_scope.cancel()


async def own_job(db: Database, caller: Caller) -> str:
    """A job of ``caller``'s key in the store (what the tail reads an event's owner from)."""
    job = make_job(1, owner_key_id=caller.key_id)
    async with db.transaction() as conn:
        await jobs.insert(conn, job)
    return job.id


async def test_commits_no_open_stream_may_see_are_not_read_until_one_may(tmp_path: Path) -> None:
    """Fifty streams of a read-only key: thirty commits of events of no job (which only admin
    keys see) wake no task and are not read at all, the streams' keep-alives go on; then an
    event of that key's job is read in one go with the thirty, and each stream gets it exactly
    once, and nothing else. On PostgreSQL what each commit appended is heard through NOTIFY."""
    feed = EventFeed()
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe_appended(feed.appended)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=0.05, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        mine = await own_job(db, READER)
        idle = [log.follow(READER, [], after_seq=0) for _ in range(50)]
        received: list[list[bytes]] = [[] for _ in idle]
        for stream, into in zip(idle, received, strict=True):
            assert b"id: 0" in await next_chunk(stream)
            tg.start_soon(drain, stream, into)
        await until(lambda: len(feed.listeners) == 50 and feed.head == 0)
        reads, wakeups = feed.reads, feed.wakeups
        await append(db, "ping", 30, owner=None)
        await until(lambda: feed.unread == 30)
        marks = [len(r) for r in received]
        await until(lambda: all(len(r) >= m + 2 for r, m in zip(received, marks, strict=True)))
        assert (feed.reads, feed.wakeups, feed.head, feed.unread) == (reads, wakeups, 0, 30)
        await append(db, "job.succeeded", job_id=mine, owner=READER.key_id)
        await until(lambda: all(b"job.succeeded" in b"".join(r) for r in received))
        assert feed.head == 31 and feed.unread == 0
        assert feed.reads - reads <= 2  # the 31 events in one query (and one finding nothing)
        tg.cancel_scope.cancel()
    for chunks in received:
        text = b"".join(chunks)
        assert text.count(b"event: job.succeeded") == 1 and b"ping" not in text, text
        assert b"id: 31" in text


async def test_a_stream_opened_after_events_left_unread_gets_those_it_may_see(
    tmp_path: Path,
) -> None:
    """While only a read-only key's stream listens, pings (which it may not see) are left
    unread. Admin streams opened then, resuming from a
    position before them, from one among them and from the end, each get exactly the pings
    after their position, in log order, and then the next one; the read-only stream gets
    none."""
    feed = EventFeed()
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe_appended(feed.appended)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        await append(db, "ping", 5, owner=None)
        idle = log.follow(READER, [], after_seq=5)
        assert b"id: 5" in await next_chunk(idle)
        seen_by_idle: list[bytes] = []
        tg.start_soon(drain, idle, seen_by_idle)
        await until(lambda: feed.head == 5)
        await append(db, "ping", 20, owner=None)
        await until(lambda: feed.unread == 20)
        assert feed.head == 5
        received: dict[int, list[bytes]] = {}
        for after in (3, 12, 25):
            stream = log.follow(ADMIN, ["ping"], after_seq=after)
            assert b"id: %d" % after in await next_chunk(stream)
            received[after] = []
            tg.start_soon(drain, stream, received[after])
        await until(lambda: feed.unread == 0 and feed.head == 25)
        await append(db, "ping", owner=None)

        def ids(chunks: list[bytes]) -> list[int]:
            return [int(line[4:]) for line in b"".join(chunks).split(b"\n") if line[:4] == b"id: "]

        await until(lambda: all(ids(r)[-1:] == [26] for r in received.values()))
        tg.cancel_scope.cancel()
    for after, chunks in received.items():
        assert ids(chunks) == list(range(after + 1, 27)), (after, chunks)
    assert b"event:" not in b"".join(seen_by_idle)


async def test_events_no_stream_may_see_are_read_once_half_of_what_the_tail_keeps_piles_up(
    tmp_path: Path,
) -> None:
    """A tail keeping 8 events leaves at most 3 unread (fewer than half): ten commits of pings
    no stream may see cost it at most three reads, never one per commit, and it is never more
    than 3 behind."""
    feed = EventFeed(keep=8)
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe_appended(feed.appended)
        await hearing(db, tg)
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        idle = log.follow(READER, [], after_seq=0)
        assert b"id: 0" in await next_chunk(idle)
        tg.start_soon(drain, idle, [])
        await until(lambda: feed.head == 0)
        reads = feed.reads
        for number in range(1, 11):
            await append(db, "ping", owner=None)
            assert feed.unread <= 3
            await until(lambda number=number: (feed.head or 0) + feed.unread == number)  # type: ignore[misc]
        assert 2 <= feed.reads - reads <= 3
        tg.cancel_scope.cancel()


async def test_events_of_an_unknown_owner_are_read_as_before(tmp_path: Path) -> None:
    """A commit that does not say whose its events are (an appended event without its owner,
    or more owners than a PostgreSQL notification holds) is read at once, even when no open
    stream could see them."""
    feed = EventFeed()
    async with Database.open(store_target(tmp_path)) as db, anyio.create_task_group() as tg:
        db.subscribe_appended(feed.appended)
        tg.start_soon(db.run)
        log = EventLog(db, feed, keepalive=60, max_streams_per_key=100)
        tg.start_soon(feed.run, db.reader)
        idle = log.follow(READER, [], after_seq=0)
        assert b"id: 0" in await next_chunk(idle)
        tg.start_soon(drain, idle, [])
        await until(lambda: feed.head == 0)
        await append(db, "ping", 3)
        await until(lambda: feed.head == 3)
        assert feed.unread == 0
        tg.cancel_scope.cancel()
