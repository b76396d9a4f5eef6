"""SQL for API keys (only their SHA-256 digests are stored)."""

from __future__ import annotations

import json

import aiosqlite

from service.jsonutil import dumps


async def insert(
    conn: aiosqlite.Connection,
    *,
    key_id: str,
    name: str,
    key_hash: str,
    scopes: list[str],
    created_at: float,
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?, ?)",
        (key_id, name, key_hash, dumps(scopes), created_at),
    )


async def find_active(conn: aiosqlite.Connection, key_hash: str) -> tuple[str, list[str]] | None:
    """The (id, scopes) of the unrevoked key with this digest."""
    async with conn.execute(
        "SELECT id, scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
    ) as cursor:
        row = await cursor.fetchone()
    return (row["id"], json.loads(row["scopes"])) if row else None


async def count_admins(conn: aiosqlite.Connection) -> int:
    async with conn.execute(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND scopes LIKE '%\"admin\"%'"
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
