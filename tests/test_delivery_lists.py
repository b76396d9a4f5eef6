"""A subscription's deliveries list a page at a time, newest first, whatever its history.

``GET /v1/deliveries?subscription_id=…`` sorted every delivery the subscription ever had for
each page: ``deliveries_subscription`` orders a subscription's rows by status before id, so one
ORDER BY over all statuses could not read the index in order (11.8 s a page for a subscriber
with a million due deliveries). The list now reads a page of each status from the index and
merges them (docs/performance-journal.md, "A subscription's deliveries a page at a time").
The answers are checked on this pass's store; the work is checked without timing, by
SQLite's VM steps and by the rows PostgreSQL's executor reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.core.models import DeliveryStatus
from service.storage import deliveries, events, subscriptions
from service.storage.database import Database
from service.storage.postgres import PostgresDatabase
from service.storage.sqlite import SqliteConnection
from tests.support import StatementsKept, deliveries_read, ping_event, subscription_row
from tests.test_claim import steps

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
MINE = "sub_mine"
OTHER = "sub_other"
STATUSES = [status.value for status in DeliveryStatus]


async def _append(
    db: Database,
    count: int,
    *,
    types: tuple[str, ...] = ("ping",),
    to: tuple[str, ...] = (MINE, OTHER),
) -> None:
    """``count`` events, the n-th of type ``types[n % len(types)]``, each with a delivery to
    every subscription in ``to`` (MINE and OTHER: their rows interleave in id order)."""
    batch = [ping_event(NOW + n, to, type_=types[n % len(types)]) for n in range(count)]
    for start in range(0, count, 10_000):
        async with db.transaction(durable=False) as conn:
            await events.append(conn, batch[start : start + 10_000])


async def _mine(db: Database) -> list[str]:
    rows = await db.reader.execute_fetchall(
        "SELECT id FROM deliveries WHERE subscription_id = ? ORDER BY id", (MINE,)
    )
    return [str(row[0]) for row in rows]


async def _set_statuses(db: Database, ids: list[str]) -> dict[str, str]:
    """Give the n-th of ``ids`` the n-th status of every status in turn; return id → status."""
    wanted = {id_: STATUSES[n % len(STATUSES)] for n, id_ in enumerate(ids)}
    async with db.transaction() as conn:
        for id_, status in wanted.items():
            await conn.execute("UPDATE deliveries SET status = ? WHERE id = ?", (status, id_))
    return wanted


@pytest.fixture
async def seeded(db: Database) -> tuple[list[str], dict[str, str]]:
    """30 events (types ping and job.succeeded in turn), each delivered to MINE and OTHER;
    MINE's deliveries in every status in turn. Returns MINE's ids oldest first and their status."""
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row(MINE, at=NOW - 100))
        await subscriptions.insert(
            conn, subscription_row(OTHER, at=NOW - 100, owner_key_id="key_other")
        )
    await _append(db, 30, types=("ping", "job.succeeded"))
    mine = await _mine(db)
    return mine, await _set_statuses(db, mine)


async def _pages(db: Database, limit: int, **filters: Any) -> list[list[str]]:
    """Every page of MINE's deliveries, following each page's last id as the cursor."""
    pages: list[list[str]] = []
    before: str | None = None
    owner_key_id = filters.pop("owner_key_id", None)
    while True:
        page = await deliveries.list_page(
            db.reader,
            owner_key_id=owner_key_id,
            subscription_id=MINE,
            before_id=before,
            limit=limit,
            **filters,
        )
        if not page:
            return pages
        pages.append([delivery.id for delivery in page])
        before = page[-1].id


async def test_a_subscriptions_deliveries_page_newest_first_across_statuses(
    db: Database, seeded: tuple[list[str], dict[str, str]]
) -> None:
    mine, status_of = seeded
    newest = list(reversed(mine))
    pages = await _pages(db, 7)
    assert [len(page) for page in pages] == [7, 7, 7, 7, 2]
    assert [id_ for page in pages for id_ in page] == newest
    # Each delivery comes with its own status (one of every status is on the first page).
    first = await deliveries.list_page(db.reader, owner_key_id=None, subscription_id=MINE, limit=6)
    assert {d.id: d.status.value for d in first} == {id_: status_of[id_] for id_ in newest[:6]}
    assert {d.status for d in first} == set(DeliveryStatus)


async def test_the_merged_page_keeps_every_other_filter(
    db: Database, seeded: tuple[list[str], dict[str, str]]
) -> None:
    mine, status_of = seeded
    newest = list(reversed(mine))
    pings = await db.reader.execute_fetchall(
        "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.subscription_id = ? AND e.type = 'ping' ORDER BY d.id DESC",
        (MINE,),
    )
    assert len(pings) == 15
    paged = await _pages(db, 4, event_type="ping")
    assert [id_ for page in paged for id_ in page] == [row[0] for row in pings]
    since = await deliveries.list_page(
        db.reader,
        owner_key_id=None,
        subscription_id=MINE,
        created_since=NOW + 25,
        created_until=NOW + 28,
        limit=10,
    )
    created = await db.reader.execute_fetchall(
        "SELECT id FROM deliveries WHERE subscription_id = ? AND created_at >= ? "
        "AND created_at < ? ORDER BY id DESC",
        (MINE, NOW + 25, NOW + 28),
    )
    assert [d.id for d in since] == [row[0] for row in created]
    # Another key's subscription lists nothing for this key, and its own for its owner.
    assert (
        await deliveries.list_page(
            db.reader, owner_key_id="key_other", subscription_id=MINE, limit=10
        )
        == []
    )
    owned = await deliveries.list_page(
        db.reader, owner_key_id="key_test", subscription_id=MINE, limit=3
    )
    assert [d.id for d in owned] == newest[:3]
    # One status alone is still its own stretch of the index.
    failed = await deliveries.list_page(
        db.reader, owner_key_id=None, subscription_id=MINE, status="failed", limit=100
    )
    assert [d.id for d in failed] == [id_ for id_ in newest if status_of[id_] == "failed"]


async def _history(db: Database, count: int) -> None:
    """``count`` deliveries to MINE, all succeeded but the newest 10 (pending): the history a
    subscriber that keeps up leaves behind; then as many, newer, to OTHER. Reading MINE's newest
    rows in id order from the whole table would pass OTHER's first, and from MINE's rows in the
    index, every status before them."""
    async with db.transaction() as conn:
        await subscriptions.insert(conn, subscription_row(MINE, at=NOW - 100))
        await subscriptions.insert(conn, subscription_row(OTHER, at=NOW - 100))
    await _append(db, count, to=(MINE,))
    async with db.transaction(durable=False) as conn:
        await conn.execute(
            "UPDATE deliveries SET status = 'succeeded' WHERE subscription_id = ?", (MINE,)
        )
    mine = await _mine(db)
    async with db.transaction() as conn:
        for id_ in mine[-10:]:
            await conn.execute("UPDATE deliveries SET status = 'pending' WHERE id = ?", (id_,))
    await _append(db, count, to=(OTHER,))


@pytest.mark.sqlite_only(reason="counts SQLite's VM steps; PostgreSQL's rows read are the twin")
@pytest.mark.parametrize("history", [500, 20_000])
async def test_a_page_costs_the_same_whatever_the_subscriptions_history(
    db: Database, history: int
) -> None:
    await _history(db, history)
    assert isinstance(db.reader, SqliteConnection)
    page, counted = await steps(
        db.reader,
        lambda: deliveries.list_page(db.reader, owner_key_id=None, subscription_id=MINE, limit=20),
    )
    assert len(page) == 20
    assert [d.status.value for d in page] == ["pending"] * 10 + ["succeeded"] * 10
    # Sorting the history took ~28 steps per row it had (14,237 at 500, 560,237 at 20,000);
    # the merged page reads six short stretches of the index: 1,038 at either size.
    assert counted < 3_000, (history, counted)


async def test_postgresql_reads_a_page_of_each_status_not_the_history(
    pg_database: str, db: Database
) -> None:
    """The PostgreSQL twin of the step count (asking for ``pg_database`` runs it in the
    PostgreSQL pass, on that database): the executor reads at most a page of rows of
    ``deliveries`` per status, not the 5,000 the subscription had."""
    assert isinstance(db, PostgresDatabase)
    await _history(db, 5_000)
    recorder = StatementsKept(db.reader)
    await deliveries.list_page(recorder, owner_key_id=None, subscription_id=MINE, limit=20)
    ((sql, params),) = recorder.sent
    async with db.pool.acquire() as raw:
        await raw.execute("ANALYZE deliveries")
        read = await deliveries_read(raw, sql, params)
    assert read <= 20 * (len(DeliveryStatus) + 1), read
