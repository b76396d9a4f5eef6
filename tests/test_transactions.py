"""Write transactions: a relaxed (``durable=False``) one commits, or rolls back, on either store;
on SQLite it always leaves the writer back on ``synchronous = FULL`` outside any transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import anyio
import pytest

from service.storage import jobs as jobs_store
from service.storage.announcements import Work, announce
from service.storage.database import Connection, Database
from service.storage.sqlite import VALUES_CHUNK, SqliteDatabase, Suspended, fitting_rows
from tests.helpers.jobs import make_job
from tests.support import store_target

pytestmark = pytest.mark.anyio

FULL, NORMAL = 2, 1


def _writer(db: Database) -> aiosqlite.Connection:
    assert isinstance(db, SqliteDatabase)
    return db.writer


async def _synchronous(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA synchronous"))
    return int(rows[0][0])


async def _count(db: Database) -> int:
    rows = list(await db.reader.execute_fetchall("SELECT count(*) FROM readiness"))
    return int(rows[0][0])


@pytest.mark.parametrize("durable", [True, False])
async def test_a_transaction_commits_and_leaves_the_writer_on_full(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction(durable=durable) as conn:
            if isinstance(db, SqliteDatabase):
                assert await _synchronous(db.writer) == (FULL if durable else NORMAL)
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
        if isinstance(db, SqliteDatabase):
            assert not db.writer.in_transaction
            assert await _synchronous(db.writer) == FULL
        assert await _count(db) == 1


@pytest.mark.parametrize("durable", [True, False])
async def test_a_failed_transaction_rolls_back_and_leaves_the_writer_on_full(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        with pytest.raises(RuntimeError, match="boom"):
            async with db.transaction(durable=durable) as conn:
                await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
                raise RuntimeError("boom")
        if isinstance(db, SqliteDatabase):
            assert not db.writer.in_transaction
            assert await _synchronous(db.writer) == FULL
        assert await _count(db) == 0
        # The writer is usable again.
        async with db.transaction(durable=durable) as conn:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 2.0)")
        assert await _count(db) == 1


@pytest.mark.parametrize("durable", [True, False])
async def test_run_transaction_commits_returns_and_then_announces(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        woken: list[int] = []
        heard = asyncio.Event()

        def wake() -> None:
            woken.append(1)
            heard.set()

        db.subscribe(Work.EVENTS, wake)

        async def work(conn: Connection) -> int:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
            rows = await conn.execute_fetchall("SELECT count(*) FROM readiness")
            announce(conn, Work.EVENTS)
            assert not woken  # not before the commit
            return int(rows[0][0])

        assert await db.run_transaction(work, durable=durable) == 1
        assert await _count(db) == 1
        if isinstance(db, SqliteDatabase):
            # (PostgreSQL's wake-ups come back through LISTEN in Database.run, which this test
            # does not start; its run_transaction is its transaction block, tested there.)
            with anyio.fail_after(10):
                await heard.wait()
            assert not db.writer.in_transaction
            assert await _synchronous(db.writer) == FULL


@pytest.mark.parametrize("durable", [True, False])
async def test_run_transaction_rolls_back_what_failed_and_announces_nothing(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        woken: list[int] = []
        db.subscribe(Work.EVENTS, lambda: woken.append(1))

        async def work(conn: Connection) -> None:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
            announce(conn, Work.EVENTS)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await db.run_transaction(work, durable=durable)
        assert await _count(db) == 0
        assert not woken
        if isinstance(db, SqliteDatabase):
            assert not db.writer.in_transaction
            assert await _synchronous(db.writer) == FULL

        async def again(conn: Connection) -> None:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 2.0)")

        await db.run_transaction(again)
        assert await _count(db) == 1


@pytest.mark.sqlite_only("SQLite runs the work on its database thread")
async def test_sqlite_refuses_work_that_waits_for_anything_but_its_connection(
    tmp_path: Path,
) -> None:
    async with Database.open(tmp_path / "db.sqlite") as db:

        async def work(conn: Connection) -> None:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
            await asyncio.sleep(0)  # an event-loop wait: it cannot happen on that thread

        with pytest.raises(Suspended):
            await db.run_transaction(work)
        assert await _count(db) == 0
        assert not _writer(db).in_transaction


@pytest.mark.parametrize(
    ("count", "size"),
    [(1, None), (3, None), (64, None), (65, None), (200, None), (9, 400_000), (5, 1_200_000)],
)
async def test_execute_values_writes_every_row_in_order(
    tmp_path: Path, count: int, size: int | None
) -> None:
    """Connection.execute_values: one row per statement on PostgreSQL, chunks of powers of two
    (up to 64 rows, and 1 MiB of bodies unless a row is larger alone) on SQLite; either way every
    row, in the order given."""
    rows = [
        (make_job(n).id, "trinetra", float(n), "applied", b"x" * (size or n)) for n in range(count)
    ]
    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction() as conn:
            await jobs_store.insert_many(conn, [make_job(n) for n in range(count)])
            await conn.execute_values(
                "INSERT INTO callbacks (job_id, provider, received_at, outcome, body) "
                "VALUES {rows}",
                rows,
            )
        stored = await db.reader.execute_fetchall(
            "SELECT job_id, received_at, body FROM callbacks ORDER BY id"
        )
    assert [(r["job_id"], r["received_at"], bytes(r["body"])) for r in stored] == [
        (make_job(n).id, float(n), b"x" * (size or n)) for n in range(count)
    ]


@pytest.mark.parametrize(
    ("sizes", "start", "fitting"),
    [
        ([10] * 100, 0, 64),  # small rows: as many as the statement takes
        ([10] * 100, 90, 10),  # the rows left
        ([400_000] * 9, 0, 2),  # 800,000 bytes fit in 1 MiB, a third would not
        ([400_000] * 9, 8, 1),
        ([2_000_000, 10, 10], 0, 1),  # a row larger than the budget goes alone
        ([10, 2_000_000, 10], 0, 1),  # and is not joined to the one before it
    ],
)
def test_a_sqlite_statement_of_many_rows_binds_at_most_a_mebibyte(
    sizes: list[int], start: int, fitting: int
) -> None:
    """SQLite copies every value a statement binds while it runs: 64 bodies of 1 MiB in one
    statement held 64 MiB more at once (isolation scenario c's RSS)."""
    rows = [("job", "x" * size, 1.0) for size in sizes]
    assert fitting_rows(rows, start, VALUES_CHUNK) == fitting
