"""The pure job state machine, ``transition()`` (design §3).

pending/submitted → running → one terminal state, and a terminal state never changes again:
duplicates, late and out-of-order updates are classified and change nothing.
"""

from __future__ import annotations

import dataclasses

import pytest

from service.lifecycle import Outcome, transition
from service.models import (
    TERMINAL_STATUSES,
    Cost,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Output,
    ProviderUpdate,
)

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
    [(status, incoming) for status in TERMINAL for incoming in JobStatus if incoming is not status],
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
    assert {o.value for o in Outcome} == {"applied", "duplicate", "late", "stale"}


def test_non_terminal_statuses_are_the_documented_ones() -> None:
    assert NON_TERMINAL == [JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING]
