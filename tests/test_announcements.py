"""Work announcements: a commit wakes the listeners of the kinds of work it created, once per kind
and only after the commit. This pass's store (the shared ``db``); the writes are the storage
functions the service uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anyio
import pytest

from service.core.models import SubscriptionStatus
from service.storage import deliveries, events, jobs, submissions, subscriptions
from service.storage.announcements import (
    APPENDED_PREFIX,
    Appended,
    AppendedTwins,
    Work,
    announce,
    appended_from,
    appended_payload,
    notifications,
)
from service.storage.database import Database
from service.storage.events import UNKNOWN_OWNER, NewEvent
from service.storage.postgres import CHANNEL, PgConnection, PostgresDatabase
from tests.helpers.jobs import NOW, make_job, store
from tests.support import ping_event, subscription_row

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(db: Database) -> AsyncIterator[Database]:
    """This pass's store (conftest's ``db``). On PostgreSQL a commit is heard through ``NOTIFY``
    on the node's LISTEN connection, so that runs (:meth:`PostgresDatabase.run`), without the
    backstop's wake-ups of every kind that would add to what the tests count."""
    if not isinstance(db, PostgresDatabase):
        yield db
        return
    db.backstop = 3600
    async with anyio.create_task_group() as tg:
        tg.start_soon(db.run)
        with anyio.fail_after(10):
            await db.listening.wait()  # (its one wake-up of every kind on connecting is past)
        yield db
        tg.cancel_scope.cancel()


MARKER = Work.NODES
"""The kind :func:`heard_by_now` announces to learn that the commits before it were heard."""


def listen(db: Database) -> Counter[Work]:
    heard: Counter[Work] = Counter()
    for kind in Work:
        db.subscribe(kind, lambda kind=kind: heard.update([kind]))  # type: ignore[misc]
    return heard


async def heard_by_now(db: Database, heard: Counter[Work]) -> Counter[Work]:
    """``heard`` (from :func:`listen`) once every commit so far has woken its listeners: on
    SQLite it already has (a commit wakes them before it returns); on PostgreSQL once a later
    commit announcing :data:`MARKER` was heard (the server delivers notifications in commit
    order), whose own wake-up is then taken out again."""
    if db.dialect == "sqlite":
        return heard
    before = heard[MARKER]
    async with db.transaction() as conn:
        announce(conn, MARKER)
    with anyio.fail_after(10):
        while True:
            if heard[MARKER] > before:
                break
            await anyio.sleep(0.005)
    heard[MARKER] -= 1
    if not heard[MARKER]:
        del heard[MARKER]
    return heard


async def test_a_stored_job_with_a_due_submit_announces_a_deadline_and_a_submit(
    db: Database,
) -> None:
    heard = listen(db)
    await store(db, make_job(1), due=NOW)
    assert await heard_by_now(db, heard) == Counter({Work.DEADLINES: 1, Work.SUBMITS: 1})


async def test_a_rolled_back_transaction_announces_nothing(db: Database) -> None:
    heard = listen(db)
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await submissions.schedule(conn, "job_x", next_at=NOW)
            await jobs.insert(conn, make_job(2))
            raise RuntimeError("abandoned")
    async with db.transaction() as conn:
        pass  # an empty commit afterwards carries nothing over
    assert await heard_by_now(db, heard) == Counter()


async def test_events_and_their_deliveries_are_announced_once_per_commit(db: Database) -> None:
    heard = listen(db)
    batch = [
        NewEvent(
            id=f"evt_{n}",
            type="ping",
            job_id=None,
            created_at=NOW,
            payload=b"{}",
            subscription_ids=["sub_a", "sub_b"] if n else [],
            first_attempt_at=NOW,
        )
        for n in range(3)
    ]
    async with db.transaction() as conn:
        await events.append(conn, batch)
    assert await heard_by_now(db, heard) == Counter({Work.EVENTS: 1, Work.DELIVERIES: 1})


