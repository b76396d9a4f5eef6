"""Folding the write-ahead log off the writer's path (docs/performance.md §4, "WAL checkpoints").

On SQLite the writer's own automatic checkpoint is only a backstop: ``Database.fold_log``
copies committed pages into the database file from a connection of its own, without waiting
for a write transaction in progress, and the lifespan runs it (``ops/logfolding.py``). On
PostgreSQL there is nothing to fold: ``fold_log`` answers None and the worker sleeps.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from service.storage.database import Database
from service.storage.sqlite import FOLD_EVERY, WRITER_AUTOCHECKPOINT_PAGES, SqliteDatabase
from tests.conftest import SettingsFactory
from tests.support import api_client, store_target

pytestmark = pytest.mark.anyio


def _keys_in_the_file(path: Path, name: str) -> int:
    """Keys named ``name`` in the database file itself, the WAL ignored; 0 while a fold is
    writing the file (read as immutable it may then look torn: the WAL, not the file, holds
    what is committed until the fold ends)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        found = conn.execute("SELECT count(*) FROM api_keys WHERE name = ?", (name,)).fetchone()
        return int(found[0])
    except sqlite3.DatabaseError:
        return 0
    finally:
        conn.close()


def _in_the_file(path: Path) -> float | None:
    """The readiness mark in the database file itself, the WAL ignored (``immutable``): what a
    checkpoint has folded."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        row = conn.execute("SELECT checked_at FROM readiness").fetchone()
        return None if row is None else float(row[0])
    finally:
        conn.close()


_UPSERT = (
    "INSERT INTO readiness (id, checked_at) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
)


async def _write(db: Database, mark: float) -> None:
    async with db.transaction() as conn:
        await conn.execute(_UPSERT, (mark,))


async def _mark(db: Database) -> float:
    rows = list(await db.reader.execute_fetchall("SELECT checked_at FROM readiness"))
    return float(rows[0][0])


@pytest.mark.sqlite_only("the WAL and its checkpoints are SQLite's")
async def test_commits_leave_the_wal_to_the_fold(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Database.open(path) as db:
        assert isinstance(db, SqliteDatabase)
        rows = list(await db.writer.execute_fetchall("PRAGMA wal_autocheckpoint"))
        assert int(rows[0][0]) == WRITER_AUTOCHECKPOINT_PAGES
        await db.fold_log()  # the first fold: the migrations
        await _write(db, 1)
        # Committed (durable in the WAL) but not folded by the commit itself.
        assert _in_the_file(path) is None
        assert await db.fold_log() is not None
        assert _in_the_file(path) == 1
        # Nothing written since: nothing to fold (the folder sleeps until a commit), and
        # nothing changes.
        assert await db.fold_log() is None
        assert _in_the_file(path) == 1
        await _write(db, 2)
        assert await db.fold_log() is not None
        assert _in_the_file(path) == 2


@pytest.mark.sqlite_only("the WAL and its checkpoints are SQLite's")
async def test_a_fold_does_not_wait_for_a_write_transaction_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with Database.open(path) as db:
        await _write(db, 1)
        async with db.transaction() as conn:
            await conn.execute(_UPSERT, (2,))
            await conn.execute("SELECT 1")  # the BEGIN and the insert have reached SQLite
            # Run while this transaction holds the writer: waiting for it would never end
            # (the guard turns that hang into a failure).
            with anyio.fail_after(30):
                await db.fold_log()
            # What was committed is folded; what is not yet committed is not.
            assert _in_the_file(path) == 1
        await db.fold_log()
        assert _in_the_file(path) == 2


@pytest.mark.sqlite_only("the WAL and its checkpoints are SQLite's")
async def test_a_long_wal_is_folded_whole_so_the_next_writes_start_it_over(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    wal = tmp_path / "db.sqlite-wal"
    async with Database.open(path) as db:
        assert isinstance(db, SqliteDatabase)
        db.rewind_frames = 1  # past it: the fold also folds in a write turn of its own
        await db.fold_log()
        for mark in range(1, 41):
            await _write(db, mark)
        grown = wal.stat().st_size
        await db.fold_log()
        assert _in_the_file(path) == 40
        for mark in range(41, 61):
            await _write(db, mark)
        # The WAL was folded whole, so these writes reused it from its first frame.
        assert wal.stat().st_size == grown
        assert await _mark(db) == 60


async def test_fold_log_folds_on_sqlite_and_is_nothing_on_postgresql(tmp_path: Path) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        await _write(db, 1)
        due = await db.fold_log()
        if isinstance(db, SqliteDatabase):
            assert due is not None and due > 0
        else:
            assert due is None
        # The commit stands either way.
        assert await _mark(db) == 1


async def test_the_served_app_folds_its_log(settings_factory: SettingsFactory) -> None:
    """The lifespan runs the log folder: on SQLite keys created over the API reach the database
    file with no checkpoint in any commit, the second after the folder had found nothing to
    fold and slept until a commit woke it; on PostgreSQL the folder sleeps and the app serves
    as ever."""
    settings = settings_factory()
    async with api_client(settings) as http:
        for name in ("folded", "folded-after-a-sleep"):
            created = await http.post("/v1/keys", json={"name": name, "scopes": ["jobs:read"]})
            assert created.status_code == 201, created.text
            if not settings.uses_postgresql:
                # The folder runs every FOLD_EVERY seconds; this bounds a hang, it times nothing.
                with anyio.fail_after(30):
                    while not _keys_in_the_file(settings.database_path, name):  # noqa: ASYNC110 - reads the file
                        await anyio.sleep(0.05)
                # Past the next fold, which finds nothing written and sleeps until a commit.
                await anyio.sleep(2 * FOLD_EVERY)
        listed = await http.get("/v1/keys")
        assert "folded" in listed.text and "folded-after-a-sleep" in listed.text
