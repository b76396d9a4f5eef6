"""Durable submit retries: the schedule, and the claims under a lease kept in the store.

Time is passed in (``now``), never slept through; the database is this pass's store (the
shared ``db``), and the migrations from older versions are tested on each store's own files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiosqlite
import asyncpg
import pytest

from service.core.models import JobStatus
from service.core.retry import RetrySchedule
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import defer_submit, hold_due_requests
from service.storage import jobs, submissions
from service.storage.database import Database, migrations
from service.storage.postgres import PgConnection, _Statements
from service.storage.sqlite import SqliteConnection, migrate
from service.storage.submissions import SubmitClaim
from tests.helpers.jobs import DEADLINE, NOW, make_job, store
from tests.helpers.jobs import claim as own

pytestmark = pytest.mark.anyio

POLICY = RetrySchedule.for_retries((5.0, 30.0, 120.0))


def no_jitter() -> float:
    return 0.5


# --- the schedule ------------------------------------------------------------------------------


def test_each_retry_waits_its_scheduled_delay() -> None:
    assert POLICY.attempts == 4
    waits = [POLICY.next_attempt_at(n, NOW, deadline=DEADLINE, rng=no_jitter) for n in (1, 2, 3)]
    assert waits == [NOW + 5, NOW + 30, NOW + 120]


def test_the_budget_is_spent_after_the_last_scheduled_retry() -> None:
    assert POLICY.next_attempt_at(4, NOW, deadline=DEADLINE, rng=no_jitter) is None
    # Before any attempt, the first is due at once: schedule[n] is the wait before attempt n + 1.
    assert POLICY.next_attempt_at(0, NOW, deadline=DEADLINE, rng=no_jitter) == NOW
    assert POLICY.next_attempt_at(-1, NOW, deadline=DEADLINE, rng=no_jitter) is None


@pytest.mark.parametrize(("rng", "factor"), [(0.0, 0.8), (1.0, 1.2), (0.25, 0.9)])
def test_jitter_spreads_a_delay_by_a_fifth_either_way(rng: float, factor: float) -> None:
    due = POLICY.next_attempt_at(2, NOW, deadline=DEADLINE, rng=lambda: rng)
    assert due == pytest.approx(NOW + 30 * factor)


def test_retry_after_is_a_floor_not_a_ceiling() -> None:
    longer = POLICY.next_attempt_at(1, NOW, deadline=DEADLINE, retry_after=90, rng=no_jitter)
    shorter = POLICY.next_attempt_at(2, NOW, deadline=DEADLINE, retry_after=1, rng=no_jitter)
    assert (longer, shorter) == (NOW + 90, NOW + 30)


def test_no_retry_is_scheduled_past_the_deadline() -> None:
    assert POLICY.next_attempt_at(1, NOW, deadline=NOW + 5.5, rng=no_jitter) == NOW + 5
    assert POLICY.next_attempt_at(1, NOW, deadline=NOW + 5, rng=no_jitter) is None
    far = POLICY.next_attempt_at(1, NOW, deadline=DEADLINE, retry_after=7200, rng=no_jitter)
    assert far is None


# --- claims under a lease ----------------------------------------------------------------------


async def claim(db: Database, now: float, providers: tuple[str, ...] = ("trinetra",)) -> list[str]:
    async with db.transaction() as conn:
        claimed = await submissions.claim_due(
            conn,
            providers=providers,
            now=now,
            lease_until=now + 60,
            limit=10,
            owner=db.node_id,
            node_timeout=db.node_timeout,
        )
    return [f"{job.id[-1]}#{attempt}" for job, attempt, _ in claimed]


async def test_a_claim_takes_due_jobs_in_order_and_leases_them(db: Database) -> None:
    await store(db, make_job(1), due=NOW + 10)
    await store(db, make_job(2), due=NOW - 5, attempts=2)
    await store(db, make_job(3), due=NOW)
    await store(db, make_job(4, provider="apiframe"), due=NOW)
    await store(db, make_job(5, status=JobStatus.SUBMITTED), due=NOW)

    assert await submissions.next_due_at(db.reader, ["trinetra"]) == NOW - 5
    assert await claim(db, NOW) == ["2#3", "3#1"]
    # Leased: not claimed again while the attempt may still be in flight ...
    assert await claim(db, NOW + 59) == ["1#1"]
    assert await submissions.next_due_at(db.reader, ["trinetra"]) == NOW + 60
    assert await submissions.attempts_of(db.reader, "job_01JTESTSUBMITRETRY00000002") == (
        3,
        NOW + 60,
    )
    # ... but once the lease has run out (reelhook stopped mid-attempt), they are due again.
    assert await claim(db, NOW + 60) == ["2#4", "3#2"]
    assert await claim(db, NOW + 60, ("apiframe",)) == ["4#1"]
    assert await claim(db, NOW + 60, ()) == []


async def test_a_deferred_attempt_keeps_the_job_pending_until_due(db: Database) -> None:
    job = make_job(1)
    await store(db, job, due=NOW + 60, attempts=1)
    token = await own(db, job.id)
    assert await defer_submit(db, job.id, NOW + 5, "rate_limited: slow down", NOW, token=token)
    assert await submissions.attempts_of(db.reader, job.id) == (1, NOW + 5)
    assert (await jobs.get(db.reader, job.id)) == job
    assert await claim(db, NOW + 4) == []
    assert await claim(db, NOW + 5) == ["1#2"]


async def test_a_job_a_callback_moved_on_is_not_deferred(db: Database) -> None:
    job = make_job(1, status=JobStatus.RUNNING)
    await store(db, job, due=None)
    token = await own(db, job.id)
    assert not await defer_submit(db, job.id, NOW + 5, "timeout", NOW, token=token)
    assert not await defer_submit(db, job.id, NOW + 5, "timeout", NOW, token=token, held=True)
    assert not await defer_submit(db, "job_missing", NOW + 5, "timeout", NOW, token=token)
    assert await claim(db, NOW + 10) == []


async def test_a_held_request_refused_unworked_stays_submitted_and_is_announced_once(
    db: Database,
) -> None:
    """Segmind refused a held request before doing any work: the job stays submitted (its status
    only moves forward), is due again, and sent again is not announced a second time. While its
    request is held it has no submit due, which is how a restart finds it in flight."""
    publisher = Publisher(lambda digest, media_type: "")
    job = make_job(1, provider="segmind")
    await store(db, job, due=NOW)

    async def hold(now: float) -> list[SubmitClaim]:
        async with db.transaction() as conn:
            return await hold_due_requests(
                conn,
                publisher,
                ["segmind"],
                now,
                10,
                held_by=db.node_id,
                node_timeout=db.node_timeout,
            )

    ((held, attempt, token),) = await hold(NOW)
    assert (held.status, held.submitted_at, attempt) == (JobStatus.SUBMITTED, NOW, 1)
    assert [j.id for j in await submissions.in_flight(db.reader, ["segmind"])] == [job.id]
    assert await hold(NOW + 1) == []

    assert await defer_submit(db, job.id, NOW + 5, "rate_limited", NOW + 1, token=token, held=True)
    waiting = await jobs.get(db.reader, job.id)
    assert waiting is not None
    assert (waiting.status, waiting.submitted_at) == (JobStatus.SUBMITTED, NOW)
    assert await submissions.in_flight(db.reader, ["segmind"]) == []
    assert await hold(NOW + 4) == []

    ((again, attempt, _),) = await hold(NOW + 5)
    assert (again.status, again.submitted_at, attempt) == (JobStatus.SUBMITTED, NOW, 2)
    async with db.reader.execute("SELECT type FROM events ORDER BY seq") as cursor:
        assert [row[0] for row in await cursor.fetchall()] == ["job.submitted"]


@pytest.mark.sqlite_only("a migration of an old SQLite file (PostgreSQL's schema began later)")
async def test_jobs_left_pending_by_an_older_version_are_due_at_once(tmp_path: Path) -> None:
    """Migration 0002 gives every pending job a due time (its creation), so the worker sends it."""
    path = tmp_path / "old.db"
    folder = resources.files("service.storage") / "migrations" / "sqlite"
    first = (folder / "0001_initial.sql").read_text()
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.executescript(f"BEGIN;\n{first}\nPRAGMA user_version = 1;\nCOMMIT;")
        await jobs.insert(SqliteConnection(conn), make_job(1))
        await jobs.insert(SqliteConnection(conn), make_job(2, status=JobStatus.SUBMITTED))
        assert await migrate(conn) >= 2
    async with Database.open(path) as db:
        assert await submissions.attempts_of(db.reader, make_job(1).id) == (0, NOW)
        assert await submissions.attempts_of(db.reader, make_job(2).id) == (0, None)
        assert await claim(db, NOW) == ["1#1"]


@pytest.mark.sqlite_only("a migration of an old SQLite file; the PostgreSQL twin follows")
async def test_a_held_request_in_flight_under_an_older_version_is_found_in_flight(
    tmp_path: Path,
) -> None:
    """Before migration 0007 a held request in flight kept its claim's lease as its due time; it
    must be recognised as in flight (never sent twice), and a pending one stays due."""
    path = tmp_path / "old.db"
    folder = resources.files("service.storage") / "migrations" / "sqlite"
    scripts = sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql"))
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        for name in scripts[:6]:
            version = int(name.split("_", 1)[0])
            script = (folder / name).read_text()
            await conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        old = SqliteConnection(conn)
        await jobs.insert(old, make_job(1, provider="segmind", status=JobStatus.SUBMITTED))
        await jobs.insert(old, make_job(2, provider="segmind"))
        await submissions.schedule(old, make_job(1).id, next_at=NOW + 60, attempts=1)
        await submissions.schedule(old, make_job(2).id, next_at=NOW)
        assert await migrate(conn) >= 7
    async with Database.open(path) as db:
        lost = await submissions.in_flight(db.reader, ["segmind"])
        assert [job.id for job in lost] == [make_job(1).id]
        assert await submissions.attempts_of(db.reader, make_job(2).id) == (0, NOW)


async def test_a_held_request_in_flight_under_an_older_postgresql_schema_is_found_in_flight(
    pg_database: str,
) -> None:
    """The PostgreSQL twin of the test above: before its migration 0007 a held request in flight
    kept its claim's lease as its due time; once migrated it is found in flight (never sent
    twice), and a pending one stays due."""
    raw = await asyncpg.connect(pg_database)
    try:
        await raw.execute(
            "CREATE TABLE schema_version ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version, script in migrations("postgresql")[:6]:
            async with raw.transaction():
                await raw.execute(script)
                await raw.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        old = PgConnection(raw, _Statements())
        await jobs.insert(old, make_job(1, provider="segmind", status=JobStatus.SUBMITTED))
        await jobs.insert(old, make_job(2, provider="segmind"))
        await submissions.schedule(old, make_job(1).id, next_at=NOW + 60, attempts=1)
        await submissions.schedule(old, make_job(2).id, next_at=NOW)
    finally:
        await raw.close()
    async with Database.open(pg_database) as db:
        lost = await submissions.in_flight(db.reader, ["segmind"])
        assert [job.id for job in lost] == [make_job(1).id]
        assert await submissions.attempts_of(db.reader, make_job(2).id) == (0, NOW)
