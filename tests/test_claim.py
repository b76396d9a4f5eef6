"""The outbox claim stays O(claim), never O(backlog), and leaves saturated subscriptions alone.

A claim runs under the write lock, so every row it reads delays every ingest commit. The cost is
measured without timing: SQLite's virtual-machine step counter (``set_progress_handler`` with
N=1) counts the work of each statement, so a claim against a 100,000-row backlog is compared with
the same claim against a 1,000-row one. A claim that walked the backlog would take ~100x the
steps; an index seek grows by a B-tree level at most. Those measurements are SQLite's own; what
the claim answers, and which claims the dispatcher makes, is tested on this pass's store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
import pytest

from service.core.models import SubscriptionStatus
from service.core.retry import RetrySchedule
from service.delivery.dispatcher import PREFETCH, Dispatcher
from service.delivery.publisher import Publisher
from service.delivery.sender import Sender
from service.storage import deliveries, subscriptions
from service.storage.database import Connection, Database
from service.storage.postgres import PostgresDatabase
from service.storage.sqlite import SqliteConnection, SqliteDatabase
from tests.helpers.delivery import Hanging
from tests.servers import run_server
from tests.support import (
    StatementsKept,
    deliveries_read,
    queue_due,
    store_target,
    subscription_row,
)

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
T = TypeVar("T")


@asynccontextmanager
async def backlog(target: Path | str, rows: int) -> AsyncIterator[Database]:
    """A database at ``target`` where ``slow`` has ``rows`` due deliveries (queued first, so
    earliest due) and ``fast`` has 5."""
    async with Database.open(target) as db:
        async with db.transaction() as conn:
            await subscriptions.insert(conn, subscription_row("sub_slow", at=NOW - 100))
            await subscriptions.insert(conn, subscription_row("sub_fast", at=NOW - 100))
        await queue_due(db, "sub_slow", rows, due=NOW - 60)
        await queue_due(db, "sub_fast", 5, due=NOW - 30)
        yield db


def _writer(db: Database) -> aiosqlite.Connection:
    """The SQLite store's raw write connection (these tests count SQLite's own work)."""
    assert isinstance(db, SqliteDatabase)
    return db.writer


def _raw(conn: Connection) -> aiosqlite.Connection:
    assert isinstance(conn, SqliteConnection)
    return conn.raw


async def steps(store: Connection, work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """Run ``work`` and count the SQLite VM steps it took on ``store``."""
    conn = _raw(store)
    counted = 0

    def tick() -> int:
        nonlocal counted
        counted += 1
        return 0  # 0: carry on

    await conn.set_progress_handler(tick, 1)
    try:
        result = await work()
    finally:
        await conn.set_progress_handler(None, 1)  # type: ignore[arg-type]
    return result, counted


async def _measure(db: Database) -> dict[str, tuple[object, int]]:
    """The claim's reads and writes, as the dispatcher does them with ``slow`` saturated, then
    with ``slow`` claimed for (eight rows)."""
    out: dict[str, tuple[object, int]] = {}
    out["due"] = await steps(
        db.reader,
        lambda: deliveries.due_subscriptions(
            db.reader, skip=["sub_slow"], now=NOW, cap=32, limit=100
        ),
    )
    async with db.transaction(durable=False) as conn:
        fast, n = await steps(
            conn,
            lambda: deliveries.claim_due(
                conn, now=NOW, lease_until=NOW + 60, rooms={"sub_fast": 8}
            ),
        )
        out["claim_fast"] = ([c.subscription_id for c in fast], n)
        slow, n = await steps(
            conn,
            lambda: deliveries.claim_due(
                conn, now=NOW, lease_until=NOW + 60, rooms={"sub_slow": 8}
            ),
        )
        out["claim_slow"] = ([c.subscription_id for c in slow], n)
    return out


@pytest.mark.sqlite_only("it counts SQLite's virtual-machine steps")
async def test_a_claim_costs_the_same_with_100k_rows_waiting_as_with_1k(tmp_path: Path) -> None:
    async with backlog(tmp_path / "backlog-1000.sqlite", 1_000) as small_db:
        small = await _measure(small_db)
    async with backlog(tmp_path / "backlog-100000.sqlite", 100_000) as big_db:
        big = await _measure(big_db)
    # Same answers: the saturated subscription is skipped, the other one gets all five of its
    # rows, and claiming for the big one takes exactly its room.
    assert small["due"][0] == big["due"][0] == [deliveries.Ready("sub_fast", NOW - 30, 5)]
    assert small["claim_fast"][0] == big["claim_fast"][0] == ["sub_fast"] * 5
    assert small["claim_slow"][0] == big["claim_slow"][0] == ["sub_slow"] * 8
    # Same work, within a B-tree level: a walk over the backlog would be ~100x.
    for name in ("due", "claim_fast", "claim_slow"):
        assert big[name][1] <= small[name][1] * 1.5 + 50, (name, small[name][1], big[name][1])


@pytest.mark.sqlite_only("it reads SQLite's EXPLAIN QUERY PLAN of the statements SQLite ran")
async def test_the_claim_query_plans_read_indexes_never_scan_the_outbox(tmp_path: Path) -> None:
    async with backlog(tmp_path / "backlog-100.sqlite", 100) as db:
        plans: list[str] = []

        def trace(sql: str) -> None:
            plans.append(sql)

        # EXPLAIN QUERY PLAN of exactly the statements the claim runs.
        await _raw(db.reader).set_trace_callback(trace)
        await deliveries.due_subscriptions(db.reader, skip=["sub_slow"], now=NOW, cap=8, limit=10)
        await _raw(db.reader).set_trace_callback(None)  # type: ignore[arg-type]
        await _writer(db).set_trace_callback(trace)
        async with db.transaction(durable=False) as conn:
            await deliveries.claim_due(conn, now=NOW, lease_until=NOW + 60, rooms={"sub_slow": 2})
        await _writer(db).set_trace_callback(None)  # type: ignore[arg-type]
        # Each row an UPDATE changes traces it again (the announcement triggers run per row).
        selects = list(
            dict.fromkeys(
                sql for sql in plans if sql.lstrip().upper().startswith(("SELECT", "UPDATE"))
            )
        )
        assert len(selects) == 3, plans
        details: list[str] = []
        for sql in selects:
            rows = await db.reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}")
            details.extend(str(row[3]) for row in rows)
    assert not [d for d in details if d.startswith("SCAN d") or d.startswith("SCAN deliveries")]
    assert any("deliveries_pending" in d for d in details), details


class _RolledBack(Exception):
    """Ends a transaction whose writes the test does not keep."""


async def test_postgresql_a_claim_reads_its_room_not_the_backlog(
    pg_database: str, db: Database
) -> None:
    """The PostgreSQL twin of the step count (asking for ``pg_database`` runs it in the
    PostgreSQL pass, on that database): the claim's statements read about the rows they take,
    not the 5,000 due to ``sub_slow``, with the planner's statistics taken before the backlog
    was written, as after a burst of ingest; nor does the read of what is due before it. Each
    statement's plan is read with EXPLAIN ANALYZE in a transaction rolled back."""
    assert isinstance(db, PostgresDatabase)
    async with db.pool.acquire() as raw:
        # Statistics of a table with no deliveries yet, kept so: autovacuum must not analyze it
        # mid-test.
        await raw.execute("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        await raw.execute("ANALYZE deliveries")
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row("sub_slow", at=NOW - 100))
        await subscriptions.insert(conn, subscription_row("sub_fast", at=NOW - 100))
    await queue_due(db, "sub_slow", 5_000, due=NOW - 60)
    await queue_due(db, "sub_fast", 5, due=NOW - 30)
    claimed: list[deliveries.Claimed] = []
    with pytest.raises(_RolledBack):
        async with db.transaction(durable=False) as conn:
            kept = StatementsKept(conn)
            claimed = await deliveries.claim_due(
                kept, now=NOW, lease_until=NOW + 60, rooms={"sub_slow": 8, "sub_fast": 8}
            )
            raise _RolledBack
    assert Counter(c.subscription_id for c in claimed) == {"sub_slow": 8, "sub_fast": 5}
    reader = StatementsKept(db.reader)
    ready = await deliveries.due_subscriptions(reader, skip=[], now=NOW, cap=32, limit=10)
    assert ready == [
        deliveries.Ready("sub_slow", NOW - 60, 32),
        deliveries.Ready("sub_fast", NOW - 30, 5),
    ]
    statements = {
        name: sent
        for name, sent in zip(
            ("choose", "lease", "due"),
            [(sql, params) for sql, params in kept.sent if "deliveries" in sql] + reader.sent,
            strict=True,
        )
    }
    read: dict[str, int] = {}
    async with db.pool.acquire() as raw:
        transaction = raw.transaction()
        await transaction.start()
        try:
            for name, (sql, params) in statements.items():
                read[name] = await deliveries_read(raw, sql, params)
        finally:
            await transaction.rollback()
    # 13 rows taken, each met in an index and in the table, and the lease finds them again;
    # what is due: each subscription's first entry and up to 32 counted.
    assert read["choose"] <= 4 * 13 and read["lease"] <= 4 * 13, read
    assert read["due"] <= 2 * (1 + 32 + 1 + 5), read


