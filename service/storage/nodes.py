"""SQL for the nodes sharing a PostgreSQL store: heartbeats, the stale-node sweep and the leader
lease. Every time here is the database's clock (epoch seconds), never a node's own, so nodes
whose clocks disagree still agree on who is alive (docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass

from service.storage.database import Connection

NOW = "extract(epoch from clock_timestamp())"


async def register(conn: Connection, node_id: str) -> None:
    """Enter ``node_id`` as alive (again, if a sweep had declared it dead)."""
    await conn.execute(
        f"INSERT INTO nodes (id, started_at, heartbeat_at) VALUES (?, {NOW}, {NOW}) "
        f"ON CONFLICT (id) DO UPDATE SET heartbeat_at = {NOW}",
        (node_id,),
    )


async def heartbeat(conn: Connection, node_id: str) -> bool:
    """Renew ``node_id``'s heartbeat; False when it had been declared dead (its row swept, its
    leases handed to others), in which case it is entered again as a newcomer."""
    result = await conn.execute(f"UPDATE nodes SET heartbeat_at = {NOW} WHERE id = ?", (node_id,))
    if result.rowcount:
        return True
    await register(conn, node_id)
    return False


async def leave(conn: Connection, node_id: str) -> None:
    """Remove a node that stops cleanly (and its leader lease, so another takes over at once)."""
    await conn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
    await conn.execute("DELETE FROM leader WHERE node_id = ?", (node_id,))


async def sweep(conn: Connection, node_timeout: float) -> list[str]:
    """Forget the nodes with no heartbeat for ``node_timeout`` seconds; return their ids."""
    rows = await conn.execute_fetchall(
        f"DELETE FROM nodes WHERE heartbeat_at < {NOW} - ? RETURNING id", (node_timeout,)
    )
    return sorted(row["id"] for row in rows)


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    started_at: float
    heartbeat_age: float


async def alive(conn: Connection, node_timeout: float) -> list[Member]:
    """The nodes whose heartbeat is younger than ``node_timeout`` seconds, oldest first."""
    rows = await conn.execute_fetchall(
        f"SELECT id, started_at, {NOW} - heartbeat_at AS age FROM nodes "
        f"WHERE heartbeat_at >= {NOW} - ? ORDER BY started_at, id",
        (node_timeout,),
    )
    return [Member(row["id"], row["started_at"], row["age"]) for row in rows]


async def lead(conn: Connection, node_id: str, ttl: float) -> int | None:
    """Take or renew the leader lease for ``ttl`` seconds; return its term when ``node_id`` holds
    it, None when another node's lease is still running.

    The lease changes hands only once it has expired, and each change raises the term, so a
    leader that was paused past its lease learns at its next renewal that it lost it.
    """
    rows = await conn.execute_fetchall(
        "INSERT INTO leader (id, node_id, term, expires_at) "
        f"VALUES (1, ?, 1, {NOW} + ?) "
        "ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id, "
        "term = CASE WHEN leader.node_id = excluded.node_id THEN leader.term "
        "ELSE leader.term + 1 END, expires_at = excluded.expires_at "
        f"WHERE leader.node_id = excluded.node_id OR leader.expires_at < {NOW} "
        "RETURNING term",
        (node_id, ttl),
    )
    return int(rows[0]["term"]) if rows else None


async def leader(conn: Connection) -> str | None:
    """The node holding an unexpired leader lease, if any."""
    rows = await conn.execute_fetchall(
        f"SELECT node_id FROM leader WHERE expires_at >= {NOW}",
    )
    return str(rows[0]["node_id"]) if rows else None
