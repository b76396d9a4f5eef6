"""The store reelhook keeps its state in, behind one interface for both engines.

``sqlite:///path`` (or a plain path) opens the embedded default, one SQLite file
(:mod:`service.storage.sqlite`); ``postgresql://…`` opens a PostgreSQL database shared by several
nodes (:mod:`service.storage.postgres`). The storage operations (``service/storage/*``) are
written once against :class:`Connection`, with ``?`` placeholders; SQL differs by dialect only
where the engines truly differ (each such place checks :attr:`Connection.dialect`). Each dialect
has its own numbered migrations in ``migrations/<dialect>/``; a node refuses a schema newer than
its code (:class:`SchemaTooNew`). See docs/scaling.md.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Generator, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg

from service.core.ids import new_id
from service.core.worker import Wakeup
from service.storage.announcements import (
    Announcements,
    Appended,
    AppendedListener,
    Listener,
    Seer,
    Work,
)
from service.storage.writeorder import WriteOrder

T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be used as configured (the message says why)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer reelhook than this one: starting could corrupt it."""


# What a failing database raises, whichever the engine (for checks that report instead of crash).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's connection left mid-operation when the server went away (a PostgreSQL restart):
    # "cannot switch to state …; another operation is in progress". Not an InterfaceError; left
    # out, it escaped the heartbeat loop and stopped every background worker of the node.
    asyncpg.InternalClientError,
    OSError,
)


class Row(Protocol):
    """A result row: columns by name or position (``sqlite3.Row`` and ``asyncpg.Record``)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Result:
    """Every row a statement returned (already fetched) and how many rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[Row]:
        return self.rows


class Query:
    """One statement about to run: ``await`` it, or use it as ``async with … as result``."""

    __slots__ = ("_conn", "_params", "_sql")

    def __init__(self, conn: Connection, sql: str, params: Sequence[Any]) -> None:
        self._conn = conn
        self._sql = sql
        self._params = params

    def __await__(self) -> Generator[Any, None, Result]:
        return self._conn.run(self._sql, self._params).__await__()

    async def __aenter__(self) -> Result:
        return await self._conn.run(self._sql, self._params)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


Statement = tuple[str, Sequence[Any]]
"""One SQL statement and its parameters."""


def value_rows(count: int, width: int) -> str:
    """``count`` rows of ``width`` placeholders for a ``VALUES`` list: ``(?, ?), (?, ?)``."""
    row = f"({', '.join('?' * width)})"
    return ", ".join([row] * count)


def marks(values: Collection[object]) -> str:
    """One ``?`` per value, for an ``IN (…)`` list: ``?, ?, ?``."""
    return ", ".join("?" for _ in values)


PADDED_MOST = 1024


def padded(values: Sequence[T]) -> list[T]:
    """``values`` (at least one) with the last repeated up to the next power of two: the
    parameters of an ``IN (…)`` list whose statement then has one of a few shapes. Each count
    of placeholders is another SQL text, and the SQLite connection keeps 128 prepared
    statements: the ingest batch's two reads, one text per batch size, pushed each other and
    the batch's writes out of that cache, and preparing them again cost 16-70 µs each
    (docs/performance-journal.md, "The database thread's share per callback"). A value repeated in
    an ``IN`` list selects nothing twice. Past :data:`PADDED_MOST` values (batches larger than
    the default 256) nothing is added, so no list nears the engines' parameter limits."""
    count = len(values)
    if count > PADDED_MOST:
        return list(values)
    return [*values, *[values[-1]] * ((1 << (count - 1).bit_length()) - count)]


