"""SQL for console sessions ended by signing out (table ``console_sign_outs``)."""

from __future__ import annotations

from service.storage.database import Connection


async def add(conn: Connection, nonce_hash: str, *, expires_at: float, now: float) -> None:
    """Record a signed-out session until ``expires_at``, and forget those that have expired (their
    cookies are refused by age alone by then), so the table holds one working day of sign-outs."""
    await conn.execute("DELETE FROM console_sign_outs WHERE expires_at <= ?", (now,))
    await conn.execute(
        "INSERT INTO console_sign_outs (nonce_hash, expires_at) VALUES (?, ?) "
        "ON CONFLICT (nonce_hash) DO UPDATE SET expires_at = excluded.expires_at",
        (nonce_hash, expires_at),
    )


async def contains(conn: Connection, nonce_hash: str) -> bool:
    rows = await conn.execute_fetchall(
        "SELECT 1 FROM console_sign_outs WHERE nonce_hash = ?", (nonce_hash,)
    )
    return bool(rows)
