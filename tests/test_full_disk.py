"""A full disk (docs/architecture.md, "Overload and a full disk"): only 503s with ``Retry-After``,
the connection stays usable, a full disk is never a permanent mirror error, workers back off, and
everything resumes when space returns.

The data directory is a small tmpfs mounted for the test (this needs root, as in the CI image;
elsewhere the tests skip, and under CI=true they fail).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.core.worker import Backoff
from service.storage.space import out_of_space
from tests.conftest import settings_for
from tests.helpers.callbacks import TOKENS
from tests.servers import loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, served
from tests.test_mirroring import Files, create, mirror_rows, succeeded_document, succeeded_event

pytestmark = pytest.mark.anyio

JOB = {"model": "trinetra/kling-v3", "input": {"prompt": "A lighthouse in a storm"}}
# Jobs created before the disk fills, whose callbacks are sent while it is full.
CALLBACKS = 30


class Disk:
    """A small tmpfs; :meth:`fill` takes every free byte, :meth:`free` gives them back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[Path], Disk]]:
    """Mounts a 16 MiB tmpfs at a given folder (unmounted after the test)."""
    mounted: list[Path] = []

    def mount(root: Path) -> Disk:
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"cannot mount a tmpfs: {done.stderr}")
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(root)
        return Disk(root)

    try:
        yield mount
    finally:
        for root in reversed(mounted):
            subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def disk(tmp_path: Path, tmpfs: Callable[[Path], Disk]) -> Disk:
    return tmpfs(tmp_path / "tmpfs")


class Connections:
    """Counts the TCP connections an httpx client opens (its trace extension)."""

    def __init__(self) -> None:
        self.opened = 0

    async def __call__(self, name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            self.opened += 1


def test_out_of_space_is_recognised(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "db.sqlite")) as conn:
        conn.execute("CREATE TABLE t (v BLOB)")
        conn.execute("PRAGMA max_page_count = 8")
        with pytest.raises(sqlite3.Error) as full:
            for _ in range(100):
                conn.execute("INSERT INTO t VALUES (zeroblob(4000))")
    assert out_of_space(full.value)
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    try:
        raise RuntimeError("wrapped") from OSError(errno.ENOSPC, "No space left on device")
    except RuntimeError as wrapped:
        assert out_of_space(wrapped)
    assert not out_of_space(sqlite3.OperationalError("no such table: t"))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not out_of_space(ValueError("database or disk"))


def test_backoff_doubles_up_to_its_most_and_resets() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 7
    backoff.reset()
    assert backoff.next() == 1 and backoff.failures == 1


