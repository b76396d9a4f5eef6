"""The job lifecycle: how a provider update moves a job, applied in one durable transaction.

A terminal state never changes again. Duplicate, late and out-of-order callbacks are stored for
audit with their outcome and change nothing, so each job announces each state at most once. A job
with no terminal callback by its deadline is expired by reelhook itself (:func:`expire_overdue`);
a callback arriving after that is stored as ``late`` and does not revive it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.core.models import (
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Notice,
    ProviderUpdate,
    event_type_for,
    with_notice,
)
from service.delivery.publisher import HotClaims, Publisher
from service.providers import CALLBACK_ADAPTERS
from service.providers.base import InvalidCallback
from service.storage import jobs, mirrors, submissions, subscriptions
from service.storage.database import Connection, Database
from service.storage.mirrors import MirrorTask
from service.storage.submissions import SubmitClaim

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # the same terminal state again
    LATE = "late"  # anything after a terminal state
    STALE = "stale"  # a non-terminal state the job has already passed
    # A success after the job ended failed, expired or canceled: the job keeps its terminal state
    # (each job announces one), and the delivered outputs are kept on it as a notice.
    LATE_RESULT = "late_result"
    # A status word reelhook does not know, with neither outputs nor an error: kept, noted on the
    # job, and the job stays open (docs/providers.md: unknown statuses never destroy a result).
    UNRECOGNISED = "unrecognised"
    # A verified callback whose body reelhook cannot read: kept for audit and noted on the job.
    UNREADABLE = "unreadable"


@dataclasses.dataclass(frozen=True, slots=True)
class Mirrored:
    """A provider-hosted output, now stored in the blob store."""

    digest: str
    size: int
    media_type: str


class UnknownJob(Exception):
    """The callback names a job reelhook does not have."""


class JobMismatch(Exception):
    """The callback's provider job id is not the one stored for the job."""


def transition(job: Job, update: ProviderUpdate, now: float) -> tuple[Job | None, Outcome]:
    """The job after ``update`` (None when unchanged) and how the update was classified.

    A terminal job never changes state; a success arriving after it ended otherwise is kept as a
    ``late_result`` notice carrying the delivered URLs, so a paid-for video is never dropped
    silently. An unknown status word that says neither success nor failure leaves the job open
    with an ``unknown_status`` notice.
    """
    if job.status.terminal:
        same = update.status is job.status
        urls = tuple(o.url for o in update.outputs if o.url)
        known = any(n.kind == "late_result" and n.outputs == urls for n in job.notices)
        if not same and update.status is JobStatus.SUCCEEDED and urls and not known:
            notice = Notice(
                "late_result",
                f"{job.provider} reported a success after the job had ended {job.status.value}; "
                "its output is listed here and the job keeps its state",
                now,
                urls,
            )
            return dataclasses.replace(job, notices=with_notice(job.notices, notice)), (
                Outcome.LATE_RESULT
            )
        return None, Outcome.DUPLICATE if same else Outcome.LATE
    if update.unknown_status is not None and not update.status.terminal:
        # Noted once per word (each one is still logged and counted by the callback route).
        word = repr(update.unknown_status)
        noted = job
        if not any(n.kind == "unknown_status" and word in n.message for n in job.notices):
            notice = Notice(
                "unknown_status",
                f"{job.provider} reported status {word}, which reelhook does not know; the job "
                "stays open until a status it knows (or its deadline) arrives",
                now,
            )
            noted = dataclasses.replace(job, notices=with_notice(job.notices, notice))
        if update.status is JobStatus.RUNNING and job.status is not JobStatus.RUNNING:
            # The rest of the body says it is in progress (apiframe's event name).
            running = dataclasses.replace(
                noted,
                status=JobStatus.RUNNING,
                provider_job_id=job.provider_job_id or update.provider_job_id,
                submitted_at=job.submitted_at or now,
            )
            return running, Outcome.APPLIED
        return (noted if noted is not job else None), Outcome.UNRECOGNISED
    if update.status.terminal:
        cost = job.cost
        if update.charged is not None:
            cost = cost.with_charge(update.charged, unknown=False)
        elif update.charge_unknown:
            cost = cost.with_charge(None, unknown=True)
        elif update.status is not JobStatus.SUCCEEDED:
            cost = cost.with_charge(0, unknown=cost.charged_unknown)
        # Built field by field, not by dataclasses.replace, which walks the class's fields on
        # every call (~4 of the event loop's µs per callback, docs/performance.md §4);
        # tests/test_lifecycle.py checks every field of Job is carried over.
        finished = Job(
            id=job.id,
            owner_key_id=job.owner_key_id,
            model=job.model,
            provider=job.provider,
            status=update.status,
            input=job.input,
            cost=cost,
            created_at=job.created_at,
            deadline_at=job.deadline_at,
            metadata=job.metadata,
            provider_job_id=job.provider_job_id or update.provider_job_id,
            outputs=update.outputs,
            error=update.error,
            submitted_at=job.submitted_at or now,
            completed_at=now,
            notices=job.notices,
        )
        return finished, Outcome.APPLIED
    if update.status is JobStatus.RUNNING and job.status is not JobStatus.RUNNING:
        changed = dataclasses.replace(
            job,
            status=JobStatus.RUNNING,
            provider_job_id=job.provider_job_id or update.provider_job_id,
            submitted_at=job.submitted_at or now,
        )
        return changed, Outcome.APPLIED
    return None, Outcome.STALE


