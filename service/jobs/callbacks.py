"""Receiving a provider's callback: verified before anything is parsed or stored, then applied.

The order is the URL token, then the body size, then the provider's own signature, then the
body's job id against the stored one. A rejected callback changes and stores nothing; every
callback, accepted or not, ends in one named :class:`CallbackOutcome`, reported in one place
(:meth:`Callbacks._report`): the log, then each observer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping, Sequence

from service.core.body import read_capped
from service.core.errors import BadRequest, NotFound, PayloadTooLarge, ReelhookError, Unauthorized
from service.core.models import Job
from service.core.tokens import InvalidToken, Tokens
from service.jobs.callback_outcomes import CallbackObserver, CallbackOutcome
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import JobMismatch, Outcome, UnknownJob, Update
from service.jobs.submission import ProviderEndpoint
from service.providers import ADAPTERS, CALLBACK_ADAPTERS
from service.providers.base import ForgedCallback, InvalidCallback

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
    ) -> None:
        self._tokens = tokens
        self._endpoints = endpoints
        self._ingest = ingest
        self._max_bytes = max_bytes
        self._observers = observers

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
        try:
            body = await read_capped(chunks, declared_length, self._max_bytes)
        except PayloadTooLarge as exc:
            raise _Rejected(CallbackOutcome.TOO_LARGE, exc) from None
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
