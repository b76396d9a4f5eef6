"""SQLite write transactions hold back their BEGIN and ``executemany`` writes and send them with
the next statement that answers, or with the COMMIT (service/storage/sqlite.py), and
``run_all`` sends several statements at once: the ingest batch takes two trips to the database
thread instead of eight, with the same order, the same transaction and the same rollback on
error."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.core.models import JobStatus, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import Update, apply_updates
from service.storage import jobs, subscriptions
from service.storage.database import Database
from service.storage.sqlite import SqliteDatabase
from tests.helpers.jobs import NOW, make_job
from tests.servers import run_server
from tests.support import subscription_row
from tests.test_hot_claim import Subscriber, node

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite_only("SQLite's trips to its thread")]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    async with Database.open(tmp_path / "reelhook.sqlite3") as database:
        assert isinstance(database, SqliteDatabase)
        yield database


def count_trips(db: SqliteDatabase) -> list[str]:
    """Record each trip to the writer's thread (aiosqlite's ``_execute``), by function name."""
    trips: list[str] = []
    writer: Any = db.writer
    execute = writer._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await execute(fn, *args, **kwargs)

    writer._execute = counted
    return trips


async def test_held_writes_run_in_order_before_the_next_read_and_commit_with_it(
    db: SqliteDatabase,
) -> None:
    await db.writer.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    trips = count_trips(db)
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO t (n) VALUES (?)", ((n,) for n in range(3)))
        await conn.executemany("UPDATE t SET n = n + 10 WHERE n = ?", [(0,)])
        assert not db.writer.in_transaction  # nothing sent yet, not even the BEGIN
        rows = await conn.execute_fetchall("SELECT n FROM t ORDER BY n")
        assert [row["n"] for row in rows] == [1, 2, 10]
        assert db.writer.in_transaction
        await conn.executemany("DELETE FROM t WHERE n = ?", [(1,)])
    assert len(trips) == 2  # BEGIN + writes + read; write + COMMIT
    assert not db.writer.in_transaction
    rows = await db.reader.execute_fetchall("SELECT n FROM t ORDER BY n")
    assert [row["n"] for row in rows] == [2, 10]


async def test_an_error_in_a_held_write_rolls_the_whole_transaction_back(
    db: SqliteDatabase,
) -> None:
    await db.writer.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as conn:
            await conn.executemany("INSERT INTO t (n) VALUES (?)", [(1,)])
            await conn.executemany("INSERT INTO t (n) VALUES (?)", [(2,), (2,)])
    assert not db.writer.in_transaction
    assert await db.reader.execute_fetchall("SELECT n FROM t") == []
    # The writer is usable, and nothing of the failed transaction is sent again.
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO t (n) VALUES (?)", [(3,)])
    rows = await db.reader.execute_fetchall("SELECT n FROM t")
    assert [row["n"] for row in rows] == [3]


async def test_a_block_cancelled_during_its_first_trip_leaves_no_transaction_open(
    db: SqliteDatabase,
) -> None:
    """The trip that carries the held BEGIN is shielded: cancelled while it runs, the block
    still rolls back what it began (else every later write would fail)."""
    await db.writer.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    with anyio.move_on_after(5) as scope:
        async with db.transaction() as conn:
            await conn.executemany("INSERT INTO t (n) VALUES (?)", [(1,)])
            scope.cancel()
            await conn.execute("SELECT count(*) FROM t")
            await anyio.sleep(10)  # never reached: the cancellation lands after the trip
    assert scope.cancelled_caught
    assert not db.writer.in_transaction
    assert await db.reader.execute_fetchall("SELECT n FROM t") == []
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO t (n) VALUES (?)", [(2,)])
    rows = await db.reader.execute_fetchall("SELECT n FROM t")
    assert [row["n"] for row in rows] == [2]


async def failing_jobs(db: SqliteDatabase, count: int) -> list[Update]:
    """``count`` running jobs stored one by one, and the batch of callbacks that fails them."""
    batch = []
    for n in range(count):
        job = make_job(n, provider_job_id=f"pj_{n}", status=JobStatus.RUNNING)
        async with db.transaction() as conn:
            await jobs.insert(conn, job)
        update = ProviderUpdate(provider_job_id=f"pj_{n}", status=JobStatus.FAILED)
        batch.append(Update(job.id, "trinetra", update, b"{}", "job"))
    return batch


async def test_an_ingest_batch_takes_two_trips(db: SqliteDatabase) -> None:
    """BEGIN with the job read and the audience read; the callbacks, jobs, event and its
    deliveries written with the COMMIT. It took eight, one per statement, then three (the
    audience read went with the callbacks and jobs written, docs/performance.md §4)."""
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row("sub_1", at=NOW - 100))
    batch = await failing_jobs(db, 4)
    trips = count_trips(db)
    publisher = Publisher(lambda digest, media_type: f"https://files.test/{digest}")
    async with db.transaction() as conn:
        applied = await apply_updates(conn, publisher, batch, NOW + 1)
    assert len(trips) == 2
    assert all(not isinstance(result, Exception) for result in applied)
    rows = await db.reader.execute_fetchall("SELECT count(*) AS n FROM deliveries")
    assert rows[0]["n"] == 4


async def test_run_all_sends_its_statements_and_the_held_writes_in_one_trip(
    db: SqliteDatabase,
) -> None:
    await db.writer.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    trips = count_trips(db)
    async with db.transaction() as conn:
        await conn.executemany("INSERT INTO t (n) VALUES (?)", [(1,), (2,)])
        first, second = await conn.run_all(
            [("SELECT count(*) AS n FROM t", ()), ("SELECT max(n) AS n FROM t WHERE n < ?", (2,))]
        )
        assert (first.rows[0]["n"], second.rows[0]["n"]) == (2, 1)
    assert len(trips) == 2  # BEGIN, the writes and both reads; the COMMIT
    reader_trips = len(trips)
    results = await db.reader.run_all([("SELECT 1 AS n", ()), ("SELECT 2 AS n", ())])
    assert [r.rows[0]["n"] for r in results] == [1, 2]
    assert len(trips) == reader_trips  # the reader has its own thread and holds nothing back


async def test_an_ingest_batch_that_claims_its_deliveries_takes_two_trips(
    db: SqliteDatabase,
) -> None:
    """Deliveries written already claimed (docs/architecture.md, "A delivery") go with the
    batch's held writes: still two trips, and the rows are in flight when it commits."""
    subscriber = Subscriber()
    async with run_server(subscriber) as url:
        async with db.transaction() as conn:
            await subscriptions.insert(conn, subscription_row("sub_1", f"{url}/a", at=NOW - 100))
        batch = await failing_jobs(db, 4)
        async with node(db) as running:
            hot = running.dispatcher.hot_claims()
            assert hot is not None
            trips = count_trips(db)
            async with db.transaction() as conn:
                await apply_updates(conn, running.publisher, batch, NOW + 1, hot=hot)
            during = len(trips)
            rows = await db.reader.execute_fetchall(
                "SELECT status, count(*) AS n FROM deliveries GROUP BY status"
            )
            hot.commit()
            await subscriber.wait_for("/a", 4)
    assert during == 2
    assert [(row["status"], row["n"]) for row in rows] == [("inflight", 4)]
