"""SQL for durable provider submits: which pending jobs are due, claimed under a lease, and when.

A pending job's ``next_submit_at`` is when its next submit attempt is due; while an attempt is in
flight it is that attempt's lease, so a crash leaves the job to be sent again (with the same
idempotency key) once the lease runs out instead of losing it.

A held request (Segmind) is claimed without a lease: while it is held, ``next_submit_at`` is NULL,
and a job found like that at start-up was in flight when reelhook stopped. One the provider
refused before doing any work waits as a submitted job with ``next_submit_at`` set.

Every claim is owned and fenced, as delivery claims are (docs/scaling.md): it records the
claiming node (``held_by``) and a fresh ``submit_token``. A claim owned by a live node is never
taken by another, whatever its lease says (a slow provider answer must not be sent twice), nor by
its own node while that node still runs the attempt (the ``skip`` ids); a dead node's claims are
handed back by the leader's stale-node sweep (:func:`release_orphaned`). The attempt's outcome is
written only under the claim's token (:func:`settle`), so a node that lost its claim, say one
paused past its heartbeat, cannot overwrite what the node that took over does.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from service.core.models import Job, JobStatus
from service.storage import jobs
from service.storage.announcements import Work, announce
from service.storage.database import Connection, marks

_DB_NOW = "extract(epoch from clock_timestamp())"


class SubmitClaim(NamedTuple):
    """A job claimed for one submit attempt: its attempt number (1 for the first) and the claim's
    fencing token, which the attempt's outcome must carry (:func:`settle`)."""

    job: Job
    attempt: int
    token: int


def new_token() -> int:
    return secrets.randbits(62)


def _claimable(
    conn: Connection, owner: str, skip: Collection[str], node_timeout: float
) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) a job's claim must meet to be taken by ``owner``:
    not one of ``skip`` (attempts ``owner`` is running), and on PostgreSQL held by no one, by
    ``owner`` itself, or by a node with no heartbeat within ``node_timeout`` seconds. On SQLite
    one process owns the file: any other owner is a previous run's."""
    sql, params = "", list[Any]()
    if skip:
        sql += f" AND id NOT IN ({marks(skip)})"
        params += sorted(skip)
    if conn.dialect == "postgresql":
        sql += (
            " AND (held_by IS NULL OR held_by = ? OR held_by NOT IN "
            f"(SELECT id FROM nodes WHERE heartbeat_at >= {_DB_NOW} - ?))"
        )
        params += [owner, node_timeout]
    return sql, params


async def schedule(
    conn: Connection,
    job_id: str,
    *,
    next_at: float | None,
    attempts: int | None = None,
    last_error: str | None = None,
) -> None:
    """Set when ``job_id``'s next submit is due, and if given its attempt count and last error."""
    await _set_due(conn, job_id, next_at, attempts, last_error)
    if next_at is not None:
        announce(conn, Work.SUBMITS)


async def _set_due(
    conn: Connection,
    job_id: str,
    next_at: float | None,
    attempts: int | None = None,
    last_error: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE jobs SET next_submit_at = ?, "
        "submit_attempts = COALESCE(?, submit_attempts), "
        "last_submit_error = COALESCE(?, last_submit_error) WHERE id = ?",
        (next_at, attempts, last_error, job_id),
    )


