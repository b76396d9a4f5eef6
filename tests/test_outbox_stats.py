"""/readyz and the /metrics gauges of stored state do bounded store work whatever the backlog
(docs/performance-journal.md, "/readyz and /metrics over a million due deliveries").

/readyz counts the outbox up to a cap; the gauges are counted from index entries only, a bounded
number per statement, and read at most once per gap however often /metrics is scraped. Real
stores: the counts and plans on both engines; the work per statement measured without timing by
SQLite's virtual-machine step counter (``set_progress_handler`` with N=1, as tests/test_claim.py
does), over 100,000 rows against 2,000.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import aiosqlite
import anyio
import pytest

from service.api import operations
from service.core.models import JobStatus, SubscriptionStatus
from service.ops import metrics as metrics_module
from service.ops.metrics import Metrics
from service.storage import deliveries, events, jobs, stats, subscriptions
from service.storage.database import Database
from service.storage.sqlite import SqliteConnection
from tests.conftest import SettingsFactory
from tests.helpers.jobs import make_job
from tests.support import api_client, ping_event, query_plan, queue_due, subscription_row

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
T = TypeVar("T")


async def _subscribe(db: Database, sub_id: str, **changes: object) -> None:
    sub = dataclasses.replace(subscription_row(sub_id, at=NOW - 1000), **changes)  # type: ignore[arg-type]
    async with db.transaction() as conn:
        await subscriptions.insert(conn, sub)


async def _mixed_outbox(db: Database) -> None:
    """12 waiting deliveries: ``sub_plain`` 3 pending and 2 in flight (the oldest, at NOW -
    500), ``sub_fifo`` 1 pending and 4 queued behind it, and a deferred fan-out of 2 (to
    ``sub_plain`` and ``sub_other``) not expanded yet; plus 1 succeeded (not counted)."""
    await _subscribe(db, "sub_plain")
    await _subscribe(db, "sub_other")
    await _subscribe(db, "sub_fifo", ordering="fifo")
    await queue_due(db, "sub_plain", 2, due=NOW - 500)
    await queue_due(db, "sub_plain", 4, due=NOW - 400)
    async with db.transaction() as conn:
        claimed = await deliveries.claim_due(
            conn, now=NOW, lease_until=NOW + 60, rooms={"sub_plain": 3}
        )
        assert len(claimed) == 3
        await conn.execute(
            "UPDATE deliveries SET status = 'succeeded', lease_until = NULL WHERE id = ?",
            (claimed[-1].id,),
        )
    await queue_due(db, "sub_fifo", 5, due=NOW - 300)
    async with db.transaction() as conn:
        await events.append(
            conn,
            [ping_event(NOW - 200, deferred=["sub_plain", "sub_other"])],
        )


async def test_the_counts_agree_on_every_waiting_status_whatever_the_chunk(db: Database) -> None:
    await _mixed_outbox(db)
    statuses = await db.reader.execute_fetchall(
        "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status"
    )
    assert [tuple(row) for row in statuses] == [
        ("inflight", 2),
        ("pending", 4),
        ("queued", 4),
        ("succeeded", 1),
    ]
    for chunk in (1, 2, 3, 10_000):
        assert await stats.outbox(db.reader, chunk=chunk) == (12, NOW - 500), chunk
    assert await stats.outbox_depth_up_to(db.reader, 100) == stats.Depth(12, False)
    assert await stats.outbox_depth_up_to(db.reader, 12) == stats.Depth(12, False)
    assert await stats.outbox_depth_up_to(db.reader, 11) == stats.Depth(11, True)
    assert await stats.outbox_depth_up_to(db.reader, 1) == stats.Depth(1, True)


async def test_an_empty_outbox_reads_zero_and_no_age(db: Database) -> None:
    await _subscribe(db, "sub_plain")
    assert await stats.outbox(db.reader) == (0, None)
    assert await stats.outbox_depth_up_to(db.reader, 5) == stats.Depth(0, False)


async def test_jobs_are_counted_by_status_in_chunks(db: Database) -> None:
    wanted = {JobStatus.SUBMITTED: 5, JobStatus.SUCCEEDED: 3, JobStatus.FAILED: 1}
    made, number = [], 0
    for status, count in wanted.items():
        for _ in range(count):
            number += 1
            made.append(make_job(number, status=status))
    async with db.transaction() as conn:
        await jobs.insert_many(conn, made)
    expected = {status.value: count for status, count in wanted.items()}
    for chunk in (1, 2, 5, 10_000):
        assert await stats.jobs_by_status(db.reader, chunk=chunk) == expected, chunk


async def test_readyz_counts_the_outbox_up_to_its_cap_and_says_when_it_stopped(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_factory()
    async with Database.open(settings.database_url) as db:
        # Disabled: the dispatcher leaves its deliveries waiting.
        await _subscribe(db, "sub_held", status=SubscriptionStatus.DISABLED)
        await queue_due(db, "sub_held", 7, due=NOW)
    async with api_client(settings) as http:
        monkeypatch.setattr(operations, "READY_DEPTH_CAP", 5)
        capped = (await http.get("/readyz")).json()["cluster"]
        monkeypatch.setattr(operations, "READY_DEPTH_CAP", 7)
        exact = (await http.get("/readyz")).json()["cluster"]
    assert (capped["outbox_depth"], capped["outbox_depth_capped"]) == (5, True)
    assert (exact["outbox_depth"], exact["outbox_depth_capped"]) == (7, False)


async def test_scrapes_within_the_gap_share_the_last_read_and_the_age_keeps_growing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gap is timed by anyio.current_time(): here a clock the test moves, so a slow machine
    # cannot carry the second scrape past the gap.
    clock = [100.0]
    monkeypatch.setattr(
        metrics_module,
        "anyio",
        SimpleNamespace(Lock=anyio.Lock, current_time=lambda: clock[0]),
    )
    await _subscribe(db, "sub_plain")
    await queue_due(db, "sub_plain", 2, due=NOW - 60)
    gauges = Metrics()

    def sample(name: str) -> float | None:
        return gauges.registry.get_sample_value(name)

    await gauges.refresh(db.reader, NOW)
    assert sample("reelhook_outbox_depth") == 2
    assert sample("reelhook_oldest_pending_delivery_age_seconds") == 60
    await queue_due(db, "sub_plain", 3, due=NOW)
    # Within the gap: the last read's counts, the age by the scrape's clock.
    clock[0] += metrics_module.STATE_MIN_GAP * 0.9
    await gauges.refresh(db.reader, NOW + 30)
    assert sample("reelhook_outbox_depth") == 2
    assert sample("reelhook_oldest_pending_delivery_age_seconds") == 90
    # The gap past (the read took no time by this clock): read again.
    clock[0] = 100.0 + metrics_module.STATE_MIN_GAP
    await gauges.refresh(db.reader, NOW + 31)
    assert sample("reelhook_outbox_depth") == 5
    assert gauges.registry.get_sample_value("reelhook_jobs", {"status": "pending"}) == 0


async def test_the_counting_statements_read_index_entries_only(db: Database) -> None:
    await _mixed_outbox(db)
    jobs_plan = await query_plan(db, stats.JOBS_CHUNK_END, ("submitted", "", 99))
    jobs_plan += await query_plan(db, stats.JOBS_REST, ("submitted", "", 100))
    chunk_plan = await query_plan(db, stats.DELIVERIES_CHUNK_END, ("sub_plain", "pending", "", 99))
    chunk_plan += await query_plan(db, stats.DELIVERIES_REST, ("sub_plain", "pending", "", 100))
    page_plan = await query_plan(db, stats.OUTBOX_PAGE, (100, 100, 100, "", 10))
    depth_plan = await query_plan(db, stats.depth_up_to_sql(100), ())
    if db.dialect == "sqlite":
        # (A rest's count reads its subquery's rows: CO-ROUTINE rest, SCAN rest.)
        reads = [s for s in jobs_plan + chunk_plan if s.startswith("SEARCH")]
        jobs_read = "SEARCH jobs USING COVERING INDEX jobs_status (status=? AND id>?)"
        deliveries_read = (
            "SEARCH deliveries USING COVERING INDEX deliveries_subscription "
            "(subscription_id=? AND status=? AND id>?)"
        )
        assert reads == [jobs_read] * 2 + [deliveries_read] * 2, jobs_plan + chunk_plan
        assert not [s for s in jobs_plan + chunk_plan if s.startswith(("SCAN j", "SCAN d"))]
        counts = [s for s in page_plan if "COVERING INDEX deliveries_subscription" in s]
        assert len(counts) == 3, page_plan
        scans = [s for s in page_plan + depth_plan if s.startswith(("SCAN d ", "SCAN deliveries"))]
        # The bounded count walks the partial indexes, LIMIT entries each; nothing else scans.
        assert sorted(scans) == [
            "SCAN deliveries USING INDEX deliveries_lease",
            "SCAN deliveries USING INDEX deliveries_pending",
            "SCAN deliveries USING INDEX deliveries_queue",
        ], page_plan + depth_plan
    else:
        # PostgreSQL counts a long stretch in one statement (stats._count_chunked): an index's.
        counts = await query_plan(db, stats.JOBS_COUNT, ("submitted",))
        counts += await query_plan(db, stats.DELIVERIES_COUNT, ("sub_plain", "pending"))
        reads = [s.strip(" ->") for s in counts if " on " in s]
        assert len(reads) == 2, counts
        assert all(s.startswith(("Index Scan", "Index Only Scan")) for s in reads), counts
        assert not [s for s in page_plan + depth_plan if "Seq Scan on deliveries" in s]
        # Six seeks per subscription, each into an index (the planner picks among the partial
        # ones and deliveries_subscription by its statistics).
        reads = [s.strip(" ->") for s in page_plan if " on deliveries " in s]
        assert len(reads) == 6, "\n".join(page_plan)
        assert all(s.startswith(("Index Scan", "Index Only Scan")) for s in reads), reads
        # The bounded count: one index per status, each read under its LIMIT.
        reads = [s.strip(" ->") for s in depth_plan if " on deliveries " in s]
        assert len(reads) == 3, "\n".join(depth_plan)
        assert all(s.startswith(("Index Scan", "Index Only Scan")) for s in reads), reads


# --- work per statement, SQLite's VM steps -------------------------------------------------------


def _raw(db: Database) -> aiosqlite.Connection:
    assert isinstance(db.reader, SqliteConnection)
    return db.reader.raw


async def per_statement(db: Database, work: Callable[[], Awaitable[T]]) -> tuple[T, list[int]]:
    """Run ``work`` on the reader and count SQLite's VM steps of each statement it ran."""
    conn = _raw(db)
    counts: list[int] = []

    def tick() -> int:
        counts[-1] += 1
        return 0  # 0: carry on

    def began(sql: str) -> None:
        counts.append(0)

    await conn.set_trace_callback(began)
    await conn.set_progress_handler(tick, 1)
    try:
        result = await work()
    finally:
        await conn.set_progress_handler(None, 1)  # type: ignore[arg-type]
        await conn.set_trace_callback(None)  # type: ignore[arg-type]
    return result, counts


