"""Copying a SQLite deployment into a PostgreSQL database, once (``reelhook copy``).

Every table that holds state is copied row for row in one PostgreSQL transaction, in primary-key
order, with the identity columns (event sequence numbers, callback and attempt ids) kept, so
event ids, stream positions and delivery logs read the same afterwards. The copy is verified by
counting each table on both sides; a target that already holds data is refused (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from service.storage.database import Connection, Database, StoreError, marks

# Parents before children (foreign keys), each with the column that orders its rows.
TABLES: tuple[tuple[str, str], ...] = (
    ("api_keys", "id"),
    ("jobs", "id"),
    ("callbacks", "id"),
    ("events", "seq"),
    ("subscriptions", "id"),
    ("deliveries", "id"),
    # Deferred fan-outs not yet expanded: deliveries still to be written.
    ("event_fanouts", "seq"),
    ("attempts", "id"),
    ("blobs", "digest"),
    ("mirrors", "job_id, output_index"),
    # Account-webhook documents that named no known job yet: results a provider was paid for,
    # applied when their job's provider id is recorded (docs/providers.md).
    ("unmatched_callbacks", "id"),
    # Signed-out console sessions: a copied deployment keeps refusing them.
    ("console_sign_outs", "nonce_hash"),
)

# The tables left out, and why: none holds what a stopped deployment knows. A test checks that
# every table of either schema is in TABLES or here, so a new table cannot be forgotten.
NOT_COPIED: dict[str, str] = {
    "readiness": "one probe row that every /readyz rewrites",
    "schema_version": "written by the target's own migrations",
    "nodes": "the heartbeats of running PostgreSQL nodes",
    "leader": "the leader lease among running PostgreSQL nodes",
    "rate_buckets": "short-lived rate-limit counters of running nodes",
    "stream_leases": "places of live event streams held by running nodes",
}

# The PostgreSQL sequences behind identity columns, moved past the copied values.
_SEQUENCES = (
    ("callbacks", "id"),
    ("events", "seq"),
    ("attempts", "id"),
    ("event_fanouts", "seq"),
    ("unmatched_callbacks", "id"),
)

BATCH = 1000


class TargetNotEmpty(StoreError):
    """The target database already holds reelhook data: copying would mix two deployments."""


async def _columns_sqlite(conn: Connection, table: str) -> list[str]:
    return [row["name"] for row in await conn.execute_fetchall(f"PRAGMA table_info({table})")]


async def _columns_postgresql(conn: Connection, table: str) -> list[str]:
    rows = await conn.execute_fetchall(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        (table,),
    )
    return [row["column_name"] for row in rows]


async def counts(conn: Connection) -> dict[str, int]:
    """Rows per copied table."""
    found = {}
    for table, _ in TABLES:
        rows = await conn.execute_fetchall(f"SELECT count(*) FROM {table}")
        found[table] = int(rows[0][0])
    return found


async def copy_store(source: Database, target: Database) -> dict[str, int]:
    """Copy every table of ``source`` (SQLite, not running) into ``target`` (PostgreSQL, freshly
    migrated and empty); return the rows copied per table.

    Raises :class:`TargetNotEmpty` when ``target`` holds data, and :class:`StoreError` when the
    counts differ afterwards (the copy is then rolled back).
    """
    if source.dialect != "sqlite" or target.dialect != "postgresql":
        raise StoreError("reelhook copy moves a SQLite deployment into PostgreSQL")
    before = await counts(target.reader)
    if any(before.values()):
        busy = ", ".join(f"{table} ({n})" for table, n in before.items() if n)
        raise TargetNotEmpty(f"the target database already holds data: {busy}")
    expected = await counts(source.reader)
    async with target.transaction() as conn:
        for table, order in TABLES:
            wanted = set(await _columns_postgresql(conn, table))
            columns = [c for c in await _columns_sqlite(source.reader, table) if c in wanted]
            await _copy_table(source.reader, conn, table, order, columns)
        for table, column in _SEQUENCES:
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
            )
        copied = await counts(conn)
        if copied != expected:
            raise StoreError(f"the copy does not match: expected {expected}, copied {copied}")
    return copied


async def _copy_table(
    source: Connection, target: Connection, table: str, order: str, columns: Sequence[str]
) -> None:
    names = ", ".join(columns)
    insert = f"INSERT INTO {table} ({names}) VALUES ({marks(columns)})"
    offset = 0
    while True:
        rows = await source.execute_fetchall(
            f"SELECT {names} FROM {table} ORDER BY {order} LIMIT ? OFFSET ?", (BATCH, offset)
        )
        if not rows:
            return
        await target.executemany(insert, [tuple(row) for row in rows])
        offset += len(rows)
