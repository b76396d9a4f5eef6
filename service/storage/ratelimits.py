"""SQL for the per-key token buckets several PostgreSQL nodes share (table ``rate_buckets``)."""

from __future__ import annotations

from service.storage.database import Connection

_NOW = "extract(epoch from clock_timestamp())"


async def take(
    conn: Connection, key_id: str, *, want: int, rate: float, burst: float
) -> tuple[int, float]:
    """Take up to ``want`` whole tokens from ``key_id``'s bucket (refilled at ``rate`` per
    second, up to ``burst``, by the database's clock); return how many were granted and the
    tokens the bucket held before.

    The bucket row is locked for the transaction, so nodes taking at once queue on it.
    """
    await conn.execute(
        f"INSERT INTO rate_buckets (key_id, tokens, updated_at) VALUES (?, ?, {_NOW}) "
        "ON CONFLICT (key_id) DO NOTHING",
        (key_id, burst),
    )
    rows = await conn.execute_fetchall(
        f"SELECT LEAST(CAST(? AS DOUBLE PRECISION), tokens + ({_NOW} - updated_at) * ?) AS t "
        "FROM rate_buckets WHERE key_id = ? FOR UPDATE",
        (burst, rate, key_id),
    )
    tokens = float(rows[0]["t"])
    granted = max(0, min(want, int(tokens)))
    await conn.execute(
        f"UPDATE rate_buckets SET tokens = ?, updated_at = {_NOW} WHERE key_id = ?",
        (tokens - granted, key_id),
    )
    return granted, tokens