@asynccontextmanager
async def backlog(tmp_path: Path, rows: int) -> AsyncIterator[Database]:
    """``sub_slow`` with ``rows`` due deliveries, ``sub_fast`` with 5, and ``rows // 4 + 2000``
    jobs (more than a chunk of 1000 in the smaller store too)."""
    async with Database.open(tmp_path / f"stats-{rows}.sqlite") as db:
        await _subscribe(db, "sub_slow")
        await _subscribe(db, "sub_fast")
        await queue_due(db, "sub_slow", rows, due=NOW - 60)
        await queue_due(db, "sub_fast", 5, due=NOW - 30)
        made = [make_job(n, status=JobStatus.SUCCEEDED) for n in range(rows // 4 + 2000)]
        for start in range(0, len(made), 20_000):
            async with db.transaction(durable=False) as conn:
                await jobs.insert_many(conn, made[start : start + 20_000])
        yield db


async def _measure(db: Database) -> dict[str, tuple[object, list[int]]]:
    return {
        "readyz": await per_statement(db, lambda: stats.outbox_depth_up_to(db.reader, 1000)),
        "outbox": await per_statement(db, lambda: stats.outbox(db.reader, chunk=1000)),
        "jobs": await per_statement(db, lambda: stats.jobs_by_status(db.reader, chunk=1000)),
    }


@pytest.mark.sqlite_only("counts SQLite's VM steps")
async def test_no_statement_does_more_work_with_100k_rows_waiting_than_with_2k(
    tmp_path: Path,
) -> None:
    async with backlog(tmp_path, 2_000) as small_db:
        small = await _measure(small_db)
    async with backlog(tmp_path, 100_000) as big_db:
        big = await _measure(big_db)
    assert small["readyz"][0] == big["readyz"][0] == stats.Depth(1000, True)
    assert small["outbox"][0] == (2_005, NOW - 60)
    assert big["outbox"][0] == (100_005, NOW - 60)
    assert small["jobs"][0] == {"succeeded": 2_500}
    assert big["jobs"][0] == {"succeeded": 27_000}
    # /readyz: one statement, the same work (a walk over the backlog would be ~50x).
    assert len(big["readyz"][1]) == 1
    assert big["readyz"][1][0] <= small["readyz"][1][0] * 1.5 + 50, (small, big)
    # The gauges: more statements, none of them longer (within a B-tree level).
    for name in ("outbox", "jobs"):
        small_steps, big_steps = small[name][1], big[name][1]
        assert len(big_steps) > len(small_steps) * 2, (name, small_steps, big_steps)
        assert max(big_steps) <= max(small_steps) * 1.5 + 50, (name, small_steps, big_steps)


@pytest.mark.sqlite_only("traces the statements SQLite runs")
async def test_concurrent_scrapes_share_one_read(tmp_path: Path) -> None:
    async with backlog(tmp_path, 10) as db:
        gauges = Metrics()
        traced: list[str] = []
        await _raw(db).set_trace_callback(traced.append)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(gauges.refresh, db.reader, NOW)
        finally:
            await _raw(db).set_trace_callback(None)  # type: ignore[arg-type]
    # (The trace has each statement with its parameters in place.)
    assert sum(sql.startswith("SELECT s.id, ") for sql in traced) == 1, traced
    assert gauges.registry.get_sample_value("reelhook_outbox_depth") == 15
