"""SQL for jobs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.jsonutil import dumps, loads
from service.core.models import Cost, Job, JobError, JobStatus, Notice, Output
from service.storage.announcements import Work, announce
from service.storage.database import Connection, Row, Statement, marks, padded

_COLUMNS = (
    "id, owner_key_id, model, provider, provider_job_id, status, input, outputs, error, cost, "
    "metadata, created_at, submitted_at, completed_at, deadline_at, notices"
)


# A status by its stored word: a dict lookup, where JobStatus(word) goes through the Enum's
# call machinery (~0.4 µs for every job read; a word not found still goes there and fails).
_STATUSES = {status.value: status for status in JobStatus}

_EMPTY_LIST = "[]"


def _from_row(row: Row) -> Job:
    # The JSON columns through jsonutil.loads (orjson, the stdlib where they could differ):
    # about a quarter of the stdlib parser's time for the five columns of every job read.
    # Outputs and notices are most often the empty list, read without a parse or a generator
    # (~1.5 µs of every job an ingest batch reads; docs/performance-journal.md, "The ingest path's
    # sixth pass").
    error = loads(row["error"]) if row["error"] else None
    status = row["status"]
    outputs = row["outputs"]
    notices = row["notices"]
    return Job(
        id=row["id"],
        owner_key_id=row["owner_key_id"],
        model=row["model"],
        provider=row["provider"],
        provider_job_id=row["provider_job_id"],
        status=_STATUSES.get(status) or JobStatus(status),
        input=loads(row["input"]),
        outputs=()
        if outputs == _EMPTY_LIST
        else tuple(Output.from_dict(o) for o in loads(outputs)),
        error=JobError.from_dict(error) if error else None,
        cost=Cost.from_dict(loads(row["cost"])),
        metadata=loads(row["metadata"]),
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
        completed_at=row["completed_at"],
        deadline_at=row["deadline_at"],
        notices=()
        if notices == _EMPTY_LIST
        else tuple(Notice.from_dict(n) for n in loads(notices)),
    )


# A new job has no notices yet: the column's default ('[]') fills it.
_INSERT = (
    f"INSERT INTO jobs ({_COLUMNS.removesuffix(', notices')}, idempotency_key, request_hash, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _values(
    job: Job, idempotency_key: str | None = None, request_hash: str | None = None
) -> tuple[Any, ...]:
    return (
        job.id,
        job.owner_key_id,
        job.model,
        job.provider,
        job.provider_job_id,
        job.status.value,
        dumps(job.input),
        dumps([o.to_dict() for o in job.outputs]),
        dumps(job.error.to_dict()) if job.error else None,
        dumps(job.cost.to_dict()),
        dumps(job.metadata),
        job.created_at,
        job.submitted_at,
        job.completed_at,
        job.deadline_at,
        idempotency_key,
        request_hash,
        job.created_at,
    )


async def insert(
    conn: Connection,
    job: Job,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> None:
    await conn.execute(_INSERT, _values(job, idempotency_key, request_hash))
    announce(conn, Work.DEADLINES)


async def insert_many(conn: Connection, batch: Iterable[Job]) -> None:
    """Insert jobs in one statement (imports and benchmark fixtures; no idempotency keys)."""
    await conn.executemany(_INSERT, (_values(job) for job in batch))
    announce(conn, Work.DEADLINES)


def _mutable(job: Job, now: float) -> tuple[Any, ...]:
    return (
        job.provider_job_id,
        job.status.value,
        dumps([o.to_dict() for o in job.outputs]),
        dumps(job.error.to_dict()) if job.error else None,
        dumps(job.cost.to_dict()),
        job.submitted_at,
        job.completed_at,
        dumps([n.to_dict() for n in job.notices]) if job.notices else _EMPTY_LIST,
        now,
        job.id,
    )


# The columns _mutable's values are for, in its order (the job's id follows them).
_MUTABLE_COLUMNS = (
    "provider_job_id",
    "status",
    "outputs",
    "error",
    "cost",
    "submitted_at",
    "completed_at",
    "notices",
    "updated_at",
)


def _updates(columns: Sequence[str]) -> tuple[str, str]:
    """The UPDATE of ``columns`` then the job's id: one row per statement, and (SQLite) many
    rows per statement, each found by its primary key (the plan reads the VALUES rows and
    searches jobs by id for each; ``{rows}`` is for :meth:`Connection.execute_values`)."""
    one = ", ".join(f"{column} = ?" for column in columns)
    many = ", ".join(f"{column} = v.column{n}" for n, column in enumerate(columns, 1))
    by_id = f"jobs.id = v.column{len(columns) + 1}"
    return (
        f"UPDATE jobs SET {one} WHERE id = ?",
        f"UPDATE jobs SET {many} FROM (VALUES {{rows}}) AS v WHERE {by_id}",
    )


_UPDATE, _UPDATE_FROM_VALUES = _updates(_MUTABLE_COLUMNS)
# The same, leaving provider_job_id as it is. SQLite rewrites an index's entry for every row
# whose update names one of the index's columns, changed or not: naming provider_job_id cost
# each callback a delete and an insert in jobs_provider_job (docs/performance-journal.md, "The
# database thread's share per callback").
_UPDATE_KEEPING_PROVIDER_ID, _UPDATE_FROM_VALUES_KEEPING_PROVIDER_ID = _updates(
    _MUTABLE_COLUMNS[1:]
)


async def save(conn: Connection, job: Job, now: float) -> None:
    """Write back every mutable field of ``job``."""
    await conn.execute(_UPDATE, _mutable(job, now))


async def save_many(
    conn: Connection, batch: Iterable[Job], now: float, *, provider_job_ids: bool = True
) -> None:
    """:func:`save` for many distinct jobs: one statement per row on PostgreSQL (asyncpg's
    executemany), a few statements of many rows each on SQLite (docs/performance.md §4).

    ``provider_job_ids=False``: the caller knows that no job's ``provider_job_id`` differs from
    the stored one, and the column is not written (nor its unique index touched)."""
    rows = [_mutable(job, now) for job in batch]
    if not provider_job_ids:
        rows = [row[1:] for row in rows]
    if conn.dialect == "sqlite":
        await conn.execute_values(
            _UPDATE_FROM_VALUES if provider_job_ids else _UPDATE_FROM_VALUES_KEEPING_PROVIDER_ID,
            rows,
        )
    else:
        await conn.executemany(_UPDATE if provider_job_ids else _UPDATE_KEEPING_PROVIDER_ID, rows)


async def get(conn: Connection, job_id: str) -> Job | None:
    sql = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?{conn.for_update}"
    async with conn.execute(sql, (job_id,)) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def get_many(conn: Connection, job_ids: Iterable[str]) -> dict[str, Job]:
    """The jobs that exist among ``job_ids``, by id."""
    wanted = list(dict.fromkeys(job_ids))
    if not wanted:
        return {}  # PostgreSQL refuses an empty IN ()
    # execute_fetchall: one trip to the database thread instead of three (execute, fetch, close).
    return by_id(await conn.execute_fetchall(*select_many(conn, wanted)))


def select_many(conn: Connection, job_ids: Sequence[str]) -> Statement:
    """The statement :func:`get_many` runs for ``job_ids`` (at least one), for a caller that
    runs it with others (:meth:`Connection.run_all`); :func:`by_id` reads its rows. In a write
    transaction on PostgreSQL it locks the rows."""
    # Padded to a power of two: a few SQL texts, all kept prepared (database.padded).
    wanted = padded(job_ids)
    # In id order: two nodes locking overlapping batches then queue instead of deadlocking.
    sql = f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks(wanted)}) ORDER BY id{conn.for_update}"
    return sql, wanted


def by_id(rows: Iterable[Row]) -> dict[str, Job]:
    """The jobs of :func:`select_many`'s rows, by id."""
    return {row["id"]: _from_row(row) for row in rows}