async def test_due_subscriptions_orders_by_earliest_due_and_leaves_disabled_ones_out(
    tmp_path: Path,
) -> None:
    async with backlog(store_target(tmp_path), 3) as db:
        assert await deliveries.due_subscriptions(db.reader, skip=[], now=NOW, cap=2, limit=10) == [
            deliveries.Ready("sub_slow", NOW - 60, 2),
            deliveries.Ready("sub_fast", NOW - 30, 2),
        ]
        assert await deliveries.due_subscriptions(
            db.reader, skip=[], now=NOW - 45, cap=10, limit=1
        ) == [deliveries.Ready("sub_slow", NOW - 60, 3)]
        async with db.transaction() as conn:
            await subscriptions.set_status(
                conn, "sub_slow", SubscriptionStatus.DISABLED, reason="test", now=NOW
            )
            # A disabled subscription's rows are not claimed even when asked for.
            assert (
                await deliveries.claim_due(
                    conn, now=NOW, lease_until=NOW + 60, rooms={"sub_slow": 2}
                )
                == []
            )
        assert await deliveries.due_subscriptions(
            db.reader, skip=[], now=NOW, cap=10, limit=10
        ) == [deliveries.Ready("sub_fast", NOW - 30, 5)]


async def test_a_saturated_subscription_is_not_claimed_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One subscriber hangs with far more due than its prefetch: once its prefetch is claimed,
    waking the dispatcher (as every commit and outcome flush does) runs no claim for it, while
    another subscription's deliveries are still claimed and sent.

    On either store the write transactions begun and the claims asked for are recorded; on
    SQLite every statement its writer ran, too."""
    hanging = Hanging()
    written: list[str] = []

    def trace(sql: str) -> None:
        written.append(sql)

    async with (
        run_server(hanging.app()) as url,
        Database.open(store_target(tmp_path)) as db,
        Sender.session(allow=[ip_network("127.0.0.0/8")], timeout=30, concurrency=64) as session,
    ):
        writes = WriteSpy(db, monkeypatch)
        async with db.transaction() as conn:
            await subscriptions.insert(
                conn, subscription_row("sub_slow", f"{url}/hang", at=NOW - 100)
            )
            await subscriptions.insert(
                conn, subscription_row("sub_fast", f"{url}/fast", at=NOW - 100)
            )
        await queue_due(db, "sub_slow", 50, due=0)
        dispatcher = Dispatcher(
            db,
            Sender(session),
            RetrySchedule.for_deliveries((0.0, 10.0)),
            clock=lambda: NOW,
            lease=60,
            concurrency=64,
            per_subscription=1,
            publisher=Publisher(lambda digest, media_type: ""),
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                await hanging.wait_for(lambda h: h.hanging == 1)
                # On PostgreSQL the cap counted across nodes (per_subscription) bounds claims too.
                prefetch = PREFETCH * 1 if isinstance(db, SqliteDatabase) else 1
                await _until(lambda: _count_inflight(db, "sub_slow"), prefetch)
                if isinstance(db, SqliteDatabase):
                    await db.writer.set_trace_callback(trace)
                writes.start()
                for _ in range(5):
                    dispatcher.wake()
                    await anyio.sleep(0.01)
                # Only the saturated subscription has work due: no write transaction at all.
                while_saturated = list(written)
                transactions_while_saturated = list(writes.transactions)
                # Work for the other subscription is claimed and delivered meanwhile.
                await queue_due(db, "sub_fast", 3, due=0)
                writes.start()
                dispatcher.wake()
                await hanging.wait_for(lambda h: h.on("/fast") == 3)
                await _until(lambda: _count_inflight(db, "sub_fast"), 0)
                if isinstance(db, SqliteDatabase):
                    await db.writer.set_trace_callback(None)  # type: ignore[arg-type]
                slow_inflight = await _inflight(db, "sub_slow")
                slow_ids = await _ids_of(db, "sub_slow")
                hanging.release.set()
                await dispatcher.stop()
        finally:
            hanging.release.set()
    assert len(slow_inflight) == prefetch
    assert while_saturated == []
    assert transactions_while_saturated == []
    assert writes.claims, "the other subscription's deliveries were claimed"
    assert all(set(rooms) == {"sub_fast"} for rooms, _ in writes.claims), writes.claims
    assert all(d.subscription_id == "sub_fast" for _, got in writes.claims for d in got)
    if isinstance(db, SqliteDatabase):
        claims = [sql for sql in written if "SET status = 'inflight'" in sql]
        assert claims, "the other subscription's deliveries were claimed"
        assert not [sql for sql in claims if any(i in sql for i in slow_ids)]


async def _until(count: Callable[[], Awaitable[int]], expected: int) -> None:
    with anyio.fail_after(10):
        while True:
            if await count() == expected:
                return
            await anyio.sleep(0.01)


async def _count_inflight(db: Database, sub_id: str) -> int:
    return len(await _inflight(db, sub_id))


async def _inflight(db: Database, sub_id: str) -> list[str]:
    rows = await db.reader.execute_fetchall(
        "SELECT id FROM deliveries WHERE subscription_id = ? AND status = 'inflight'", (sub_id,)
    )
    return [row[0] for row in rows]


async def _ids_of(db: Database, sub_id: str) -> list[str]:
    rows = await db.reader.execute_fetchall(
        "SELECT id FROM deliveries WHERE subscription_id = ?", (sub_id,)
    )
    return [row[0] for row in rows]


class WriteSpy:
    """The write transactions begun on ``db`` and the claims run in them (the rooms asked for
    and the deliveries claimed), from :meth:`start` on; either store."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transactions: list[str] = []
        self.claims: list[tuple[dict[str, int], list[deliveries.Claimed]]] = []
        self._recording = False
        transaction, run_transaction = db.transaction, db.run_transaction
        claim_due = deliveries.claim_due

        def counted_transaction(**options: Any) -> AbstractAsyncContextManager[Connection]:
            self._record("transaction")
            return transaction(**options)

        async def counted_run_transaction(work: Any, **options: Any) -> Any:
            self._record("run_transaction")
            return await run_transaction(work, **options)

        async def counted_claim(conn: Connection, **options: Any) -> list[deliveries.Claimed]:
            claimed = await claim_due(conn, **options)
            if self._recording:
                self.claims.append((dict(options["rooms"]), claimed))
            return claimed

        monkeypatch.setattr(db, "transaction", counted_transaction)
        monkeypatch.setattr(db, "run_transaction", counted_run_transaction)
        monkeypatch.setattr(deliveries, "claim_due", counted_claim)

    def start(self) -> None:
        self._recording = True
        self.transactions.clear()

    def _record(self, kind: str) -> None:
        if self._recording:
            self.transactions.append(kind)


