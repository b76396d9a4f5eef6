"""Write transactions: a relaxed (``durable=False``) one commits, or rolls back, and always
leaves the writer back on ``synchronous = FULL`` outside any transaction."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from service.storage.database import Database

pytestmark = pytest.mark.anyio

FULL, NORMAL = 2, 1


async def _synchronous(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA synchronous"))
    return int(rows[0][0])


async def _count(db: Database) -> int:
    rows = list(await db.reader.execute_fetchall("SELECT count(*) FROM readiness"))
    return int(rows[0][0])


@pytest.mark.parametrize("durable", [True, False])
async def test_a_transaction_commits_and_leaves_the_writer_on_full(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(tmp_path / "db.sqlite") as db:
        async with db.transaction(durable=durable) as conn:
            assert await _synchronous(conn) == (FULL if durable else NORMAL)
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
        assert not db.writer.in_transaction
        assert await _synchronous(db.writer) == FULL
        assert await _count(db) == 1


@pytest.mark.parametrize("durable", [True, False])
async def test_a_failed_transaction_rolls_back_and_leaves_the_writer_on_full(
    tmp_path: Path, durable: bool
) -> None:
    async with Database.open(tmp_path / "db.sqlite") as db:
        with pytest.raises(RuntimeError, match="boom"):
            async with db.transaction(durable=durable) as conn:
                await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 1.0)")
                raise RuntimeError("boom")
        assert not db.writer.in_transaction
        assert await _synchronous(db.writer) == FULL
        assert await _count(db) == 0
        # The writer is usable again.
        async with db.transaction(durable=durable) as conn:
            await conn.execute("INSERT INTO readiness (id, checked_at) VALUES (1, 2.0)")
        assert await _count(db) == 1