@dataclass(frozen=True, slots=True)
class Update:
    """A verified provider update (callback or held answer) for one job, with its raw body.

    ``update`` is None for a verified body reelhook could not read (``problem`` says why): it is
    stored for audit as ``unreadable`` and noted on the job, which it does not move. ``route`` is
    how it arrived: ``job``, ``account`` or ``held``.
    """

    job_id: str
    provider: str
    update: ProviderUpdate | None
    raw: bytes
    route: str = "job"
    problem: str | None = None


Applied = tuple[Job, Outcome]
"""The job as it now is, and how the update was classified."""


async def apply_updates(
    conn: Connection,
    publisher: Publisher,
    batch: Sequence[Update],
    now: float,
    *,
    mirror: bool = False,
    hot: HotClaims | None = None,
) -> list[Applied | UnknownJob | JobMismatch]:
    """Apply updates in order inside the caller's transaction, with a fixed number of statements.

    Each applied or ignored update is stored for audit, each job moves at most once per update,
    and every move appends its event with deliveries. An update naming an unknown job or a
    different provider job gets :class:`UnknownJob` or :class:`JobMismatch` as its result and
    writes nothing.

    With ``mirror``, a success with provider-hosted outputs queues their downloads instead of
    announcing it: :func:`record_mirror` publishes ``job.succeeded`` once the last one ends, so
    the event can carry ``mirror_url``.

    ``hot``: the ingest batch's room in the dispatcher's lanes, for deliveries written already
    claimed (:meth:`Publisher.publish_jobs`).
    """
    job_ids = list(dict.fromkeys(item.job_id for item in batch))
    if not job_ids:
        return []
    # The jobs and every subscription that may hear of them in one trip to the store
    # (docs/performance.md §4): read before it is known which jobs announce anything.
    found, listening = await conn.run_all(
        [jobs.select_many(conn, job_ids), subscriptions.listening_to_jobs(job_ids)]
    )
    current = jobs.by_id(found.rows)
    results: list[Applied | UnknownJob | JobMismatch] = []
    records: list[jobs.CallbackRecord] = []
    changed: dict[str, Job] = {}
    announced: list[tuple[str, Job]] = []
    copies: list[tuple[str, list[tuple[int, str]]]] = []
    # Whether a job learns its provider job id here; if none does, the stored ids are left
    # as they are (jobs.save_many).
    provider_job_ids = False
    for item in batch:
        job = current.get(item.job_id)
        if job is None or job.provider != item.provider:
            results.append(UnknownJob(item.job_id))
            continue
        if item.update is None:
            notice = Notice(
                "unreadable_callback",
                f"a verified {item.provider} callback could not be read "
                f"({item.problem or 'unknown problem'}); its body is kept in the audit log",
                now,
            )
            noted = dataclasses.replace(job, notices=with_notice(job.notices, notice))
            current[job.id] = changed[job.id] = noted
            records.append(
                jobs.CallbackRecord(
                    job.id, item.provider, now, Outcome.UNREADABLE.value, item.raw, item.route
                )
            )
            results.append((noted, Outcome.UNREADABLE))
            continue
        claimed = item.update.provider_job_id
        if (
            job.provider_job_id is not None
            and claimed is not None
            and job.provider_job_id != claimed
        ):
            results.append(JobMismatch(item.job_id))
            continue
        moved, outcome = transition(job, item.update, now)
        records.append(
            jobs.CallbackRecord(job.id, item.provider, now, outcome.value, item.raw, item.route)
        )
        if moved is not None:
            current[job.id] = changed[job.id] = moved
            if moved.provider_job_id != job.provider_job_id:
                provider_job_ids = True
            # A notice alone (late result, unknown status) is saved but announces nothing.
            if moved.status is not job.status:
                to_copy = _provider_hosted(moved) if mirror else []
                event_type = event_type_for(moved.status)
                if to_copy:
                    copies.append((job.id, to_copy))
                elif event_type is not None:
                    announced.append((event_type, moved))
        results.append((moved or job, outcome))
    await jobs.record_callbacks(conn, records)
    if changed:
        await jobs.save_many(conn, changed.values(), now, provider_job_ids=provider_job_ids)
    for job_id, to_copy in copies:
        await mirrors.enqueue(conn, job_id, to_copy, now)
    if announced:
        await publisher.publish_jobs(conn, announced, now, hot, listening=listening.rows)
    return results


