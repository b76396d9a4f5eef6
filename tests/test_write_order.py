"""Isolation of the hot path (service/storage/writeorder.py): an urgent write transaction (the
ingest batch a provider's request waits on) takes its turn before waiting bookkeeping, on both
stores, without starving the bookkeeping."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from service.storage.database import Database
from service.storage.postgres import PostgresDatabase
from service.storage.writeorder import WriteOrder
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.anyio


async def queued(order: WriteOrder, urgent: int, normal: int) -> None:
    """Until ``urgent`` and ``normal`` transactions are waiting."""
    with anyio.fail_after(10):
        while True:
            if order.waiting == (urgent, normal):
                return
            await asyncio.sleep(0)


async def test_an_urgent_waiter_goes_before_earlier_non_urgent_ones() -> None:
    order = WriteOrder()
    turns: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        async with order.hold(urgent=urgent):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "claim", False)
        tg.start_soon(take, "outcomes", False)
        await queued(order, 0, 2)
        tg.start_soon(take, "ingest", True)
        await queued(order, 1, 2)
        order.release()
    assert turns == ["ingest", "claim", "outcomes"]
    assert order.overtaken == 1 and not order.locked()


async def test_non_urgent_work_gets_a_turn_after_the_fair_share() -> None:
    order = WriteOrder(fair_share=2)
    turns: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        async with order.hold(urgent=urgent):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "claim", False)
        await queued(order, 0, 1)
        for n in range(4):
            tg.start_soon(take, f"ingest {n}", True)
        await queued(order, 4, 1)
        order.release()
    assert turns == ["ingest 0", "ingest 1", "claim", "ingest 2", "ingest 3"]


async def test_a_cancelled_waiter_is_skipped_and_a_granted_then_cancelled_one_passes_it_on() -> (
    None
):
    order = WriteOrder()
    turns: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        async with order.hold(urgent=urgent):
            turns.append(name)

    await order.acquire()
    async with anyio.create_task_group() as tg:
        gone = asyncio.ensure_future(order.acquire(urgent=True))
        tg.start_soon(take, "claim", False)
        await queued(order, 1, 1)
        gone.cancel()
        await asyncio.sleep(0)
        assert order.waiting == (0, 1)
        # Granted and cancelled before it ran: the turn goes on to the next waiter.
        granted = asyncio.ensure_future(order.acquire(urgent=True))
        await queued(order, 1, 1)
        order.release()
        granted.cancel()
    assert turns == ["claim"]
    assert not order.locked()
    with pytest.raises(RuntimeError):
        order.release()


async def test_the_stores_commit_an_urgent_transaction_before_waiting_bookkeeping(
    settings_factory: SettingsFactory,
) -> None:
    """On SQLite and on PostgreSQL: while one transaction runs, a non-urgent one and then an
    urgent one ask for the writer; the urgent one commits first."""
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

    async def write(name: str, urgent: bool) -> None:
        async with database.transaction(urgent=urgent) as conn:
            await conn.execute("SELECT 1")
            turns.append(name)

    order = database._write_lock  # type: ignore[attr-defined]
    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await running.wait()
        tg.start_soon(write, "outcomes", False)
        await queued(order, 0, 1)
        tg.start_soon(write, "ingest", True)
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
                async with database.transaction(urgent=True) as conn:
                    await conn.execute("SELECT 1")
            tg.cancel_scope.cancel()
    assert reading == readers + 2 and read_done == 0
