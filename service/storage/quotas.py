"""SQL for per-key quotas that must hold across nodes (docs/scaling.md): a per-key lock for the
count-then-insert of a quota, and the event streams open on each node (``stream_leases``,
PostgreSQL only: on SQLite one process holds every stream and counts them in memory)."""

from __future__ import annotations

from service.storage.database import Connection

# The first key of pg_advisory_xact_lock(int, int): one namespace per quota.
SUBSCRIPTIONS = 0x5155_0001
STREAMS = 0x5155_0002


async def lock_key(conn: Connection, quota: int, key_id: str) -> None:
    """Hold ``key_id``'s ``quota`` lock until the transaction ends, so nodes counting and adding
    to one key's quota at once take turns (each would otherwise count in its own snapshot and
    all add the last one). SQLite's write transaction already excludes every other writer."""
    if conn.dialect == "postgresql":
        await conn.execute(
            "SELECT pg_advisory_xact_lock(CAST(? AS integer), hashtext(?))", (quota, key_id)
        )


async def open_streams(conn: Connection, key_id: str) -> int:
    """The event streams ``key_id`` holds open on every node (PostgreSQL)."""
    rows = await conn.execute_fetchall(
        "SELECT count(*) FROM stream_leases WHERE key_id = ?", (key_id,)
    )
    return int(rows[0][0])


async def add_stream(
    conn: Connection, lease_id: str, *, key_id: str, node_id: str, now: float
) -> None:
    """Count a stream ``node_id`` opened for ``key_id``; it goes with the node's row (a clean
    stop, or the sweep of a dead node) if it is not removed before."""
    await conn.execute(
        "INSERT INTO stream_leases (id, key_id, node_id, opened_at) VALUES (?, ?, ?, ?)",
        (lease_id, key_id, node_id, now),
    )


async def remove_stream(conn: Connection, lease_id: str) -> None:
    await conn.execute("DELETE FROM stream_leases WHERE id = ?", (lease_id,))