async def claim_due(
    conn: Connection,
    *,
    providers: Collection[str],
    now: float,
    lease_until: float | None,
    limit: int,
    owner: str,
    node_timeout: float,
    skip: Collection[str] = (),
    statuses: Sequence[JobStatus] = (JobStatus.PENDING,),
) -> list[SubmitClaim]:
    """Claim up to ``limit`` jobs of ``providers`` in ``statuses`` whose submit is due, for the
    node ``owner``.

    Each claimed job counts one more attempt, is leased until ``lease_until`` (None: held, no
    lease) and owned by ``owner`` under one fresh fencing token. Jobs in ``skip`` (the attempts
    ``owner`` is running) and, on PostgreSQL, jobs another live node holds are never claimed
    (see the module docstring). Run inside a write transaction.
    """
    if not providers or limit <= 0:
        return []
    listed = marks(providers)
    owned, owned_params = _claimable(conn, owner, skip, node_timeout)
    rows: list[tuple[float, str, int]] = []
    for status in statuses:
        # The status is written into the SQL (an enum value, never input) so that SQLite can
        # use the partial index made for it.
        async with conn.execute(
            "SELECT id, submit_attempts, next_submit_at FROM jobs "
            f"WHERE status = '{status.value}' AND next_submit_at IS NOT NULL "
            f"AND next_submit_at <= ? AND provider IN ({listed}){owned} "
            f"ORDER BY next_submit_at LIMIT ?{conn.skip_locked}",
            (now, *providers, *owned_params, limit),
        ) as cursor:
            rows += [(row[2], row[0], int(row[1]) + 1) for row in await cursor.fetchall()]
    rows = sorted(rows)[:limit]
    token = new_token()
    claimed = []
    for _, job_id, attempt in rows:
        # A lease or a held request is no new work: the claiming worker is awake.
        await _set_due(conn, job_id, lease_until, attempt)
        await conn.execute(
            "UPDATE jobs SET held_by = ?, submit_token = ? WHERE id = ?", (owner, token, job_id)
        )
        job = await jobs.get(conn, job_id)
        if job is not None:
            claimed.append(SubmitClaim(job, attempt, token))
    return claimed


async def own(conn: Connection, job_id: str, owner: str) -> int:
    """Make ``owner`` the holder of ``job_id``'s submit claim under a fresh fencing token (the
    first attempt, made as the job is created); return the token."""
    token = new_token()
    await conn.execute(
        "UPDATE jobs SET held_by = ?, submit_token = ? WHERE id = ?", (owner, token, job_id)
    )
    return token


async def settle(conn: Connection, job_id: str, token: int) -> bool:
    """End the submit claim ``token`` of ``job_id`` as its outcome is written, in the outcome's
    transaction: True when that claim was still current (the row stays locked to commit, so no
    claim slips in between), False when the job was claimed again since (its outcome must be
    dropped) or does not exist."""
    rows = await conn.execute_fetchall(
        f"SELECT submit_token FROM jobs WHERE id = ?{conn.for_update}", (job_id,)
    )
    if not rows or rows[0][0] != token:
        return False
    await conn.execute(
        "UPDATE jobs SET held_by = NULL, submit_token = NULL WHERE id = ?", (job_id,)
    )
    return True


async def release_orphaned(conn: Connection, now: float, *, node_timeout: float) -> int:
    """PostgreSQL, the leader's stale-node sweep: make every pending job whose submit claim a
    dead node holds (no heartbeat within ``node_timeout`` seconds of the database's clock) due
    at ``now``, unowned; return how many. Its attempt may have reached the provider: the next
    one goes under the same idempotency key. A live node's claims are never touched."""
    cursor = await conn.execute(
        "UPDATE jobs SET held_by = NULL, submit_token = NULL, "
        "next_submit_at = LEAST(next_submit_at, ?) "
        "WHERE status = 'pending' AND next_submit_at IS NOT NULL AND held_by IS NOT NULL "
        f"AND held_by NOT IN (SELECT id FROM nodes WHERE heartbeat_at >= {_DB_NOW} - ?)",
        (now, node_timeout),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.SUBMITS)
    return cursor.rowcount


async def next_due_at(
    conn: Connection,
    providers: Collection[str],
    statuses: Sequence[JobStatus] = (JobStatus.PENDING,),
    *,
    owner: str | None = None,
    node_timeout: float = 10.0,
    skip: Collection[str] = (),
) -> float | None:
    """When the earliest submit of ``providers`` in ``statuses`` is due, or None if none waits.

    With ``owner``: only submits :func:`claim_due` would give that node (so a worker never wakes
    for a claim it may not take, such as another live node's lease that ran out)."""
    if not providers or not statuses:
        return None
    listed = marks(providers)
    owned, owned_params = (
        _claimable(conn, owner, skip, node_timeout) if owner is not None else ("", [])
    )
    # One MIN per status, its value written into the SQL (an enum value, never input): each can
    # use its partial index (jobs_submit_due, jobs_resend_due), where ``status IN (?)`` could not.
    per_status = " UNION ALL ".join(
        f"SELECT MIN(next_submit_at) AS t FROM jobs WHERE status = '{status.value}' "
        f"AND next_submit_at IS NOT NULL AND provider IN ({listed}){owned}"
        for status in statuses
    )
    params = [value for _ in statuses for value in (*providers, *owned_params)]
    async with conn.execute(f"SELECT MIN(t) FROM ({per_status}) AS per_status", params) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None


