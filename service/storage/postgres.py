"""The shared store: a PostgreSQL database several reelhook nodes use at once, through asyncpg.

Reads go through a small pool (:attr:`PostgresDatabase.reader`); each write transaction takes a
pooled connection of its own. Within one node, write transactions still run one at a time, as on
SQLite: the guarantees between nodes are kept in SQL (row locks, advisory transaction locks,
fencing tokens), but some multi-row writers lock rows in different orders and deadlock when they
overlap (docs/scaling.md: measured, and what it would take to lift). Migrations run under a
session advisory lock, so nodes starting together apply each one once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import asyncpg

from service.storage import deliveries, nodes, submissions
from service.storage.announcements import AppendedTwins, Seer, Work, announce, notifications
from service.storage.database import (
    DATABASE_ERRORS,
    Connection,
    Database,
    Result,
    Row,
    migrations,
    refuse_newer,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from asyncpg.pool import PoolConnectionProxy

    RawConnection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    )

log = logging.getLogger(__name__)


# pg_advisory_lock keys (one 64-bit space per database): distinct, stable, arbitrary.
MIGRATION_LOCK = 0x7265_656C_0001

# Each transaction notifies this channel with the kinds of work it announced; each
# node LISTENs on a dedicated connection: how a commit on one node wakes the workers of all.
CHANNEL = "reelhook_work"

STARTUP_BUDGET = 30.0
"""Seconds a starting node keeps trying to reach PostgreSQL: nodes and their database are often
started together (systemd, a container platform), and a server that is starting, restarting or
briefly out of connection slots refuses or drops connections it will accept a moment later."""

# What a starting node retries: the server unreachable or dropping the connection (OSError,
# which includes ConnectionError, raised by asyncpg when a connection is lost mid-handshake),
# still starting up, or out of connection slots. Anything else (a wrong password, a missing
# database, a newer schema) is the operator's to fix and fails at once.
_TRANSIENT_CONNECT = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

BACKSTOP = 5.0
"""Seconds between wake-ups of every worker even without a notification: a LISTEN connection can
die silently (asyncpg issues #519, #283), and a lost wake-up must cost at most this much delay."""

# A lease counts as held while the last heartbeat started less than this share of the node
# timeout ago; the rest is margin for the heartbeat's own round trip and clock-rate drift.
LEASE_SAFETY = 0.75

# Per session: a transaction left open by a stalled node must not hold the xmin horizon (queue
# tables bloat) or its row locks forever; server-side keepalives notice a vanished node's
# connection (and so release its advisory locks) in about 20 s instead of TCP's hours.
SERVER_SETTINGS = {
    "idle_in_transaction_session_timeout": "60000",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "2",
    "jit": "off",
}

_ROWS = re.compile(r"^\s*(SELECT|WITH|VALUES)\b|\bRETURNING\b", re.IGNORECASE)


def numbered(sql: str) -> str:
    """``sql`` with each ``?`` placeholder outside quotes replaced by ``$1``, ``$2``, …"""
    out: list[str] = []
    quote: str | None = None
    n = 0
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(char)
    return "".join(out)


def _without_nul(params: Sequence[Any]) -> Sequence[Any]:
    """``params`` with U+0000 in strings, and in lists of strings (arrays), replaced by U+FFFD:
    PostgreSQL text cannot hold NUL, where SQLite takes it. Stored JSON escapes it
    (``\\u0000``) and ids are generated, so a NUL only arrives in an identifier from a request
    (``/v1/jobs/%00``), which matches nothing either way (without this it would be a 500
    instead of a 404), or in an attempt's error, which may quote what a subscriber sent."""
    if not any(_has_nul(value) for value in params):
        return params
    return [_nul_replaced(value) for value in params]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value)


def _nul_replaced(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_nul_replaced(v) for v in value]
    return value


def _rowcount(status: str) -> int:
    """Rows a command changed, from its status tag (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _Statements:
    """Each SQL text's PostgreSQL form, translated once per database (a bounded set: the SQL is
    written in the code, with lists of values expanded to at most a few hundred placeholders)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, bool]] = {}

    def __call__(self, sql: str) -> tuple[str, bool]:
        found = self._known.get(sql)
        if found is None:
            if len(self._known) > 4096:
                self._known.clear()
            # SQLite takes ``IN ()`` (an empty list); PostgreSQL wants an empty subquery.
            text = numbered(sql).replace("IN ()", "IN (SELECT NULL WHERE FALSE)")
            found = self._known[sql] = (text, bool(_ROWS.search(sql)))
        return found


