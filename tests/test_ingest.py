"""Group commit of callbacks (service/ingest.py) over real loopback HTTP.

A second SQLite connection holding the write lock stands in for a slow disk: while it holds the
lock the writer cannot commit, so callbacks pile up in the bounded queue exactly as in a burst.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from service.core.models import Job, JobStatus, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import Outcome, Update, apply_updates
from service.storage import jobs
from service.storage.database import Database
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    TOKENS,
    TRINETRA_MODEL,
    Service,
    serve,
    stored_callbacks,
    stored_replays,
    trinetra_done,
)
from tests.helpers.jobs import NOW, make_job
from tests.support import assert_error, store_target

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """SQLite's write lock, held from outside the service until the connection rolls back."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    finally:
        conn.close()


async def finish(service: Service, job: dict[str, str]) -> httpx.Response:
    token = TOKENS.callback(job["id"], "trinetra")
    return await service.callback("trinetra", token, trinetra_done(job["provider_job_id"]))


@pytest.mark.slow
async def test_a_burst_of_callbacks_is_stored_and_announced_once_each(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        jobs = [await service.create_job(TRINETRA_MODEL) for _ in range(12)]
        answers: list[httpx.Response] = []

        async def send(job: dict[str, str]) -> None:
            answers.append(await finish(service, job))

        # Every job's callback three times at once: the writer sees them in shared batches.
        async with anyio.create_task_group() as tg:
            for job in jobs * 3:
                tg.start_soon(send, job)
        assert [a.status_code for a in answers] == [200] * 36
        outcomes = sorted(a.json()["outcome"] for a in answers)
        assert outcomes == ["applied"] * 12 + ["duplicate"] * 24
        for job in jobs:
            assert (await service.job(job["id"]))["status"] == "succeeded"
            assert (await service.event_types(job["id"]))["job.succeeded"] == 1
    # Each job's three identical callbacks are stored once, the two replays counted on it.
    stored = stored_replays(service.settings)
    assert sorted(stored) == sorted((job["id"], "applied", 2) for job in jobs)


@pytest.mark.sqlite_only("stalls the writer by holding SQLite's write lock")
async def test_a_full_queue_answers_503_with_retry_after_and_stores_nothing_of_it(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory, INGEST_QUEUE="2") as service:
        jobs = [await service.create_job(TRINETRA_MODEL) for _ in range(4)]
        answers: dict[str, httpx.Response] = {}

        async def send(job: dict[str, str]) -> None:
            answers[job["id"]] = await finish(service, job)

        with write_lock(service.settings.database_path) as lock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, jobs[0])  # taken by the writer, which waits for the lock
                await anyio.sleep(0.3)
                tg.start_soon(send, jobs[1])  # queued
                tg.start_soon(send, jobs[2])  # queued: the queue is now full
                await anyio.sleep(0.3)
                refused = await finish(service, jobs[3])
                assert not answers, "nothing may be acknowledged before its commit"
                assert_error(refused, 503, "unavailable")
                assert refused.headers["Retry-After"] == "1"
                assert "burst" in refused.json()["error"]["message"]
                lock.execute("ROLLBACK")  # the disk is fast again: the three are committed
        assert [answers[job["id"]].status_code for job in jobs[:3]] == [200, 200, 200]
        assert (await service.job(jobs[3]["id"]))["status"] == "submitted"
        # The provider sends again after Retry-After and is heard.
        assert (await finish(service, jobs[3])).status_code == 200
        assert (await service.job(jobs[3]["id"]))["status"] == "succeeded"
    assert len(stored_callbacks(service.settings)) == 4


