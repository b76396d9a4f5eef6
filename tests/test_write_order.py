"""Isolation of the hot path (service/storage/writeorder.py): the dispatcher's bookkeeping is a
background write transaction, so the ingest batch a provider's request waits on takes its turn
before it, on both stores, without starving it; other transactions stay in FIFO order."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from service.core.models import JobStatus, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import Update
from service.storage import jobs
from service.storage.database import Database
from service.storage.postgres import PostgresDatabase
from service.storage.writeorder import WriteOrder
from tests.conftest import SettingsFactory
from tests.helpers.jobs import NOW, make_job

pytestmark = pytest.mark.anyio


async def queued(order: WriteOrder, foreground: int, background: int) -> None:
    """Until ``foreground`` and ``background`` transactions are waiting."""
    with anyio.fail_after(10):
        while True:
            if order.waiting == (foreground, background):
                return
            await asyncio.sleep(0)


async def test_a_foreground_waiter_goes_before_earlier_background_ones_and_in_fifo_order() -> None:
    order = WriteOrder()
    turns: list[str] = []

    async def take(name: str, background: bool) -> None:
        async with order.hold(background=background):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "claim", True)
        tg.start_soon(take, "outcomes", True)
        await queued(order, 0, 2)
        tg.start_soon(take, "submission", False)
        await queued(order, 1, 2)
        tg.start_soon(take, "ingest", False)
        await queued(order, 2, 2)
        order.release()
    assert turns == ["submission", "ingest", "claim", "outcomes"]
    assert order.overtaken == 2 and not order.locked()


async def test_only_foreground_turns_mark_the_writer_busy(
    settings_factory: SettingsFactory,
) -> None:
    """``Database.foreground_idle`` counts from the last foreground transaction's turn: the
    dispatcher's background bookkeeping does not reset it (docs/performance-journal.md)."""
    async with Database.open(settings_factory().database_url) as db:
        assert db.foreground_idle() == float("inf")

        async def nothing(conn: object) -> None:
            return None

        await db.run_transaction(nothing, durable=False, background=True)
        assert db.foreground_idle() == float("inf")
        async with db.transaction():
            pass
        assert 0 <= db.foreground_idle() < 60
        order = WriteOrder()
        async with order.hold(background=True):
            pass
        assert order.foreground_at == float("-inf")


async def test_background_work_gets_a_turn_after_the_fair_share() -> None:
    order = WriteOrder(fair_share=2)
    turns: list[str] = []

    async def take(name: str, background: bool) -> None:
        async with order.hold(background=background):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "claim", True)
        await queued(order, 0, 1)
        for n in range(4):
            tg.start_soon(take, f"ingest {n}", False)
        await queued(order, 4, 1)
        order.release()
    assert turns == ["ingest 0", "ingest 1", "claim", "ingest 2", "ingest 3"]


async def test_a_turn_freed_while_the_foreground_is_pending_goes_to_it_not_the_background() -> None:
    """The ingest writer frees its turn and, with callbacks queued, asks again at once: the turn
    is kept for it, ahead of the bookkeeping waiting, within the fair share."""
    order = WriteOrder(fair_share=3)
    turns: list[str] = []
    queued_batches = 5

    async def bookkeeping() -> None:
        async with order.hold(background=True):
            turns.append("claim")

    async def writer() -> None:
        # As Ingest.run: each batch's transaction, then at once the next while any is queued.
        nonlocal queued_batches
        while queued_batches:
            queued_batches -= 1
            async with order.hold():
                turns.append(f"batch {len(turns)}")

    with order.foreground_pending(lambda: queued_batches > 0):
        await order.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(bookkeeping)
            await queued(order, 0, 1)
            tg.start_soon(writer)
            await queued(order, 1, 1)
            order.release()
    # Without the hold-back the claim went after the first batch; with it, after the fair share.
    assert turns == ["batch 0", "batch 1", "batch 2", "claim", "batch 4", "batch 5"]
    assert order.held_back == 2 and not order.locked()


async def test_a_turn_held_back_that_no_foreground_takes_goes_to_the_background() -> None:
    """No starvation: a foreground transaction said to be pending that does not ask within one
    pass of the event loop leaves the turn to the background, and so does leaving the block."""
    order = WriteOrder()
    turns: list[str] = []

    async def bookkeeping(name: str) -> None:
        async with order.hold(background=True):
            turns.append(name)

    pending = order.foreground_pending(lambda: True)
    pending.__enter__()
    await order.acquire()
    claim = asyncio.ensure_future(bookkeeping("claim"))
    await queued(order, 0, 1)
    order.release()  # held back: nobody in the foreground asks
    assert order.held_back == 1 and not order.locked()
    with anyio.fail_after(10):
        await claim
    assert turns == ["claim"]

    await order.acquire()
    outcomes = asyncio.ensure_future(bookkeeping("outcomes"))
    await queued(order, 0, 1)
    order.release()
    assert order.held_back == 2 and not order.locked()
    pending.__exit__(None, None, None)
    assert order.locked()  # handed on as the block ended, not a pass later
    with anyio.fail_after(10):
        await outcomes
    assert turns == ["claim", "outcomes"] and not order.locked()