async def test_re_enabling_a_subscription_announces_its_waiting_deliveries(db: Database) -> None:
    heard = listen(db)
    async with db.transaction() as conn:
        await subscriptions.set_status(
            conn, "sub_a", SubscriptionStatus.DISABLED, reason="by hand", now=NOW
        )
    assert await heard_by_now(db, heard) == Counter()
    async with db.transaction() as conn:
        await subscriptions.set_status(
            conn, "sub_a", SubscriptionStatus.ACTIVE, reason=None, now=NOW
        )
    assert await heard_by_now(db, heard) == Counter({Work.DELIVERIES: 1})


async def test_a_claim_moving_a_submit_later_wakes_no_one(db: Database) -> None:
    heard = listen(db)
    await store(db, make_job(3), due=NOW)
    (await heard_by_now(db, heard)).clear()  # what storing the job announced is not the point
    async with db.transaction() as conn:
        claimed = await submissions.claim_due(
            conn,
            providers=("trinetra",),
            now=NOW,
            lease_until=NOW + 60,
            limit=10,
            owner=db.node_id,
            node_timeout=db.node_timeout,
        )
    assert len(claimed) == 1
    assert await heard_by_now(db, heard) == Counter()
    async with db.transaction() as conn:
        await submissions.schedule(conn, claimed[0][0].id, next_at=NOW + 5)
    assert await heard_by_now(db, heard) == Counter({Work.SUBMITS: 1})


async def test_an_event_with_deliveries_announces_them_and_a_claim_wakes_no_one(
    db: Database,
) -> None:
    heard = listen(db)
    async with db.transaction() as conn:
        for sub_id in ("sub_a", "sub_b", "sub_c"):
            await subscriptions.insert(conn, subscription_row(sub_id, at=NOW - 100))
    (await heard_by_now(db, heard)).clear()
    async with db.transaction() as conn:
        await events.append(
            conn,
            [ping_event(NOW, ["sub_a", "sub_b", "sub_c"], payload=b"{}")],
        )
    # One commit, one wake-up per kind, however many subscribers the event fans out to.
    assert await heard_by_now(db, heard) == Counter({Work.EVENTS: 1, Work.DELIVERIES: 1})
    heard.clear()
    async with db.transaction(durable=False) as conn:
        # Claimed by this node: the leader's sweep hands rows without a live owner back (and
        # announces them), which made this test fail now and then.
        claimed = await deliveries.claim_due(
            conn,
            now=NOW,
            lease_until=NOW + 60,
            rooms={"sub_a": 1, "sub_b": 1},
            owner=db.node_id,
        )
    assert len(claimed) == 2
    assert await heard_by_now(db, heard) == Counter()


def event(number: int, owner: str | None, type_: str = "ping") -> NewEvent:
    return NewEvent(
        id=f"evt_{number}",
        type=type_,
        job_id=None,
        created_at=NOW,
        payload=b"{}",
        subscription_ids=[],
        first_attempt_at=NOW,
        owner_key_id=owner,
    )


async def test_a_commit_that_appended_events_says_how_many_and_who_may_see_them(
    db: Database,
) -> None:
    """The live streams' tail hears, with each commit that appended events, how many and of
    which (owner, type): every append of the transaction counted, a rolled-back one nothing,
    and when any event's owner was not given, nothing (the tail then reads). Each commit that
    appended events is heard once, on either store."""
    heard: list[Appended | None] = []
    db.subscribe_appended(heard.append)
    commits = listen(db)
    async with db.transaction() as conn:
        await events.append(conn, [event(1, "key_a"), event(2, None)])
        await events.append(conn, [event(3, "key_a", "job.succeeded")])
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await events.append(conn, [event(4, "key_b")])
            raise RuntimeError("abandoned")
    await db.run_transaction(lambda conn: events.append(conn, [event(5, "key_c")]))
    async with db.transaction() as conn:
        await events.append(
            conn, [event(6, "key_a"), replace(event(7, None), owner_key_id=UNKNOWN_OWNER)]
        )
    assert await heard_by_now(db, commits) == Counter({Work.EVENTS: 3})
    # On PostgreSQL through NOTIFY (this node's commits too), as every node hears it.
    assert heard == [
        Appended(3, frozenset({("key_a", "ping"), (None, "ping"), ("key_a", "job.succeeded")})),
        Appended(1, frozenset({("key_c", "ping")})),
        None,
    ]


