"""Submitting jobs: validate, store, send to the provider, and record what it answered."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from service.core.clock import Clock
from service.core.errors import Conflict, ProviderFailed, ProviderUnavailable, ValidationFailed
from service.core.ids import new_id
from service.core.jsonutil import dumps
from service.core.models import (
    JOB_EVENT_TYPES,
    Cost,
    ErrorKind,
    Job,
    JobError,
    JobStatus,
    Subscription,
    SubscriptionStatus,
)
from service.core.tokens import Tokens
from service.delivery import signing
from service.delivery.publisher import Publisher
from service.jobs.catalog import MODELS
from service.jobs.lifecycle import defer_submit, mark_submitted, refuse
from service.jobs.submit_retry import SubmitRetryPolicy
from service.net.guard import IPNetwork, check_url
from service.providers import ADAPTERS
from service.providers.base import InvalidCallback, SubmitFailed, redact
from service.storage import jobs, submissions, subscriptions
from service.storage.database import Database

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = 24 * 3600.0
_JOB_FIELDS = {"model", "input", "metadata", "callback_url"}
_MAX_METADATA_BYTES = 8192


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """Where reelhook sends one provider's requests (the simulator when no key is configured)."""

    name: str
    base_url: str
    api_key: str
    simulated: bool


@dataclass(frozen=True, slots=True)
class Created:
    job: Job
    replayed: bool = False
    callback_secret: str | None = None


