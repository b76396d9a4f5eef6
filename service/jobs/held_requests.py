"""Segmind's held requests: a durable worker turns the synchronous answer into a job update.

Pending Segmind jobs live in SQLite; the worker is woken when one is created (and otherwise sleeps
until the next one is due), marks it submitted, holds the request open, streams the mp4 into the
blob store and feeds the result into the same lifecycle path a webhook takes. A request that was in
flight when reelhook stopped cannot be resumed, and sending it again would charge twice, so at
start-up such jobs end ``interrupted`` — unless ``REELHOOK_SEGMIND_RESUBMIT`` allows sending each
such job once more. A request Segmind refused before doing any work (a 429, or no connection at
all) is sent again, on the submit retry schedule.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

import anyio
import anyio.abc
import httpx

from service.core.clock import Clock
from service.core.jsonutil import dumps_bytes, finite_number
from service.core.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import apply_update, defer_submit, mark_submitted
from service.jobs.submission import ProviderEndpoint
from service.jobs.submit_retry import SubmitRetryPolicy
from service.providers import segmind
from service.providers.base import SubmitFailed, redact
from service.storage import jobs, submissions
from service.storage.blobs import BlobStore, BlobTooLarge
from service.storage.database import Database

log = logging.getLogger(__name__)

PROVIDER = "segmind"
_PROVIDERS = (PROVIDER,)


class HeldRequests:
    def __init__(
        self,
        *,
        db: Database,
        publisher: Publisher,
        client: httpx.AsyncClient,
        blobs: BlobStore,
        endpoint: ProviderEndpoint | None,
        clock: Clock,
        concurrency: int,
        timeout: float,
        max_bytes: int,
        retry_policy: SubmitRetryPolicy,
        resubmit: bool = False,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._client = client
        self._blobs = blobs
        self._endpoint = endpoint
        self._clock = clock
        self._concurrency = concurrency
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._retry_policy = retry_policy
        self._resubmit = resubmit
        self._rng = rng
        self._wake = anyio.Event()
        self._holding: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """End (or resend) requests lost to a restart, then hold each due job's request until
        cancelled."""
        resend = await self._recover_lost()
        if self._endpoint is None:
            return  # Segmind is not configured, so no job can be waiting for it
        async with anyio.create_task_group() as tg:
            for job in resend:
                self._holding.add(job.id)
                tg.start_soon(self._hold, job, 1, True)
            while True:
                self._wake = anyio.Event()
                capacity = self._concurrency - len(self._holding)
                try:
                    now = self._clock()
                    async with self._db.transaction() as conn:
                        # The lease only matters if reelhook stops before marking the job
                        # submitted below: then the request was never sent and is due again.
                        claimed = await submissions.claim_due(
                            conn,
                            providers=_PROVIDERS,
                            now=now,
                            lease_until=now + 60,
                            limit=capacity,
                        )
                    due = await submissions.next_due_at(self._db.reader, _PROVIDERS)
                except Exception:
                    log.exception("could not read pending Segmind jobs; retrying in a second")
                    await anyio.sleep(1)
                    continue
                for job, attempt in claimed:
                    self._holding.add(job.id)
                    tg.start_soon(self._hold, job, attempt)
                timeout: float | None = None
                if due is not None:
                    timeout = max(0.0, due - self._clock())
                if capacity <= len(claimed) and timeout == 0.0:
                    timeout = None  # every slot is busy: a finishing request wakes us
                with anyio.move_on_after(timeout):
                    await self._wake.wait()

    async def _recover_lost(self) -> list[Job]:
        """End each job whose request was in flight at the last stop ``interrupted``, or, where
        resubmitting is allowed and was not used yet for it, return it to be sent once more."""
        in_flight = (JobStatus.SUBMITTED, JobStatus.RUNNING)
        if self._db.dialect == "sqlite":
            # One process owns the file: every held request was the previous run's.
            lost = await jobs.with_status(self._db.reader, PROVIDER, in_flight)
        else:
            # Several nodes: only requests whose node is dead (docs/scaling.md).
            lost = await jobs.held_by_the_dead(
                self._db.reader, PROVIDER, in_flight, self._db.node_timeout
            )
        resend = []
        for job in lost:
            if await self._claim_resubmit(job):
                log.warning(
                    "segmind job %s was in flight at the last stop; sending it again", job.id
                )
                resend.append(job)
                continue
            log.warning(
                "segmind job %s was in flight at the last stop; marking it interrupted", job.id
            )
            if self._resubmit:
                message = (
                    "reelhook restarted while holding the Segmind request, which had already "
                    "been sent again once; not sent a third time"
                )
            else:
                message = (
                    "reelhook restarted while holding the Segmind request; not resubmitted "
                    "because that would be charged twice (REELHOOK_SEGMIND_RESUBMIT allows it)"
                )
            await self._finish(
                job,
                ProviderUpdate(
                    provider_job_id=None,
                    status=JobStatus.FAILED,
                    error=JobError(ErrorKind.INTERRUPTED, message),
                ),
                {"interrupted": True},
            )
        return resend

    async def _claim_resubmit(self, job: Job) -> bool:
        """Durably use up the one resubmission of ``job``; False when it is not allowed."""
        if not self._resubmit or self._endpoint is None or job.deadline_at <= self._clock():
            return False
        async with self._db.transaction() as conn:
            if await jobs.held_resubmits(conn, job.id) >= 1:
                return False
            await jobs.count_held_resubmit(conn, job.id, self._clock())
            await jobs.hold(conn, job.id, self._db.node_id)
        return True

    async def _hold(self, job: Job, attempt: int, resubmitted: bool = False) -> None:
        try:
            if resubmitted or await self._mark_submitted(job):
                update, summary, refused = await self._request(job)
                if resubmitted:
                    summary["resubmitted"] = True
                if refused is not None:
                    if await self._retry_later(job, attempt, refused):
                        return
                    error = JobError(
                        refused.kind,
                        f"segmind did not accept the job after {attempt} attempt"
                        f"{'s' if attempt > 1 else ''}: {refused.message}",
                        refused.provider_code,
                    )
                    update = _failed(error)
                await self._finish(job, update, summary)
        except Exception as exc:
            log.exception("holding the Segmind request of job %s failed", job.id)
            with contextlib.suppress(Exception):
                error = JobError(ErrorKind.PROVIDER_ERROR, f"internal error: {type(exc).__name__}")
                await self._finish(job, _failed(error), {"error": type(exc).__name__})
        finally:
            self._holding.discard(job.id)
            self.wake()

    async def _mark_submitted(self, job: Job) -> bool:
        _, moved = await mark_submitted(
            self._db, self._publisher, job.id, None, self._clock(), held_by=self._db.node_id
        )
        return moved

    async def _retry_later(self, job: Job, attempt: int, refused: SubmitFailed) -> bool:
        """Put a job Segmind refused before doing any work back to pending, due again on the
        retry schedule; False when the budget is spent (the caller then fails the job)."""
        now = self._clock()
        next_at = self._retry_policy.next_attempt_at(
            attempt, now, deadline=job.deadline_at, retry_after=refused.retry_after, rng=self._rng
        )
        if next_at is None:
            return False
        log.warning(
            "segmind did not accept job %s (attempt %d: %s); next attempt in %.1f s",
            job.id,
            attempt,
            refused.kind,
            next_at - now,
        )
        reason = f"{refused.kind}: {refused.message}"
        return await defer_submit(self._db, job.id, next_at, reason, now, requeue=True)

    async def _request(
        self, job: Job
    ) -> tuple[ProviderUpdate, dict[str, object], SubmitFailed | None]:
        """Hold the request: the job's update, a summary for the audit record, and the refusal
        when Segmind did no work and the request may be sent again."""
        assert self._endpoint is not None
        api_key = self._endpoint.api_key
        request = segmind.ADAPTER.submit_request(job, "", api_key)
        url = self._endpoint.base_url + request.path
        timeout = httpx.Timeout(self._timeout, connect=30.0)
        refused: SubmitFailed | None = None
        try:
            async with self._client.stream(
                "POST", url, json=request.json, headers=request.headers, timeout=timeout
            ) as response:
                summary: dict[str, object] = {
                    "status_code": response.status_code,
                    "content_type": response.headers.get("content-type"),
                    "credits_consumed": response.headers.get("x-credits-consumed"),
                }
                if response.status_code != 200:
                    body = await response.aread()
                    failure = segmind.ADAPTER.failure(response.status_code, body, response.headers)
                    failure.message = redact(failure.message, api_key)
                    summary["error"] = failure.message
                    error = JobError(failure.kind, failure.message, failure.provider_code)
                    return _failed(error), summary, failure if failure.retryable else None
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                if not media_type.startswith("video/"):
                    error = JobError(ErrorKind.PROVIDER_ERROR, "Segmind answered without a video")
                    return _failed(error), summary, None
                credits = _number(response.headers.get("x-credits-consumed"))
                digest, size = await self._blobs.write(response.aiter_bytes(), self._max_bytes)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection, so Segmind never saw the request: safe to send again.
            message = f"could not reach Segmind: {type(exc).__name__}"
            refused = SubmitFailed(ErrorKind.PROVIDER_ERROR, message, retryable=True)
            error = JobError(ErrorKind.PROVIDER_ERROR, message)
            return _failed(error), {"error": type(exc).__name__}, refused
        except httpx.TimeoutException:
            error = JobError(
                ErrorKind.TIMEOUT, f"Segmind did not answer within {self._timeout:g} s"
            )
            return _failed(error), {"error": "timeout"}, None
        except httpx.HTTPError as exc:
            error = JobError(ErrorKind.PROVIDER_ERROR, f"Segmind connection failed: {exc!r}")
            return _failed(error), {"error": type(exc).__name__}, None
        except BlobTooLarge as exc:
            error = JobError(ErrorKind.PROVIDER_ERROR, f"the video is too large to keep: {exc}")
            return _failed(error), {"error": "too large"}, None
        summary.update(sha256=digest, bytes=size)
        update = ProviderUpdate(
            provider_job_id=None,
            status=JobStatus.SUCCEEDED,
            outputs=(Output(url=None, type="video", blob=digest, media_type=media_type),),
            charged=credits,
        )
        return update, summary, None

    async def _finish(self, job: Job, update: ProviderUpdate, summary: dict[str, object]) -> None:
        await apply_update(
            self._db,
            self._publisher,
            job_id=job.id,
            provider=PROVIDER,
            update=update,
            raw=dumps_bytes({"held_response": summary}),
            now=self._clock(),
        )


def _failed(error: JobError) -> ProviderUpdate:
    return ProviderUpdate(provider_job_id=None, status=JobStatus.FAILED, error=error)


def _number(header: str | None) -> float | None:
    try:
        return finite_number(float(header)) if header else None
    except ValueError:
        return None