async def lock_idempotency_key(conn: Connection, owner_key_id: str, key: str) -> None:
    """Hold ``key`` of ``owner_key_id`` until the caller's write transaction ends, so that two
    requests with one key (on one node or two) look it up and store it one after the other:
    without it both find nothing, and the second insert breaks the unique index (a 500 instead
    of the replay). SQLite's single writer already runs them one after the other."""
    if conn.dialect == "postgresql":
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"{owner_key_id}\n{key}",)
        )


async def find_by_idempotency_key(
    conn: Connection, owner_key_id: str, key: str, not_before: float
) -> tuple[Job, str] | None:
    """The job created under ``key`` by this owner since ``not_before``, with its request hash."""
    async with conn.execute(
        f"SELECT {_COLUMNS}, request_hash FROM jobs "
        "WHERE owner_key_id = ? AND idempotency_key = ? AND created_at >= ?",
        (owner_key_id, key, not_before),
    ) as cursor:
        row = await cursor.fetchone()
    return (_from_row(row), row["request_hash"]) if row else None


async def release_idempotency_key(conn: Connection, owner_key_id: str, key: str) -> None:
    """Forget an expired idempotency key so it can name a new job."""
    await conn.execute(
        "UPDATE jobs SET idempotency_key = NULL WHERE owner_key_id = ? AND idempotency_key = ?",
        (owner_key_id, key),
    )


