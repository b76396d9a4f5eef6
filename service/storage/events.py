"""SQL for the append-only event log and the outbox rows each event fans out to."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

from service.storage import fanouts
from service.storage.announcements import Seer, announce_appended
from service.storage.database import Connection, Row, marks
from service.storage.deliveries import (
    HotLease,
    NewRow,
    fifo_among,
    insert_claimed,
    insert_new,
    take_claim_lock,
)


class _Unknown(Enum):
    OWNER = "unknown"


UNKNOWN_OWNER: Final = _Unknown.OWNER
"""A :class:`NewEvent`'s owner when its writer did not say: the live streams' tail reads the
log to learn who may see it."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append, with the subscriptions its deliveries go to."""

    id: str
    type: str
    job_id: str | None
    created_at: float
    payload: bytes
    subscription_ids: list[str]
    first_attempt_at: float
    fifo: Collection[str] | None = None
    """Those of ``subscription_ids`` that deliver in order (FIFO), when the caller knows (the
    publisher read them with the subscriptions); None: :func:`append` looks them up."""
    deferred: Sequence[str] = ()
    """Further subscriptions the event goes to through ONE fan-out row (:mod:`fanouts`), their
    delivery rows written later by the dispatcher's expansion; never FIFO ones, whose order is
    the order their rows are written in (docs/architecture.md, "A delivery")."""
    claimed: Sequence[str] = ()
    """Further subscriptions whose delivery row is written already claimed by this node under
    the ``lease`` given to :func:`append` (the dispatcher reserved room for them in its lanes);
    never FIFO ones."""
    owner_key_id: str | Literal[_Unknown.OWNER] | None = UNKNOWN_OWNER
    """The API key owning the event's job (None: an event of no job), exactly as the log reads
    it (``jobs.owner_key_id``): with the type, who may see the event in a live stream. Told to
    the streams' tail with the commit, which then reads the log only when an open stream may
    see one of the events (:mod:`service.delivery.eventfeed`)."""

    @property
    def seer(self) -> Seer | None:
        """Who may see this event in a live stream; None: not known."""
        if self.owner_key_id is UNKNOWN_OWNER:
            return None
        return (self.owner_key_id, self.type)


# Serialises appends to the event log across nodes (pg_advisory_xact_lock key; see append).
APPEND_LOCK = 0x7265_656C_0003


async def append(
    conn: Connection,
    batch: Sequence[NewEvent],
    lease: HotLease | None = None,
    *,
    quiet: Collection[str] = (),
) -> list[tuple[str, str, str]]:
    """Append events and one pending delivery per subscription each, in the caller's transaction;
    an event's ``deferred`` subscriptions get one fan-out row instead (:func:`fanouts.add`), and
    its ``claimed`` ones a row claimed under ``lease`` (:func:`deliveries.insert_claimed`).
    Return (delivery id, event id, subscription id) of the rows written claimed; on PostgreSQL a
    row the cross-node cap leaves no room for is written pending instead, and is not returned.
    Pending rows only to subscriptions in ``quiet`` announce no due work
    (:func:`deliveries.insert_new`).

    On PostgreSQL a sequence number is taken at INSERT but becomes visible at COMMIT, and
    concurrent transactions commit in another order than they took numbers: a reader tailing
    ``seq > last`` would skip the event committed late (about 4 % of them with 4 appenders).
    So appenders take a transaction-scoped advisory lock just before inserting, held to their
    commit: numbers then become visible in order, and the log has no gaps for any reader
    (docs/scaling.md). SQLite's single writer already gives that.
    """
    if not batch:
        return []
    hot: list[NewRow] = []
    if lease is not None:
        hot = [(e.id, sub, e.first_attempt_at, e.created_at) for e in batch for sub in e.claimed]
        if hot:
            await take_claim_lock(conn)  # before APPEND_LOCK, always (see take_claim_lock)
    if conn.dialect == "postgresql":
        await conn.execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))
    await conn.execute_values(
        "INSERT INTO events (id, type, job_id, created_at, payload) VALUES {rows}",
        [(e.id, e.type, e.job_id, e.created_at, e.payload) for e in batch],
    )
    announce_appended(conn, [e.seer for e in batch])
    await fanouts.add(
        conn, [(e.id, e.deferred, e.first_attempt_at, e.created_at) for e in batch if e.deferred]
    )
    claimed = await insert_claimed(conn, hot, lease, batch[0].created_at) if lease else []
    rows: list[NewRow] = []
    fifo: set[str] = set()
    unknown = {sub for e in batch if e.fifo is None for sub in e.subscription_ids}
    looked_up = await fifo_among(conn, unknown) if unknown else set()
    for e in batch:
        if e.subscription_ids:
            fifo.update(looked_up if e.fifo is None else e.fifo)
            rows.extend((e.id, sub, e.first_attempt_at, e.created_at) for sub in e.subscription_ids)
        if lease is None and e.claimed:
            # Without a lease, the subscriptions meant to be claimed get ordinary rows.
            rows.extend((e.id, sub, e.first_attempt_at, e.created_at) for sub in e.claimed)
    await insert_new(conn, rows, fifo, quiet)
    return claimed


