"""A key's lists read its own rows, not everyone's (docs/performance-journal.md, "A tenant's
lists read its own rows"): jobs by owner through ``jobs_owner``, events by owner checked per
event by the job's primary key. Real stores, both engines."""

from __future__ import annotations

import pytest

from service.storage import events, jobs
from service.storage.database import Database
from tests.helpers.jobs import NOW, make_job
from tests.support import query_plan

pytestmark = pytest.mark.anyio

MINE = "key_small"
THEIRS = "key_busy"


@pytest.fixture(autouse=True)
async def tenants(db: Database) -> None:
    """Every tenth job is MINE; each job has one event, in job order."""
    owned = [make_job(n, owner_key_id=MINE if n % 10 == 0 else THEIRS) for n in range(1, 201)]
    async with db.transaction() as conn:
        await jobs.insert_many(conn, owned)
        await conn.execute_values(
            "INSERT INTO events (id, type, job_id, created_at, payload) VALUES {rows}",
            [(f"evt_{job.id[4:]}", "job.succeeded", job.id, NOW, b"{}") for job in owned],
        )


async def test_a_keys_jobs_page_newest_first_through_its_own_index(db: Database) -> None:
    first = await jobs.list_page(
        db.reader, owner_key_id=MINE, status=None, model=None, before_id=None, limit=15
    )
    assert [job.id for job in first] == [make_job(n).id for n in range(200, 50, -10)]
    rest = await jobs.list_page(
        db.reader, owner_key_id=MINE, status=None, model=None, before_id=first[-1].id, limit=15
    )
    assert [job.id for job in rest] == [make_job(n).id for n in (50, 40, 30, 20, 10)]
    sql = "SELECT id FROM jobs WHERE owner_key_id = ? ORDER BY id DESC LIMIT ?"
    plan = await query_plan(db, sql, (MINE, 15))
    assert any("jobs_owner" in step for step in plan), plan


async def test_a_keys_events_are_checked_per_event_not_by_listing_its_jobs(db: Database) -> None:
    rows = await events.list_page(db.reader, after_seq=0, types=[], owner_key_id=MINE, limit=8)
    assert [row["id"] for row in rows] == [f"evt_{make_job(n).id[4:]}" for n in range(10, 81, 10)]
    later = await events.list_page(
        db.reader, after_seq=rows[-1]["seq"], types=["job.succeeded"], owner_key_id=MINE, limit=8
    )
    assert [row["id"] for row in later] == [f"evt_{make_job(n).id[4:]}" for n in range(90, 161, 10)]
    mine, theirs = f"evt_{make_job(10).id[4:]}", f"evt_{make_job(11).id[4:]}"
    assert await events.seq_of(db.reader, mine, MINE) == rows[0]["seq"]
    assert await events.seq_of(db.reader, theirs, MINE) is None
    assert await events.seq_of(db.reader, theirs, THEIRS) is not None
    if db.dialect == "sqlite":
        # The log in order, each event's job by its primary key; never every job of the key.
        sql = f"SELECT e.seq FROM events e WHERE e.seq > ? AND {events.OWNED_BY} LIMIT ?"
        plan = await query_plan(db, sql, (0, MINE, 8))
        assert not any(step.startswith("SCAN j") for step in plan), plan
        assert not any("LIST SUBQUERY" in step for step in plan), plan
