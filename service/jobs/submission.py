"""Submitting jobs: validate, store, send to the provider, and record what it answered."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.core.body import Body, Field, JsonObject, Text
from service.core.clock import Clock
from service.core.errors import Conflict, ProviderFailed, ProviderUnavailable, ValidationFailed
from service.core.ids import new_id
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
from service.core.retry import RetrySchedule
from service.core.tokens import Tokens
from service.delivery import signing
from service.delivery.publisher import Publisher
from service.jobs.catalog import MODELS
from service.jobs.lifecycle import defer_submit, mark_submitted, refuse
from service.jobs.submit_queue import SubmitQueue
from service.jobs.submit_retry import RetryAt, decide
from service.net.failures import NETWORK_ERRORS, classify
from service.net.guard import IPNetwork, check_url
from service.providers import CALLBACK_ADAPTERS, HELD_ADAPTERS
from service.providers.base import InvalidCallback, Refusal, redact
from service.storage import jobs, submissions, subscriptions
from service.storage.database import Connection, Database
from service.storage.submissions import SubmitClaim

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = 24 * 3600.0
# The members of a job request besides ``model`` and ``input`` (which the model's spec declares).
JOB_EXTRAS = Body(
    (
        Field(
            "metadata",
            JsonObject(max_bytes=8192),
            "Yours, returned untouched in every event (at most 8 kB).",
        ),
        Field(
            "callback_url",
            Text("must be a string"),
            "Also send this job's events here, signed with the `callback_secret` returned once.",
            nullable=True,
        ),
    ),
    partial=True,
)
_JOB_FIELDS = {"model", "input", *(field.name for field in JOB_EXTRAS.fields)}


def _unknown_field(name: str) -> str:
    """The complaint about an unknown top-level field: a model parameter put beside ``input``
    (``{"prompt": …}`` is the usual first try) is told where it goes."""
    if any(param.name == name for spec in MODELS.values() for param in spec.params):
        return f'unknown field; model parameters go in input: {{"input": {{"{name}": …}}}}'
    return "unknown field"


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """Where reelhook sends one provider's requests (the simulator when no key is configured)."""

    name: str
    base_url: str
    api_key: str
    simulated: bool


@dataclass(frozen=True, slots=True)
class Providers:
    """How reelhook reaches the providers (``client``, one endpoint per available provider) and
    how they call it back (callback URLs under ``public_url``, with tokens from ``tokens``)."""

    client: httpx.AsyncClient
    endpoints: Mapping[str, ProviderEndpoint]
    tokens: Tokens
    public_url: str


