"""What an ingest batch writes, and what it no longer writes (docs/performance-journal.md,
"The database thread's share per callback"): the provider job id only when a job learns one,
no deadline entry for a finished job, one index of callbacks for both replays and a job's
history, and its reads in a few statement shapes. Real stores, both engines."""

from __future__ import annotations

import pytest

from service.core.models import JobStatus, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import Outcome, Update, apply_updates
from service.storage import jobs, subscriptions, timeline
from service.storage.database import PADDED_MOST, Database, padded
from service.storage.postgres import PostgresDatabase
from tests.helpers.jobs import NOW, make_job

pytestmark = pytest.mark.anyio


def _publisher() -> Publisher:
    return Publisher(lambda digest, media_type: f"https://files.test/{digest}")


async def test_a_job_learns_its_provider_job_id_beside_jobs_that_knew_theirs(db: Database) -> None:
    known = make_job(1, status=JobStatus.SUBMITTED, provider_job_id="pj_1")
    unknown = make_job(2, status=JobStatus.SUBMITTED)
    async with db.transaction() as conn:
        await jobs.insert_many(conn, [known, unknown])

    def running(job_id: str, provider_job_id: str) -> Update:
        update = ProviderUpdate(provider_job_id=provider_job_id, status=JobStatus.RUNNING)
        return Update(job_id, "trinetra", update, provider_job_id.encode())

    # Alone: nobody learns an id, the stored ones stay.
    async with db.transaction() as conn:
        results = await apply_updates(conn, _publisher(), [running(known.id, "pj_1")], NOW + 1)
    assert [r[1] for r in results if not isinstance(r, Exception)] == [Outcome.APPLIED]
    # Together: one job learns its id, the other keeps its own.
    batch = [running(unknown.id, "pj_2"), running(known.id, "pj_1")]
    async with db.transaction() as conn:
        results = await apply_updates(conn, _publisher(), batch, NOW + 2)
    assert [r[1] for r in results if not isinstance(r, Exception)] == [
        Outcome.APPLIED,
        Outcome.STALE,
    ]
    stored = await jobs.get_many(db.reader, [known.id, unknown.id])
    assert stored[known.id].provider_job_id == "pj_1"
    assert stored[unknown.id].provider_job_id == "pj_2"
    assert stored[unknown.id].status is JobStatus.RUNNING
    # The id is found again by what looks jobs up by it (the account webhook).
    assert await jobs.find_for_provider(db.reader, "trinetra", job_id=None, provider_job_id="pj_2")
    # A batch that sets nothing new leaves both ids as they are.
    batch = [running(unknown.id, "pj_2"), running(known.id, "pj_1")]
    async with db.transaction() as conn:
        await apply_updates(conn, _publisher(), batch, NOW + 3)
    stored = await jobs.get_many(db.reader, [known.id, unknown.id])
    assert (stored[known.id].provider_job_id, stored[unknown.id].provider_job_id) == (
        "pj_1",
        "pj_2",
    )


async def test_the_deadline_index_holds_unfinished_jobs_only(db: Database) -> None:
    pending = make_job(1, status=JobStatus.PENDING, deadline_at=NOW + 30)
    running = make_job(2, status=JobStatus.RUNNING, deadline_at=NOW + 10)
    done = make_job(3, status=JobStatus.SUCCEEDED, deadline_at=NOW + 1)
    async with db.transaction() as conn:
        await jobs.insert_many(conn, [pending, running, done])
    assert await jobs.next_deadline(db.reader) == NOW + 10
    async with db.transaction() as conn:
        due = await jobs.past_deadline(conn, NOW + 60, 10)
    assert [job.id for job in due] == [running.id, pending.id]
    for sql, params in ((jobs.NEXT_DEADLINE, ()), (jobs.PAST_DEADLINE, (NOW, 10))):
        if db.dialect == "sqlite":
            rows = await db.reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = [str(row[3]) for row in rows]
            assert any("jobs_deadline" in step for step in plan), plan
        else:
            assert isinstance(db, PostgresDatabase)
            numbered = sql.replace("?", "$1", 1).replace("?", "$2", 1)
            async with db.pool.acquire() as raw, raw.transaction():
                # Usable at all (a table this small may well be read whole otherwise).
                await raw.execute("SET LOCAL enable_seqscan = off")
                explained = await raw.fetch(f"EXPLAIN {numbered}", *params)
            plan = [str(row[0]) for row in explained]
            assert any("jobs_deadline" in step for step in plan), plan


async def test_callbacks_without_a_digest_never_conflict_and_a_job_lists_its_own(
    db: Database,
) -> None:
    job = make_job(1, status=JobStatus.SUBMITTED, provider_job_id="pj_1")
    other = make_job(2, status=JobStatus.SUBMITTED, provider_job_id="pj_2")
    async with db.transaction() as conn:
        await jobs.insert_many(conn, [job, other])
        # Rows stored before replays were counted have no digest: the same body twice is kept
        # twice, as it was.
        for at, body in ((NOW, b"old"), (NOW + 1, b"old")):
            await conn.execute(
                "INSERT INTO callbacks (job_id, provider, received_at, outcome, body) "
                "VALUES (?, 'trinetra', ?, 'applied', ?)",
                (job.id, at, body),
            )
        await jobs.record_callbacks(
            conn,
            [
                jobs.CallbackRecord(job.id, "trinetra", NOW + 2, "applied", b"new"),
                jobs.CallbackRecord(other.id, "trinetra", NOW + 2, "applied", b"new"),
                jobs.CallbackRecord(job.id, "trinetra", NOW + 3, "duplicate", b"new"),
            ],
        )
    listed = await timeline.callbacks_of(db.reader, job.id)
    assert [(c.received_at, c.excerpt, c.replays) for c in listed] == [
        (NOW, "old", 0),
        (NOW + 1, "old", 0),
        (NOW + 2, "new", 1),
    ]
    assert [c.replays for c in await timeline.callbacks_of(db.reader, other.id)] == [0]


def test_in_lists_are_padded_to_a_few_shapes() -> None:
    assert padded(["a"]) == ["a"]
    assert padded(["a", "b", "c"]) == ["a", "b", "c", "c"]
    assert padded(list(range(5))) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert padded(list(range(8))) == list(range(8))
    large = list(range(PADDED_MOST + 1))
    assert padded(large) == large

    class Conn:
        dialect = "sqlite"
        for_update = ""

    texts = set()
    for count in range(1, 257):
        ids = [f"job_{n}" for n in range(count)]
        select_sql, select_params = jobs.select_many(Conn(), ids)  # type: ignore[arg-type]
        listen_sql, listen_params = subscriptions.listening_to_jobs(ids)
        assert set(select_params) == set(ids)
        assert set(listen_params) == set(ids)
        texts |= {select_sql, listen_sql}
    # 1, 2, 4 ... 256 ids: nine shapes of each read, where there had been 256.
    assert len(texts) == 18


async def test_batches_of_every_size_read_their_jobs(db: Database) -> None:
    stored = [make_job(n, status=JobStatus.SUBMITTED, provider_job_id=f"pj_{n}") for n in range(9)]
    async with db.transaction() as conn:
        await jobs.insert_many(conn, stored)
    for count in range(1, 10):
        wanted = [job.id for job in stored[:count]]
        found = await jobs.get_many(db.reader, reversed(wanted))
        assert sorted(found) == wanted
