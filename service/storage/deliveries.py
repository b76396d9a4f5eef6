"""SQL for the delivery outbox: claiming due rows under a lease, recording attempt outcomes,
releasing leases, resending, and reading the delivery log."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from service.core.models import DeliveryStatus
from service.storage.announcements import Work, announce


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
    template: str | None = None
    content_type: str = "application/json"


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


_ACTIVE = "(SELECT id FROM subscriptions WHERE status = 'active')"


async def claim_due(
    conn: aiosqlite.Connection,
    *,
    now: float,
    lease_until: float,
    limit: int,
    per_subscription: int,
    busy: Mapping[str, int],
    refill_below: int,
    caps: Mapping[str, int] | None = None,
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

    A FIFO subscription gets one delivery claimed at a time, and none while one is claimed: its
    later deliveries wait as ``queued`` (see :func:`promote_queued`), so at most a manual resend
    is due beside its head.

    ``caps`` lowers ``per_subscription`` for the subscriptions it names (0: claim none of theirs
    now); the dispatcher narrows subscriptions that time out this way
    (:mod:`service.delivery.fairness`).
    """
    caps = caps or {}
    # A subscription with ``refill`` or more already claimed is left out, so it is topped up in
    # batches rather than one row per claim.
    saturated = sorted(
        sub
        for sub in {*busy, *caps}
        if busy.get(sub, 0) >= min(refill_below, caps.get(sub, per_subscription))
    )
    marks = ", ".join("?" for _ in saturated)
    # Read more than ``limit``: some rows will be over their subscription's cap.
    window = limit * 4
    sql = f"""
        SELECT id, subscription_id FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= ?
          AND +subscription_id NOT IN ({marks}) AND +subscription_id IN {_ACTIVE}
        ORDER BY next_attempt_at LIMIT ?
    """
    # The unary ``+`` keeps SQLite off the subscription index: walking the due-time index and
    # stopping at LIMIT costs the same with a million rows due, where sorting one subscription's
    # due rows cost milliseconds per claim.
    params = (now, *saturated, window)
    due = list(await conn.execute_fetchall(sql, params))
    # A full window may hide more due rows behind those over their subscription's cap.
    more = len(due) == window
    fifo = await fifo_among(conn, {row["subscription_id"] for row in due})
    taken: dict[str, int] = {}
    chosen: list[str] = []
    for row in due:
        sub = row["subscription_id"]
        cap = 1 if sub in fifo else caps.get(sub, per_subscription)
        if busy.get(sub, 0) + taken.get(sub, 0) >= cap:
            continue
        taken[sub] = taken.get(sub, 0) + 1
        chosen.append(row["id"])
        if len(chosen) == limit:
            break
    if not chosen:
        return [], more
    marks = ", ".join("?" for _ in chosen)
    rows = list(
        await conn.execute_fetchall(
            f"UPDATE deliveries SET status = 'inflight', lease_until = ?, "
            f"attempts = attempts + 1, updated_at = ? WHERE id IN ({marks}) "
            "RETURNING id, event_id, subscription_id, attempts, manual",
            (lease_until, now, *chosen),
        )
    )
    if not rows:
        return [], more
    payloads = await _by_id(conn, "SELECT id, payload FROM events", {r["event_id"] for r in rows})
    subs = await _by_id(
        conn,
        "SELECT id, url, secret, previous_secret, previous_secret_until, headers, template, "
        "content_type FROM subscriptions",
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
                payload=payloads[row["event_id"]]["payload"],
                manual=bool(row["manual"]),
                template=sub["template"],
                content_type=sub["content_type"],
            )
        )
    return claimed, more


async def fifo_among(conn: aiosqlite.Connection, sub_ids: set[str]) -> set[str]:
    """Those of ``sub_ids`` that deliver in order."""
    if not sub_ids:
        return set()
    marks = ", ".join("?" for _ in sub_ids)
    rows = await conn.execute_fetchall(
        f"SELECT id FROM subscriptions WHERE id IN ({marks}) AND ordering = 'fifo'",
        tuple(sub_ids),
    )
    return {row["id"] for row in rows}


