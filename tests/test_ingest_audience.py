"""Who hears of an ingest batch's events: the batch reads every subscription that may hear of
its jobs in the same trip as the jobs themselves (service/jobs/lifecycle.py,
``subscriptions.listening_to_jobs``), before it knows which jobs announce anything; each event
must still reach exactly its audience (docs/performance.md §4). Real stores, both engines."""

from __future__ import annotations

import dataclasses

import pytest

from service.core.models import JobStatus, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import Outcome, Update, apply_updates
from service.storage import jobs, keys, subscriptions
from service.storage.database import Database
from tests.helpers.jobs import NOW, make_job
from tests.support import subscription_row

pytestmark = pytest.mark.anyio


async def test_each_event_of_a_batch_reaches_its_audience_and_no_other(db: Database) -> None:
    a1, a2, a3 = (
        make_job(n, owner_key_id="key_a", status=JobStatus.RUNNING, provider_job_id=f"pj_{n}")
        for n in (1, 2, 3)
    )
    b1 = make_job(4, owner_key_id="key_b", status=JobStatus.RUNNING, provider_job_id="pj_4")
    async with db.transaction() as conn:
        for key_id, scopes in (("key_a", ["write"]), ("key_b", ["write"]), ("key_c", ["write"])):
            await keys.insert(
                conn, key_id=key_id, name=key_id, key_hash=key_id, scopes=scopes, created_at=NOW
            )
        await keys.insert(
            conn, key_id="key_admin", name="a", key_hash="h", scopes=["admin"], created_at=NOW
        )
        for sub_id, owner in (("sub_a", "key_a"), ("sub_b", "key_b"), ("sub_c", "key_c")):
            await subscriptions.insert(conn, subscription_row(sub_id, at=NOW, owner_key_id=owner))
        await subscriptions.insert(
            conn, subscription_row("sub_admin", at=NOW, owner_key_id="key_admin")
        )
        # One-off subscriptions (a job's callback_url): only their own job's events.
        for sub_id, owner, job in (("sub_once_a2", "key_a", a2), ("sub_once_b1", "key_b", b1)):
            once = subscription_row(sub_id, at=NOW, owner_key_id=owner)
            await subscriptions.insert(conn, dataclasses.replace(once, job_id=job.id))
        await jobs.insert_many(conn, [a1, a2, a3, b1])
        # A finished job: its callback is a duplicate and announces nothing.
        await jobs.save(conn, dataclasses.replace(a3, status=JobStatus.FAILED), NOW)

    def failed(job_id: str, n: int) -> Update:
        update = ProviderUpdate(provider_job_id=f"pj_{n}", status=JobStatus.FAILED)
        return Update(job_id, "trinetra", update, b"{}")

    publisher = Publisher(lambda digest, media_type: f"https://files.test/{digest}")
    batch = [failed(a1.id, 1), failed(a2.id, 2), failed(a3.id, 3), failed(b1.id, 4)]
    async with db.transaction() as conn:
        results = await apply_updates(conn, publisher, batch, NOW + 1)
    outcomes = [r[1] for r in results if not isinstance(r, Exception)]
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE, Outcome.APPLIED]
    rows = await db.reader.execute_fetchall(
        "SELECT e.job_id, d.subscription_id FROM deliveries d JOIN events e ON e.id = d.event_id"
    )
    heard: dict[str, set[str]] = {}
    for row in rows:
        heard.setdefault(row["job_id"], set()).add(row["subscription_id"])
    assert heard == {
        a1.id: {"sub_a", "sub_admin"},
        a2.id: {"sub_a", "sub_admin", "sub_once_a2"},
        b1.id: {"sub_b", "sub_admin", "sub_once_b1"},
    }