async def test_a_refused_callback_does_not_spoil_its_batch(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        jobs = [await service.create_job(TRINETRA_MODEL) for _ in range(3)]
        answers: dict[str, httpx.Response] = {}
        forged = trinetra_done("job_someone_elses")

        async def send(key: str, job: dict[str, str], body: bytes | None = None) -> None:
            token = TOKENS.callback(job["id"], "trinetra")
            body = body or trinetra_done(job["provider_job_id"])
            answers[key] = await service.callback("trinetra", token, body)

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(send, job["id"], job)
            tg.start_soon(send, "forged", jobs[0], forged)
        assert_error(answers.pop("forged"), 401, "unauthorized")
        assert {a.status_code for a in answers.values()} == {200}
        for job in jobs:
            assert (await service.job(job["id"]))["status"] == "succeeded"
    assert len(stored_callbacks(service.settings)) == 3


async def test_a_waiter_cancelled_before_its_commit_does_not_undo_its_callback(
    tmp_path: Path,
) -> None:
    """The writer owns a queued callback: a request cancelled while it waits for the commit
    (no shield around its wait, docs/performance.md §4) is stored all the same, and the
    writer goes on with the next batch."""
    async with Database.open(store_target(tmp_path)) as db:
        first, second = make_job(1, status=JobStatus.RUNNING), make_job(2, status=JobStatus.RUNNING)
        async with db.transaction() as conn:
            await jobs.insert_many(conn, [first, second])
        publisher = Publisher(lambda digest, media_type: f"https://files.test/{digest}")
        ingest = Ingest(db, publisher, clock=lambda: NOW, capacity=10, batch_size=10, mirror=False)

        def update(job: Job) -> Update:
            done = ProviderUpdate(provider_job_id=None, status=JobStatus.FAILED)
            return Update(job.id, "trinetra", done, b"{}")

        async with anyio.create_task_group() as writer:
            writer.start_soon(ingest.run)
            holding, release = anyio.Event(), anyio.Event()

            async def hold_the_writer() -> None:
                async with db.transaction():
                    holding.set()
                    await release.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_writer)
                await holding.wait()
                async with anyio.create_task_group() as waiter:
                    waiter.start_soon(ingest.store, update(first))
                    await anyio.wait_all_tasks_blocked()
                    assert ingest.depth == 0  # taken by the writer, which waits for its turn
                    waiter.cancel_scope.cancel()
                release.set()
            job, outcome = await ingest.store(update(second))
            assert (job.status, outcome) == (JobStatus.FAILED, Outcome.APPLIED)
            writer.cancel_scope.cancel()
        async with db.transaction() as conn:
            stored = await jobs.get(conn, first.id)
        assert stored is not None and stored.status is JobStatus.FAILED


async def test_one_batch_with_replays_stores_each_body_once_and_moves_each_job_once(
    tmp_path: Path,
) -> None:
    """A batch is written with a few statements of many rows each on SQLite (docs/performance.md
    §4): a replay in the same batch as its first copy still counts up that copy, every job moves
    once, and the events are appended in the batch's order (on both stores)."""
    async with Database.open(store_target(tmp_path)) as db:
        running = [make_job(n, status=JobStatus.RUNNING) for n in range(1, 6)]
        async with db.transaction() as conn:
            await jobs.insert_many(conn, running)
        publisher = Publisher(lambda digest, media_type: f"https://files.test/{digest}")
        done = ProviderUpdate(provider_job_id=None, status=JobStatus.FAILED)
        first, second = running[0], running[1]
        batch = [
            Update(first.id, "trinetra", done, b'{"a": 1}'),
            Update(first.id, "trinetra", done, b'{"a": 1}'),  # a replay: same job, same bytes
            *(Update(job.id, "trinetra", done, b"{}") for job in running[1:]),
            Update(first.id, "trinetra", done, b'{"a": 1}'),
            Update(second.id, "trinetra", done, b'{"b": 2}'),  # a new body for a moved job
        ]
        async with db.transaction() as conn:
            results = await apply_updates(conn, publisher, batch, NOW)
        outcomes = [result[1] for result in results if not isinstance(result, Exception)]
        assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE] + [Outcome.APPLIED] * 4 + [
            Outcome.DUPLICATE,
            Outcome.DUPLICATE,
        ]
        stored = await db.reader.execute_fetchall(
            "SELECT job_id, outcome, replays FROM callbacks ORDER BY id"
        )
        assert [(row["job_id"], row["outcome"], row["replays"]) for row in stored] == [
            (first.id, "applied", 2),
            *((job.id, "applied", 0) for job in running[1:]),
            (second.id, "duplicate", 0),
        ]
        saved = await jobs.get_many(db.reader, [job.id for job in running])
        assert {job.status for job in saved.values()} == {JobStatus.FAILED}
        assert {job.completed_at for job in saved.values()} == {NOW}
        logged = await db.reader.execute_fetchall("SELECT job_id, type FROM events ORDER BY seq")
        assert [(row["job_id"], row["type"]) for row in logged] == [
            (job.id, "job.failed") for job in running
        ]