@pytest.mark.sqlite_only("the database file is what fills the tmpfs; PostgreSQL's is on its server")
async def test_a_full_disk_answers_503_with_retry_after_and_keeps_the_connection(
    disk: Disk,
) -> None:
    connections = Connections()
    with loopback_socket() as sock:
        settings = settings_for(disk.root / "data", PUBLIC_URL=url_of(sock), SIM_DELAY="3600")
        async with (
            served(settings, sock) as _,
            httpx.AsyncClient(
                base_url=url_of(sock),
                headers={"X-API-Key": ADMIN_KEY},
                limits=httpx.Limits(max_connections=1),
            ) as http,
        ):
            trace = {"trace": connections}
            first = await http.post("/v1/jobs", json=JOB, extensions=trace)
            assert first.status_code == 202, first.text
            # Jobs waiting for their callbacks, sent once the disk is full.
            waiting = [first.json()]
            for _ in range(CALLBACKS):
                created = await http.post("/v1/jobs", json=JOB, extensions=trace)
                assert created.status_code == 202, created.text
                waiting.append(created.json())
            disk.fill()
            answers = []
            for _ in range(200):
                answer = await http.post("/v1/jobs", json=JOB, extensions=trace)
                answers.append(answer)
                if answer.status_code == 503:
                    break
            # A callback while the disk is full is refused the same way. One may still be
            # stored first: SQLite reuses the log file's pages once a fold has copied them
            # back, so a small write can fit where a job's could not. Every one answered 200
            # must then be stored, and one must be refused before the jobs run out.
            stored_first: list[str] = []
            refused_callback: httpx.Response | None = None
            refused_job = waiting[-1]
            for job in waiting:
                token = TOKENS.callback(job["id"], "trinetra")
                callback = succeeded_document(job["provider_job_id"], "https://cdn.example/v.mp4")
                sent = await http.post(
                    f"/v1/callbacks/trinetra/{token}", content=callback, extensions=trace
                )
                if sent.status_code != 200:
                    refused_callback, refused_job = sent, job
                    break
                stored_first.append(job["id"])
            disk.free()
            # Space is back: the same requests succeed, on the same connection.
            with anyio.fail_after(10):
                while True:
                    again = await http.post("/v1/jobs", json=JOB, extensions=trace)
                    if again.status_code != 503:
                        break
                    await anyio.sleep(0.05)
            stored_callback = await http.post(
                f"/v1/callbacks/trinetra/{token}", content=callback, extensions=trace
            )
            acknowledged = [
                a.json()["id"] for a in [first, *answers, again] if a.status_code == 202
            ]
            listed = {j["id"] for j in (await http.get("/v1/jobs?limit=200")).json()["data"]}
            succeeded = {
                job_id
                for job_id in [*stored_first, refused_job["id"]]
                if (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded"
            }
    statuses = {answer.status_code for answer in answers}
    assert statuses <= {202, 503}, [a.text for a in answers if a.status_code not in (202, 503)]
    refused = answers[-1]
    assert refused.status_code == 503, "the disk never filled up"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "unavailable"
    assert "space" in refused.json()["error"]["message"]
    assert refused_callback is not None, f"all {len(waiting)} callbacks fitted on a full disk"
    assert refused_callback.status_code == 503, refused_callback.text
    assert int(refused_callback.headers["Retry-After"]) >= 1
    assert again.status_code == 202, again.text
    assert stored_callback.status_code == 200, stored_callback.text
    # Every job acknowledged is there, every callback answered 200 was applied (the refused
    # one once sent again); one connection carried every request.
    assert set(acknowledged) <= listed
    assert succeeded == {*stored_first, refused_job["id"]}
    assert connections.opened == 1


async def test_a_full_disk_defers_a_mirror_and_it_resumes_when_space_returns(
    tmp_path: Path, tmpfs: Callable[[Path], Disk], caplog: pytest.LogCaptureFixture
) -> None:
    """A download that runs out of space (the blob store's disk is full, the database's is
    not) is tried again later without using up an attempt, and is never recorded as a permanent
    error; once space returns it ends mirrored. The deferrals are one warning, not one each."""
    caplog.set_level(logging.WARNING, logger="service.jobs.mirroring")
    files = Files(hang=True)
    disk = tmpfs(tmp_path / "data" / "blobs")
    with loopback_socket() as sock:
        settings = settings_for(
            tmp_path / "data",
            PUBLIC_URL=url_of(sock),
            SIM_DELAY="3600",
            MIRROR_OUTPUTS="true",
            MIRROR_RETRY_SCHEDULE="0.05,0.05",
        )
        async with run_server(files.app()) as files_url, served(settings, sock) as http:
            job = await create(http)
            token = TOKENS.callback(job["id"], "trinetra")
            applied = await http.post(
                f"/v1/callbacks/trinetra/{token}",
                content=succeeded_document(job["provider_job_id"], f"{files_url}/video"),
            )
            assert applied.status_code == 200, applied.text
            # The download is under way; the disk fills up before the rest of the file arrives.
            await files.wait_for(lambda f: f.hanging == 1)
            disk.fill()
            files.hang = False
            files.release.set()
            await files.wait_for(lambda f: f.requests["video"] >= 3)
            while_full = mirror_rows(settings)
            disk.free()
            event = await succeeded_event(http, job["id"], within=30)
    # Three downloads failed for want of space; none used up one of the three attempts.
    assert [(row["status"], row["attempts"]) for row in while_full] == [("pending", 0)]
    assert while_full[0]["error"] == "no space left to store the copy"
    deferrals = [r for r in caplog.records if "deferred: no space left" in r.getMessage()]
    assert len(deferrals) == 1, [r.getMessage() for r in deferrals]
    (output,) = event["data"]["outputs"]
    assert "mirror_url" in output and "mirror_error" not in output, output
