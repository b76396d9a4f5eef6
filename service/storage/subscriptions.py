"""SQL for subscriptions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

import aiosqlite

from service.jsonutil import dumps
from service.models import Subscription

_COLUMNS = (
    "id, owner_key_id, url, secret, event_types, models, headers, description, status, job_id, "
    "created_at, updated_at"
)


def _from_row(row: sqlite3.Row) -> Subscription:
    return Subscription(
        id=row["id"],
        owner_key_id=row["owner_key_id"],
        url=row["url"],
        secret=row["secret"],
        event_types=tuple(json.loads(row["event_types"])),
        models=tuple(json.loads(row["models"])),
        headers=json.loads(row["headers"]),
        description=row["description"],
        status=row["status"],
        job_id=row["job_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert(conn: aiosqlite.Connection, sub: Subscription) -> None:
    await conn.execute(
        f"INSERT INTO subscriptions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            sub.id,
            sub.owner_key_id,
            sub.url,
            sub.secret,
            dumps(list(sub.event_types)),
            dumps(list(sub.models)),
            dumps(sub.headers),
            sub.description,
            sub.status,
            sub.job_id,
            sub.created_at,
            sub.updated_at,
        ),
    )


async def save(conn: aiosqlite.Connection, sub: Subscription) -> None:
    await conn.execute(
        "UPDATE subscriptions SET url = ?, secret = ?, event_types = ?, models = ?, headers = ?, "
        "description = ?, status = ?, updated_at = ? WHERE id = ?",
        (
            sub.url,
            sub.secret,
            dumps(list(sub.event_types)),
            dumps(list(sub.models)),
            dumps(sub.headers),
            sub.description,
            sub.status,
            sub.updated_at,
            sub.id,
        ),
    )


async def get(conn: aiosqlite.Connection, sub_id: str) -> Subscription | None:
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE id = ?", (sub_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def delete(conn: aiosqlite.Connection, sub_id: str) -> bool:
    """Delete it and cancel its open deliveries (kept for audit); True if it existed."""
    await conn.execute(
        "UPDATE deliveries SET status = 'canceled', lease_until = NULL "
        "WHERE subscription_id = ? AND status IN ('pending', 'inflight')",
        (sub_id,),
    )
    cursor = await conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
    return cursor.rowcount > 0


async def list_page(
    conn: aiosqlite.Connection, *, owner_key_id: str | None, after_id: str | None, limit: int
) -> list[Subscription]:
    clauses = ["job_id IS NULL"]
    params: list[object] = []
    if owner_key_id is not None:
        clauses.append("owner_key_id = ?")
        params.append(owner_key_id)
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    params.append(limit)
    sql = f"SELECT {_COLUMNS} FROM subscriptions WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
    async with conn.execute(sql, params) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


Audience = tuple[str | None, str | None]
"""Whom an event is about: (owner key id, job id); (None, None) for an event of no job."""


async def listeners(
    conn: aiosqlite.Connection, audiences: Sequence[Audience]
) -> list[list[Subscription]]:
    """For each audience, the active subscriptions that may hear of it, in one query.

    A subscription hears of its own key's jobs, an admin key's subscriptions of every job, and a
    one-off ``callback_url`` subscription of its own job only; an event of no job reaches every
    subscription that is not one-off. Type and model filters are left to
    :meth:`Subscription.matches`.
    """
    job_ids = sorted({job for _, job in audiences if job is not None})
    owners = sorted({owner for owner, _ in audiences if owner is not None})
    clauses = ["status = 'active'", f"(job_id IS NULL OR job_id IN ({_marks(job_ids)}))"]
    params: list[str] = [*job_ids]
    if all(owner is not None for owner, _ in audiences):
        clauses.append(f"(owner_key_id IN ({_marks(owners)}) OR {_ADMIN_OWNER})")
        params.extend(owners)
    sql = (
        f"SELECT {_COLUMNS}, {_ADMIN_OWNER} AS admin_owner FROM subscriptions"
        f" WHERE {' AND '.join(clauses)} ORDER BY id"
    )
    async with conn.execute(sql, params) as cursor:
        rows = [(_from_row(row), bool(row["admin_owner"])) for row in await cursor.fetchall()]
    return [
        [
            sub
            for sub, admin_owner in rows
            if (sub.job_id is None or sub.job_id == job_id)
            and (owner is None or admin_owner or sub.owner_key_id == owner)
            and (job_id is not None or sub.job_id is None)
        ]
        for owner, job_id in audiences
    ]


_ADMIN_OWNER = "owner_key_id IN (SELECT id FROM api_keys WHERE scopes LIKE '%\"admin\"%')"


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)
