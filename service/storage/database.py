"""The SQLite database: connections, pragmas, numbered migrations and write transactions."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio

from service.storage.announcements import Announcements, Listener, Work, Writer

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # FULL: an acknowledged webhook survives power loss, which NORMAL does not promise in WAL mode.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    # After each checkpoint that resets the WAL, shrink its file back to 64 MiB at most.
    "PRAGMA journal_size_limit = 67108864",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -16000",
)


class Database:
    """One writer connection (writes serialised by a lock) and one reader connection.

    WAL lets the reader see committed data while the writer holds a transaction, so API reads never
    queue behind fan-out bookkeeping. Use :meth:`open` as an async context manager.

    Each transaction announces the kinds of work it created (see
    :mod:`service.storage.announcements`); :meth:`subscribe` is how a worker hears of them.
    """

    def __init__(self, writer: Writer, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self._write_lock = asyncio.Lock()
        self._announcements = Announcements()

    def subscribe(self, kind: Work, listener: Listener) -> None:
        """Call ``listener`` (quick, never raising) after every commit that announced ``kind``."""
        self._announcements.subscribe(kind, listener)

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Database]:
        """Open (creating and migrating if needed) the database at ``path``; close on exit."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, Writer)
        try:
            await migrate(writer)
            reader = await _connect(path, aiosqlite.Connection)
            try:
                yield cls(writer, reader)
            finally:
                await reader.close()
        finally:
            await writer.close()

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction; commit, or roll back on error.

        ``durable=False`` commits without an fsync (``synchronous = NORMAL``), for bookkeeping
        whose loss in a power cut is harmless because it is redone: delivery leases and attempt
        outcomes (a delivery whose outcome was lost is sent again, which at-least-once allows).
        The next durable commit makes it durable too; it can never be torn or reordered.
        """
        async with self._write_lock:
            self.writer.announced.clear()
            relaxed = False
            try:
                # Shielded: a cancelled await would not stop the statement on the database
                # thread, and a BEGIN landing after the rollback check below would leave the
                # writer inside a transaction.
                with anyio.CancelScope(shield=True):
                    if durable:
                        await self.writer.execute("BEGIN IMMEDIATE")
                    else:
                        # One trip to the database thread instead of two (~0.1-1 ms each).
                        relaxed = True
                        await self.writer.executescript(
                            "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE"
                        )
                yield self.writer
                # Shielded: a commit cut short by a cancellation would leave it unknown whether
                # the transaction landed, and the rollback below would fail instead.
                with anyio.CancelScope(shield=True):
                    if relaxed:
                        # executescript commits the open transaction before its script (the
                        # sqlite3 module documents it): commit and restore FULL in one trip.
                        await self.writer.executescript("PRAGMA synchronous = FULL")
                        relaxed = False
                    else:
                        await self.writer.commit()
            except BaseException:
                # A failed BEGIN or COMMIT (or a cancellation) must not leave the shared writer
                # inside a transaction, or every later write would fail.
                if self.writer.in_transaction:
                    with anyio.CancelScope(shield=True):
                        await self.writer.rollback()
                raise
            finally:
                if relaxed:
                    with anyio.CancelScope(shield=True):
                        await self.writer.execute("PRAGMA synchronous = FULL")
            if self.writer.announced:
                announced = tuple(self.writer.announced)
                self.writer.announced.clear()
                self._announcements.deliver(announced)

    @asynccontextmanager
    async def _writer_waiting_at_most(self, wait: float) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, to ourselves, with SQLite's busy wait cut to ``wait`` seconds.

        Holding the write lock means no transaction is using the writer, so changing its busy
        timeout affects only what the block runs; it is restored even on cancellation.
        """
        with anyio.fail_after(wait):
            await self._write_lock.acquire()
        try:
            await self.writer.execute(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
            try:
                yield self.writer
            finally:
                with anyio.CancelScope(shield=True):
                    await self.writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        finally:
            self._write_lock.release()

    async def checkpoint(self, *, wait: float = 0.1) -> bool:
        """Copy the WAL into the database file and truncate it, holding reelhook's writes off.

        Gives up rather than stall writers: returns False when readers kept the WAL busy for
        ``wait`` seconds (the next checkpoint catches up).
        """
        try:
            async with self._writer_waiting_at_most(wait) as conn:
                with anyio.CancelScope(shield=True):
                    async with conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cursor:
                        row = await cursor.fetchone()
        except TimeoutError:
            return False
        return row is not None and row[0] == 0

    async def probe_write(self, now: float, *, wait: float) -> None:
        """Commit one tiny write, waiting at most about ``wait`` seconds for the write lock.

        Raises TimeoutError or ``sqlite3.Error`` when the database does not take the write.
        """
        async with self._writer_waiting_at_most(wait) as conn:
            # Shielded: an abandoned BEGIN or COMMIT would leave the shared writer mid-transaction.
            with anyio.CancelScope(shield=True):
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    await conn.execute(
                        "INSERT INTO readiness (id, checked_at) VALUES (1, ?) "
                        "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                        (now,),
                    )
                    await conn.commit()
                except BaseException:
                    if conn.in_transaction:
                        await conn.rollback()
                    raise


_Conn = TypeVar("_Conn", bound=aiosqlite.Connection)


async def _connect(path: Path, kind: type[_Conn]) -> _Conn:
    # isolation_level=None: reelhook issues BEGIN/COMMIT itself, so transactions are explicit.
    conn = kind(partial(sqlite3.connect, path, isolation_level=None), 64)
    await conn  # starts its thread and opens the database
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("service.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_migration() -> int:
    """The schema version this reelhook migrates databases to."""
    return max(version for version, _ in _migrations())


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every numbered migration newer than ``PRAGMA user_version``; return the new version."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    for version, script in _migrations():
        if version <= current:
            continue
        log.info("applying migration %04d", version)
        # executescript commits on its own; the version bump rides inside the same script.
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
        )
        current = version
    return current