async def apply_update(
    db: Database,
    publisher: Publisher,
    *,
    job_id: str,
    provider: str,
    update: ProviderUpdate,
    raw: bytes,
    now: float,
    mirror: bool = False,
    route: str = "job",
) -> Applied:
    """:func:`apply_updates` for one update in its own transaction.

    Raises :class:`UnknownJob` or :class:`JobMismatch` (having written nothing) instead of
    returning them.
    """
    async with db.transaction() as conn:
        (result,) = await apply_updates(
            conn, publisher, [Update(job_id, provider, update, raw, route)], now, mirror=mirror
        )
    if isinstance(result, Exception):
        raise result
    return result


def _provider_hosted(job: Job) -> list[tuple[int, str]]:
    """(index, url) of each output of a succeeded job that only the provider holds."""
    if job.status is not JobStatus.SUCCEEDED:
        return []
    return [(i, o.url) for i, o in enumerate(job.outputs) if o.url and o.blob is None]


async def record_mirror(
    db: Database,
    publisher: Publisher,
    task: MirrorTask,
    result: Mirrored | str,
    now: float,
) -> Job | None:
    """Record how one queued download ended: the stored copy, or the reason it failed.

    When it was the job's last pending download, ``job.succeeded`` is published, carrying a
    ``mirror_url`` for each copied output and ``mirror_error`` for each that could not be copied
    (its provider ``url`` stays). Returns the job when its event was published.
    """
    async with db.transaction() as conn:
        job = await jobs.get(conn, task.job_id)
        if job is None or task.output_index >= len(job.outputs):
            await mirrors.finish(conn, task, error="the job or output no longer exists", now=now)
            return None
        error = None if isinstance(result, Mirrored) else result
        if not await mirrors.finish(conn, task, error=error, now=now):
            # Already recorded (and announced) by another run of the same download.
            return None
        output = job.outputs[task.output_index]
        if isinstance(result, Mirrored):
            output = dataclasses.replace(
                output, blob=result.digest, media_type=result.media_type, mirror_error=None
            )
        else:
            output = dataclasses.replace(output, mirror_error=result)
        outputs = list(job.outputs)
        outputs[task.output_index] = output
        job = dataclasses.replace(job, outputs=tuple(outputs))
        await jobs.save(conn, job, now)
        if await mirrors.open_for_job(conn, job.id):
            return None
        event_type = event_type_for(job.status)
        if event_type is not None:
            await publisher.publish(conn, event_type, now, job=job)
        return job


async def expire_overdue(db: Database, publisher: Publisher, now: float, limit: int) -> list[Job]:
    """Expire up to ``limit`` unfinished jobs whose deadline has passed, each with its
    ``job.expired`` event and deliveries, in one transaction; return them."""
    async with db.transaction() as conn:
        overdue = await jobs.past_deadline(conn, now, limit)
        expired = []
        for job in overdue:
            waited = job.deadline_at - job.created_at
            # Nothing was heard, so whether the provider billed is unknown (not zero).
            cost = job.cost
            if cost.charged is None:
                cost = dataclasses.replace(cost, charged_unknown=True)
            changed = dataclasses.replace(
                job,
                status=JobStatus.EXPIRED,
                cost=cost,
                error=JobError(
                    ErrorKind.TIMEOUT,
                    f"{job.provider} sent no result within {waited:g} seconds",
                ),
                completed_at=now,
            )
            await jobs.save(conn, changed, now)
            await publisher.publish(conn, "job.expired", now, job=changed)
            expired.append(changed)
        return expired