async def test_one_claim_takes_one_due_delivery_from_each_of_a_hundred_subscriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms are sized by what is due: a hundred subscriptions with one delivery each are all
    claimed in one transaction, not a prefetch's worth of subscriptions per claim (on SQLite,
    one claiming statement among those its writer ran)."""
    hanging = Hanging()
    claims: set[str] = set()

    def trace(sql: str) -> None:
        if "SET status = 'inflight'" in sql:
            claims.add(sql)  # a set: the per-row announcement triggers trace it once per row

    async with (
        run_server(hanging.app()) as url,
        Database.open(store_target(tmp_path)) as db,
        Sender.session(allow=[ip_network("127.0.0.0/8")], timeout=30, concurrency=64) as session,
    ):
        names = [f"sub_{n:03d}" for n in range(100)]
        async with db.transaction() as conn:
            for name in names:
                await subscriptions.insert(
                    conn, subscription_row(name, f"{url}/fast", at=NOW - 100)
                )
        for name in names:
            await queue_due(db, name, 1, due=0)
        writes = WriteSpy(db, monkeypatch)
        writes.start()
        if isinstance(db, SqliteDatabase):
            await db.writer.set_trace_callback(trace)
        dispatcher = Dispatcher(
            db,
            Sender(session),
            RetrySchedule.for_deliveries((0.0, 10.0)),
            clock=lambda: NOW,
            lease=60,
            concurrency=64,
            per_subscription=8,
            publisher=Publisher(lambda digest, media_type: ""),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await hanging.wait_for(lambda h: h.on("/fast") == 100)
            await dispatcher.stop()
        if isinstance(db, SqliteDatabase):
            await db.writer.set_trace_callback(None)  # type: ignore[arg-type]
            assert len(claims) == 1
    made = [got for _, got in writes.claims if got]
    assert len(made) == 1, writes.claims
    assert sorted(d.subscription_id for d in made[0]) == names