async def test_postgresql_a_commit_notifies_every_kind_in_one_statement(
    pg_database: str, db: Database
) -> None:
    """Asking for ``pg_database`` runs this in the PostgreSQL pass: a commit announcing two kinds
    sends one ``pg_notify`` statement for both (a round trip each cost an ingest batch two or
    three), and every node still hears each kind once."""
    assert isinstance(db, PostgresDatabase)
    heard = listen(db)
    sent: list[str] = []

    def logged(record: Any) -> None:
        sent.append(record.query)

    async with db.transaction() as conn:
        assert isinstance(conn, PgConnection)
        # Left on the pooled connection: the notifications are sent after this block, and the
        # pool closes with this test's store.
        conn.raw.add_query_logger(logged)
        job = make_job(4)
        await jobs.insert(conn, job)
        await submissions.schedule(conn, job.id, next_at=NOW)
    assert len([query for query in sent if "pg_notify" in query]) == 1, sent
    assert await heard_by_now(db, heard) == Counter({Work.DEADLINES: 1, Work.SUBMITS: 1})


async def test_postgresql_a_node_of_the_version_before_is_heard_and_hears(
    pg_database: str, db: Database
) -> None:
    """A rolling restart mixes versions. A plain ``events`` from a node that sends no description
    still wakes the tail, saying nothing more; this node's description is followed by the plain
    twin such a node reads, which this node skips. Asking for ``pg_database`` runs this in the
    PostgreSQL pass."""
    assert isinstance(db, PostgresDatabase)
    heard: list[Appended | None] = []
    db.subscribe_appended(heard.append)
    commits = listen(db)
    async with db.pool.acquire() as raw:
        await raw.execute("SELECT pg_notify($1, 'events')", CHANNEL)
    async with db.transaction() as conn:
        await events.append(conn, [event(1, "key_a")])
    sent = notifications([Work.EVENTS], [("key_a", "ping")])
    assert sent[1:] == ["events"] and sent[0].startswith(APPENDED_PREFIX)
    assert await heard_by_now(db, commits) == Counter({Work.EVENTS: 2})
    assert heard == [None, Appended(1, frozenset({("key_a", "ping")}))]


def test_what_a_commit_appended_travels_in_its_payload_when_it_fits() -> None:
    seen = Appended(3, frozenset({("key_a", "ping"), (None, "job.failed")}))
    assert appended_from(appended_payload(seen) or "") == seen
    # Too many owners for one NOTIFY: announced plainly, and the tail reads.
    many = Appended(500, frozenset((f"key_{n:04d}", "job.succeeded") for n in range(500)))
    assert appended_payload(many) is None
    assert notifications([Work.EVENTS, Work.DELIVERIES], [("key_a", "ping"), None]) == [
        "deliveries",
        "events",
    ]
    for other in ("events", "events:", "events:[1]", "events:{", "deliveries"):
        assert appended_from(other) is None
    twins = AppendedTwins()
    payloads = notifications([Work.DELIVERIES, Work.EVENTS], [("key_a", "ping")])
    assert [twins.read(payload) for payload in [*payloads, "events", "nonsense"]] == [
        (Work.DELIVERIES, None),
        (Work.EVENTS, Appended(1, frozenset({("key_a", "ping")}))),
        None,  # the twin
        (Work.EVENTS, None),  # another commit's, of a node that describes nothing
        None,
    ]
