"""SQL for the delivery outbox: claiming due rows under a lease, recording attempt outcomes,
releasing leases, resending, and reading the delivery log."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.models import DeliveryStatus
from service.storage.database import Connection, Row


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for one attempt, with everything needed to send it."""

    id: str
    event_id: str
    subscription_id: str
    attempt: int
    url: str
    secrets: tuple[str, ...]
    headers: dict[str, str]
    payload: bytes
    manual: bool = False
    token: int = 0
    """The claim's fencing token: its outcome is recorded only while the claim is current."""


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The result of one attempt and what happens next.

    ``status`` is the delivery's new state: succeeded, pending (retry at ``next_attempt_at``)
    or failed (retries exhausted). ``delete_subscription`` is set on 410.
    """

    delivery_id: str
    subscription_id: str
    attempted_at: float
    latency_ms: float
    status: DeliveryStatus
    status_code: int | None = None
    error: str | None = None
    response_body: bytes | None = None
    next_attempt_at: float | None = None
    delete_subscription: bool = False
    token: int = 0
    """The fencing token of the claim this attempt was made under (:attr:`Claimed.token`)."""


_ACTIVE = "(SELECT id FROM subscriptions WHERE status = 'active')"


def _index_hint(conn: Connection) -> str:
    """SQLite's unary ``+`` before a column keeps its planner off that column's index (walking
    the due-time index and stopping at LIMIT is what stays cheap); PostgreSQL has no such
    operator for text and plans from statistics."""
    return "+" if conn.dialect == "sqlite" else ""


async def claim_due(
    conn: Connection,
    *,
    now: float,
    lease_until: float,
    limit: int,
    per_subscription: int,
    busy: Mapping[str, int],
    refill_below: int,
    owner: str | None = None,
    cluster_cap: int | None = None,
) -> tuple[list[Claimed], bool]:
    """Lease up to ``limit`` due deliveries, keeping each subscription under ``per_subscription``;
    return them, and whether more may be due right now.

    Due means pending with ``next_attempt_at <= now``. One process owns the database: ``busy``
    counts what it has claimed per subscription, and a lease left by a process that died is
    released when the next one starts (:func:`release`), never taken over while it runs, since a
    running process's expired lease is its own row still waiting to be sent. Subscriptions with
    ``refill_below`` or more claimed get none this time. Deliveries of a disabled subscription
    wait until it is enabled again. The due rows are read in due order from their index, a
    bounded window at a time, so a claim costs the same with ten or a million waiting.

    Each claim gets a fresh fencing token and ``owner`` (the claiming node) on its rows. On
    PostgreSQL several nodes claim from the same table: there the claim also keeps every
    subscription's deliveries in flight across all nodes at ``cluster_cap`` at most, counting
    them in SQL under a transaction-scoped advisory lock, so claimers never decide from stale
    counts (docs/scaling.md; unlocked claimers each counting in their own snapshot overshot a cap
    of 8 fourfold).
    """
    token = secrets.randbits(62)
    if conn.dialect == "postgresql":
        shared, more = await _choose_shared(
            conn,
            now=now,
            limit=limit,
            cap=min(per_subscription, cluster_cap or per_subscription),
            busy=busy,
            refill_below=refill_below,
        )
        return await _lease(conn, shared, now, lease_until, owner, token), more
    # A subscription with ``refill`` or more already claimed is left out, so it is topped up in
    # batches rather than one row per claim.
    saturated = sorted(sub for sub, count in busy.items() if count >= refill_below)
    marks = ", ".join("?" for _ in saturated)
    # Read more than ``limit``: some rows will be over their subscription's cap.
    window = limit * 4
    hint = _index_hint(conn)
    sql = f"""
        SELECT id, subscription_id FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= ?
          AND {hint}subscription_id NOT IN ({marks}) AND {hint}subscription_id IN {_ACTIVE}
        ORDER BY next_attempt_at LIMIT ?
    """
    # The unary ``+`` keeps SQLite off the subscription index: walking the due-time index and
    # stopping at LIMIT costs the same with a million rows due, where sorting one subscription's
    # due rows cost milliseconds per claim.
    params = (now, *saturated, window)
    due = list(await conn.execute_fetchall(sql, params))
    # A full window may hide more due rows behind those over their subscription's cap.
    more = len(due) == window
    taken: dict[str, int] = {}
    chosen: list[str] = []
    for row in due:
        sub = row["subscription_id"]
        if busy.get(sub, 0) + taken.get(sub, 0) >= per_subscription:
            continue
        taken[sub] = taken.get(sub, 0) + 1
        chosen.append(row["id"])
        if len(chosen) == limit:
            break
    return await _lease(conn, chosen, now, lease_until, owner, token), more


# Serialises claims across nodes (pg_advisory_xact_lock key; see claim_due).
CLAIM_LOCK = 0x7265_656C_0002


async def _choose_shared(
    conn: Connection,
    *,
    now: float,
    limit: int,
    cap: int,
    busy: Mapping[str, int],
    refill_below: int,
) -> tuple[list[str], bool]:
    """PostgreSQL: the ids to claim, chosen under the claim lock from counts every node shares.

    The lock is taken before the choosing statement starts, so (READ COMMITTED) its snapshot
    includes every claim committed before ours; rows leaving 'inflight' meanwhile only make the
    counts err high, never past the cap.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
    saturated = sorted(sub for sub, count in busy.items() if count >= refill_below)
    window = limit * 4
    rows = await conn.execute_fetchall(
        """
        WITH due AS (
            SELECT id, subscription_id, next_attempt_at FROM deliveries
            WHERE status = 'pending' AND next_attempt_at <= ?
              AND NOT (subscription_id = ANY(?::text[]))
              AND subscription_id IN (SELECT id FROM subscriptions WHERE status = 'active')
            ORDER BY next_attempt_at LIMIT ?
        ), ranked AS (
            SELECT id, subscription_id, next_attempt_at, row_number() OVER (
                PARTITION BY subscription_id ORDER BY next_attempt_at, id) AS rank
            FROM due
        ), busy AS (
            SELECT subscription_id, count(*) AS n FROM deliveries
            WHERE status = 'inflight'
              AND subscription_id IN (SELECT DISTINCT subscription_id FROM due)
            GROUP BY subscription_id
        )
        SELECT ranked.id, (SELECT count(*) FROM due) AS seen FROM ranked
        LEFT JOIN busy USING (subscription_id)
        WHERE ranked.rank + COALESCE(busy.n, 0) <= ?
        ORDER BY ranked.next_attempt_at, ranked.id LIMIT ?
        """,
        (now, saturated, window, cap, limit),
    )
    more = bool(rows) and rows[0]["seen"] == window
    if not rows:
        seen = await conn.execute_fetchall(
            "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE status = 'pending' "
            "AND next_attempt_at <= ? LIMIT ?) AS due",
            (now, window),
        )
        more = seen[0][0] == window
    return [row["id"] for row in rows], more


