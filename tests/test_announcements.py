"""Work announcements: a commit wakes the listeners of the kinds of work it created, and only then.

A real SQLite file; the writes are the storage functions the service uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.storage import jobs, submissions
from service.storage.announcements import Work
from service.storage.database import Database
from tests.helpers.jobs import NOW, make_job, store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database.open(tmp_path / "reelhook.db") as database:
        yield database


def listen(db: Database) -> Counter[Work]:
    heard: Counter[Work] = Counter()
    for kind in Work:
        db.subscribe(kind, lambda kind=kind: heard.update([kind]))  # type: ignore[misc]
    return heard


async def test_a_stored_job_with_a_due_submit_announces_a_deadline_and_a_submit(
    db: Database,
) -> None:
    heard = listen(db)
    await store(db, make_job(1), due=NOW)
    assert heard == Counter({Work.DEADLINES: 1, Work.SUBMITS: 1})


async def test_a_rolled_back_transaction_announces_nothing(db: Database) -> None:
    heard = listen(db)
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await submissions.schedule(conn, "job_x", next_at=NOW)
            await jobs.insert(conn, make_job(2))
            raise RuntimeError("abandoned")
    async with db.transaction() as conn:
        pass  # an empty commit afterwards carries nothing over
    assert heard == Counter()


async def test_a_claim_moving_a_submit_later_wakes_no_one(db: Database) -> None:
    await store(db, make_job(3), due=NOW)
    heard = listen(db)
    async with db.transaction() as conn:
        claimed = await submissions.claim_due(
            conn, providers=("trinetra",), now=NOW, lease_until=NOW + 60, limit=10
        )
    assert len(claimed) == 1
    assert heard == Counter()
    async with db.transaction() as conn:
        await submissions.schedule(conn, claimed[0][0].id, next_at=NOW + 5)
    assert heard == Counter({Work.SUBMITS: 1})