async def test_a_cancelled_waiter_is_skipped_and_a_granted_then_cancelled_one_passes_it_on() -> (
    None
):
    order = WriteOrder()
    turns: list[str] = []

    async def take(name: str, background: bool) -> None:
        async with order.hold(background=background):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        gone = asyncio.ensure_future(order.acquire())
        tg.start_soon(take, "claim", True)
        await queued(order, 1, 1)
        gone.cancel()
        await asyncio.sleep(0)
        assert order.waiting == (0, 1)
        # Granted and cancelled before it ran: the turn goes on to the next waiter.
        granted = asyncio.ensure_future(order.acquire())
        await queued(order, 1, 1)
        order.release()
        granted.cancel()
    assert turns == ["claim"]
    assert not order.locked()
    with pytest.raises(RuntimeError):
        order.release()


async def test_the_stores_commit_a_foreground_transaction_before_waiting_bookkeeping(
    settings_factory: SettingsFactory,
) -> None:
    """On SQLite and on PostgreSQL: while one transaction runs, a background one and then a
    foreground one ask for the writer; the foreground one commits first."""
    async with Database.open(settings_factory().database_path) as database:
        await commit_in_order(database)


async def commit_in_order(database: Database) -> None:
    turns: list[str] = []
    running = anyio.Event()
    finish = anyio.Event()

    async def first() -> None:
        async with database.transaction(durable=False) as conn:
            running.set()
            await conn.execute("SELECT 1")
            await finish.wait()

    async def write(name: str, background: bool) -> None:
        async with database.transaction(background=background) as conn:
            await conn.execute("SELECT 1")
            turns.append(name)

    order = database._write_lock
    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await running.wait()
        tg.start_soon(write, "outcomes", True)
        await queued(order, 0, 1)
        tg.start_soon(write, "ingest", False)
        await queued(order, 1, 1)
        finish.set()
    assert turns == ["ingest", "outcomes"]


async def test_postgresql_reads_leave_a_connection_for_the_writer(pg_database: str) -> None:
    """However many reads are in flight, at most all but one of the pool's connections read:
    a write transaction goes through while the other connections are all busy reading."""
    async with Database.open(pg_database) as database:
        assert isinstance(database, PostgresDatabase)
        readers = database.pool.get_max_size()
        reading = 0
        read_done = 0

        async def slow_read() -> None:
            nonlocal reading, read_done
            reading += 1
            await database.reader.execute("SELECT pg_sleep(60)")
            read_done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(readers + 2):
                tg.start_soon(slow_read)
            with anyio.fail_after(10):
                while True:
                    busy = await database.pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
                        " AND state = 'active'"
                    )
                    if busy == readers - 1:
                        break
                    await asyncio.sleep(0.05)
                async with database.transaction() as conn:
                    await conn.execute("SELECT 1")
            tg.cancel_scope.cancel()
    assert reading == readers + 2 and read_done == 0


async def test_ingest_batches_queued_meanwhile_commit_before_waiting_bookkeeping(
    settings_factory: SettingsFactory,
) -> None:
    """On SQLite and on PostgreSQL: three callbacks queued behind a transaction in progress,
    committed one per batch, all go before the background transaction that waited with them
    (it had gone after the first batch: under fan-out nearly every ingest batch waited for
    the dispatcher's bookkeeping, docs/performance.md §4)."""
    async with Database.open(settings_factory().database_path) as database:
        order = database._write_lock
        job_ids = []
        for n in range(3):
            job = make_job(n, provider_job_id=f"pj_{n}", status=JobStatus.RUNNING)
            async with database.transaction() as conn:
                await jobs.insert(conn, job)
            job_ids.append(job.id)
        ingest = Ingest(
            database,
            Publisher(lambda digest, media_type: f"https://files.test/{digest}"),
            clock=lambda: NOW + 1,
            capacity=10,
            batch_size=1,
            mirror=False,
        )
        seen: list[int] = []
        running = anyio.Event()
        finish = anyio.Event()

        async def first() -> None:
            async with database.transaction(durable=False) as conn:
                running.set()
                await conn.execute("SELECT 1")
                await finish.wait()

        async def bookkeeping() -> None:
            async with database.transaction(durable=False, background=True) as conn:
                rows = await conn.execute_fetchall("SELECT count(*) AS n FROM callbacks")
                seen.append(int(rows[0]["n"]))

        async def callback(n: int) -> None:
            update = ProviderUpdate(provider_job_id=f"pj_{n}", status=JobStatus.SUCCEEDED)
            await ingest.store(Update(job_ids[n], "trinetra", update, b"{}", "job"))

        async with anyio.create_task_group() as writer:
            writer.start_soon(ingest.run)
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await running.wait()
                tg.start_soon(bookkeeping)
                await queued(order, 0, 1)
                for n in range(len(job_ids)):
                    tg.start_soon(callback, n)
                await queued(order, 1, 1)  # the writer's first batch waits; two more queued
                with anyio.fail_after(10):
                    while True:
                        if ingest.depth == 2:
                            break
                        await asyncio.sleep(0)
                finish.set()
            writer.cancel_scope.cancel()
        assert seen == [3]
        assert order.held_back == 2