class PgConnection(Connection):
    """One asyncpg connection (inside a transaction) seen through :class:`Connection`."""

    dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, raw: RawConnection, statements: _Statements) -> None:
        self.raw = raw
        self._statements = statements

    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        text, returns_rows = self._statements(sql)
        params = _without_nul(params)
        if returns_rows:
            rows = await self.raw.fetch(text, *params)
            return Result(cast(list[Row], rows), len(rows))
        status = await self.raw.execute(text, *params)
        return Result([], _rowcount(status))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [_without_nul(row) for row in rows]
        if batch:
            await self.raw.executemany(self._statements(sql)[0], batch)


class PgReader(Connection):
    """Reads outside any transaction, each on a connection borrowed from the pool.

    At most all but one of the pool's connections read at once, so however many reads are in
    flight (API reads, streams catching up, the dispatcher's look-ups) a write transaction, the
    ingest batch a provider waits on among them, always finds a connection (docs/architecture.md,
    "Isolation of the hot path")."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, statements: _Statements) -> None:
        self._pool = pool
        self._statements = statements
        self._slots = asyncio.Semaphore(max(1, pool.get_max_size() - 1))

    async def run(self, sql: str, params: Sequence[Any]) -> Result:
        async with self._slots, self._pool.acquire() as raw:
            return await PgConnection(raw, self._statements).run(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._slots, self._pool.acquire() as raw:
            await PgConnection(raw, self._statements).executemany(sql, rows)


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str, *, node_timeout: float) -> None:
        super().__init__()
        self.pool = pool
        self.url = url
        self.node_timeout = node_timeout
        self.backstop = BACKSTOP
        self._statements = _Statements()
        self.reader = PgReader(pool, self._statements)
        # Write transactions of this node take turns (Database's WriteOrder), background ones
        # last. Running them at once (up to half the pool) was measured faster, but deleting a
        # subscription deadlocked with recording its outcomes in the PostgreSQL pass
        # (docs/scaling.md); ``python -m bench.write_lock`` measures both.
        self._leader = False
        self.listening = anyio.Event()
        self._twins = AppendedTwins()  # the LISTEN connection's; anew with each connection
        # Heartbeats as this process saw them (monotonic clock): when the last one that found
        # this node alive was started, and the life it found (see :meth:`still_holds`).
        self._life = 0
        self._beat_started: float | None = None
        self._beat = anyio.Event()
        self._beating = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    @classmethod
    @asynccontextmanager
    async def open_url(
        cls, url: str, *, pool_size: int = 8, node_timeout: float = 10.0
    ) -> AsyncIterator[PostgresDatabase]:
        """Connect to ``url``, migrate it (under an advisory lock), enter this node among the
        live ones, and on exit leave (handing the leader lease on) and close."""
        pool = await _reach(url, pool_size)
        try:
            db = cls(pool, url, node_timeout=node_timeout)
            db._beat_started = time.monotonic()  # registering is the first heartbeat
            async with db.connection() as joined:
                await nodes.register(joined, db.node_id)
            try:
                yield db
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    async with db.connection() as leaving:
                        await nodes.leave(leaving, db.node_id)
        finally:
            await pool.close()

    async def run(self) -> None:
        """Heartbeats, the leader lease and its stale-node sweep, and the LISTEN connection."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._upkeep)
            tg.start_soon(self._listen)

    async def nodes_alive(self) -> int:
        return len(await nodes.alive(self.reader, self.node_timeout))

    @property
    def life(self) -> int:
        return self._life

    async def still_holds(self, life: int) -> bool:
        """Leases are this node's while its heartbeat is fresh: other nodes sweep it only once
        its last heartbeat is ``node_timeout`` old in the database's clock, and that heartbeat
        was written after the moment this process started it. A node that was paused past
        that (SIGSTOP) cannot know, so it waits for its next heartbeat: one that finds it
        declared dead starts a new life, and a claim of the old one is sent only if its fencing
        token shows it is still current (deliveries.still_claimed)."""
        while life == self._life:
            if not self._beating:
                return True  # no upkeep loop (a store opened for one task): nothing to judge by
            started = self._beat_started
            if (
                started is not None
                and time.monotonic() - started < self.node_timeout * LEASE_SAFETY
            ):
                return True
            beat = self._beat
            with anyio.move_on_after(self.node_timeout):
                await beat.wait()
        return False

    async def leader_id(self) -> str | None:
        return await nodes.leader(self.reader)

    async def upkeep_once(self, raw: RawConnection | None = None) -> None:
        """One heartbeat: renew this node, take or renew the leader lease, and as leader sweep
        the dead nodes and hand their leases back (waking the workers to claim them).

        ``raw``: the connection to beat on (the upkeep loop keeps one of its own, so a busy pool
        never delays a heartbeat into a false death); by default one from the pool.
        """
        async with AsyncExitStack() as stack:
            if raw is None:
                raw = (await stack.enter_async_context(self.connection())).raw
            conn = PgConnection(raw, self._statements)
            started = time.monotonic()
            await stack.enter_async_context(raw.transaction())
            await conn.execute("SET LOCAL synchronous_commit = off")
            alive = await nodes.heartbeat(conn, self.node_id)
            if not alive:
                log.warning(
                    "node %s was declared dead (no heartbeat for %g s): its leases went to "
                    "other nodes, its claims are dropped unsent and its late outcomes will be "
                    "refused",
                    self.node_id,
                    self.node_timeout,
                )
            term = await nodes.lead(conn, self.node_id, self.node_timeout)
        # Committed: the heartbeat stands (from ``started`` on, in this process's clock).
        if not alive:
            self._life += 1
        self._beat_started = started
        self._beat.set()
        self._beat = anyio.Event()
        if (term is not None) != self._leader:
            log.info("node %s %s the leader", self.node_id, "is now" if term else "is no longer")
        self._leader = term is not None
        if not self._leader:
            return
        async with self.transaction() as tx:
            dead = await nodes.sweep(tx, self.node_timeout)
            if dead:
                # The held Segmind requests of dead nodes are recovered by the domain's worker
                # (service/jobs/held_requests.py) on the leader, woken by this.
                announce(tx, Work.NODES)
            now = time.time()
            released = await deliveries.release_orphaned(tx, now, node_timeout=self.node_timeout)
            submits = await submissions.release_orphaned(tx, now, node_timeout=self.node_timeout)
        if dead or released or submits:
            log.warning(
                "nodes %s are dead: %d of their deliveries and %d of their submits handed back",
                dead,
                released,
                submits,
            )

    async def _upkeep(self) -> None:
        beating: asyncpg.Connection[asyncpg.Record] | None = None
        self._beating = True
        try:
            while True:
                try:
                    if beating is None or beating.is_closed():
                        beating = await asyncpg.connect(self.url, server_settings=SERVER_SETTINGS)
                    with anyio.fail_after(self.node_timeout):
                        await self.upkeep_once(beating)
                except DATABASE_ERRORS as exc:  # (TimeoutError is an OSError)
                    # Without the database no singleton may run here: another node may lead.
                    self._leader = False
                    log.warning("heartbeat failed (%s); retrying", type(exc).__name__)
                    if beating is not None:
                        beating.terminate()
                        beating = None
                await anyio.sleep(self.node_timeout / 4)
        finally:
            self._beating = False
            if beating is not None:
                beating.terminate()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        heard = self._twins.read(payload) if isinstance(payload, str) else None
        if heard is not None:
            kind, appended = heard
            self._announce([kind], appended)

    def _wake_everything(self) -> None:
        self._announce(list(Work))

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection (outside the pool) for as long as the node runs;
        reconnect when it drops, waking every worker then and every :attr:`backstop` seconds."""
        delay = 0.1
        while True:
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            lost = anyio.Event()
            try:
                conn = await asyncpg.connect(self.url, server_settings=SERVER_SETTINGS)
                conn.add_termination_listener(functools.partial(_set, lost))
                self._twins = AppendedTwins()
                await conn.add_listener(CHANNEL, self._notified)
                delay = 0.1
                self.listening.set()
                # Anything may have been committed while no one listened.
                self._wake_everything()
                while not lost.is_set():
                    with anyio.move_on_after(self.backstop):
                        await lost.wait()
                    self._wake_everything()
                    # A connection that died without a word is found out here.
                    with anyio.fail_after(self.backstop):
                        await conn.fetchval("SELECT 1")
            except DATABASE_ERRORS as exc:  # (TimeoutError is an OSError)
                log.warning("LISTEN connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.listening = anyio.Event()
                if conn is not None:
                    conn.terminate()
            await anyio.sleep(delay)
            delay = min(delay * 2, self.backstop)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        """A pooled connection outside the node's write order, for work that waits on locks of
        its own (advisory locks, ``LISTEN``) and must not hold other writes up."""
        async with self.pool.acquire() as raw:
            yield PgConnection(raw, self._statements)

    @asynccontextmanager
    async def transaction(
        self, *, durable: bool = True, background: bool = False
    ) -> AsyncIterator[Connection]:
        """One transaction (READ COMMITTED) on a pooled connection; ``durable=False`` commits
        without waiting for the WAL flush (``synchronous_commit = off``); ``background`` ones take
        their turn after the others waiting (in this node's order; other nodes' transactions are
        their own)."""
        async with self._write_lock.hold(background=background), self.pool.acquire() as raw:
            tx = raw.transaction()
            await tx.start()
            try:
                if not durable:
                    await raw.execute("SET LOCAL synchronous_commit = off")
                conn = PgConnection(raw, self._statements)
                conn.announced = set()
                seers: list[Seer | None] = []
                conn.appended = seers
                yield conn
                # The server delivers these only if (and once) the commit lands, to every node
                # LISTENing, this one included (docs/architecture.md; migration 0009 dropped the
                # triggers that used to notify instead). Every kind in one round trip: an
                # ingest batch announces two or three.
                if conn.announced:
                    await raw.execute(
                        "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                        CHANNEL,
                        notifications(conn.announced, seers),
                    )
                conn.announced = None
                conn.appended = None
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await tx.rollback()
                raise
            # Shielded: a commit cut short would leave it unknown whether the transaction landed.
            with anyio.CancelScope(shield=True):
                await tx.commit()

    async def checkpoint(self, *, wait: float = 0.1) -> bool:
        """PostgreSQL checkpoints on its own schedule; nothing to do."""
        return True

    async def probe_write(self, now: float, *, wait: float) -> None:
        """Commit one tiny write within ``wait`` seconds (TimeoutError otherwise)."""
        with anyio.fail_after(wait):
            async with self.pool.acquire() as raw, raw.transaction():
                await raw.execute(
                    "INSERT INTO readiness (id, checked_at) VALUES (1, $1) "
                    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    now,
                )


def _set(event: anyio.Event, _: object) -> None:
    event.set()


async def schema_version(conn: asyncpg.Connection) -> int:
    """The version the database was migrated to (0 when it is empty)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply every numbered migration newer than the database's version; return the new version.

    Holds a session advisory lock throughout, so of several nodes starting at once one migrates
    and the others then find nothing to do. Each migration commits with its version row.
    Raises :class:`~service.storage.database.SchemaTooNew` when the database is newer.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        refuse_newer("postgresql", current)
        for version, script in migrations("postgresql"):
            if version <= current:
                continue
            log.info("applying postgresql migration %04d", version)
            async with conn.transaction():
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            current = version
        return current
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _reach(url: str, pool_size: int) -> asyncpg.Pool:
    """Migrate the database at ``url`` and open a pool on it, retrying transient connection
    failures with backoff for up to :data:`STARTUP_BUDGET` seconds (the last failure is raised)."""
    deadline = time.monotonic() + STARTUP_BUDGET
    pause = 0.1
    while True:
        try:
            await migrate_url(url)
            return await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, server_settings=SERVER_SETTINGS
            )
        except _TRANSIENT_CONNECT as error:
            if time.monotonic() + pause > deadline:
                raise
            # The kind of error only: its text may quote the URL, which may carry a password.
            log.warning("PostgreSQL not reachable yet (%s); trying again", type(error).__name__)
            await anyio.sleep(pause)
            pause = min(pause * 2, 2.0)


async def migrate_url(url: str) -> int:
    """Migrate the PostgreSQL database at ``url``; return its schema version."""
    conn = await asyncpg.connect(url, server_settings=SERVER_SETTINGS)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