class Submitter:
    """Creates jobs and submits them to their providers, retrying durably when a provider
    throttles, fails or does not answer (``run_retries`` is the lifespan worker for that)."""

    def __init__(
        self,
        *,
        db: Database,
        publisher: Publisher,
        client: httpx.AsyncClient,
        tokens: Tokens,
        endpoints: dict[str, ProviderEndpoint],
        public_url: str,
        clock: Clock,
        job_deadline: float,
        allow_private: tuple[IPNetwork, ...],
        deadlines: Mapping[str, float] | None = None,
        retry_policy: SubmitRetryPolicy,
        lease: float,
        retry_concurrency: int = 16,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._client = client
        self._tokens = tokens
        self._endpoints = endpoints
        self._public_url = public_url
        self._clock = clock
        self._job_deadline = job_deadline
        self._allow_private = allow_private
        self._deadlines = deadlines or {}
        self._retry_policy = retry_policy
        self._lease = lease
        self._retry_concurrency = retry_concurrency
        self._rng = rng
        self._retries_wake = anyio.Event()
        # Providers whose submits this Submitter sends itself (Segmind's are held elsewhere).
        self._sent_here = tuple(name for name in endpoints if not ADAPTERS[name].holds_request)

    def wake(self) -> None:
        """A submit may be due sooner than the retry worker sleeps (``Work.SUBMITS``)."""
        self._retries_wake.set()

    def callback_url(self, job: Job) -> str:
        token = self._tokens.callback(job.id, job.provider)
        return f"{self._public_url}/v1/callbacks/{job.provider}/{token}"

    async def create(self, owner_key_id: str, body: Any, idempotency_key: str | None) -> Created:
        """Validate ``body`` (the ``POST /v1/jobs`` JSON), store the job and submit it.

        The job comes back submitted, or still pending when the provider throttled, failed or did
        not answer (the next attempt is scheduled). Raises ``ValidationFailed`` for bad input or a
        provider's refusal of the input, ``Conflict`` when ``idempotency_key`` was used for a
        different body, and ``ProviderFailed`` when the provider refuses the job for any other
        reason (the job is then stored as failed, with its event).
        """
        job, callback_url = self._parse(owner_key_id, body)
        # Key order is not meaning: the same object sent twice must hash the same.
        request_hash = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        now = self._clock()
        callback_secret: str | None = None
        async with self._db.transaction() as conn:
            if idempotency_key is not None:
                found = await jobs.find_by_idempotency_key(
                    conn, owner_key_id, idempotency_key, now - IDEMPOTENCY_WINDOW
                )
                if found is not None:
                    if found[1] != request_hash:
                        raise Conflict(
                            "Idempotency-Key was already used with a different request body",
                            details={"job_id": found[0].id},
                        )
                    return Created(found[0], replayed=True)
                await jobs.release_idempotency_key(conn, owner_key_id, idempotency_key)
            await jobs.insert(conn, job, idempotency_key=idempotency_key, request_hash=request_hash)
            held = ADAPTERS[job.provider].holds_request
            # The first attempt is made right here, under a lease: should reelhook stop before it
            # is answered, the retry worker sends it again (idempotently) once the lease ends.
            await submissions.schedule(
                conn,
                job.id,
                next_at=now if held else now + self._lease,
                attempts=0 if held else 1,
            )
            if callback_url is not None:
                callback_secret = signing.new_secret()
                await subscriptions.insert(conn, self._one_off(job, callback_url, callback_secret))
        if held:
            return Created(job, callback_secret=callback_secret)
        try:
            submitted = await self._attempt(job, 1)
        except (ProviderFailed, ValidationFailed) as refused:
            if callback_secret is not None:
                # The job.failed event still goes to callback_url; this is the only answer
                # that can carry the secret to verify it.
                refused.details["callback_secret"] = callback_secret
            raise
        return Created(submitted, callback_secret=callback_secret)

    def _parse(self, owner_key_id: str, body: Any) -> tuple[Job, str | None]:
        if not isinstance(body, dict):
            raise ValidationFailed("the request body must be a JSON object")
        unknown = sorted(set(body) - _JOB_FIELDS)
        if unknown:
            raise ValidationFailed.fields({name: "unknown field" for name in unknown})
        model = body.get("model")
        if not isinstance(model, str):
            raise ValidationFailed.field("model", "is required (see GET /v1/models)")
        spec = MODELS.get(model)
        if spec is None:
            raise ValidationFailed.field(
                "model", f"unknown model {model!r} (available: {', '.join(MODELS)})"
            )
        if spec.provider not in self._endpoints:
            variable = f"REELHOOK_{spec.provider.upper()}_API_KEY"
            raise ProviderUnavailable(
                f"{spec.provider} is not configured on this server (it needs {variable})",
                details={"provider": spec.provider},
            )
        if "input" not in body:
            raise ValidationFailed.field("input", "is required")
        clean = spec.validate(body["input"])
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValidationFailed.field("metadata", "must be an object")
        if len(dumps(metadata)) > _MAX_METADATA_BYTES:
            raise ValidationFailed.field("metadata", f"must be under {_MAX_METADATA_BYTES} bytes")
        callback_url = body.get("callback_url")
        if callback_url is not None:
            problem = (
                "must be a string"
                if not isinstance(callback_url, str)
                else check_url(callback_url, self._allow_private)
            )
            if problem:
                raise ValidationFailed.field("callback_url", problem)
        now = self._clock()
        job = Job(
            id=new_id("job"),
            owner_key_id=owner_key_id,
            model=model,
            provider=spec.provider,
            status=JobStatus.PENDING,
            input=clean,
            cost=Cost(estimated=round(spec.price.estimate(clean), 4), unit=spec.price.unit),
            metadata=metadata,
            created_at=now,
            deadline_at=now + self._deadlines.get(model, self._job_deadline),
        )
        return job, callback_url

    def _one_off(self, job: Job, url: str, secret: str) -> Subscription:
        return Subscription(
            id=new_id("sub"),
            owner_key_id=job.owner_key_id,
            url=url,
            secret=secret,
            event_types=JOB_EVENT_TYPES,
            models=(),
            headers={},
            description=f"callback_url of {job.id}",
            status=SubscriptionStatus.ACTIVE,
            created_at=job.created_at,
            updated_at=job.created_at,
            job_id=job.id,
        )

    async def _attempt(self, job: Job, attempt: int) -> Job:
        """Make submit attempt number ``attempt`` of a pending job; return the job after it.

        The job ends submitted, stays pending with its next attempt scheduled, or fails; a failure
        raises the client's error (``ValidationFailed`` for the input's fault, ``ProviderFailed``
        otherwise), carrying the provider's message.
        """
        try:
            provider_job_id = await self._send(job)
        except SubmitFailed as failure:
            if await self._retry_later(job, attempt, failure):
                return await jobs.get(self._db.reader, job.id) or job
            raise _client_error(job, failure) from None
        return await self._mark_submitted(job, provider_job_id)

    async def _send(self, job: Job) -> str:
        """Send ``job`` to its provider; the provider's job id, or :class:`SubmitFailed`."""
        endpoint = self._endpoints[job.provider]
        adapter = ADAPTERS[job.provider]
        request = adapter.submit_request(job, self.callback_url(job), endpoint.api_key)
        try:
            try:
                response = await self._client.post(
                    endpoint.base_url + request.path, json=request.json, headers=request.headers
                )
            except httpx.TimeoutException:
                raise SubmitFailed(
                    ErrorKind.TIMEOUT, f"{job.provider} did not answer in time", retryable=True
                ) from None
            except httpx.HTTPError as exc:
                raise SubmitFailed(
                    ErrorKind.PROVIDER_ERROR,
                    f"could not reach {job.provider}: {type(exc).__name__}",
                    retryable=True,
                ) from None
            if not response.is_success:
                raise adapter.failure(response.status_code, response.content, response.headers)
            try:
                return adapter.accepted_job_id(response.json())
            except (ValueError, InvalidCallback) as exc:
                # It may have accepted the job all the same; sending it again is idempotent.
                raise SubmitFailed(
                    ErrorKind.PROVIDER_ERROR,
                    f"unreadable answer from {job.provider}: {exc}",
                    status_code=response.status_code,
                    retryable=True,
                ) from None
        except SubmitFailed as failure:
            # Whatever a provider echoes back, reelhook's key for it is never repeated.
            failure.message = redact(failure.message, endpoint.api_key)
            raise

    async def _retry_later(self, job: Job, attempt: int, failure: SubmitFailed) -> bool:
        """Schedule the next attempt after a retryable failure; otherwise fail the job.

        Returns True when another attempt is scheduled (or a callback already moved the job on).
        """
        now = self._clock()
        if failure.retryable:
            next_at = self._retry_policy.next_attempt_at(
                attempt,
                now,
                deadline=job.deadline_at,
                retry_after=failure.retry_after,
                rng=self._rng,
            )
            if next_at is not None:
                log.warning(
                    "%s did not accept job %s (attempt %d: %s, HTTP %s); next attempt in %.1f s",
                    job.provider,
                    job.id,
                    attempt,
                    failure.kind,
                    failure.status_code,
                    next_at - now,
                )
                reason = f"{failure.kind}: {failure.message}"
                await defer_submit(self._db, job.id, next_at, reason, now)
                return True
            failure.message = (
                f"{job.provider} did not accept the job after {attempt} "
                f"attempt{'s' if attempt > 1 else ''}: {failure.message}"
            )
        await self._fail(job, failure)
        return False

    async def run_retries(self) -> None:
        """The lifespan worker: resubmit pending jobs when due, until cancelled.

        Sleeps until the earliest due attempt (or lease end) and is woken in-process when a retry
        is scheduled; it never polls the database on a fixed tick. Jobs left pending by a stop are
        picked up when their lease ends.
        """
        in_flight = 0

        async def attempt(job: Job, number: int) -> None:
            nonlocal in_flight
            try:
                await self._attempt(job, number)
            except (ProviderFailed, ValidationFailed):
                pass  # the job failed with its event; there is no client waiting for an answer
            except Exception:
                log.exception(
                    "resubmitting job %s failed; it is retried when its lease ends", job.id
                )
            finally:
                in_flight -= 1
                self._retries_wake.set()

        async with anyio.create_task_group() as tg:
            while True:
                self._retries_wake = anyio.Event()
                capacity = self._retry_concurrency - in_flight
                try:
                    now = self._clock()
                    async with self._db.transaction() as conn:
                        claimed = await submissions.claim_due(
                            conn,
                            providers=self._sent_here,
                            now=now,
                            lease_until=now + self._lease,
                            limit=capacity,
                        )
                    due = await submissions.next_due_at(self._db.reader, self._sent_here)
                except Exception:
                    log.exception("could not read the jobs due for a submit; retrying in a second")
                    await anyio.sleep(1)
                    continue
                for job, number in claimed:
                    in_flight += 1
                    tg.start_soon(attempt, job, number)
                timeout: float | None = None
                if due is not None:
                    timeout = max(0.0, due - self._clock())
                if capacity <= len(claimed) and timeout == 0.0:
                    timeout = None  # all slots busy: a finishing attempt wakes us
                with anyio.move_on_after(timeout):
                    await self._retries_wake.wait()

    async def _mark_submitted(self, job: Job, provider_job_id: str) -> Job:
        current, _ = await mark_submitted(
            self._db, self._publisher, job.id, provider_job_id, self._clock()
        )
        return current or job

    async def _fail(self, job: Job, failure: SubmitFailed) -> None:
        log.warning(
            "%s refused job %s: HTTP %s %s", job.provider, job.id, failure.status_code, failure.kind
        )
        error = JobError(
            failure.kind,
            failure.message,
            failure.provider_code or (str(failure.status_code) if failure.status_code else None),
        )
        await refuse(self._db, self._publisher, job.id, error, self._clock())


def _client_error(job: Job, failure: SubmitFailed) -> ProviderFailed | ValidationFailed:
    details = {
        "job_id": job.id,
        "kind": failure.kind.value,
        "provider": job.provider,
        "provider_status": failure.status_code,
    }
    message = failure.message
    if not message.startswith(job.provider):
        message = f"{job.provider} refused the job: {message}"
    if failure.kind in (ErrorKind.INVALID_INPUT, ErrorKind.CONTENT_POLICY):
        return ValidationFailed(message, details=details)
    if failure.retryable:
        # Retryable, but no attempt fits before the job's deadline: the client may try again.
        headers = {"Retry-After": str(int(failure.retry_after))} if failure.retry_after else None
        return ProviderUnavailable(message, details=details, headers=headers)
    return ProviderFailed(message, details=details)