class NotCancelable(Exception):
    """The job has already finished (its status is the message)."""


async def cancel(db: Database, publisher: Publisher, job_id: str, now: float) -> Job | None:
    """Cancel an unfinished job and announce ``job.canceled``; return it (None: no such job).

    The provider is not told (none of the three offers a cancel call), so it may still finish
    the work: a result arriving afterwards meets a terminal job, is stored for audit as ``late``
    and changes nothing (:func:`transition`). A pending job is never submitted (the submit queue
    takes only pending jobs) and costs nothing; a submitted one may still be charged by the
    provider, so its charge stays unknown. Raises :class:`NotCancelable` for a finished job.
    """
    async with db.transaction() as conn:
        current = await jobs.get(conn, job_id)
        if current is None:
            return None
        if current.status.terminal:
            raise NotCancelable(current.status.value)
        canceled = dataclasses.replace(
            current,
            status=JobStatus.CANCELED,
            error=JobError(
                ErrorKind.CANCELED,
                "canceled through the API"
                + (
                    ""
                    if current.status is JobStatus.PENDING
                    else f"; {current.provider} was not told and may still finish it"
                ),
            ),
            cost=(
                dataclasses.replace(current.cost, charged=0)
                if current.status is JobStatus.PENDING
                else current.cost
            ),
            completed_at=now,
        )
        await jobs.save(conn, canceled, now)
        await publisher.publish(conn, "job.canceled", now, job=canceled)
        return canceled


async def mark_submitted(
    db: Database,
    publisher: Publisher,
    job_id: str,
    provider_job_id: str | None,
    now: float,
    *,
    token: int,
) -> tuple[Job | None, bool]:
    """The provider accepted a pending job, sent under the submit claim ``token``: move it to
    submitted and announce it.

    Returns the job as it now is and whether it moved. A callback that overtook the provider's
    answer has already moved the job on; then only its provider job id is filled in. When the
    claim is no longer current (another node took the job over), nothing is written: that node's
    own attempt decides (docs/scaling.md).
    """
    async with db.transaction() as conn:
        if not await submissions.settle(conn, job_id, token):
            _refused_late(job_id, "acceptance")
            return await jobs.get(conn, job_id), False
        current = await jobs.get(conn, job_id)
        if current is None:
            return None, False
        if current.status is not JobStatus.PENDING:
            if current.provider_job_id is None and provider_job_id is not None:
                current = dataclasses.replace(current, provider_job_id=provider_job_id)
                await jobs.save(conn, current, now)
                current = await _apply_unmatched(conn, publisher, current, now) or current
            return current, False
        submitted = dataclasses.replace(
            current,
            status=JobStatus.SUBMITTED,
            provider_job_id=provider_job_id or current.provider_job_id,
            submitted_at=current.submitted_at or now,
        )
        await jobs.save(conn, submitted, now)
        if current.submitted_at is None:
            # Announced once (a Segmind job an older reelhook put back to pending was sent).
            await publisher.publish(conn, "job.submitted", now, job=submitted)
        if submitted.provider_job_id is not None:
            submitted = await _apply_unmatched(conn, publisher, submitted, now) or submitted
        return submitted, True


async def _apply_unmatched(
    conn: Connection, publisher: Publisher, job: Job, now: float
) -> Job | None:
    """Apply account-webhook documents that arrived for ``job``'s provider job id before reelhook
    knew it (the result overtook the provider's answer to the submit). Returns the job after them,
    or None when there were none."""
    assert job.provider_job_id is not None
    bodies = await jobs.claim_unmatched(conn, job.provider, job.provider_job_id, job.id)
    if not bodies:
        return None
    adapter = CALLBACK_ADAPTERS[job.provider]
    batch = []
    for body in bodies:
        try:
            update = adapter.parse_callback(body)
            batch.append(Update(job.id, job.provider, update, body, "account"))
        except InvalidCallback as exc:
            batch.append(Update(job.id, job.provider, None, body, "account", str(exc)))
    results = await apply_updates(conn, publisher, batch, now)
    applied = [result for result in results if not isinstance(result, Exception)]
    return applied[-1][0] if applied else None