@dataclass(frozen=True, slots=True)
class SubmitPolicy:
    """The rules a submission follows: how long a job may wait for its terminal callback
    (``deadlines`` per model, else ``job_deadline``), which private networks a callback_url may
    point to, and how submits are retried (``lease``: how long an attempt left unanswered by a
    stop is trusted to be still running; ``retry_concurrency``: retries in flight at once)."""

    job_deadline: float
    allow_private: tuple[IPNetwork, ...]
    retry_schedule: RetrySchedule
    lease: float
    deadlines: Mapping[str, float] = field(default_factory=dict)
    retry_concurrency: int = 16
    require_https: bool = False  # a plain-http callback_url is refused (production)


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
        db: Database,
        publisher: Publisher,
        clock: Clock,
        providers: Providers,
        policy: SubmitPolicy,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._require_https = policy.require_https
        self._publisher = publisher
        self._client = providers.client
        self._tokens = providers.tokens
        self._endpoints = providers.endpoints
        self._public_url = providers.public_url
        self._clock = clock
        self._job_deadline = policy.job_deadline
        self._allow_private = policy.allow_private
        self._deadlines = policy.deadlines
        self._retry_schedule = policy.retry_schedule
        self._lease = policy.lease
        self._rng = rng
        # Providers whose submits this Submitter sends itself (Segmind's are held elsewhere).
        self._sent_here = tuple(name for name in providers.endpoints if name in CALLBACK_ADAPTERS)
        self._retries = SubmitQueue(
            db,
            clock=clock,
            name="the submit retry worker",
            claim=self._claim,
            next_due=self._next_due,
            attempt=self._retry,
            concurrency=policy.retry_concurrency,
        )

    def wake(self) -> None:
        """A submit may be due sooner than the retry worker sleeps (``Work.SUBMITS``)."""
        self._retries.wake()

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
                await jobs.lock_idempotency_key(conn, owner_key_id, idempotency_key)
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
            held = job.provider in HELD_ADAPTERS
            # The first attempt is made right here, under a lease: should reelhook stop before it
            # is answered, the retry worker sends it again (idempotently) once the lease ends.
            await submissions.schedule(
                conn,
                job.id,
                next_at=now if held else now + self._lease,
                attempts=0 if held else 1,
            )
            # The first attempt is this node's claim, fenced like every retry's.
            token = None if held else await submissions.own(conn, job.id, self._db.node_id)
            if callback_url is not None:
                callback_secret = signing.new_secret()
                await subscriptions.insert(conn, self._one_off(job, callback_url, callback_secret))
        if token is None:
            return Created(job, callback_secret=callback_secret)
        try:
            with self._retries.attempting(job.id):
                submitted = await self._attempt(job, 1, token)
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
            raise ValidationFailed.fields({name: _unknown_field(name) for name in unknown})
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
        extras = JOB_EXTRAS.validate(
            {name: value for name, value in body.items() if name not in ("model", "input")},
            {
                "callback_url": lambda url: check_url(
                    url, self._allow_private, require_https=self._require_https
                )
            },
        )
        metadata = extras.get("metadata", {})
        callback_url: str | None = extras.get("callback_url")
        now = self._clock()
        job = Job(
            id=new_id("job"),
            owner_key_id=owner_key_id,
            model=model,
            provider=spec.provider,
            status=JobStatus.PENDING,
            input=clean,
            cost=Cost(
                estimated=round(spec.price.estimate(clean), 4),
                unit=spec.price.unit,
                assumed=spec.price.assumes(clean),
            ),
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

    async def _attempt(self, job: Job, attempt: int, token: int) -> Job:
        """Make submit attempt number ``attempt`` of a pending job, under the submit claim
        ``token``; return the job after it.

        The job ends submitted, stays pending with its next attempt scheduled, or fails; a failure
        raises the client's error (``ValidationFailed`` for the input's fault, ``ProviderFailed``
        otherwise), carrying the provider's message.
        """
        answer = await self._send(job)
        if isinstance(answer, str):
            return await self._mark_submitted(job, answer, token)
        now = self._clock()
        decision = decide(job, answer, attempt, now, self._retry_schedule, self._rng)
        if isinstance(decision, RetryAt):
            log.warning(
                "%s did not accept job %s (attempt %d: %s, HTTP %s); next attempt in %.1f s",
                job.provider,
                job.id,
                attempt,
                answer.kind,
                answer.status_code,
                decision.at - now,
            )
            reason = f"{answer.kind}: {answer.message}"
            await defer_submit(self._db, job.id, decision.at, reason, now, token=token)
            return await jobs.get(self._db.reader, job.id) or job
        await self._fail(job, decision.refusal, token)
        raise _client_error(job, decision.refusal)

    async def _send(self, job: Job) -> str | Refusal:
        """Send ``job`` to its provider: the provider's job id, or why it was not accepted."""
        endpoint = self._endpoints[job.provider]
        adapter = CALLBACK_ADAPTERS[job.provider]
        request = adapter.submit_request(job, self.callback_url(job), endpoint.api_key)
        try:
            response = await self._client.post(
                endpoint.base_url + request.path, json=request.json, headers=request.headers
            )
        except NETWORK_ERRORS as exc:
            if classify(exc).timed_out:
                return Refusal(
                    ErrorKind.TIMEOUT, f"{job.provider} did not answer in time", retryable=True
                )
            return Refusal(
                ErrorKind.PROVIDER_ERROR,
                f"could not reach {job.provider}: {type(exc).__name__}",
                retryable=True,
            )
        if not response.is_success:
            # Whatever a provider echoes back, reelhook's key for it is never repeated.
            failure = adapter.failure(response.status_code, response.content, response.headers)
            return failure.redacted(endpoint.api_key)
        try:
            return adapter.accepted_job_id(response.json())
        except (ValueError, InvalidCallback) as exc:
            # It may have accepted the job all the same; sending it again is idempotent.
            return Refusal(
                ErrorKind.PROVIDER_ERROR,
                redact(f"unreadable answer from {job.provider}: {exc}", endpoint.api_key),
                status_code=response.status_code,
                retryable=True,
            )

    async def run_retries(self) -> None:
        """The lifespan worker: resubmit pending jobs when due, until cancelled.

        Sleeps until the earliest due attempt (or lease end) and is woken when a retry is
        scheduled (``Work.SUBMITS``); it never polls the database on a fixed tick. Jobs left
        pending by a stop are picked up when their lease ends.
        """
        await self._retries.run()

    async def _claim(
        self, conn: Connection, now: float, limit: int, skip: Collection[str]
    ) -> list[SubmitClaim]:
        return await submissions.claim_due(
            conn,
            providers=self._sent_here,
            now=now,
            lease_until=now + self._lease,
            limit=limit,
            owner=self._db.node_id,
            node_timeout=self._db.node_timeout,
            skip=skip,
        )

    async def _next_due(self, conn: Connection, skip: Collection[str]) -> float | None:
        return await submissions.next_due_at(
            conn,
            self._sent_here,
            owner=self._db.node_id,
            node_timeout=self._db.node_timeout,
            skip=skip,
        )

    async def _retry(self, claim: SubmitClaim) -> None:
        # A refused job failed with its event; there is no client waiting for an answer.
        with contextlib.suppress(ProviderFailed, ValidationFailed):
            await self._attempt(claim.job, claim.attempt, claim.token)

    async def _mark_submitted(self, job: Job, provider_job_id: str, token: int) -> Job:
        current, _ = await mark_submitted(
            self._db, self._publisher, job.id, provider_job_id, self._clock(), token=token
        )
        return current or job

    async def _fail(self, job: Job, failure: Refusal, token: int) -> None:
        log.warning(
            "%s refused job %s: HTTP %s %s", job.provider, job.id, failure.status_code, failure.kind
        )
        error = JobError(
            failure.kind,
            failure.message,
            failure.provider_code or (str(failure.status_code) if failure.status_code else None),
        )
        await refuse(self._db, self._publisher, job.id, error, self._clock(), token=token)


def _client_error(job: Job, failure: Refusal) -> ProviderFailed | ValidationFailed:
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
