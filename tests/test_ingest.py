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
from tests.support import assert_error

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