async def refuse(
    db: Database, publisher: Publisher, job_id: str, error: JobError, now: float, *, token: int
) -> bool:
    """The provider refused a pending job sent under the submit claim ``token``: fail it
    (nothing charged) and announce it.

    A job that is no longer pending was moved on by a callback, which is the better witness of
    what the provider did, so it is left alone; so is a job whose claim is no longer current.
    Returns whether the job was failed.
    """
    async with db.transaction() as conn:
        if not await submissions.settle(conn, job_id, token):
            _refused_late(job_id, "refusal")
            return False
        current = await jobs.get(conn, job_id)
        if current is None or current.status is not JobStatus.PENDING:
            return False
        failed = dataclasses.replace(
            current,
            status=JobStatus.FAILED,
            error=error,
            cost=dataclasses.replace(current.cost, charged=0),
            completed_at=now,
        )
        await jobs.save(conn, failed, now)
        await publisher.publish(conn, "job.failed", now, job=failed)
        return True


async def defer_submit(
    db: Database,
    job_id: str,
    next_at: float,
    reason: str,
    now: float,
    *,
    token: int,
    held: bool = False,
) -> bool:
    """Schedule another submit attempt of a job the provider throttled or did not answer, sent
    under the submit claim ``token``.

    A pending job stays pending, due again at ``next_at``; so does a ``held`` request the provider
    refused before doing any work, which stays submitted (a job's status only moves forward). A
    job a callback has moved on is left alone, and so is one whose claim is no longer current.
    Returns whether the attempt was scheduled.
    """
    waiting = (JobStatus.PENDING, JobStatus.SUBMITTED) if held else (JobStatus.PENDING,)
    async with db.transaction() as conn:
        if not await submissions.settle(conn, job_id, token):
            _refused_late(job_id, "retry")
            return False
        current = await jobs.get(conn, job_id)
        if current is None or current.status not in waiting:
            return False
        await submissions.schedule(conn, job_id, next_at=next_at, last_error=reason[:500])
        return True


async def hold_due_requests(
    conn: Connection,
    publisher: Publisher,
    providers: Sequence[str],
    now: float,
    limit: int,
    *,
    held_by: str,
    node_timeout: float,
    skip: Collection[str] = (),
) -> list[SubmitClaim]:
    """Claim up to ``limit`` due held requests of ``providers`` for the node ``held_by``, each
    as it will be sent.

    ``held_by`` (the claiming node) is recorded on each job with the claim's fencing token, so
    that with several nodes only a dead node's held requests are ever recovered
    (docs/scaling.md); ``skip`` and ``node_timeout`` are as for
    :func:`~service.storage.submissions.claim_due`.

    A pending job becomes submitted, announced once; one sent before (refused without any work
    done, or resubmitted after a restart) already is. Either way it has no submit due while its
    request is held, which is how a restart recognises a request that was in flight. Returns the
    jobs with their attempt numbers. Run inside a write transaction.
    """
    claimed = await submissions.claim_due(
        conn,
        providers=providers,
        now=now,
        lease_until=None,
        limit=limit,
        owner=held_by,
        node_timeout=node_timeout,
        skip=skip,
        statuses=HELD_WAITING,
    )
    sent = []
    for job, attempt, token in claimed:
        if job.status is JobStatus.PENDING:
            announce = job.submitted_at is None  # else put back to pending by an older reelhook
            job = dataclasses.replace(
                job, status=JobStatus.SUBMITTED, submitted_at=job.submitted_at or now
            )
            await jobs.save(conn, job, now)
            if announce:
                await publisher.publish(conn, "job.submitted", now, job=job)
        sent.append(SubmitClaim(job, attempt, token))
    return sent


def _refused_late(job_id: str, what: str) -> None:
    log.warning(
        "the %s of job %s came under a submit claim that is no longer current (another node "
        "took the job over); not recorded",
        what,
        job_id,
    )


#: The statuses of a held request waiting to be sent: never sent, or sent and refused unworked.
HELD_WAITING = (JobStatus.PENDING, JobStatus.SUBMITTED)
