"""SQL for API keys (only their SHA-256 digests are stored)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from service.core.jsonutil import dumps
from service.storage.database import Connection, Row

_COLUMNS = "id, name, key_hash, scopes, created_at, revoked_at"


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    name: str
    key_hash: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None


def _from_row(row: Row) -> StoredKey:
    return StoredKey(
        id=row["id"],
        name=row["name"],
        key_hash=row["key_hash"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


# Serialises the first-start admin key across nodes (pg_advisory_xact_lock key; see
# lock_bootstrap).
BOOTSTRAP_LOCK = 0x7265_656C_0004


async def lock_bootstrap(conn: Connection) -> None:
    """Hold the admin-key bootstrap until the caller's transaction ends.

    Nodes starting together on an empty PostgreSQL database each find no admin key: without this,
    each inserted ``REELHOOK_ADMIN_KEY`` (the second failing on the unique digest, so that node did
    not start) or generated an admin key of its own. SQLite has one writer: nothing to do.
    """
    if conn.dialect == "postgresql":
        await conn.execute("SELECT pg_advisory_xact_lock(?)", (BOOTSTRAP_LOCK,))


async def insert(
    conn: Connection,
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


async def find_by_hash(conn: Connection, key_hash: str) -> StoredKey | None:
    """The key with this digest, revoked or not."""
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
    ) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def find_active(conn: Connection, key_hash: str) -> StoredKey | None:
    """The unrevoked key with this digest."""
    found = await find_by_hash(conn, key_hash)
    return found if found is not None and found.revoked_at is None else None


async def get(conn: Connection, key_id: str) -> StoredKey | None:
    async with conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)) as cursor:
        row = await cursor.fetchone()
    return _from_row(row) if row else None


async def list_page(conn: Connection, *, after_id: str | None, limit: int) -> list[StoredKey]:
    """Keys oldest first; ``after_id`` is the cursor (the last id of the previous page)."""
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE CAST(? AS TEXT) IS NULL OR id > ? "
        "ORDER BY id LIMIT ?",
        (after_id, after_id, limit),
    ) as cursor:
        return [_from_row(row) for row in await cursor.fetchall()]


async def revoke(conn: Connection, key_id: str, now: float) -> None:
    await conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)
    )


async def count_holding(conn: Connection, scope: str, *, excluding: str | None = None) -> int:
    """Unrevoked keys that hold ``scope`` itself, leaving out the key ``excluding``."""
    # Scopes are a JSON array: look for the element itself, not for text inside the document.
    # The dialects spell "is distinct from" and "the elements of a JSON array" differently.
    elements = (
        "json_each(api_keys.scopes)"
        if conn.dialect == "sqlite"
        else "jsonb_array_elements_text(api_keys.scopes::jsonb) AS element(value)"
    )
    async with conn.execute(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL "
        "AND (CAST(? AS TEXT) IS NULL OR id <> ?) "
        f"AND EXISTS (SELECT 1 FROM {elements} WHERE value = ?)",
        (excluding, excluding, scope),
    ) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