HELD_PROVIDERS = frozenset({"segmind"})
"""The providers whose requests are held (answered on the connection that sent them): those the
partial index ``jobs_held_in_flight`` covers (SQLite migration 0014, PostgreSQL 0012)."""

# The index's condition, word for word: a query uses a partial index only when its own condition
# states the index's, with the same literals (SQLite matches the terms as written).
_IN_FLIGHT = "status IN ('submitted', 'running') AND next_submit_at IS NULL"


def in_flight_query(provider: str, *, orphaned: bool) -> str:
    """The statement :func:`in_flight` runs for ``provider`` (one of :data:`HELD_PROVIDERS`);
    ``orphaned``: with the PostgreSQL condition on the holding node's heartbeat (one parameter,
    seconds)."""
    if provider not in HELD_PROVIDERS:
        raise ValueError(f"not a held-request provider: {provider!r}")
    # The provider as a literal too (a name of HELD_PROVIDERS, never outside input): the index
    # holds only its rows.
    sql = f"SELECT id FROM jobs WHERE provider = '{provider}' AND {_IN_FLIGHT}"
    if orphaned:
        sql += (
            " AND (held_by IS NULL OR held_by NOT IN (SELECT id FROM nodes "
            "WHERE heartbeat_at >= extract(epoch from clock_timestamp()) - ?))"
        )
    return f"{sql} ORDER BY id"


async def in_flight(
    conn: Connection, providers: Collection[str], *, alive_within: float | None = None
) -> list[Job]:
    """Held requests claimed and not answered: submitted or running jobs of ``providers`` (each
    one of :data:`HELD_PROVIDERS`) with no next submit due (see the module docstring), oldest
    id first. Read through ``jobs_held_in_flight``: the cost is the number of held requests in
    flight, not the number of jobs waiting for a callback.

    ``alive_within`` (PostgreSQL): only those whose holding node has no heartbeat within that
    many seconds of the database's clock, or has none.
    """
    ids: list[str] = []
    for provider in sorted(providers):
        async with conn.execute(
            in_flight_query(provider, orphaned=alive_within is not None),
            () if alive_within is None else (alive_within,),
        ) as cursor:
            ids += [row[0] for row in await cursor.fetchall()]
    ids.sort()
    found = await jobs.get_many(conn, ids)
    return [found[job_id] for job_id in ids if job_id in found]


async def take_orphan(conn: Connection, job_id: str, owner: str, node_timeout: float) -> bool:
    """Make ``owner`` the holder of the held request of ``job_id`` found in flight by
    :func:`in_flight`, to recover it, in the caller's write transaction: True when it still is
    in flight and orphaned (held by no one, or on PostgreSQL by a node with no heartbeat within
    ``node_timeout`` seconds; on SQLite by a previous run), False when another node recovered it
    or it moved on meanwhile. The row stays locked to commit, so two recoverers (a paused leader
    resuming beside the new one) cannot both take it."""
    rows = await conn.execute_fetchall(
        f"SELECT held_by FROM jobs WHERE id = ? AND status IN (?, ?) AND next_submit_at IS NULL"
        f"{conn.for_update}",
        (job_id, JobStatus.SUBMITTED.value, JobStatus.RUNNING.value),
    )
    if not rows:
        return False
    holder = rows[0][0]
    if holder == owner:
        return False
    if holder is not None and conn.dialect == "postgresql":
        alive = await conn.execute_fetchall(
            f"SELECT 1 FROM nodes WHERE id = ? AND heartbeat_at >= {_DB_NOW} - ?",
            (holder, node_timeout),
        )
        if alive:
            return False
    await conn.execute(
        "UPDATE jobs SET held_by = ?, submit_token = ? WHERE id = ?", (owner, new_token(), job_id)
    )
    return True


async def attempts_of(conn: Connection, job_id: str) -> tuple[int, float | None] | None:
    """``(submit_attempts, next_submit_at)`` of a job, or None if there is no such job."""
    async with conn.execute(
        "SELECT submit_attempts, next_submit_at FROM jobs WHERE id = ?", (job_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return (int(row[0]), row[1]) if row else None
