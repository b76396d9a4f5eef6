"""The job state machine, ``transition()`` (docs/contract.md §3), and the writes built on it.

pending/submitted → running → one terminal state, and a terminal state never changes again:
duplicates, late and out-of-order updates are classified and change nothing.
"""

from __future__ import annotations

import dataclasses

import pytest

from service.core.models import (
    TERMINAL_STATUSES,
    Cost,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Notice,
    Output,
    ProviderUpdate,
)
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import Outcome, apply_update, mark_submitted, refuse, transition
from service.storage import jobs
from service.storage.database import Database
from tests.helpers.jobs import claim

pytestmark = pytest.mark.anyio

CREATED = 1_700_000_000.0
SUBMITTED = CREATED + 1.5
NOW = CREATED + 60.0
VIDEO = Output(url="https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4", type="video")
POLICY = JobError(ErrorKind.CONTENT_POLICY, "content policy violation", "1301")

TERMINAL = sorted(TERMINAL_STATUSES)
NON_TERMINAL = [s for s in JobStatus if s not in TERMINAL_STATUSES]


def make_job(status: JobStatus, **changes: object) -> Job:
    job = Job(
        id="job_01JTESTLIFECYCLE000000000",
        owner_key_id="key_test",
        model="trinetra/kling-v2.5",
        provider="trinetra",
        status=status,
        input={"prompt": "A cat", "duration": 5, "resolution": "720p"},
        cost=Cost(estimated=50.0, unit="credits"),
        created_at=CREATED,
        deadline_at=CREATED + 3600,
        metadata={"chat_id": 42},
        provider_job_id=None if status is JobStatus.PENDING else "job_klingv25_a1b2c3",
        submitted_at=None if status is JobStatus.PENDING else SUBMITTED,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def update(status: JobStatus, **changes: object) -> ProviderUpdate:
    base = ProviderUpdate(provider_job_id="job_klingv25_a1b2c3", status=status)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def succeeded(charged: float | None = 10) -> ProviderUpdate:
    return update(JobStatus.SUCCEEDED, outputs=(VIDEO,), charged=charged)


def failed(charged: float | None = None) -> ProviderUpdate:
    return update(JobStatus.FAILED, error=POLICY, charged=charged)


# --- moving forward ------------------------------------------------------------------------------


def test_submitted_job_starts_running() -> None:
    job = make_job(JobStatus.SUBMITTED)
    changed, outcome = transition(job, update(JobStatus.RUNNING), NOW)
    assert outcome is Outcome.APPLIED
    assert changed == dataclasses.replace(job, status=JobStatus.RUNNING)
    # Only the status moves: the submit time, outputs, cost and completion are untouched.
    assert changed.submitted_at == SUBMITTED
    assert changed.completed_at is None


def test_pending_job_starts_running_when_the_callback_overtakes_the_submit_answer() -> None:
    job = make_job(JobStatus.PENDING)
    changed, outcome = transition(job, update(JobStatus.RUNNING), NOW)
    assert outcome is Outcome.APPLIED
    assert changed is not None
    assert changed.status is JobStatus.RUNNING
    assert changed.provider_job_id == "job_klingv25_a1b2c3"
    assert changed.submitted_at == NOW
    assert changed.completed_at is None
    assert changed.outputs == ()
    assert changed.error is None


@pytest.mark.parametrize("start", [JobStatus.SUBMITTED, JobStatus.RUNNING])
def test_success_sets_outputs_completion_and_charge(start: JobStatus) -> None:
    job = make_job(start)
    changed, outcome = transition(job, succeeded(charged=10), NOW)
    assert outcome is Outcome.APPLIED
    assert changed == dataclasses.replace(
        job,
        status=JobStatus.SUCCEEDED,
        outputs=(VIDEO,),
        error=None,
        cost=Cost(estimated=50.0, unit="credits", charged=10),
        completed_at=NOW,
    )


def test_success_without_a_reported_charge_leaves_charged_unknown() -> None:
    changed, _ = transition(make_job(JobStatus.RUNNING), succeeded(charged=None), NOW)
    assert changed is not None
    assert changed.status is JobStatus.SUCCEEDED
    assert changed.cost == Cost(estimated=50.0, unit="credits", charged=None)


@pytest.mark.parametrize("start", [JobStatus.SUBMITTED, JobStatus.RUNNING])
def test_failure_sets_the_error_and_charges_nothing(start: JobStatus) -> None:
    job = make_job(start)
    changed, outcome = transition(job, failed(charged=None), NOW)
    assert outcome is Outcome.APPLIED
    assert changed == dataclasses.replace(
        job,
        status=JobStatus.FAILED,
        outputs=(),
        error=POLICY,
        cost=Cost(estimated=50.0, unit="credits", charged=0),
        completed_at=NOW,
    )


def test_failure_keeps_a_charge_the_provider_reported() -> None:
    changed, _ = transition(make_job(JobStatus.RUNNING), failed(charged=3), NOW)
    assert changed is not None
    assert changed.cost.charged == 3


def test_cancellation_without_a_charge_charges_nothing() -> None:
    changed, outcome = transition(make_job(JobStatus.RUNNING), update(JobStatus.CANCELED), NOW)
    assert outcome is Outcome.APPLIED
    assert changed is not None
    assert changed.status is JobStatus.CANCELED
    assert changed.completed_at == NOW
    assert changed.cost.charged == 0


def test_terminal_update_on_a_pending_job_fills_in_submission() -> None:
    changed, outcome = transition(make_job(JobStatus.PENDING), succeeded(), NOW)
    assert outcome is Outcome.APPLIED
    assert changed is not None
    assert changed.status is JobStatus.SUCCEEDED
    assert changed.provider_job_id == "job_klingv25_a1b2c3"
    assert changed.submitted_at == NOW
    assert changed.completed_at == NOW


def test_the_stored_provider_job_id_is_kept() -> None:
    job = make_job(JobStatus.RUNNING, provider_job_id="job_stored")
    changed, _ = transition(job, succeeded(), NOW)
    assert changed is not None
    assert changed.provider_job_id == "job_stored"


def test_client_fields_are_never_touched() -> None:
    job = make_job(JobStatus.RUNNING)
    changed, _ = transition(job, failed(), NOW)
    assert changed is not None
    for name in ("id", "owner_key_id", "model", "provider", "input", "metadata", "created_at"):
        assert getattr(changed, name) == getattr(job, name), name
    assert changed.deadline_at == job.deadline_at
    assert changed.cost.estimated == job.cost.estimated


# --- standing still ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", TERMINAL)
def test_same_terminal_status_again_is_a_duplicate(status: JobStatus) -> None:
    job = make_job(
        status, outputs=(VIDEO,), completed_at=NOW, cost=Cost(50.0, "credits", charged=10)
    )
    for again in (
        update(status),
        update(status, outputs=(Output(url="https://other.example/v.mp4"),), charged=99),
    ):
        changed, outcome = transition(job, again, NOW + 30)
        assert (changed, outcome) == (None, Outcome.DUPLICATE)


@pytest.mark.parametrize(
    ("status", "incoming"),
    [
        (status, incoming)
        for status in TERMINAL
        for incoming in JobStatus
        # A success with outputs after another end is a late result (tested below).
        if incoming is not status and incoming is not JobStatus.SUCCEEDED
    ],
)
def test_anything_else_after_a_terminal_status_is_late(
    status: JobStatus, incoming: JobStatus
) -> None:
    job = make_job(status, completed_at=NOW)
    payload = update(
        incoming,
        outputs=(VIDEO,) if incoming is JobStatus.SUCCEEDED else (),
        error=POLICY if incoming is JobStatus.FAILED else None,
        charged=7,
    )
    changed, outcome = transition(job, payload, NOW + 30)
    assert (changed, outcome) == (None, Outcome.LATE)


def test_running_after_running_is_stale() -> None:
    job = make_job(JobStatus.RUNNING)
    assert transition(job, update(JobStatus.RUNNING), NOW) == (None, Outcome.STALE)


@pytest.mark.parametrize("start", [JobStatus.SUBMITTED, JobStatus.RUNNING])
def test_a_queued_report_after_submission_is_stale(start: JobStatus) -> None:
    assert transition(make_job(start), update(JobStatus.SUBMITTED), NOW) == (None, Outcome.STALE)


def test_progress_after_success_is_late_not_a_step_back() -> None:
    done, _ = transition(make_job(JobStatus.RUNNING), succeeded(), NOW)
    assert done is not None
    assert transition(done, update(JobStatus.RUNNING), NOW + 1) == (None, Outcome.LATE)
    assert done.status is JobStatus.SUCCEEDED


def test_a_replayed_sequence_announces_each_state_once() -> None:
    """Out-of-order and duplicated deliveries, folded in arrival order."""
    arrivals = [
        update(JobStatus.RUNNING),
        succeeded(),
        update(JobStatus.RUNNING),  # progress delivered after completion
        succeeded(),  # duplicate delivery
        failed(),  # a contradicting late report
        update(JobStatus.RUNNING),
    ]
    job = make_job(JobStatus.SUBMITTED)
    outcomes = []
    moves = []
    for moment, arrival in enumerate(arrivals):
        changed, outcome = transition(job, arrival, NOW + moment)
        outcomes.append(outcome)
        if changed is not None:
            moves.append(changed.status)
            job = changed
    assert outcomes == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.LATE,
        Outcome.DUPLICATE,
        Outcome.LATE,
        Outcome.LATE,
    ]
    assert moves == [JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert job.completed_at == NOW + 1
    assert job.outputs == (VIDEO,)


def test_outcome_values_are_the_stored_vocabulary() -> None:
    assert {o.value for o in Outcome} == {
        "applied",
        "duplicate",
        "late",
        "stale",
        "late_result",
        "unrecognised",
        "unreadable",
    }


def test_non_terminal_statuses_are_the_documented_ones() -> None:
    assert NON_TERMINAL == [JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING]


# --- the submit race, against a real database ---------------------------------------------------
#
# POST /v1/jobs stores the job as pending, then sends it to the provider. The provider's callback
# can arrive (and move the job on) before its answer to the submit request does; whatever that
# answer then says, the callback is the better witness and is left standing.

UNREACHABLE = JobError(ErrorKind.PROVIDER_ERROR, "could not reach trinetra: ConnectError")


def file_url(digest: str, media_type: str) -> str:
    return f"https://reelhook.example.test/v1/files/{digest}"


async def stored(db: Database, job: Job) -> Job:
    async with db.transaction() as conn:
        await jobs.insert(conn, job)
    return job


async def logged(db: Database) -> list[tuple[str, str | None]]:
    """The event log as (type, job id), oldest first."""
    async with db.reader.execute("SELECT type, job_id FROM events ORDER BY seq") as cursor:
        return [(row["type"], row["job_id"]) for row in await cursor.fetchall()]


async def test_a_refusal_after_a_callback_moved_the_job_on_changes_nothing(db: Database) -> None:
    publisher = Publisher(file_url)
    job = await stored(db, make_job(JobStatus.PENDING))
    running, outcome = await apply_update(
        db,
        publisher,
        job_id=job.id,
        provider="trinetra",
        update=update(JobStatus.RUNNING),
        raw=b'{"status": "processing"}',
        now=NOW,
    )
    assert outcome is Outcome.APPLIED and running.status is JobStatus.RUNNING

    refused = await refuse(
        db, publisher, job.id, UNREACHABLE, NOW + 1, token=await claim(db, job.id)
    )

    assert refused is False
    after = await jobs.get(db.reader, job.id)
    assert after == running
    assert after is not None and after.error is None and after.completed_at is None
    assert await logged(db) == [("job.running", job.id)]


@pytest.mark.parametrize("terminal", [JobStatus.SUCCEEDED, JobStatus.FAILED])
async def test_a_refusal_after_a_terminal_callback_changes_nothing(
    db: Database, terminal: JobStatus
) -> None:
    publisher = Publisher(file_url)
    job = await stored(db, make_job(JobStatus.PENDING))
    arrival = succeeded() if terminal is JobStatus.SUCCEEDED else failed()
    done, _ = await apply_update(
        db, publisher, job_id=job.id, provider="trinetra", update=arrival, raw=b"{}", now=NOW
    )
    assert (
        await refuse(db, publisher, job.id, UNREACHABLE, NOW + 1, token=await claim(db, job.id))
        is False
    )
    assert await jobs.get(db.reader, job.id) == done
    assert await logged(db) == [(f"job.{terminal.value}", job.id)]


async def test_a_refusal_of_a_pending_job_fails_it_and_announces_it(db: Database) -> None:
    """The control for the tests above: with no callback first, the refusal does apply."""
    publisher = Publisher(file_url)
    job = await stored(db, make_job(JobStatus.PENDING))

    assert (
        await refuse(db, publisher, job.id, UNREACHABLE, NOW, token=await claim(db, job.id)) is True
    )

    after = await jobs.get(db.reader, job.id)
    assert after is not None
    assert after.status is JobStatus.FAILED
    assert after.error == UNREACHABLE
    assert after.cost.charged == 0
    assert after.completed_at == NOW
    assert await logged(db) == [("job.failed", job.id)]
    # A second refusal (or one for a job that does not exist) is a no-op.
    assert (
        await refuse(db, publisher, job.id, UNREACHABLE, NOW + 1, token=await claim(db, job.id))
        is False
    )
    assert (
        await refuse(
            db,
            publisher,
            "job_00000000000000000000000000",
            UNREACHABLE,
            NOW,
            token=await claim(db, job.id),
        )
        is False
    )
    assert await logged(db) == [("job.failed", job.id)]


async def test_an_acceptance_after_a_callback_only_fills_in_the_provider_job_id(
    db: Database,
) -> None:
    publisher = Publisher(file_url)
    job = await stored(db, make_job(JobStatus.PENDING))
    running, _ = await apply_update(
        db,
        publisher,
        job_id=job.id,
        provider="trinetra",
        update=update(JobStatus.RUNNING, provider_job_id=None),
        raw=b"{}",
        now=NOW,
    )
    assert running.provider_job_id is None

    current, moved = await mark_submitted(
        db, publisher, job.id, "job_klingv25_a1b2c3", NOW + 1, token=await claim(db, job.id)
    )

    assert moved is False
    expected = dataclasses.replace(running, provider_job_id="job_klingv25_a1b2c3")
    assert current == expected
    assert await jobs.get(db.reader, job.id) == expected
    assert await logged(db) == [("job.running", job.id)]


async def test_an_acceptance_of_a_pending_job_submits_it(db: Database) -> None:
    publisher = Publisher(file_url)
    job = await stored(db, make_job(JobStatus.PENDING))

    current, moved = await mark_submitted(
        db, publisher, job.id, "job_klingv25_a1b2c3", NOW, token=await claim(db, job.id)
    )

    assert moved is True
    assert current is not None
    assert current.status is JobStatus.SUBMITTED
    assert current.provider_job_id == "job_klingv25_a1b2c3"
    assert current.submitted_at == NOW
    assert await jobs.get(db.reader, job.id) == current
    assert await logged(db) == [("job.submitted", job.id)]


def test_a_new_charge_carries_every_other_field_of_the_cost() -> None:
    """Cost.with_charge builds the cost field by field (not dataclasses.replace, for speed,
    docs/performance-journal.md): every field it does not set must come across as it was."""
    assert {field.name for field in dataclasses.fields(Cost)} == {
        "estimated", "unit", "charged", "assumed", "charged_unknown",
    }, "a new Cost field: carry it over in Cost.with_charge, then add it here"  # fmt: skip
    cost = Cost(12.5, "credits", 3.0, {"resolution": "720p"}, charged_unknown=True)
    assert cost.with_charge(7, unknown=False) == dataclasses.replace(
        cost, charged=7, charged_unknown=False
    )
    assert cost.with_charge(None, unknown=True) == dataclasses.replace(cost, charged=None)


def test_a_terminal_move_carries_every_other_field_of_the_job() -> None:
    """transition builds the finished job field by field (not dataclasses.replace, for speed,
    docs/performance.md §4): every field it does not change must come across as it was."""
    assert {field.name for field in dataclasses.fields(Job)} == {
        "id", "owner_key_id", "model", "provider", "status", "input", "cost", "created_at",
        "deadline_at", "metadata", "provider_job_id", "outputs", "error", "submitted_at",
        "completed_at", "notices",
    }, "a new Job field: carry it over in lifecycle.transition, then add it here"  # fmt: skip
    notice = Notice("unknown_status", "it said 'warming'", SUBMITTED + 1)
    job = make_job(JobStatus.RUNNING, notices=(notice,), outputs=(), error=None)
    failure = update(
        JobStatus.FAILED, error=JobError(ErrorKind.PROVIDER_ERROR, "boom", "E1"), charged=3
    )
    moved, outcome = transition(job, failure, NOW)
    assert outcome is Outcome.APPLIED
    assert moved == dataclasses.replace(
        job,
        status=JobStatus.FAILED,
        error=failure.error,
        outputs=(),
        cost=dataclasses.replace(job.cost, charged=3),
        completed_at=NOW,
    )
