"""``reelhook backup`` and ``reelhook restore``, run as an operator runs them: the command line, in
a separate process, against a reelhook serving real traffic over loopback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.ops.backup import BackupError, backup, restore
from service.storage.datadir import DataDirInUse
from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, url_of
from tests.support import REPO, api_client, served

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.e2e,
    pytest.mark.sqlite_only("backups copy the SQLite file; PostgreSQL has pg_dump"),
]

JOB = {"model": "trinetra/kling-v3", "input": {"prompt": "A kite festival on a beach"}}


async def reelhook(*args: str, data_dir: Path | None = None) -> tuple[int, str, str]:
    """Run ``python -m service ARGS`` in its own process; (exit code, stdout, stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REELHOOK_")}
    if data_dir is not None:
        environ["REELHOOK_DATA_DIR"] = str(data_dir)
    done = await anyio.run_process(
        [sys.executable, "-m", "service", *args], cwd=REPO, env=environ, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def job_ids(database: Path) -> set[str]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT id FROM jobs")}


def pragma(database: Path, name: str) -> Any:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.slow
async def test_a_backup_under_write_load_opens_and_holds_every_acknowledged_job(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    service_sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(service_sock))
    copy = tmp_path / "backups" / "reelhook.db"
    copy.parent.mkdir()
    acknowledged: list[str] = []
    during: list[str] = []

    async def submit_until(stop: anyio.Event, http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            response = await http.post("/v1/jobs", json=JOB)
            assert response.status_code == 202, response.text
            acknowledged.append(response.json()["id"])

    async with served(settings, service_sock) as http:
        stop = anyio.Event()
        async with anyio.create_task_group() as load:
            for _ in range(4):
                load.start_soon(submit_until, stop, http)
            with anyio.fail_after(20):
                while True:
                    if len(acknowledged) >= 40:
                        break
                    await anyio.sleep(0.01)
            before = set(acknowledged)  # every job acknowledged before the backup began
            code, out, err = await reelhook("backup", str(copy), data_dir=settings.data_dir)
            during.extend(acknowledged[len(before) :])
            stop.set()
        total = len(acknowledged)

    assert code == 0, err
    assert f"backed up {copy}" in out
    assert during, "the load went on while the backup ran"
    saved = job_ids(copy)
    assert before <= saved
    assert pragma(copy, "quick_check") == "ok"
    assert pragma(copy, "journal_mode") == "delete", "one self-contained file"
    assert not copy.with_name("reelhook.db-wal").exists()
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600)
    assert len(saved) <= total

    # Restored into a new data directory, reelhook serves every one of those jobs.
    fresh = tmp_path / "restored"
    code, out, err = await reelhook("restore", str(copy), "--data-dir", str(fresh))
    assert code == 0, err
    assert f"{len(saved)} jobs" in out
    assert job_ids(fresh / "reelhook.db") == saved
    async with api_client(settings_factory(DATA_DIR=str(fresh))) as restored:
        for job_id in sorted(before):
            fetched = await restored.get(f"/v1/jobs/{job_id}")
            assert fetched.status_code == 200, fetched.text


async def test_restore_refuses_while_reelhook_runs(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    settings = settings_factory()
    async with api_client(settings):
        pass
    copy = tmp_path / "copy.db"
    assert backup(settings.database_path, copy).jobs == 0
    before = settings.database_path.read_bytes()

    async with api_client(settings):
        code, _, err = await reelhook(
            "restore", str(copy), "--force", "--data-dir", str(settings.data_dir)
        )
    assert code == 1
    assert "in use by another reelhook" in err and "stop reelhook" in err
    assert len(err.strip().splitlines()) == 1
    assert settings.database_path.read_bytes() == before


async def test_restore_replaces_a_database_only_with_force_and_keeps_the_old_one(
    settings_factory: SettingsFactory, tmp_path: Path, dead_url: str
) -> None:
    old = settings_factory(DATA_DIR=str(tmp_path / "old"), PUBLIC_URL=dead_url)
    async with api_client(old) as http:
        pending = await http.post("/v1/jobs", json=JOB)  # stored, pending a retry: one job
        assert pending.status_code == 202
    new = settings_factory(DATA_DIR=str(tmp_path / "new"), PUBLIC_URL=dead_url)
    async with api_client(new) as http:
        for _ in range(3):
            await http.post("/v1/jobs", json=JOB)
    copy = tmp_path / "new.db"
    assert backup(new.database_path, copy).jobs == 3

    with pytest.raises(BackupError, match="pass --force"):
        restore(copy, old.data_dir, force=False)
    assert len(job_ids(old.database_path)) == 1

    summary, replaced = restore(copy, old.data_dir, force=True)
    assert summary.jobs == 3
    assert replaced is not None and replaced.parent == old.data_dir
    assert len(job_ids(replaced)) == 1, "the replaced database is kept, whole"
    assert job_ids(old.database_path) == job_ids(new.database_path)
    assert not old.database_path.with_name("reelhook.db-wal").exists()
    async with api_client(old) as http:
        assert len((await http.get("/v1/jobs")).json()["data"]) == 3


async def test_restore_refuses_a_database_another_process_has_open(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    settings = settings_factory()
    async with api_client(settings):
        pass
    copy = tmp_path / "copy.db"
    backup(settings.database_path, copy)
    with closing(sqlite3.connect(settings.database_path)) as shell:  # a sqlite3 shell, say
        shell.execute("SELECT count(*) FROM jobs").fetchone()
        with pytest.raises(BackupError, match="in use"):
            restore(copy, settings.data_dir, force=True)
    assert settings.database_path.exists()
    restore(copy, settings.data_dir, force=True)  # once it is closed


@pytest.mark.parametrize("kind", ["not sqlite", "not reelhook", "newer schema", "missing"])
async def test_restore_refuses_what_is_not_a_usable_backup(
    settings_factory: SettingsFactory, tmp_path: Path, kind: str
) -> None:
    source = tmp_path / "source.db"
    if kind == "not sqlite":
        source.write_bytes(b"definitely not a database" * 100)
    elif kind == "not reelhook":
        with closing(sqlite3.connect(source)) as db:
            db.execute("CREATE TABLE notes (text)")
    elif kind == "newer schema":
        settings = settings_factory()
        async with api_client(settings):
            pass
        backup(settings.database_path, source)
        with closing(sqlite3.connect(source)) as db:
            db.execute("PRAGMA user_version = 9999")
    target = tmp_path / "target"
    with pytest.raises(BackupError):
        restore(source, target, force=True)
    assert not (target / "reelhook.db").exists()


async def test_restore_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    code, out, err = await reelhook("restore", str(tmp_path / "nothing.db"), "--data-dir", "x")
    assert code == 1 and out == ""
    assert err == f"reelhook restore: no backup at {tmp_path / 'nothing.db'}\n"


async def test_backup_names_a_file_in_a_directory_and_never_overwrites(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    settings = settings_factory()
    async with api_client(settings):
        pass
    folder = tmp_path / "backups"
    folder.mkdir()
    made = backup(settings.database_path, folder)
    assert made.path.parent == folder and made.path.name.startswith("reelhook-")
    with pytest.raises(BackupError, match="already exists"):
        backup(settings.database_path, made.path)
    code, _, err = await reelhook("backup", str(tmp_path / "x.db"), "--data-dir", str(tmp_path))
    assert code == 1 and "no database" in err


async def test_a_backup_of_a_stopped_reelhook_leaves_nothing_behind(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    settings = settings_factory()
    async with api_client(settings):
        pass
    before = sorted(p.name for p in settings.data_dir.iterdir())
    assert "reelhook.db-wal" not in before
    backup(settings.database_path, tmp_path / "b.db")
    assert sorted(p.name for p in settings.data_dir.iterdir()) == before


async def test_a_second_reelhook_on_the_same_data_refuses_to_start(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with api_client(settings) as http:
        with pytest.raises(DataDirInUse, match="in use by another reelhook"):
            async with api_client(settings):
                pass
        assert (await http.get("/healthz")).status_code == 200


async def test_a_killed_backups_leftovers_are_removed_by_the_next(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    """A backup killed mid-copy leaves its partial file (5 kills left 365 MiB); the next backup
    to the same place removes those of dead processes and keeps a running one's."""
    settings = settings_factory()
    async with api_client(settings):
        pass
    pid = _a_dead_pid()
    left = tmp_path / f".b.db.partial-{pid}"
    left.write_bytes(b"x" * 4096)
    journal = tmp_path / f".b.db.partial-{pid}-journal"
    journal.write_bytes(b"j")
    running = tmp_path / f".b.db.partial-{os.getppid()}"
    running.write_bytes(b"in progress")
    backup(settings.database_path, tmp_path / "b.db")
    assert not left.exists() and not journal.exists()
    assert running.exists()
    assert (tmp_path / "b.db").exists()


def _a_dead_pid() -> int:
    """The id of a process that has ended."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid
