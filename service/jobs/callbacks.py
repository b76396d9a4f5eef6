"""Receiving a provider's callback: verified before anything is parsed or stored, then applied.

The order is the URL token, then the body size, then the provider's own signature, then the
body's job id against the stored one. A rejected callback changes and stores nothing; every
callback, accepted or not, ends in one named :class:`CallbackOutcome`, reported in one place
(:meth:`Callbacks._report`): the log, then each observer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping, Sequence

import anyio

from service.core.body import read_capped
from service.core.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ReelhookError,
    RequestTimeout,
    Unauthorized,
)
from service.core.models import Job
from service.core.params import is_decimal
from service.core.tokens import InvalidToken, Tokens
from service.jobs.callback_outcomes import CallbackObserver, CallbackOutcome
from service.jobs.inbound import InboundBudget, Reservation
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import JobMismatch, Outcome, UnknownJob, Update
from service.jobs.submission import ProviderEndpoint
from service.providers import ADAPTERS, CALLBACK_ADAPTERS
from service.providers.base import CallbackAdapter, ForgedCallback, InvalidCallback

log = logging.getLogger(__name__)


class _Rejected(Exception):
    def __init__(self, outcome: CallbackOutcome, error: ReelhookError) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.error = error


class Callbacks:
    def __init__(
        self,
        tokens: Tokens,
        endpoints: Mapping[str, ProviderEndpoint],
        ingest: Ingest,
        *,
        max_bytes: int,
        observers: Sequence[CallbackObserver],
        budget: InboundBudget | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self._tokens = tokens
        self._endpoints = endpoints
        self._ingest = ingest
        self._max_bytes = max_bytes
        self._observers = observers
        self._budget = budget or InboundBudget(max_bytes=64 * max_bytes, per_route=256)
        self._body_timeout = body_timeout

    async def receive(
        self,
        provider: str,
        token: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes],
        declared_length: str | None,
    ) -> tuple[Job, Outcome]:
        """Verify and apply one callback to ``/v1/callbacks/{provider}/{token}``; ``body`` is
        read only once the token is known good, at most ``max_bytes`` of it. Raises the error
        to answer with (404, 401, 413, 400) when it is rejected."""
        # The path segment is the caller's: only known provider names may become a metric label.
        label = provider if provider in ADAPTERS else "unknown"
        try:
            job, outcome = await self._receive(provider, token, headers, body, declared_length)
        except _Rejected as rejected:
            self._report(label, rejected.outcome)
            raise rejected.error from None
        self._report(label, CallbackOutcome(outcome.value), job.id)
        return job, outcome

    async def _receive(
        self,
        provider: str,
        token: str,
        headers: Mapping[str, str],
        chunks: AsyncIterable[bytes],
        declared_length: str | None,
    ) -> tuple[Job, Outcome]:
        adapter = CALLBACK_ADAPTERS.get(provider)
        if adapter is None:
            raise _Rejected(
                CallbackOutcome.UNKNOWN_PROVIDER,
                NotFound(f"no callbacks are accepted for {provider!r}"),
            )
        try:
            job_id = self._tokens.verify_callback(token, provider)
        except InvalidToken:
            raise _Rejected(
                CallbackOutcome.BAD_TOKEN, Unauthorized("the callback token is not valid")
            ) from None
        declared = int(declared_length) if declared_length and is_decimal(declared_length) else None
        # What the body may take, held until its commit is done (service.jobs.inbound); a body
        # declared too large is refused (413) without reserving anything.
        reserve = self._max_bytes if declared is None else declared
        if reserve > self._max_bytes:
            reserve = 0
        with self._budget.hold(provider, reserve) as held:
            return await self._read_and_store(
                provider, adapter, job_id, headers, chunks, declared_length, held
            )

    async def _read_and_store(
        self,
        provider: str,
        adapter: CallbackAdapter,
        job_id: str,
        headers: Mapping[str, str],
        chunks: AsyncIterable[bytes],
        declared_length: str | None,
        held: Reservation,
    ) -> tuple[Job, Outcome]:
        try:
            with anyio.fail_after(self._body_timeout):
                body = await read_capped(chunks, declared_length, self._max_bytes)
        except PayloadTooLarge as exc:
            raise _Rejected(CallbackOutcome.TOO_LARGE, exc) from None
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self._body_timeout:g} seconds"
            ) from None
        held.shrink(len(body))
        try:
            adapter.verify_callback(headers, body, self._endpoints[provider].api_key)
        except ForgedCallback as exc:
            raise _Rejected(CallbackOutcome.BAD_SIGNATURE, Unauthorized(str(exc))) from None
        try:
            update = adapter.parse_callback(body)
        except InvalidCallback as exc:
            raise _Rejected(CallbackOutcome.BAD_BODY, BadRequest(str(exc))) from None
        try:
            return await self._ingest.store(Update(job_id, provider, update, body))
        except UnknownJob:
            raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
        except JobMismatch:
            raise _Rejected(
                CallbackOutcome.JOB_MISMATCH, Unauthorized("the body names a different job")
            ) from None

    def _report(self, provider: str, outcome: CallbackOutcome, job_id: str | None = None) -> None:
        """The one place every callback's outcome is reported: the log, then each observer."""
        level = logging.DEBUG if outcome.accepted else logging.INFO
        log.log(
            level,
            "%s callback %s%s",
            provider,
            outcome.value,
            f" for {job_id}" if job_id else "",
            extra={"provider": provider, "callback_outcome": outcome.value},
        )
        for observe in self._observers:
            try:
                observe(provider, outcome)
            except Exception:
                log.exception("a callback observer failed")
