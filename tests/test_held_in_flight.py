"""Finding Segmind's held requests in flight (the leader's recovery sweep, every
``REELHOOK_NODE_TIMEOUT``) reads those requests, not every job waiting for a callback: with
1,000,000 such jobs stored it read the whole jobs table each time (docs/performance.md,
"Memory")."""

from __future__ import annotations

import pytest

from service.core.models import JobStatus
from service.storage import jobs, submissions
from service.storage.database import Database
from service.storage.postgres import PostgresDatabase
from tests.conftest import SettingsFactory
from tests.helpers.jobs import NOW, make_job

pytestmark = pytest.mark.anyio


async def test_held_requests_in_flight_are_found_through_their_own_index(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    waiting = [make_job(n, status=JobStatus.SUBMITTED) for n in range(300)]
    held = [
        make_job(1_000, provider="segmind", status=JobStatus.SUBMITTED),
        make_job(1_001, provider="segmind", status=JobStatus.RUNNING),
    ]
    # Refused before any work: it waits as a submitted job with a submit due, not in flight.
    again = make_job(1_002, provider="segmind", status=JobStatus.SUBMITTED)
    async with Database.open(settings.database_url) as db:
        async with db.transaction() as conn:
            await jobs.insert_many(conn, [*waiting, *held, again])
            await submissions.schedule(conn, again.id, next_at=NOW + 60, attempts=1)
        found = await submissions.in_flight(db.reader, sorted(submissions.HELD_PROVIDERS))
        assert [job.id for job in found] == [job.id for job in held]
        if db.dialect == "sqlite":
            sql = submissions.in_flight_query("segmind", orphaned=False)
            rows = await db.reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}")
            plan = [str(row[3]) for row in rows]
            assert any("jobs_held_in_flight" in step for step in plan), plan
        else:
            sql = submissions.in_flight_query("segmind", orphaned=True)
            assert isinstance(db, PostgresDatabase)
            async with db.pool.acquire() as raw, raw.transaction():
                # Usable at all (a table this small may well be read whole otherwise).
                await raw.execute("SET LOCAL enable_seqscan = off")
                explained = await raw.fetch(f"EXPLAIN {sql.replace('?', '$1')}", 10.0)
            plan = [str(row[0]) for row in explained]
            assert any("jobs_held_in_flight" in step for step in plan), plan
    with pytest.raises(ValueError, match="trinetra"):
        submissions.in_flight_query("trinetra", orphaned=False)