async def _lease(
    conn: Connection,
    chosen: Sequence[str],
    now: float,
    lease_until: float,
    owner: str | None,
    token: int,
) -> list[Claimed]:
    """Mark ``chosen`` in flight under ``token`` and ``owner``; return them ready to send."""
    if not chosen:
        return []
    marks = ", ".join("?" for _ in chosen)
    rows = list(
        await conn.execute_fetchall(
            f"UPDATE deliveries SET status = 'inflight', lease_until = ?, "
            f"attempts = attempts + 1, updated_at = ?, claim_token = ?, lease_owner = ? "
            f"WHERE id IN ({marks}) AND status = 'pending' "
            "RETURNING id, event_id, subscription_id, attempts, manual",
            (lease_until, now, token, owner, *chosen),
        )
    )
    if not rows:
        return []
    payloads = await _by_id(conn, "SELECT id, payload FROM events", {r["event_id"] for r in rows})
    subs = await _by_id(
        conn,
        "SELECT id, url, secret, previous_secret, previous_secret_until, headers "
        "FROM subscriptions",
        {r["subscription_id"] for r in rows},
    )
    claimed = []
    for row in rows:
        sub = subs.get(row["subscription_id"])
        if sub is None:
            continue  # unreachable while deleting a subscription cancels its open deliveries
        claimed.append(
            Claimed(
                id=row["id"],
                event_id=row["event_id"],
                subscription_id=row["subscription_id"],
                attempt=row["attempts"],
                url=sub["url"],
                secrets=_signing_secrets(sub, now),
                headers=json.loads(sub["headers"]),
                payload=bytes(payloads[row["event_id"]]["payload"]),
                manual=bool(row["manual"]),
                token=token,
            )
        )
    return claimed


def _signing_secrets(sub: Row, now: float) -> tuple[str, ...]:
    """The current secret, and the one it replaced while its rotation grace period lasts."""
    previous, until = sub["previous_secret"], sub["previous_secret_until"]
    if previous and until is not None and until > now:
        return (sub["secret"], previous)
    return (sub["secret"],)