OWNED_BY = "EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id AND j.owner_key_id = ?)"
"""Whether event ``e`` is of a job of the key given as the parameter, checked per event by the
job's primary key. Written as ``job_id IN (SELECT id FROM jobs WHERE owner_key_id = ?)`` it made
SQLite list all of the key's jobs before reading one event: 191 ms a page for a key with 300k
jobs, against 0.1 ms (docs/performance-journal.md, "A tenant's lists read its own rows")."""


async def seq_of(conn: Connection, event_id: str, owner_key_id: str | None = None) -> int | None:
    """The position of ``event_id`` in the log; None when there is no such event, or (with
    ``owner_key_id``) when it is not an event of that key's jobs."""
    sql = "SELECT e.seq FROM events e WHERE e.id = ?"
    params: tuple[str, ...] = (event_id,)
    if owner_key_id is not None:
        sql += f" AND {OWNED_BY}"
        params = (event_id, owner_key_id)
    async with conn.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return int(row["seq"]) if row else None


async def list_page(
    conn: Connection,
    *,
    after_seq: int,
    types: list[str],
    owner_key_id: str | None,
    limit: int,
) -> list[Row]:
    """Events in log order after ``after_seq``, optionally of some types, oldest first."""
    clauses = ["e.seq > ?"]
    params: list[Any] = [after_seq]
    if types:
        clauses.append(f"e.type IN ({marks(types)})")
        params.extend(types)
    if owner_key_id is not None:
        clauses.append(OWNED_BY)
        params.append(owner_key_id)
    params.append(limit)
    sql = (
        f"SELECT e.seq, e.id, e.type, e.payload FROM events e WHERE {' AND '.join(clauses)} "
        "ORDER BY e.seq LIMIT ?"
    )
    async with conn.execute(sql, params) as cursor:
        return list(await cursor.fetchall())


async def tail(conn: Connection, *, after_seq: int, limit: int) -> list[Row]:
    """Every event after ``after_seq`` in log order, with the API key owning its job
    (``owner_key_id``, None for an event of no job): what the live streams' shared tail reads."""
    sql = (
        "SELECT e.seq, e.id, e.type, e.payload, j.owner_key_id FROM events e "
        "LEFT JOIN jobs j ON j.id = e.job_id WHERE e.seq > ? ORDER BY e.seq LIMIT ?"
    )
    async with conn.execute(sql, (after_seq, limit)) as cursor:
        return list(await cursor.fetchall())


async def last_seq(conn: Connection) -> int:
    """The position of the newest event in the log (0 when it is empty)."""
    async with conn.execute("SELECT COALESCE(MAX(seq), 0) AS seq FROM events") as cursor:
        row = await cursor.fetchone()
    return int(row["seq"]) if row else 0
