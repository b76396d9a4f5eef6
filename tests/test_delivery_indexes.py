"""A delivery's index entries without its status (docs/performance.md §5, "A delivery's index
entries without its status"): a claim and an outcome no longer rewrite the delivery's entry in
``deliveries_subscription``; a subscription's deliveries list a page at a time newest first from
it, those in flight and those failed from their own partial indexes; a FIFO queue's checks, its
head and a subscription's cancelling seek each status's partial index, never every delivery the
subscription had. Real stores, both engines."""

from __future__ import annotations

import pytest

from service.core.ids import new_id
from service.core.models import DeliveryStatus
from service.storage import deliveries, events, subscriptions
from service.storage.database import Database
from service.storage.postgres import PostgresDatabase
from service.storage.sqlite import SqliteDatabase
from tests.support import subscription_row

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
MINE = "sub_mine"
OTHER = "sub_other"
# The status of MINE's n-th delivery (oldest first): every status the lists filter by.
CYCLE = ("failed", "inflight", "pending", "succeeded", "succeeded")


@pytest.fixture
async def seeded(db: Database) -> list[str]:
    """40 deliveries of MINE (in id order: statuses in CYCLE order, due a second apart), 40 of
    OTHER between them, all pending; return MINE's ids in id order (the lists' order)."""
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row(MINE, at=NOW - 100))
        await subscriptions.insert(conn, subscription_row(OTHER, at=NOW - 100))
    for n in range(40):
        event = events.NewEvent(
            id=new_id("evt"),
            type="ping",
            job_id=None,
            created_at=NOW + n,
            payload=b'{"type":"ping"}',
            subscription_ids=[MINE, OTHER],
            first_attempt_at=NOW + n,
        )
        async with db.transaction() as conn:
            await events.append(conn, [event])
    rows = await db.reader.execute_fetchall(
        "SELECT id FROM deliveries WHERE subscription_id = ? ORDER BY id", (MINE,)
    )
    mine = [str(row[0]) for row in rows]
    async with db.transaction() as conn:
        for n, id_ in enumerate(mine):
            await conn.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ? WHERE id = ?",
                (CYCLE[n % len(CYCLE)], NOW + n, id_),
            )
    return mine


async def _plan(db: Database, sql: str, params: tuple[object, ...]) -> list[str]:
    if db.dialect == "sqlite":
        rows = await db.reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return [str(row[3]) for row in rows]
    assert isinstance(db, PostgresDatabase)
    numbered = sql
    for n in range(1, len(params) + 1):
        numbered = numbered.replace("?", f"${n}", 1)
    async with db.pool.acquire() as raw, raw.transaction():
        # Usable at all: a table this small may well be read whole otherwise.
        await raw.execute("SET LOCAL enable_seqscan = off")
        return [str(row[0]) for row in await raw.fetch(f"EXPLAIN {numbered}", *params)]


def _reads(plan: list[str], index: str) -> bool:
    """Whether ``plan`` reads ``index`` (and sorts nothing: a page, not every matching row)."""
    sorts = any("TEMP B-TREE" in step or step.lstrip(" ->").startswith("Sort") for step in plan)
    return any(index in step for step in plan) and not sorts


async def test_a_subscriptions_list_reads_a_page_newest_first(
    db: Database, seeded: list[str]
) -> None:
    newest = list(reversed(seeded))
    first = await deliveries.list_page(db.reader, owner_key_id=None, subscription_id=MINE, limit=15)
    assert [d.id for d in first] == newest[:15]
    rest = await deliveries.list_page(
        db.reader, owner_key_id=None, subscription_id=MINE, before_id=first[-1].id, limit=100
    )
    assert [d.id for d in rest] == newest[15:]
    for n, status in enumerate(CYCLE[:4]):
        listed = await deliveries.list_page(
            db.reader, owner_key_id=None, subscription_id=MINE, status=status, limit=100
        )
        wanted = [id_ for m, id_ in enumerate(seeded) if CYCLE[m % len(CYCLE)] == status]
        assert [d.id for d in listed] == list(reversed(wanted)), (n, status)
        assert {d.status for d in listed} == {DeliveryStatus(status)}
    # The plans: the page from the subscription's stretch in id order, no sort of all its rows
    # (the index that named the status had to sort them); in flight and failed from theirs.
    select = (
        "SELECT d.id, d.status, e.type FROM deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.subscription_id = ?{} ORDER BY d.id DESC LIMIT ?"
    )
    plan = await _plan(db, select.format(""), (MINE, 15))
    assert _reads(plan, "deliveries_subscription"), plan
    plan = await _plan(db, select.format(" AND d.id < ?"), (MINE, seeded[20], 15))
    assert _reads(plan, "deliveries_subscription"), plan
    for status in ("inflight", "failed"):
        plan = await _plan(db, select.format(" AND d.status = ?"), (MINE, status, 15))
        assert _reads(plan, f"deliveries_{status}"), plan


