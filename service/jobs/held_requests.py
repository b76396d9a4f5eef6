"""Segmind's held requests: a durable worker turns the synchronous answer into a job update.

A Segmind job's lifecycle only moves forward. The job is stored pending with its request due; the
worker (a :class:`~service.jobs.submit_queue.SubmitQueue`) claims it, which makes it submitted
(announced once) with no submit due while the request is held; it streams the mp4 into the blob
store and feeds the result into the same lifecycle path a webhook takes. A request Segmind refused
before doing any work (a 429, or no connection at all) is sent again on the submit retry schedule:
the job stays submitted with its next send due.

A request that was in flight when reelhook stopped cannot be resumed, and sending it again would
charge twice, so at start-up such jobs end ``interrupted`` — unless ``REELHOOK_SEGMIND_RESUBMIT``
allows sending each such job once more (it is then due again at once). With several nodes
(PostgreSQL) a node stopping does not restart anything: the leader recovers the requests of nodes
its stale-node sweep declared dead, and only theirs, never a live node's (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Collection

import anyio
import httpx

from service.core.clock import Clock
from service.core.jsonutil import dumps_bytes, finite_number
from service.core.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.core.retry import RetrySchedule
from service.core.worker import Wakeup, run_worker
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import HELD_WAITING, apply_update, defer_submit, hold_due_requests
from service.jobs.submission import ProviderEndpoint
from service.jobs.submit_queue import SubmitQueue
from service.jobs.submit_retry import GiveUp, decide
from service.net.failures import NETWORK_ERRORS, classify
from service.providers import segmind
from service.providers.base import Refusal
from service.storage import jobs, submissions
from service.storage.blobs import BlobStore, BlobTooLarge, BlobUnavailable
from service.storage.database import Connection, Database
from service.storage.submissions import SubmitClaim

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
        retry_schedule: RetrySchedule,
        resubmit: bool = False,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._client = client
        self._blobs = blobs
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._retry_schedule = retry_schedule
        self._resubmit = resubmit
        self._rng = rng
        self._orphans = Wakeup()
        self._queue = SubmitQueue(
            db,
            clock=clock,
            name="the Segmind held-request worker",
            claim=self._claim,
            next_due=self._next_due,
            attempt=self._hold,
            concurrency=concurrency,
        )

    def wake(self) -> None:
        self._queue.wake()

    def nodes_died(self) -> None:
        """The leader's sweep declared nodes dead (``Work.NODES``): recover what they held."""
        self._orphans.set()

    async def run(self) -> None:
        """End (or make due again) requests lost to a restart, then hold each due job's request
        until cancelled; with several nodes, also recover dead nodes' requests while leading."""
        await self._recover_lost()
        async with anyio.create_task_group() as tg:
            if self._db.dialect != "sqlite":
                tg.start_soon(
                    run_worker, "the Segmind recovery sweep", self.sweep_once, self._orphans
                )
            if self._endpoint is not None:
                # (Without it Segmind is not configured, so no job can be waiting for it.)
                tg.start_soon(self._queue.run)

    async def sweep_once(self) -> float | None:
        """One round of the leader's recovery of dead nodes' requests (a singleton, as the
        deadline timer is: nothing happens off the leader); returns when to look again."""
        if not self._db.is_leader:
            return self._db.node_timeout / 4  # look again when leadership may have moved
        await self._recover_lost()
        # Woken by the sweep (``Work.NODES``); the period is a backstop for a lost wake-up.
        return self._db.node_timeout

    async def _claim(
        self, conn: Connection, now: float, limit: int, skip: Collection[str]
    ) -> list[SubmitClaim]:
        return await hold_due_requests(
            conn,
            self._publisher,
            _PROVIDERS,
            now,
            limit,
            held_by=self._db.node_id,
            node_timeout=self._db.node_timeout,
            skip=skip,
        )

    async def _next_due(self, conn: Connection, skip: Collection[str]) -> float | None:
        return await submissions.next_due_at(
            conn,
            _PROVIDERS,
            HELD_WAITING,
            owner=self._db.node_id,
            node_timeout=self._db.node_timeout,
            skip=skip,
        )

    async def _recover_lost(self) -> None:
        """End each job whose request was in flight at the last stop ``interrupted``, or, where
        resubmitting is allowed and was not used yet for it, make it due once more."""
        # With several nodes (PostgreSQL), only the held requests of dead nodes: a live node's
        # are its own business (docs/scaling.md). One process owns a SQLite file.
        alive_within = None if self._db.dialect == "sqlite" else self._db.node_timeout
        for job in await submissions.in_flight(
            self._db.reader, _PROVIDERS, alive_within=alive_within
        ):
            # Taken over first, under a row lock: of two nodes recovering at once (a paused
            # leader resuming beside the new one) only one acts on each job.
            async with self._db.transaction() as conn:
                taken = await submissions.take_orphan(
                    conn, job.id, self._db.node_id, self._db.node_timeout
                )
            if not taken:
                continue
            if await self._resubmit_once(job):
                log.warning(
                    "segmind job %s was in flight at the last stop; sending it again", job.id
                )
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
            error = JobError(ErrorKind.INTERRUPTED, message)
            # The request was in flight: Segmind may have rendered and billed it.
            await self._finish(job, _failed(error, charge_unknown=True), {"interrupted": True})

    async def _resubmit_once(self, job: Job) -> bool:
        """Durably use up the one resubmission of ``job`` and make it due now; False when it is
        not allowed."""
        now = self._clock()
        if not self._resubmit or self._endpoint is None or job.deadline_at <= now:
            return False
        async with self._db.transaction() as conn:
            if await jobs.held_resubmits(conn, job.id) >= 1:
                return False
            await jobs.count_held_resubmit(conn, job.id, now)
            await submissions.schedule(conn, job.id, next_at=now)
        return True

    async def _hold(self, claim: SubmitClaim) -> None:
        """Send the request of a claimed job and hold it until Segmind answers; never raises."""
        job, attempt = claim.job, claim.attempt
        try:
            update, summary, refusal = await self._request(job)
            if await jobs.held_resubmits(self._db.reader, job.id):
                summary["resubmitted"] = True
            if refusal is not None:
                decision = decide(
                    job, refusal, attempt, self._clock(), self._retry_schedule, self._rng
                )
                if not isinstance(decision, GiveUp):
                    log.warning(
                        "segmind did not accept job %s (attempt %d: %s); next attempt in %.1f s",
                        job.id,
                        attempt,
                        refusal.kind,
                        decision.at - self._clock(),
                    )
                    reason = f"{refusal.kind}: {refusal.message}"
                    if await defer_submit(
                        self._db,
                        job.id,
                        decision.at,
                        reason,
                        self._clock(),
                        token=claim.token,
                        held=True,
                    ):
                        return
                final = decision.refusal if isinstance(decision, GiveUp) else refusal
                update = _failed(JobError(final.kind, final.message, final.provider_code))
            await self._finish(job, update, summary)
        except Exception as exc:
            log.exception("holding the Segmind request of job %s failed", job.id)
            error = JobError(ErrorKind.PROVIDER_ERROR, f"internal error: {type(exc).__name__}")
            await self._finish(job, _failed(error), {"error": type(exc).__name__})

    async def _request(self, job: Job) -> tuple[ProviderUpdate, dict[str, object], Refusal | None]:
        """Hold the request: the job's update, a summary for the audit record, and the refusal
        when Segmind did no work and the request may be sent again."""
        assert self._endpoint is not None
        api_key = self._endpoint.api_key
        request = segmind.ADAPTER.submit_request(job, api_key)
        url = self._endpoint.base_url + request.path
        timeout = httpx.Timeout(self._timeout, connect=30.0)
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
                    failure = segmind.ADAPTER.failure(
                        response.status_code, body, response.headers
                    ).redacted(api_key)
                    summary["error"] = failure.message
                    error = JobError(failure.kind, failure.message, failure.provider_code)
                    # A 4xx is a refusal before any work (nothing billed); after a 5xx the
                    # generation may have run and been billed, and Segmind gave no figure.
                    unknown = response.status_code >= 500 or response.status_code == 408
                    update = _failed(error, charge_unknown=unknown)
                    return update, summary, failure if failure.retryable else None
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                if not media_type.startswith("video/"):
                    error = JobError(ErrorKind.PROVIDER_ERROR, "Segmind answered without a video")
                    credits = _number(response.headers.get("x-credits-consumed"))
                    update = _failed(error, charge_unknown=credits is None)
                    if credits is not None:
                        update = dataclasses.replace(update, charged=credits)
                    return update, summary, None
                credits = _number(response.headers.get("x-credits-consumed"))
                digest, size = await self._blobs.write(response.aiter_bytes(), self._max_bytes)
        except NETWORK_ERRORS as exc:
            what = classify(exc)
            if what.unsent and what.transient:
                # No connection, so Segmind never saw the request: safe to send again.
                message = f"could not reach Segmind: {type(exc).__name__}"
                refusal = Refusal(ErrorKind.PROVIDER_ERROR, message, retryable=True)
                error = JobError(ErrorKind.PROVIDER_ERROR, message)
                return _failed(error), {"error": type(exc).__name__}, refusal
            if what.timed_out:
                message = f"Segmind did not answer within {self._timeout:g} s"
                # The request was sent and may have been rendered and billed: unknown, not 0.
                update = _failed(JobError(ErrorKind.TIMEOUT, message), charge_unknown=True)
                return update, {"error": "timeout"}, None
            error = JobError(ErrorKind.PROVIDER_ERROR, f"Segmind connection failed: {exc!r}")
            return _failed(error, charge_unknown=True), {"error": type(exc).__name__}, None
        except (BlobTooLarge, BlobUnavailable) as exc:
            # Segmind's answer is the video itself, gone once read: a store that cannot keep it
            # (too large, or S3 unreachable) fails the job.
            too_large = isinstance(exc, BlobTooLarge)
            kind = "too large" if too_large else "blob store unavailable"
            problem = "is too large to keep" if too_large else "could not be stored"
            error = JobError(ErrorKind.PROVIDER_ERROR, f"the video {problem}: {exc}")
            # The video was made, so it was billed: the header's figure when there was one.
            update = _failed(error, charge_unknown=credits is None)
            if credits is not None:
                update = dataclasses.replace(update, charged=credits)
            return update, {"error": kind}, None
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
            route="held",
        )


def _failed(error: JobError, *, charge_unknown: bool = False) -> ProviderUpdate:
    return ProviderUpdate(
        provider_job_id=None, status=JobStatus.FAILED, error=error, charge_unknown=charge_unknown
    )


def _number(header: str | None) -> float | None:
    try:
        return finite_number(float(header)) if header else None
    except ValueError:
        return None
