"""SQL for API keys (only their SHA-256 digests are stored)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import aiosqlite

from service.core.jsonutil import dumps

_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None


def _from_row(row: sqlite3.Row) -> StoredKey:
    return StoredKey(
        id=row["id"],
        name=row["name"],
        key_hash=row["key_hash"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


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


async def find_by_hash(conn: aiosqlite.Connection, key_hash: str) -> StoredKey | None:
    """The key with this digest, revoked or not."""
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
    ) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def find_active(conn: aiosqlite.Connection, key_hash: str) -> StoredKey | None:
    """The unrevoked key with this digest."""
    found = await find_by_hash(conn, key_hash)
    return found if found is not None and found.revoked_at is None else None


async def get(conn: aiosqlite.Connection, key_id: str) -> StoredKey | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def list_page(
    conn: aiosqlite.Connection, *, after_id: str | None, limit: int
) -> list[StoredKey]:
    """Keys oldest first; ``after_id`` is the cursor (the last id of the previous page)."""
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE ? IS NULL OR id > ? ORDER BY id LIMIT ?",
        (after_id, after_id, limit),
    ) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


async def revoke(conn: aiosqlite.Connection, key_id: str, now: float) -> None:
    await conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)
    )


async def count_holding(
    conn: aiosqlite.Connection, scope: str, *, excluding: str | None = None
) -> int:
    """Unrevoked keys that hold ``scope`` itself, leaving out the key ``excluding``."""
    # Scopes are a JSON array: look for the element itself, not for text inside the document.
    async with conn.execute(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND id IS NOT ? "
        "AND EXISTS (SELECT 1 FROM json_each(api_keys.scopes) WHERE value = ?)",
        (excluding, scope),
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