async def promote_queued(conn: aiosqlite.Connection, sub_ids: Sequence[str], now: float) -> int:
    """For each FIFO subscription in ``sub_ids`` with nothing pending or in flight, make its
    first queued delivery (in event order) due at ``now``; return how many were promoted.

    Called in the transaction that finishes a head delivery (succeeded, failed for good), so the
    queue moves on exactly when its head is done, and a crash in between changes nothing.
    """
    promoted = 0
    for sub_id in sub_ids:
        cursor = await conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, queue_seq = NULL, "
            "updated_at = ? WHERE id = (SELECT id FROM deliveries WHERE subscription_id = ? "
            "AND status = 'queued' ORDER BY queue_seq LIMIT 1) AND NOT EXISTS (SELECT 1 FROM "
            "deliveries WHERE subscription_id = ? AND status IN ('pending', 'inflight'))",
            (now, now, sub_id, sub_id),
        )
        promoted += cursor.rowcount
    if promoted:
        announce(conn, Work.DELIVERIES)
    return promoted


async def restart_queues(conn: aiosqlite.Connection, now: float) -> int:
    """At start-up: promote the head of every queue that has none (a subscription switched back
    to FIFO, or a queue whose head was canceled by hand in the database); return how many."""
    rows = await conn.execute_fetchall(
        "SELECT DISTINCT subscription_id FROM deliveries WHERE status = 'queued'"
    )
    return await promote_queued(conn, [row[0] for row in rows], now)


async def release_queue(conn: aiosqlite.Connection, sub_id: str, now: float) -> int:
    """Make every queued delivery of ``sub_id`` due at ``now`` (it no longer delivers in order)."""
    cursor = await conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, queue_seq = NULL, "
        "updated_at = ? WHERE subscription_id = ? AND status = 'queued'",
        (now, now, sub_id),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount


@dataclass(frozen=True, slots=True)
class Queue:
    """A FIFO subscription's line: the delivery at its head (pending or in flight), if any, and
    how many wait behind it."""

    head: Delivery | None
    queued: int


async def queue_of(conn: aiosqlite.Connection, sub_id: str) -> Queue:
    rows = await conn.execute_fetchall(
        f"{_DELIVERY_SELECT} WHERE d.subscription_id = ? AND d.status IN ('pending', 'inflight') "
        "ORDER BY d.next_attempt_at LIMIT 1",
        (sub_id,),
    )
    head = _delivery(next(iter(rows))) if rows else None
    counted = await conn.execute_fetchall(
        "SELECT count(*) FROM deliveries WHERE subscription_id = ? AND status = 'queued'",
        (sub_id,),
    )
    return Queue(head, int(next(iter(counted))[0]))


def _signing_secrets(sub: sqlite3.Row, now: float) -> tuple[str, ...]:
    """The current secret, and the one it replaced while its rotation grace period lasts."""
    previous, until = sub["previous_secret"], sub["previous_secret_until"]
    if previous and until is not None and until > now:
        return (sub["secret"], previous)
    return (sub["secret"],)


async def _by_id(conn: aiosqlite.Connection, select: str, ids: set[str]) -> dict[str, sqlite3.Row]:
    marks = ", ".join("?" for _ in ids)
    rows = await conn.execute_fetchall(f"{select} WHERE id IN ({marks})", tuple(ids))
    return {row["id"]: row for row in rows}


async def record(conn: aiosqlite.Connection, outcomes: Sequence[AttemptOutcome]) -> None:
    """Store each attempt and move each delivery to its next state, in the caller's transaction."""
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
        "last_status_code = ?, last_error = ?, updated_at = ? WHERE id = ? AND status = 'inflight'",
        [
            (o.status, o.next_attempt_at, o.status_code, o.error, o.attempted_at, o.delivery_id)
            for o in outcomes
        ],
    )
    # A FIFO subscription's head that is done lets the next queued delivery go.
    finished = {o.subscription_id for o in outcomes if o.status != "pending"}
    if finished:
        now = max(o.attempted_at for o in outcomes)
        await promote_queued(conn, sorted(await fifo_among(conn, finished)), now)
    # Retries were scheduled (announced per batch, not checked per outcome: the dispatcher that
    # records is awake anyway).
    announce(conn, Work.DELIVERIES)


