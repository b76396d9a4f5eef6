"""The embedded store: one SQLite file, pragmas, numbered migrations and write transactions."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite
import anyio

from service.storage.announcements import Seer, Work, appended_of
from service.storage.database import (
    Connection,
    Database,
    Result,
    Row,
    Statement,
    T,
    migrations,
    refuse_newer,
    value_rows,
)

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


# The writer's own automatic checkpoint is a backstop only (docs/performance.md §4, "WAL
# checkpoints"): SQLite's default, 1,000 pages, ran a checkpoint (two more fsyncs and ~1,000
# page writes) inside whichever commit crossed it, about one ingest commit in sixty at 1,000
# callbacks/s, and the callbacks of that batch and those queued behind it waited for it. The
# lifespan's :class:`~service.ops.logfolding.LogFolder` folds the WAL from a connection of its
# own (:meth:`SqliteDatabase.fold_log`); the writer folds only past this (64 MiB of 4 KiB
# pages, the ``journal_size_limit``), e.g. when nothing runs that folder (the CLI).
WRITER_AUTOCHECKPOINT_PAGES = 16_384
# WAL frames past which a fold also waits for a turn between write transactions, so it can
# catch up with every frame and the next write transaction starts the WAL from its beginning.
REWIND_FRAMES = 4_096
# Seconds between folds while writes keep coming.
FOLD_EVERY = 0.25


def _run(raw: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Result:
    """One statement on the database thread: its rows and the rows it changed."""
    cursor = raw.execute(sql, params)
    try:
        return Result(cast(list[Row], cursor.fetchall()), cursor.rowcount)
    finally:
        cursor.close()


def _statement(raw: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> Result:
    return _run(raw._conn, sql, params)


_BEGIN = "BEGIN IMMEDIATE"

VALUES_CHUNK = 64
"""The most rows :meth:`SqliteConnection.execute_values` puts in one statement (at most 7 shapes
of each statement: 1, 2, 4 … 64 rows; an ingest batch is up to 256 callbacks by default)."""

_MAX_PARAMETERS = 32766  # SQLITE_MAX_VARIABLE_NUMBER's default since SQLite 3.32

VALUES_BYTES = 1 << 20
"""The most text and blob bytes one :meth:`SqliteConnection.execute_values` statement binds
(a row larger than this goes alone). SQLite copies every bound value while its statement runs:
64 callback bodies of 1 MiB in one statement held 64 MiB more at once, which took isolation
scenario c (2,000 concurrent 1 MiB uploads) from ~200 to ~270-290 MiB of RSS."""

# A statement held back by a write transaction until its next trip to the database thread:
# (sql, rows of an ``executemany``), or (sql, None) for a statement without parameters.
_Held = tuple[str, list[Sequence[Any]] | None]


def _with_held(
    raw: aiosqlite.Connection, held: list[_Held], sql: str, params: Sequence[Any]
) -> Result:
    """The held statements in order, then ``sql``: one trip for all of them."""
    conn = raw._conn
    _run_held(conn, held)
    return _run(conn, sql, params)


def _with_held_all(
    raw: aiosqlite.Connection, held: list[_Held], statements: Sequence[Statement]
) -> list[Result]:
    """The held statements in order, then each of ``statements``: one trip for all of them."""
    conn = raw._conn
    _run_held(conn, held)
    return [_run(conn, sql, params) for sql, params in statements]


def _run_held(conn: sqlite3.Connection, held: list[_Held]) -> None:
    for statement, rows in held:
        if rows is None:
            conn.execute(statement).close()
        else:
            conn.executemany(statement, rows).close()


def _held_then_script(raw: aiosqlite.Connection, held: list[_Held], script: str) -> None:
    _run_held(raw._conn, held)
    raw._conn.executescript(script).close()


class SqliteConnection(Connection):
    """An aiosqlite connection seen through :class:`Connection`.

    Inside a write transaction (:meth:`SqliteDatabase.transaction`) its ``BEGIN`` and its
    ``executemany`` writes, whose answer nobody reads, are held back and sent with the next
    statement that returns something, or with the ``COMMIT``: one trip to the database thread
    for all of them. Every trip waits for that thread and then for the event loop to take the
    answer back, so the ingest batch took eight trips, each slower the busier the loop was
    (under fan-out and API reads most of a callback's wait; docs/performance.md §4); now it
    takes three. Statements still run in the order they were issued, each in the transaction;
    an error in a held write is raised by the trip that ran it, still inside the transaction
    block, so the transaction rolls back as before.
    """

    dialect = "sqlite"

    def __init__(self, raw: aiosqlite.Connection) -> None:
        self.raw = raw
        self._held: list[_Held] | None = None  # None: nothing is held back (the reader)

    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        # One trip to the database thread (execute, fetch, close there) instead of aiosqlite's
        # three for a cursor: each trip waits for the thread and for the GIL back.
        if not self._held:
            result: Result = await cast(Any, self.raw)._execute(_statement, self.raw, sql, params)
            return result
        held, self._held = self._held, []
        if held[0][0] == _BEGIN:
            # Shielded as the BEGIN was on its own: a cancelled trip still runs on the thread,
            # and a BEGIN landing after the transaction's rollback check would leave the shared
            # writer inside a transaction.
            with anyio.CancelScope(shield=True):
                return await self._trip_with(held, sql, params)
        return await self._trip_with(held, sql, params)

    async def _trip_with(self, held: list[_Held], sql: str, params: Sequence[Any]) -> Result:
        result: Result = await cast(Any, self.raw)._execute(_with_held, self.raw, held, sql, params)
        return result

    async def run_all(self, statements: Sequence[Statement]) -> list[Result]:
        # The held writes and every statement in one trip (the ingest batch's job and audience
        # reads, docs/performance.md §4).
        held = self._held or []
        if self._held is not None:
            self._held = []
        trip = cast(Any, self.raw)._execute(_with_held_all, self.raw, held, statements)
        if held and held[0][0] == _BEGIN:
            # Shielded as in run: the BEGIN must not land after the transaction's rollback check.
            with anyio.CancelScope(shield=True):
                results: list[Result] = await trip
                return results
        results = await trip
        return results

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._held is not None:
            # The rows are built now, on the event loop, as the caller expects (a generator
            # over its state is not run later, nor on the database thread).
            self._held.append((sql, list(rows)))
            return
        await self.raw.executemany(sql, rows)

    async def execute_values(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # Many rows per statement: one sqlite3_step for up to VALUES_CHUNK rows where
        # executemany stepped once per row, and the database thread gives up the GIL for every
        # step and must win it back from a busy event loop (docs/performance.md §4). Chunks
        # are powers of two, so each statement has at most a few shapes and stays in the
        # connection's statement cache.
        if not rows:
            return
        width = len(rows[0])
        most = max(1, min(VALUES_CHUNK, _MAX_PARAMETERS // width))
        start = 0
        while start < len(rows):
            count = 1 << (min(fitting_rows(rows, start, most), len(rows) - start).bit_length() - 1)
            chunk = rows[start : start + count]
            flat = [value for row in chunk for value in row]
            await self.executemany(sql.format(rows=value_rows(count, width)), [flat])
            start += count

    async def _finish(self, script: str) -> None:
        """The writes still held back, then ``script`` (``executescript``), in one trip."""
        held, self._held = self._held or [], []
        await cast(Any, self.raw)._execute(_held_then_script, self.raw, held, script)

    def _hold_from_begin(self) -> None:
        self._held = [(_BEGIN, None)]

    def _hold(self) -> None:
        self._held = []

    def _drop_held(self) -> None:
        self._held = None


def fitting_rows(rows: Sequence[Sequence[Any]], start: int, most: int) -> int:
    """How many rows from ``start`` (at least one, at most ``most``) bind no more than
    :data:`VALUES_BYTES` of text and blobs together."""
    size = 0
    end = min(len(rows), start + most)
    for index in range(start, end):
        # A plain loop: a generator per row in sum() cost ~40 % more, ~0.3 µs a row, for every
        # row an ingest batch writes (docs/performance-journal.md, "The ingest path's sixth pass").
        for value in rows[index]:
            if isinstance(value, _SIZED):
                size += len(value)
        if size > VALUES_BYTES:
            return max(1, index - start)
    return end - start


_SIZED = (str, bytes)


class _OnThread(Connection):
    """The writer's own ``sqlite3`` connection, for storage work run on aiosqlite's thread
    (:meth:`SqliteDatabase.run_transaction`): its statements run at once, without a trip."""

    dialect = "sqlite"

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        return _run(self.raw, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows).close()


class Suspended(RuntimeError):
    """Storage work run on the database thread awaited something other than its connection."""


def _complete(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end in this thread. Awaiting :class:`_OnThread`'s statements never
    suspends, so one ``send`` finishes it; anything that would suspend (an event-loop future)
    is refused, the coroutine closed."""
    try:
        work.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    work.close()
    raise Suspended("storage work on the database thread may await only its connection")


class SqliteDatabase(Database):
    """One writer connection (writes serialised by a lock) and one reader connection.

    WAL lets the reader see committed data while the writer holds a transaction, so API reads never
    queue behind fan-out bookkeeping. One process owns the file.

    Each transaction collects the kinds of work its storage functions announced
    (:func:`service.storage.announcements.announce`), delivered once it has committed.
    """

    dialect = "sqlite"

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        folder: aiosqlite.Connection,
    ) -> None:
        super().__init__()
        self.writer = writer
        self._writer = SqliteConnection(writer)
        self.reader = SqliteConnection(reader)
        # The fold's own connection (its own thread, idle between folds); opened with the
        # others rather than by the first fold, which a shutdown could cancel mid-way and so
        # leave a connection nobody closes.
        self._folder = folder
        self.rewind_frames = REWIND_FRAMES
        # Write transactions ended so far, and as of the last fold: no writes, no fold. The
        # first fold runs whatever the count (the migrations, a previous run's WAL).
        self._writes = 0
        self._folded_at = -1

    @classmethod
    @asynccontextmanager
    async def open_file(cls, path: Path) -> AsyncIterator[SqliteDatabase]:
        """Open (creating and migrating if needed) the database at ``path``; close on exit."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await migrate(writer)
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
            reader = await _connect(path)
            try:
                folder = await _connect(path)
                try:
                    yield cls(writer, reader, folder)
                finally:
                    await folder.close()
            finally:
                await reader.close()
        finally:
            await writer.close()

    def _wrote(self) -> None:
        self._writes += 1
        self.written.set()

    async def fold_log(self) -> float | None:
        """A PASSIVE checkpoint of the WAL on a connection of its own, beside the writer: it
        copies committed pages into the database file while write transactions go on, so no
        commit waits for it (docs/performance.md §4, "WAL checkpoints"). Durability is the
        commit's (``synchronous = FULL`` syncs the WAL before a commit returns); a checkpoint
        only moves what is already durable, and syncs the database file before the WAL may be
        reused. Past ``rewind_frames`` WAL frames (:data:`REWIND_FRAMES`) it then waits for a
        background write turn and folds what the writes in between added, so the next write
        transaction starts the WAL over.
        Returns :data:`FOLD_EVERY`, the seconds to wait before the next, or None without
        folding when nothing was written since the last fold."""
        if self._writes == self._folded_at:
            return None
        self._folded_at = self._writes
        frames = await self._checkpoint_passive(self._folder)
        if frames >= self.rewind_frames:
            async with self._write_lock.hold(background=True):
                await self._checkpoint_passive(self._folder)
        return FOLD_EVERY

    @staticmethod
    async def _checkpoint_passive(conn: aiosqlite.Connection) -> int:
        """One PASSIVE checkpoint; the WAL's frames as it began."""
        with anyio.CancelScope(shield=True):
            async with conn.execute("PRAGMA wal_checkpoint(PASSIVE)") as cursor:
                row = await cursor.fetchone()
        return int(row[1]) if row is not None else 0

    @asynccontextmanager
    async def transaction(
        self, *, durable: bool = True, background: bool = False
    ) -> AsyncIterator[Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; ``durable=False`` commits without an fsync
        (``synchronous = NORMAL``); ``background`` ones take their turn after the others
        waiting."""
        async with self._write_lock.hold(background=background):
            announced: set[Work] = set()
            seers: list[Seer | None] = []
            self._writer.announced = announced
            self._writer.appended = seers
            relaxed = False
            try:
                if durable:
                    # Sent with the block's first statement (SqliteConnection holds it back).
                    self._writer._hold_from_begin()
                else:
                    # Shielded: a cancelled await would not stop the statement on the database
                    # thread, and a BEGIN landing after the rollback check below would leave
                    # the writer inside a transaction.
                    with anyio.CancelScope(shield=True):
                        # One trip to the database thread instead of two (~0.1-1 ms each).
                        relaxed = True
                        await self.writer.executescript(
                            "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE"
                        )
                    self._writer._hold()
                yield self._writer
                # Shielded: a commit cut short by a cancellation would leave it unknown whether
                # the transaction landed, and the rollback below would fail instead.
                with anyio.CancelScope(shield=True):
                    if relaxed:
                        # executescript commits the open transaction before its script (the
                        # sqlite3 module documents it): commit and restore FULL in one trip,
                        # after the writes still held back.
                        await self._writer._finish("PRAGMA synchronous = FULL")
                        relaxed = False
                    else:
                        # The writes held back, then the COMMIT, in one trip.
                        await self._writer.run("COMMIT", ())
                self._wrote()
            except BaseException:
                # A failed BEGIN or COMMIT (or a cancellation) must not leave the shared writer
                # inside a transaction, or every later write would fail.
                if self.writer.in_transaction:
                    with anyio.CancelScope(shield=True):
                        await self.writer.rollback()
                raise
            finally:
                # Writes still held back belong to this transaction only (rolled back above).
                self._writer._drop_held()
                self._writer.announced = None
                self._writer.appended = None
                if relaxed:
                    with anyio.CancelScope(shield=True):
                        await self.writer.execute("PRAGMA synchronous = FULL")
            if announced:
                self._announce(tuple(announced), appended_of(seers))

    async def run_transaction(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        durable: bool = True,
        background: bool = False,
    ) -> T:
        """The whole transaction, BEGIN, ``work`` and COMMIT, as one function on aiosqlite's
        thread: one trip there and back instead of one per statement (each ~0.1-1 ms of waiting
        for the thread and the GIL, docs/performance.md §4). Committed before this returns."""
        async with self._write_lock.hold(background=background):
            conn = _OnThread(self.writer._conn)
            announced: set[Work] = set()
            seers: list[Seer | None] = []
            conn.announced = announced
            conn.appended = seers

            def transaction() -> T:
                raw = conn.raw
                if not durable:
                    raw.execute("PRAGMA synchronous = NORMAL")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        result = _complete(cast(Coroutine[Any, Any, T], work(conn)))
                        raw.execute("COMMIT")
                    except BaseException:
                        # Neither a failed statement nor a failed COMMIT may leave the shared
                        # writer inside a transaction.
                        if raw.in_transaction:
                            raw.execute("ROLLBACK")
                        raise
                finally:
                    if not durable:
                        raw.execute("PRAGMA synchronous = FULL")
                return result

            # Shielded: the trip cannot be called back once queued, and a caller cancelled
            # mid-way must not release the write lock before its transaction has ended.
            with anyio.CancelScope(shield=True):
                # aiosqlite's own way onto its thread (``Connection._execute``), the one its
                # public methods use.
                result: T = await cast(Any, self.writer)._execute(transaction)
            self._wrote()
        if announced:
            self._announce(tuple(announced), appended_of(seers))
        return result

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
        """Commit one tiny write, waiting at most about ``wait`` seconds for the write lock."""
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
                    self._wrote()
                except BaseException:
                    if conn.in_transaction:
                        await conn.rollback()
                    raise


async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: reelhook issues BEGIN/COMMIT itself, so transactions are explicit.
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every numbered migration newer than ``PRAGMA user_version``; return the new version.

    Raises :class:`~service.storage.database.SchemaTooNew` (changing nothing) when the file's
    version is newer than this code's.
    """
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    refuse_newer("sqlite", current)
    for version, script in migrations("sqlite"):
        if version <= current:
            continue
        log.info("applying migration %04d", version)
        # executescript commits on its own; the version bump rides inside the same script.
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
        )
        current = version
    return current


async def migrate_file(path: Path) -> int:
    """Create and migrate the SQLite file at ``path``; return its schema version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await _connect(path)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