class Connection(ABC):
    """Where storage operations run SQL: a transaction, or the reader outside any transaction.

    SQL uses ``?`` placeholders on both engines; the PostgreSQL connection numbers them.
    """

    dialect: str
    for_update = ""
    """Appended to a SELECT of rows the transaction will change: on PostgreSQL inside a write
    transaction `` FOR UPDATE`` (row locks, so concurrent nodes' read-modify-writes queue instead
    of overwriting each other), elsewhere nothing (SQLite has one writer at a time)."""
    skip_locked = ""
    """As :attr:`for_update`, for work another node may take instead: rows it holds are skipped."""
    announced: set[Work] | None = None
    """Inside a write transaction, the kinds of work it announced (:func:`announce`), woken after
    its commit; None on the reader and outside transactions."""
    appended: list[Seer | None] | None = None
    """Inside a write transaction, who may see each event it appended (None: not known), for
    the live streams' tail (:func:`service.storage.announcements.announce_appended`)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Query:
        return Query(self, sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return (await self.run(sql, params)).rows

    @abstractmethod
    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        """Run one statement and fetch every row it returns."""

    async def run_all(self, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` in order and return each one's result. SQLite runs them in one
        trip to its database thread (each trip costs both threads a wake-up, the ingest batch's
        largest fixed cost, docs/performance.md §4); elsewhere they run one after the other."""
        return [await self.run(sql, params) for sql, params in statements]

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    async def execute_values(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` for every row of ``rows``, which all have the same width. ``sql`` holds
        ``{rows}`` where a ``VALUES`` list goes (it is read by ``str.format``: any other brace is
        doubled): here it becomes one row of placeholders, run once
        per row (:meth:`executemany`). SQLite runs it with many rows in each statement
        (:class:`service.storage.sqlite.SqliteConnection`), which must then mean the same as
        running it row after row (an ``INSERT`` whose later rows see the earlier ones)."""
        if rows:
            await self.executemany(sql.format(rows=value_rows(1, len(rows[0]))), rows)


class Database(ABC):
    """An open store: a :attr:`reader` for reads outside transactions, and write transactions.

    Use :meth:`open` as an async context manager.
    """

    dialect: str
    reader: Connection
    node_timeout: float = 10.0
    """Seconds without a heartbeat after which a node is dead (its leases handed back)."""

    def __init__(self) -> None:
        self._announcements = Announcements()
        # Set after each commit by a store that folds its own log (:meth:`fold_log`): what the
        # log folder sleeps on while nothing is written, instead of polling.
        self.written = Wakeup()
        # Write transactions of this node: one at a time, background ones last.
        self._write_lock = WriteOrder()
        # This process's identity among the nodes sharing the store (one node on SQLite).
        self.node_id = new_id("node")

    @property
    def is_leader(self) -> bool:
        """Whether the singleton work (deadlines, retention, the stale-node sweep) runs here:
        always on SQLite, on the holder of the leader lease on PostgreSQL."""
        return True

    async def nodes_alive(self) -> int:
        """How many nodes share the store now (always this one on SQLite)."""
        return 1

    @property
    def life(self) -> int:
        """Which life of this node is running: it changes when the node learns that the others
        declared it dead (and took its leases). A claim made in one life may not be acted on
        in another; always 0 on SQLite, where one process owns the store."""
        return 0

    async def still_holds(self, life: int) -> bool:
        """Whether leases taken in ``life`` are still this node's, so work done under them
        (sending a claimed delivery) is not done by another node too. True at once while the
        node's heartbeat is fresh; after a pause (SIGSTOP, a frozen VM) it waits for the next
        heartbeat to tell. Always True on SQLite."""
        return life == self.life

    async def leader_id(self) -> str | None:
        """The node running the singletons now (this one on SQLite; on PostgreSQL the holder
        of an unexpired leader lease, None between two leaders)."""
        return self.node_id

    async def run(self) -> None:
        """The store's own background work, until cancelled: on PostgreSQL heartbeats, the
        leader lease, the stale-node sweep and cross-node wake-ups; on SQLite nothing."""
        return None

    def subscribe(self, kind: Work, listener: Listener) -> None:
        """Call ``listener`` (quick, never raising) after every commit that announced ``kind``
        (see :mod:`service.storage.announcements`); on PostgreSQL, a commit on any node."""
        self._announcements.subscribe(kind, listener)

    def subscribe_appended(self, listener: AppendedListener) -> None:
        """Call ``listener`` (quick, never raising) after every commit that appended events,
        with what it appended when that is known (every event's owner given; on PostgreSQL
        carried by the commit's notification to every node), else None (see
        :mod:`service.storage.announcements`)."""
        self._announcements.subscribe_appended(listener)

    def _announce(self, kinds: Iterable[Work], appended: Appended | None = None) -> None:
        self._announcements.deliver(kinds, appended)

    @staticmethod
    def open(
        target: Path | str, *, node_timeout: float = 10.0
    ) -> AbstractAsyncContextManager[Database]:
        """Open (creating and migrating if needed) the store at ``target``: a SQLite file path,
        a ``sqlite:///path`` URL or a ``postgresql://`` URL; close it on exit.

        Raises :class:`SchemaTooNew` when the database's schema is newer than this code's, and
        :class:`StoreError` for a URL of no known engine.
        """
        dialect, location = parse_url(target)
        if dialect == "sqlite":
            from service.storage.sqlite import SqliteDatabase

            return SqliteDatabase.open_file(Path(location))
        from service.storage.postgres import PostgresDatabase

        return PostgresDatabase.open_url(location, node_timeout=node_timeout)

    @abstractmethod
    def transaction(
        self, *, durable: bool = True, background: bool = False
    ) -> AbstractAsyncContextManager[Connection]:
        """Run the block in one write transaction; commit, or roll back on error.

        ``background``: bookkeeping no request waits on (the dispatcher's claims and outcome
        batches): it takes its turn after every other waiting transaction, so the ingest batch
        a provider waits on does not queue behind it (:mod:`service.storage.writeorder`).

        ``durable=False`` may commit without waiting for the disk, for bookkeeping whose loss in
        a power cut is harmless because it is redone (delivery leases and attempt outcomes: a
        delivery whose outcome was lost is sent again, which at-least-once allows). The next
        durable commit makes it durable too; it can never be torn or reordered.
        """

    def foreground_idle(self) -> float:
        """Seconds since a foreground write transaction of this node last asked for its turn
        (infinite if none has): how long the writer has served background work alone."""
        return time.monotonic() - self._write_lock.foreground_at

    def foreground_pending(self, pending: Callable[[], bool]) -> AbstractContextManager[None]:
        """While the block runs, a write turn freed while ``pending()`` is true is kept for the
        foreground transaction about to ask (the ingest writer's next batch) instead of going to
        a waiting background one, within the fair share (:mod:`service.storage.writeorder`)."""
        return self._write_lock.foreground_pending(pending)

    async def run_transaction(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        durable: bool = True,
        background: bool = False,
    ) -> T:
        """``await work(conn)`` in one write transaction (as :meth:`transaction`) and return what
        it returned; committed before this returns, rolled back if it raised.

        ``work`` may await only its connection's statements (the storage functions): SQLite runs
        the whole transaction, BEGIN to COMMIT, in one trip to its database thread instead of one
        per statement (docs/performance.md §4), and refuses work that waits for anything else.
        """
        async with self.transaction(durable=durable, background=background) as conn:
            return await work(conn)

    async def fold_log(self) -> float | None:
        """Fold the write-ahead log back into the database where the engine leaves that to
        reelhook, off the writers' path; the seconds to wait before the next fold, or None when
        there is nothing to fold until :attr:`written` is set (PostgreSQL's checkpointer folds
        its own log, so there never is; SQLite's is
        :meth:`SqliteDatabase.fold_log <service.storage.sqlite.SqliteDatabase.fold_log>`)."""
        return None

    @abstractmethod
    async def checkpoint(self, *, wait: float = 0.1) -> bool:
        """Let the engine fold its write-ahead log back; False when it had to give up."""

    @abstractmethod
    async def probe_write(self, now: float, *, wait: float) -> None:
        """Commit one tiny write within about ``wait`` seconds, or raise TimeoutError or one of
        :data:`DATABASE_ERRORS`."""


def parse_url(target: Path | str) -> tuple[str, str]:
    """``(dialect, location)`` of a store: the file path for SQLite, the URL for PostgreSQL."""
    if isinstance(target, Path):
        return "sqlite", str(target)
    parts = urlsplit(target)
    if parts.scheme == "sqlite":
        # sqlite:///relative/or/absolute: the path is everything after the third slash, as
        # SQLAlchemy reads it; sqlite:////abs has an absolute path.
        path = unquote(target[len("sqlite:///") :]) if target.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(f"a SQLite URL needs a file path: sqlite:///path (got {target!r})")
        return "sqlite", path
    if parts.scheme in ("postgresql", "postgres"):
        return "postgresql", target
    raise StoreError(
        f"unknown database URL scheme {parts.scheme!r}: use sqlite:/// or postgresql://"
    )


def migrations(dialect: str, folder: Any = None) -> list[tuple[int, str]]:
    """The numbered migrations of ``dialect`` (or of ``folder``), oldest first, as (version, SQL
    script).

    Raises :class:`StoreError` when two files carry the same number: which would run first, and
    whether a database that has one would get the other, would be left to chance (two branches
    each adding their "next" migration is how it happens).
    """
    if folder is None:
        folder = resources.files("service.storage") / "migrations" / dialect
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            if version in found:
                raise StoreError(
                    f"two {dialect} migrations numbered {version}: "
                    f"{found[version][0]} and {entry.name}"
                )
            found[version] = (entry.name, entry.read_text(encoding="utf-8"))
    return [(version, found[version][1]) for version in sorted(found)]


def latest_migration(dialect: str = "sqlite") -> int:
    """The schema version this reelhook migrates ``dialect``'s databases to."""
    return max(version for version, _ in migrations(dialect))


def refuse_newer(dialect: str, current: int) -> None:
    """Raise :class:`SchemaTooNew` when ``current`` is past what this code knows."""
    latest = latest_migration(dialect)
    if current > latest:
        raise SchemaTooNew(
            f"the {dialect} database is at schema version {current}, newer than this reelhook's "
            f"{latest}: it was migrated by a newer version; run that version (or newer)"
        )


async def migrate_store(target: Path | str) -> tuple[str, int]:
    """Migrate the store at ``target`` (as :meth:`Database.open` names it) without starting a
    node; return its dialect and schema version. Raises :class:`SchemaTooNew`."""
    dialect, location = parse_url(target)
    if dialect == "sqlite":
        from service.storage.sqlite import migrate_file

        return dialect, await migrate_file(Path(location))
    from service.storage.postgres import migrate_url

    return dialect, await migrate_url(location)
