"""``reelhook backup`` and ``reelhook restore``: the SQLite database, copied safely.

A backup is taken online, while reelhook runs: SQLite's backup API copies the database in one step
inside a read transaction, so the copy is one consistent snapshot that holds every write committed
(every job acknowledged) before it began, and writers are not blocked meanwhile (WAL). The copy
is a single self-contained file (no ``-wal``), checked with ``PRAGMA quick_check``, written
beside its destination and renamed into place, readable by its owner only.

A restore needs reelhook stopped: it refuses while a process holds the data directory's lock or
has the database open, and it replaces an existing database only with ``--force`` (the old one
is kept beside it). Blobs (``blobs/``) and a generated ``secret_keys`` file are not in the
database; copy them along with it (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.storage import datadir
from service.storage.database import latest_migration

DATABASE_NAME = "reelhook.db"


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Summary:
    path: Path
    bytes: int
    jobs: int
    events: int
    schema_version: int

    def describe(self) -> str:
        return (
            f"{self.path}: {self.jobs} jobs, {self.events} events, {self.bytes} bytes, "
            f"schema version {self.schema_version}"
        )


def backup(database: Path, destination: Path) -> Summary:
    """Copy a consistent snapshot of ``database`` (in use or not) to ``destination``.

    ``destination`` may be a directory: the copy is then named ``reelhook-<UTC time>.db``.
    Raises :class:`BackupError` when there is nothing to copy or the destination exists.
    """
    if not database.is_file():
        raise BackupError(f"no database at {database} (set REELHOOK_DATA_DIR or --data-dir)")
    if destination.is_dir():
        destination = destination / time.strftime("reelhook-%Y%m%dT%H%M%SZ.db", time.gmtime())
    if destination.exists():
        raise BackupError(f"{destination} already exists; choose a new name")
    with _source(database) as source:
        return _copy(source, destination)


@contextlib.contextmanager
def _source(database: Path) -> Iterator[sqlite3.Connection]:
    """A connection to read the live database from, leaving no file behind that was not there.

    While reelhook runs, read-only (its ``-wal`` and ``-shm`` exist already). While it does not,
    its lock is held so it cannot start meanwhile, and a read-write connection is used: as the
    last to close, it removes the ``-wal`` and ``-shm`` it created, which a read-only one cannot.
    """
    try:
        with datadir.locked(database.parent):
            conn = sqlite3.connect(database, timeout=30.0, isolation_level=None)
            try:
                yield conn
            finally:
                conn.close()
            return
    except datadir.DataDirInUse:
        pass
    conn = _connect(database, timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def restore(source: Path, data_dir: Path, *, force: bool) -> tuple[Summary, Path | None]:
    """Make the backup ``source`` the database of the (stopped) reelhook in ``data_dir``.

    Returns the restored database's summary and where the replaced database was kept (None when
    there was none). Raises :class:`BackupError` when ``source`` is not a usable backup, when
    reelhook or anything else is using the database, or when one exists and ``force`` is false.
    """
    checked = _inspect(source)
    with _data_dir_lock(data_dir):
        database = data_dir / DATABASE_NAME
        replaced: Path | None = None
        if database.exists():
            if not force:
                raise BackupError(
                    f"{database} already holds a database ({_count(database, 'jobs')} jobs); "
                    "pass --force to replace it (it is kept beside the restored one)"
                )
            replaced = _set_aside(database)
        for stale in _companions(database):
            # A leftover -wal would be replayed onto the restored file and corrupt it.
            stale.unlink(missing_ok=True)
        source_conn = _connect(source, timeout=0)
        try:
            _copy(source_conn, database, owner=data_dir)
        finally:
            source_conn.close()
    return checked, replaced


def _copy(source: sqlite3.Connection, destination: Path, owner: Path | None = None) -> Summary:
    """Copy ``source`` into a new file at ``destination`` atomically, private to its owner."""
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    _remove_leftovers(destination)
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(descriptor)
    try:
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            # pages=-1: the whole database in one step, so one read transaction, one snapshot.
            source.backup(target, pages=-1)
            # One self-contained file: the copy leaves WAL mode, so there is no -wal to forget.
            target.execute("PRAGMA journal_mode = DELETE")
            _check(target, destination)
        finally:
            target.close()
        if owner is not None and os.geteuid() == 0:
            # Restored by root for a service that runs as its own user: give it the file.
            folder = owner.stat()
            os.chown(partial, folder.st_uid, folder.st_gid)
        _fsync(partial)
        os.replace(partial, destination)
        _fsync(destination.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        for stale in _companions(partial):
            stale.unlink(missing_ok=True)
        raise
    return _inspect(destination)


def _remove_leftovers(destination: Path) -> list[Path]:
    """Delete the partial copies (and their journals) a killed backup or restore to
    ``destination`` left behind, keeping those of processes still running; return them."""
    removed = []
    for leftover in destination.parent.glob(f".{destination.name}.partial-*"):
        found = re.search(r"\.partial-(\d+)", leftover.name)
        if found and int(found[1]) != os.getpid() and _alive(int(found[1])):
            continue
        leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _inspect(path: Path) -> Summary:
    """Check that ``path`` is a whole reelhook database this version can run; summarise it."""
    if not path.is_file():
        raise BackupError(f"no backup at {path}")
    try:
        conn = _connect(path, timeout=0)
        try:
            _check(conn, path)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"jobs", "events", "api_keys"} <= tables:
                raise BackupError(f"{path} is an SQLite database, but not reelhook's")
            jobs = int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
            events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a usable SQLite database: {exc}") from None
    if version > latest_migration():
        raise BackupError(
            f"{path} has schema version {version}, newer than this reelhook knows "
            f"({latest_migration()}); restore it with the version that wrote it"
        )
    return Summary(path, path.stat().st_size, jobs, events, version)


def _check(conn: sqlite3.Connection, path: Path) -> None:
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise BackupError(f"{path} failed SQLite's integrity check: {result}")


def _connect(path: Path, *, timeout: float) -> sqlite3.Connection:
    # Read-only: taking a backup must never create or modify files beside the live database.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Any:
    try:
        with datadir.locked(data_dir):
            yield
    except datadir.DataDirInUse as exc:
        raise BackupError(f"{exc}; stop reelhook before restoring") from None


def _set_aside(database: Path) -> Path:
    """Fold the live database's WAL into it and move it aside; refuse if anyone has it open."""
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Leaving WAL mode needs the database to ourselves: this fails while anything has it open.
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError as exc:
        raise BackupError(f"{database} is in use ({exc}); stop whatever has it open") from None
    finally:
        conn.close()
    if mode != "delete":
        raise BackupError(f"{database} is in use by another process; stop it before restoring")
    aside = database.with_name(
        f"{database.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    )
    os.replace(database, aside)
    return aside


def _companions(database: Path) -> list[Path]:
    return [database.with_name(database.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _count(database: Path, table: str) -> int | str:
    """Rows in ``table`` of the (unused, locked) live database; read-write, so closing it
    removes the ``-wal`` and ``-shm`` opening it created."""
    try:
        conn = sqlite3.connect(database, timeout=1.0)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return "unknown"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- the command line ----------------------------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    chosen = args.data_dir or os.environ.get("REELHOOK_DATA_DIR", "").strip() or "./data"
    return Path(chosen)


def backup_command(args: argparse.Namespace) -> int:
    try:
        summary = backup(_data_dir(args) / DATABASE_NAME, Path(args.path))
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"reelhook backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {summary.describe()}")
    return 0


def restore_command(args: argparse.Namespace) -> int:
    try:
        summary, replaced = restore(Path(args.path), _data_dir(args), force=args.force)
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"reelhook restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {summary.describe()}")
    if replaced is not None:
        print(f"the database it replaced is kept at {replaced}")
    return 0


def register(commands: Any) -> None:
    """Add ``backup`` and ``restore`` to an argparse subparsers object."""
    data_dir_help = "reelhook's data directory (default: REELHOOK_DATA_DIR, else ./data)"
    made = commands.add_parser(
        "backup", help="copy the database to PATH while reelhook runs (SQLite backup API)"
    )
    made.add_argument("path", metavar="PATH", help="a new file, or a directory to put it in")
    made.add_argument("--data-dir", help=data_dir_help)
    made.set_defaults(handler=backup_command)
    put = commands.add_parser(
        "restore", help="make the backup at PATH the database of a stopped reelhook"
    )
    put.add_argument("path", metavar="PATH", help="a file written by reelhook backup")
    put.add_argument("--data-dir", help=data_dir_help)
    put.add_argument(
        "--force", action="store_true", help="replace an existing database (kept beside it)"
    )
    put.set_defaults(handler=restore_command)