async def next_due_at(conn: aiosqlite.Connection) -> float | None:
    """When the earliest pending delivery of an active subscription is due, if ever."""
    rows = await conn.execute_fetchall(
        "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        " AND +subscription_id IN (SELECT id FROM subscriptions WHERE status = 'active')"
    )
    row = next(iter(rows), None)
    return float(row[0]) if row and row[0] is not None else None


async def release(
    conn: aiosqlite.Connection, delivery_ids: Sequence[str] | None, now: float
) -> int:
    """Hand leased deliveries back as due at ``now``, as if never claimed; return how many.

    ``delivery_ids`` None releases every lease: at start-up, a lease can only be a previous run's,
    since one process owns the SQLite database. The unfinished attempt is not counted, so it does
    not use up a place in the retry schedule.
    """
    sql = (
        "UPDATE deliveries SET status = 'pending', lease_until = NULL, next_attempt_at = ?, "
        "attempts = max(attempts - 1, 0), updated_at = ? WHERE status = 'inflight'"
    )
    params: list[Any] = [now, now]
    if delivery_ids is not None:
        if not delivery_ids:
            return 0
        sql += f" AND id IN ({', '.join('?' for _ in delivery_ids)})"
        params.extend(delivery_ids)
    cursor = await conn.execute(sql, params)
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
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


def _delivery(row: sqlite3.Row) -> Delivery:
    fields = {name: row[name] for name in Delivery.__dataclass_fields__}
    return Delivery(**{**fields, "status": DeliveryStatus(row["status"])})


def _owned_by(owner_key_id: str) -> tuple[str, list[Any]]:
    return "d.subscription_id IN (SELECT id FROM subscriptions WHERE owner_key_id = ?)", [
        owner_key_id
    ]


async def list_page(
    conn: aiosqlite.Connection,
    *,
    owner_key_id: str | None,
    subscription_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    job_id: str | None = None,
    event_type: str | None = None,
    created_since: float | None = None,
    created_until: float | None = None,
    before_id: str | None = None,
    limit: int,
) -> list[Delivery]:
    """Deliveries newest first, filtered; ``owner_key_id`` limits them to that key's
    subscriptions (None: everyone's); ``created_since`` inclusive, ``created_until`` not."""
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
        ("e.type", event_type),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if created_since is not None:
        clauses.append("d.created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        clauses.append("d.created_at < ?")
        params.append(created_until)
    if before_id is not None:
        clauses.append("d.id < ?")
        params.append(before_id)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    async with conn.execute(f"{_DELIVERY_SELECT} {where} ORDER BY d.id DESC LIMIT ?", params) as c:
        return [_delivery(row) for row in await c.fetchall()]


async def get(
    conn: aiosqlite.Connection, delivery_id: str, *, owner_key_id: str | None
) -> Delivery | None:
    """One delivery, if it exists and (with ``owner_key_id``) belongs to that key."""
    clauses, params = ["d.id = ?"], [delivery_id]
    if owner_key_id is not None:
        clause, values = _owned_by(owner_key_id)
        clauses.append(clause)
        params.extend(values)
    async with conn.execute(f"{_DELIVERY_SELECT} WHERE {' AND '.join(clauses)}", params) as c:
        row = await c.fetchone()
    return _delivery(row) if row else None


async def attempts_of(conn: aiosqlite.Connection, delivery_id: str) -> list[Attempt]:
    """Every attempt of a delivery, oldest first."""
    async with conn.execute(
        "SELECT attempted_at, status_code, latency_ms, error, response_body FROM attempts "
        "WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    ) as cursor:
        return [Attempt(*row) for row in await cursor.fetchall()]


async def payload_of(conn: aiosqlite.Connection, event_id: str) -> bytes | None:
    async with conn.execute("SELECT payload FROM events WHERE id = ?", (event_id,)) as cursor:
        row = await cursor.fetchone()
    return bytes(row["payload"]) if row else None


async def resend(conn: aiosqlite.Connection, delivery_id: str, now: float) -> bool:
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
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount > 0


async def recover(
    conn: aiosqlite.Connection,
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
        "AND (? IS NULL OR created_at < ?)",
        (now, now, subscription_id, since, until, until),
    )
    if cursor.rowcount > 0:
        announce(conn, Work.DELIVERIES)
    return cursor.rowcount