async def _by_id(conn: Connection, select: str, ids: set[str]) -> dict[str, Row]:
    marks = ", ".join("?" for _ in ids)
    rows = await conn.execute_fetchall(f"{select} WHERE id IN ({marks})", tuple(ids))
    return {row["id"]: row for row in rows}


async def record(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> list[AttemptOutcome]:
    """Store each attempt and move each delivery to its next state, in the caller's transaction;
    return the outcomes recorded.

    An outcome whose claim is no longer current (the delivery was handed back and claimed again
    under another token, or finished) is refused: a node that lost its lease, say one paused
    past its heartbeat, must not overwrite what the node that took over does. The rows are
    locked first (in id order, so two recorders cannot deadlock) so no claim slips in between.
    """
    if not outcomes:
        return []
    ids = sorted({o.delivery_id for o in outcomes})
    lock = " FOR UPDATE" if conn.dialect == "postgresql" else ""
    current = {
        row["id"]: row["claim_token"]
        for row in await conn.execute_fetchall(
            f"SELECT id, claim_token FROM deliveries WHERE id IN ({', '.join('?' for _ in ids)}) "
            f"AND status = 'inflight' ORDER BY id{lock}",
            ids,
        )
    }
    accepted = [o for o in outcomes if current.get(o.delivery_id, -1) == (o.token or None)]
    if accepted:
        await _store_outcomes(conn, accepted)
    return accepted


async def _store_outcomes(conn: Connection, outcomes: Sequence[AttemptOutcome]) -> None:
    await conn.executemany(
        "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error, "
        "response_body) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (o.delivery_id, o.attempted_at, o.status_code, o.latency_ms, o.error, o.response_body)
            for o in outcomes
        ],
    )
    await conn.executemany(
        "UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_until = NULL, manual = 0, "
        "last_status_code = ?, last_error = ?, updated_at = ?, claim_token = NULL, "
        "lease_owner = NULL WHERE id = ? AND status = 'inflight'",
        [
            (o.status, o.next_attempt_at, o.status_code, o.error, o.attempted_at, o.delivery_id)
            for o in outcomes
        ],
    )


async def next_due_at(conn: Connection) -> float | None:
    """When the earliest pending delivery of an active subscription is due, if ever."""
    rows = await conn.execute_fetchall(
        "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        f" AND {_index_hint(conn)}subscription_id IN"
        " (SELECT id FROM subscriptions WHERE status = 'active')"
    )
    row = next(iter(rows), None)
    return float(row[0]) if row and row[0] is not None else None


async def release(
    conn: Connection,
    delivery_ids: Sequence[str] | None,
    now: float,
    *,
    owner: str | None = None,
) -> int:
    """Hand leased deliveries back as due at ``now``, as if never claimed; return how many.

    ``delivery_ids`` None releases every lease: on SQLite at start-up a lease can only be a
    previous run's, since one process owns the file (PostgreSQL nodes use
    :func:`release_orphaned` instead). With ``owner``, only rows that node still holds are
    released, so a node handing back its unfinished work never touches a row taken over by
    another. The unfinished attempt is not counted, so it does not use up a place in the retry
    schedule.
    """
    sql = f"{_RELEASE} WHERE status = 'inflight'"
    params: list[Any] = [now, now]
    if delivery_ids is not None:
        if not delivery_ids:
            return 0
        sql += f" AND id IN ({', '.join('?' for _ in delivery_ids)})"
        params.extend(delivery_ids)
    if owner is not None:
        sql += " AND lease_owner = ?"
        params.append(owner)
    cursor = await conn.execute(sql, params)
    return cursor.rowcount


_RELEASE = (
    "UPDATE deliveries SET status = 'pending', lease_until = NULL, next_attempt_at = ?, "
    "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?, "
    "claim_token = NULL, lease_owner = NULL"
)


async def release_orphaned(conn: Connection, now: float, *, node_timeout: float) -> int:
    """PostgreSQL: hand back every lease whose node is dead (no heartbeat within
    ``node_timeout`` seconds of the database's clock) or unknown; return how many.

    What a live node holds is never touched, whatever its lease time says: start-up and the
    stale-node sweep both use this, so a starting node cannot steal a running node's work.
    """
    cursor = await conn.execute(
        f"{_RELEASE} WHERE status = 'inflight' AND (lease_owner IS NULL OR lease_owner NOT IN "
        "(SELECT id FROM nodes WHERE heartbeat_at >= "
        "extract(epoch from clock_timestamp()) - ?))",
        (now, now, node_timeout),
    )
    return cursor.rowcount