@pytest.mark.sqlite_only(reason="PostgreSQL writes a new entry in every index at such an UPDATE")
async def test_a_claim_and_its_outcome_leave_the_subscriptions_entry_alone(
    db: Database, seeded: list[str]
) -> None:
    """What the index change is for: on SQLite an UPDATE opens for writing only the indexes it
    may change, so the claim's and the outcome's statements must not open
    ``deliveries_subscription`` (each did, to move the entry to the new status)."""
    assert isinstance(db, SqliteDatabase)
    statements: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("UPDATE deliveries"):
            statements.append(sql)

    await db.writer.set_trace_callback(trace)
    try:
        async with db.transaction() as conn:
            claimed = await deliveries.claim_due(
                conn, now=NOW + 100, lease_until=NOW + 160, rooms={OTHER: 4}
            )
        assert len(claimed) == 4
        outcomes = [
            deliveries.AttemptOutcome(
                delivery_id=c.id,
                subscription_id=OTHER,
                attempted_at=NOW + 101,
                latency_ms=1.0,
                status=status,
                token=c.token,
                status_code=200 if status is DeliveryStatus.SUCCEEDED else 500,
            )
            for c, status in zip(
                claimed, (DeliveryStatus.SUCCEEDED,) * 3 + (DeliveryStatus.FAILED,), strict=True
            )
        ]
        async with db.transaction() as conn:
            assert len(await deliveries.record(conn, outcomes)) == 4
    finally:
        await db.writer.set_trace_callback(None)  # type: ignore[arg-type]
    roots = {
        str(row[0]): int(row[1])
        for row in await db.reader.execute_fetchall(
            "SELECT name, rootpage FROM sqlite_master WHERE tbl_name = 'deliveries'"
        )
    }
    assert len(statements) == 5, statements  # the claim, then one per outcome
    for sql in statements:
        opcodes = await db.writer.execute_fetchall(f"EXPLAIN {sql}")
        written = {int(row[3]) for row in opcodes if row[1] == "OpenWrite"}
        assert roots["deliveries_subscription"] not in written, sql
        # It does see the writes it makes: the claim's and the outcome's in-flight entry.
        assert roots["deliveries_inflight"] in written, sql
    listed = await deliveries.list_page(
        db.reader, owner_key_id=None, subscription_id=OTHER, status="failed", limit=10
    )
    assert [d.id for d in listed] == [claimed[3].id]


async def test_a_fifo_queue_seeks_each_status_never_the_subscriptions_history(
    db: Database, seeded: list[str]
) -> None:
    # The queue's head: pending or in flight, earliest due (MINE's first in flight is n = 1).
    queue = await deliveries.queue_of(db.reader, MINE)
    assert queue.head is not None and queue.head.id == seeded[1]
    assert queue.queued == 0
    # Nothing is promoted while the head is open.
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE deliveries SET status = 'queued', queue_seq = 1, next_attempt_at = NULL "
            "WHERE id = ?",
            (seeded[3],),
        )
        assert await deliveries.promote_queued(conn, [MINE], NOW + 200) == 0
    # A long history of delivered rows, older than the rest, and statistics that know it: with
    # them PostgreSQL's planner weighs reading the subscription's stretch against the partial
    # indexes as it would on a real outbox (on 40 rows a walk of all of them is the cheapest).
    history = 5_000
    async with db.transaction() as conn:
        if db.dialect == "sqlite":
            numbers = (
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO deliveries (id, event_id, subscription_id, status, created_at, "
                "updated_at) SELECT printf('dlv_0%06d', i), ?, ?, 'succeeded', ?, ? FROM n"
            )
        else:
            numbers = (
                "INSERT INTO deliveries (id, event_id, subscription_id, status, created_at, "
                "updated_at) SELECT 'dlv_0' || lpad(i::text, 6, '0'), CAST(? AS TEXT), "
                "CAST(? AS TEXT), 'succeeded', CAST(? AS DOUBLE PRECISION), "
                "CAST(? AS DOUBLE PRECISION) FROM generate_series(1, CAST(? AS INTEGER)) AS i"
            )
        event = await conn.execute_fetchall(
            "SELECT event_id FROM deliveries WHERE id = ?", (seeded[0],)
        )
        params: tuple[object, ...] = (str(next(iter(event))[0]), MINE, NOW - 50, NOW - 50)
        await conn.execute(
            numbers, (history, *params) if db.dialect == "sqlite" else (*params, history)
        )
        await conn.execute("ANALYZE deliveries")
    checks = {
        "open": f"SELECT {deliveries._QUEUES}",
        "head": (
            "SELECT id FROM deliveries WHERE subscription_id = ? AND status = 'pending' "
            "UNION ALL SELECT id FROM deliveries WHERE subscription_id = ? AND status = 'inflight'"
        ),
        "cancel": (
            "SELECT id FROM deliveries WHERE (subscription_id = ? AND status = 'pending') "
            "OR (subscription_id = ? AND status = 'inflight') "
            "OR (subscription_id = ? AND status = 'queued')"
        ),
    }
    for name, sql in checks.items():
        plan = await _plan(db, sql, (MINE,) * sql.count("?"))
        assert not any("deliveries_subscription" in step for step in plan), (name, plan)
        assert any("deliveries_pending" in step for step in plan), (name, plan)
        # In flight: deliveries_inflight, or on PostgreSQL possibly deliveries_owner (every row
        # in flight, which the dispatchers' capacity bounds); never a scan of the outbox.
        assert not any(step.startswith("SCAN deliveries") or "Seq Scan" in step for step in plan), (
            name,
            plan,
        )
    # Deleting the subscription cancels exactly its open deliveries.
    async with db.transaction() as conn:
        assert await subscriptions.delete(conn, MINE)
    rows = await db.reader.execute_fetchall(
        "SELECT status, count(*) FROM deliveries WHERE subscription_id = ? GROUP BY status",
        (MINE,),
    )
    assert {str(row[0]): int(row[1]) for row in rows} == {
        "canceled": 8 + 8 + 1,
        "failed": 8,
        "succeeded": 16 - 1 + history,
    }