async def list_page(
    conn: Connection,
    *,
    owner_key_id: str | None,
    status: str | None,
    model: str | None,
    before_id: str | None,
    limit: int,
    created_since: float | None = None,
    created_until: float | None = None,
) -> list[Job]:
    """Jobs newest first; ``before_id`` is the cursor (the last id of the previous page).

    ``created_since`` is inclusive and ``created_until`` exclusive (epoch seconds).
    """
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("owner_key_id", owner_key_id), ("status", status), ("model", model)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if created_since is not None:
        clauses.append("created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        clauses.append("created_at < ?")
        params.append(created_until)
    if before_id is not None:
        clauses.append("id < ?")
        params.append(before_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    sql = f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?"
    async with conn.execute(sql, params) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


async def with_status(
    conn: Connection, provider: str, statuses: tuple[JobStatus, ...]
) -> list[Job]:
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE provider = ? AND status IN ({marks(statuses)}) "
        "ORDER BY id",
        (provider, *(s.value for s in statuses)),
    ) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """A callback (or held answer) as kept for audit, with what it did to its job."""

    job_id: str
    provider: str
    received_at: float
    outcome: str
    body: bytes
    #: ``job`` (the per-job token URL), ``account`` (the provider account's webhook) or ``held``.
    route: str = "job"


async def record_callbacks(conn: Connection, records: Sequence[CallbackRecord]) -> None:
    """Keep each callback for audit, once per job and body: the same bytes again for the same
    job (a provider's retry, a replay) only count up the stored row's ``replays`` and set its
    ``last_replay_at``, so replays cost a counter, never another copy of the body
    (docs/architecture.md, "Bounded inbound memory"). The unique index makes this hold when
    several nodes store the same replay at once."""
    # Row after row, as a multi-row VALUES on SQLite: a replay in the same batch as its first
    # copy conflicts with the row written just before it and counts up, as it did with
    # executemany (tests/test_ingest.py).
    await conn.execute_values(
        "INSERT INTO callbacks (job_id, provider, received_at, outcome, body, route, digest) "
        "VALUES {rows} "
        "ON CONFLICT (job_id, digest) WHERE digest IS NOT NULL DO UPDATE SET "
        "replays = callbacks.replays + 1, last_replay_at = excluded.received_at",
        [
            (r.job_id, r.provider, r.received_at, r.outcome, r.body, r.route, body_digest(r.body))
            for r in records
        ],
    )


def body_digest(body: bytes) -> str:
    """The SHA-256 of a callback body, hex: what tells a replay from a new callback."""
    return hashlib.sha256(body).hexdigest()


async def find_for_provider(
    conn: Connection, provider: str, *, job_id: str | None, provider_job_id: str | None
) -> str | None:
    """The id of ``provider``'s job that is ``job_id`` (reelhook's id, echoed by the provider as
    its external id) or, failing that, has ``provider_job_id``; None when neither names one."""
    if job_id:
        rows = await conn.execute_fetchall(
            "SELECT id FROM jobs WHERE id = ? AND provider = ?", (job_id, provider)
        )
        if rows:
            return str(next(iter(rows))[0])
    if provider_job_id:
        rows = await conn.execute_fetchall(
            "SELECT id FROM jobs WHERE provider = ? AND provider_job_id = ?",
            (provider, provider_job_id),
        )
        if rows:
            return str(next(iter(rows))[0])
    return None


async def record_unmatched(
    conn: Connection,
    *,
    provider: str,
    provider_job_id: str | None,
    received_at: float,
    reason: str,
    body: bytes,
) -> None:
    """Keep an account-webhook body that names no known job, for audit and a later match."""
    await conn.execute(
        "INSERT INTO unmatched_callbacks (provider, provider_job_id, received_at, reason, body) "
        "VALUES (?, ?, ?, ?, ?)",
        (provider, provider_job_id, received_at, reason[:500], body),
    )


async def claim_unmatched(
    conn: Connection, provider: str, provider_job_id: str, job_id: str
) -> list[bytes]:
    """The unmatched bodies naming ``provider_job_id``, oldest first, now matched to ``job_id``."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT id, body FROM unmatched_callbacks "
            "WHERE provider = ? AND provider_job_id = ? AND matched_job_id IS NULL ORDER BY id",
            (provider, provider_job_id),
        )
    )
    if rows:
        await conn.executemany(
            "UPDATE unmatched_callbacks SET matched_job_id = ? WHERE id = ?",
            ((job_id, row[0]) for row in rows),
        )
    return [bytes(row[1]) for row in rows]


async def count_unmatched(conn: Connection, provider: str | None = None) -> int:
    """Unmatched account-webhook bodies still waiting for their job."""
    sql = "SELECT count(*) FROM unmatched_callbacks WHERE matched_job_id IS NULL"
    rows = await conn.execute_fetchall(
        sql + (" AND provider = ?" if provider else ""), (provider,) if provider else ()
    )
    return int(next(iter(rows))[0])


# jobs_deadline holds unfinished jobs only (migration 0016 on SQLite, 0014 on PostgreSQL), and
# _ANY_UNFINISHED spells its WHERE exactly. A planner uses a partial index only for a query whose
# WHERE implies the index's from literals: SQLite sees that ``status = 'pending'`` implies this
# OR (not an ``IN`` list), and neither engine can tell from a parameter (tests/test_ingest_writes.py
# checks both plans).
_UNFINISHED = tuple(status.value for status in JobStatus if not status.terminal)
_ANY_UNFINISHED = "(" + " OR ".join(f"status = '{status}'" for status in _UNFINISHED) + ")"

NEXT_DEADLINE = "SELECT min(t) FROM ({}) AS per_status".format(
    " UNION ALL ".join(
        f"SELECT min(deadline_at) AS t FROM jobs WHERE status = '{status}'"
        for status in _UNFINISHED
    )
)
"""One min() per status: each a single probe of jobs_deadline, where min() over all three
would read every unfinished job."""

PAST_DEADLINE = (
    f"SELECT {_COLUMNS} FROM jobs WHERE {_ANY_UNFINISHED} AND deadline_at <= ? "
    "ORDER BY deadline_at LIMIT ?"
)
"""The unfinished jobs due by a time (parameters: the time, how many), earliest first."""


async def next_deadline(conn: Connection) -> float | None:
    """The earliest deadline of a job that has not reached a terminal state, if any."""
    async with conn.execute(NEXT_DEADLINE, ()) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def past_deadline(conn: Connection, now: float, limit: int) -> list[Job]:
    """Unfinished jobs whose deadline is at or before ``now``, earliest first."""
    async with conn.execute(PAST_DEADLINE + conn.skip_locked, (now, limit)) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


async def held_resubmits(conn: Connection, job_id: str) -> int:
    """How many times the held request of ``job_id`` was sent again after a restart."""
    # Locked: of two nodes recovering the same dead node's job, one resubmits it.
    sql = f"SELECT held_resubmits FROM jobs WHERE id = ?{conn.for_update}"
    async with conn.execute(sql, (job_id,)) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def count_held_resubmit(conn: Connection, job_id: str, now: float) -> None:
    await conn.execute(
        "UPDATE jobs SET held_resubmits = held_resubmits + 1, updated_at = ? WHERE id = ?",
        (now, job_id),
    )