# --- the delivery log ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, subscription) pair as the delivery log shows it."""

    id: str
    event_id: str
    event_type: str
    job_id: str | None
    subscription_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    attempted_at: float
    status_code: int | None
    latency_ms: float
    error: str | None
    response_body: bytes | None


_DELIVERY_SELECT = (
    "SELECT d.id, d.event_id, e.type AS event_type, e.job_id, d.subscription_id, d.status, "
    "d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.updated_at "
    "FROM deliveries d JOIN events e ON e.id = d.event_id"
)


def _delivery(row: Row) -> Delivery:
    fields = {name: row[name] for name in Delivery.__dataclass_fields__}
    return Delivery(**{**fields, "status": DeliveryStatus(row["status"])})


def _owned_by(owner_key_id: str) -> tuple[str, list[Any]]:
    return "d.subscription_id IN (SELECT id FROM subscriptions WHERE owner_key_id = ?)", [
        owner_key_id
    ]


async def list_page(
    conn: Connection,
    *,
    owner_key_id: str | None,
    subscription_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    job_id: str | None = None,
    before_id: str | None = None,
    limit: int,
) -> list[Delivery]:
    """Deliveries newest first, filtered; ``owner_key_id`` limits them to that key's
    subscriptions (None: everyone's)."""
    clauses: list[str] = []
    params: list[Any] = []
    if owner_key_id is not None:
        clause, values = _owned_by(owner_key_id)
        clauses.append(clause)
        params.extend(values)
    for column, value in (
        ("d.subscription_id", subscription_id),
        ("d.status", status),
        ("d.event_id", event_id),
        ("e.job_id", job_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if before_id is not None:
        clauses.append("d.id < ?")
        params.append(before_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    async with conn.execute(f"{_DELIVERY_SELECT} {where} ORDER BY d.id DESC LIMIT ?", params) as c:
        return [_delivery(row) for row in await c.fetchall()]


async def get(conn: Connection, delivery_id: str, *, owner_key_id: str | None) -> Delivery | None:
    """One delivery, if it exists and (with ``owner_key_id``) belongs to that key."""
    clauses, params = ["d.id = ?"], [delivery_id]
    if owner_key_id is not None:
        clause, values = _owned_by(owner_key_id)
        clauses.append(clause)
        params.extend(values)
    async with conn.execute(f"{_DELIVERY_SELECT} WHERE {' AND '.join(clauses)}", params) as c:
        row = await c.fetchone()
    return _delivery(row) if row else None


async def attempts_of(conn: Connection, delivery_id: str) -> list[Attempt]:
    """Every attempt of a delivery, oldest first."""
    async with conn.execute(
        "SELECT attempted_at, status_code, latency_ms, error, response_body FROM attempts "
        "WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    ) as cursor:
        return [Attempt(*row) for row in await cursor.fetchall()]


async def payload_of(conn: Connection, event_id: str) -> bytes | None:
    async with conn.execute("SELECT payload FROM events WHERE id = ?", (event_id,)) as cursor:
        row = await cursor.fetchone()
    return bytes(row["payload"]) if row else None


async def resend(conn: Connection, delivery_id: str, now: float) -> bool:
    """Make a delivery due at ``now``; False if it is in flight or canceled (nothing changes).

    A pending delivery keeps its schedule, only brought forward; a finished one (succeeded or
    failed) gets one attempt marked manual, which is not rescheduled if it fails.
    """
    cursor = await conn.execute(
        "UPDATE deliveries SET manual = CASE WHEN status = 'pending' THEN manual ELSE 1 END, "
        "status = 'pending', next_attempt_at = ?, updated_at = ? "
        "WHERE id = ? AND status IN ('pending', 'succeeded', 'failed')",
        (now, now, delivery_id),
    )
    return cursor.rowcount > 0


async def recover(
    conn: Connection,
    subscription_id: str,
    *,
    since: float,
    until: float | None,
    now: float,
) -> int:
    """Resend every failed delivery of a subscription created in [since, until); return how many.

    Each gets one manual attempt at ``now``, as with :func:`resend`.
    """
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'pending', manual = 1, next_attempt_at = ?, updated_at = ? "
        "WHERE subscription_id = ? AND status = 'failed' AND created_at >= ? "
        "AND (CAST(? AS DOUBLE PRECISION) IS NULL OR created_at < ?)",
        (now, now, subscription_id, since, until, until),
    )
    return cursor.rowcount
