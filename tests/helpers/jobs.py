"""Jobs put straight into the store under test, as the submitter would leave them."""

from __future__ import annotations

import dataclasses

from service.core.models import Cost, Job, JobStatus
from service.storage import jobs, submissions
from service.storage.database import Database

NOW = 1_700_000_000.0
DEADLINE = NOW + 3600


def make_job(number: int, provider: str = "trinetra", **changes: object) -> Job:
    job = Job(
        id=f"job_01JTESTSUBMITRETRY{number:08d}",
        owner_key_id="key_test",
        model=f"{provider}/kling-x",
        provider=provider,
        status=JobStatus.PENDING,
        input={"prompt": "A cat"},
        cost=Cost(estimated=1.0, unit="credits"),
        created_at=NOW,
        deadline_at=DEADLINE,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


async def store(db: Database, job: Job, due: float | None, attempts: int = 0) -> None:
    async with db.transaction() as conn:
        await jobs.insert(conn, job)
        await submissions.schedule(conn, job.id, next_at=due, attempts=attempts)


async def claim(db: Database, job_id: str) -> int:
    """Make ``db``'s node the holder of ``job_id``'s submit claim; return its fencing token (what
    the submitter does before an attempt)."""
    async with db.transaction() as conn:
        return await submissions.own(conn, job_id, db.node_id)
