"""SQL for the delivery outbox: claiming due rows under a lease and recording attempt outcomes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for one attempt, with everything needed to send it."""

    id: str
    event_id: str
    subscription_id: str
    attempt: int
    url: str
    secret: str
    headers: dict[str, str]
    payload: bytes


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The result of one attempt and what happens next.

    ``status`` is the delivery's new state: ``succeeded``, ``pending`` (retry at
    ``next_attempt_at``) or ``failed`` (retries exhausted). ``delete_subscription`` is set on 410.
    """

    delivery_id: str
    subscription_id: str
    attempted_at: float
    latency_ms: float
    status: str
    status_code: int | None = None
    error: str | None = None
    response_body: bytes | None = None
    next_attempt_at: float | None = None
    delete_subscription: bool = False


async def claim_due(
    conn: aiosqlite.Connection,
    *,
    now: float,
    lease_until: float,
    limit: int,
    per_subscription: int,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries, keeping each subscription under ``per_subscription``.

    Due means pending with ``next_attempt_at <= now``, or in flight with an expired lease (its
    holder crashed). Unexpired leases count against their subscription's cap; deliveries of a
    disabled subscription wait until it is enabled again.
    """
    sql = """
        UPDATE deliveries SET status = 'inflight', lease_until = ?, attempts = attempts + 1,
            updated_at = ?
        WHERE id IN (
            SELECT id FROM (
                SELECT id, subscription_id, ROW_NUMBER() OVER (
                    PARTITION BY subscription_id ORDER BY next_attempt_at, id) AS rank
                FROM deliveries
                WHERE ((status = 'pending' AND next_attempt_at <= ?)
                   OR (status = 'inflight' AND lease_until <= ?))
                  AND subscription_id IN (SELECT id FROM subscriptions WHERE status = 'active')
            ) AS due
            WHERE rank <= ? - (
                SELECT count(*) FROM deliveries AS busy
                WHERE busy.subscription_id = due.subscription_id
                  AND busy.status = 'inflight' AND busy.lease_until > ?)
            ORDER BY id LIMIT ?
        )
        RETURNING id, event_id, subscription_id, attempts
    """
    params = (lease_until, now, now, now, per_subscription, now, limit)
    async with conn.execute(sql, params) as cursor:
        rows = list(await cursor.fetchall())
    if not rows:
        return []
    payloads = await _by_id(conn, "SELECT id, payload FROM events", {r["event_id"] for r in rows})
    subs = await _by_id(
        conn,
        "SELECT id, url, secret, headers FROM subscriptions",
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
                secret=sub["secret"],
                headers=json.loads(sub["headers"]),
                payload=payloads[row["event_id"]]["payload"],
            )
        )
    return claimed


async def _by_id(conn: aiosqlite.Connection, select: str, ids: set[str]) -> dict[str, sqlite3.Row]:
    marks = ", ".join("?" for _ in ids)
    async with conn.execute(f"{select} WHERE id IN ({marks})", tuple(ids)) as cursor:
        return {row["id"]: row for row in await cursor.fetchall()}


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
        "UPDATE deliveries SET status = ?, next_attempt_at = ?, lease_until = NULL, "
        "last_status_code = ?, last_error = ?, updated_at = ? WHERE id = ? AND status = 'inflight'",
        [
            (o.status, o.next_attempt_at, o.status_code, o.error, o.attempted_at, o.delivery_id)
            for o in outcomes
        ],
    )


async def next_due_at(conn: aiosqlite.Connection) -> float | None:
    """When the earliest pending delivery is due or the earliest lease expires, if ever."""
    async with conn.execute(
        "SELECT min(t) FROM ("
        " SELECT min(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'"
        "  AND subscription_id IN (SELECT id FROM subscriptions WHERE status = 'active')"
        " UNION ALL SELECT min(lease_until) FROM deliveries WHERE status = 'inflight')"
    ) as cursor:
        row = await cursor.fetchone()
    return float(row[0]) if row and row[0] is not None else None
