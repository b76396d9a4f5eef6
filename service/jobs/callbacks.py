"""Receiving a provider's callback: verified before anything is parsed or stored, then applied.

Two routes: ``/v1/callbacks/{provider}/{token}`` (one URL per job) and
``/v1/callbacks/{provider}/account/{token}`` (one URL per provider account, for providers that
post results to a webhook set on the API key; docs/providers.md §1).

The order is the URL token, then the body size, then the provider's own signature, then the
body's job id against the stored one. A callback failing those checks changes and stores nothing.
A verified body reelhook cannot read is kept for audit and noted on its job (docs/providers.md
§8). Every callback, accepted or not, ends in one named :class:`CallbackOutcome`, reported in one
place (:meth:`Callbacks._report`): the log, then each observer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Mapping, Sequence

from service.core.body import read_capped
from service.core.clock import Clock
from service.core.eager import within
from service.core.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ReelhookError,
    RequestTimeout,
    Unauthorized,
)
from service.core.models import Job, ProviderUpdate
from service.core.params import is_decimal
from service.core.tokens import InvalidToken, Tokens
from service.jobs.callback_outcomes import CallbackObserver, CallbackOutcome
from service.jobs.inbound import InboundBudget, Reservation
from service.jobs.ingest import Ingest
from service.jobs.lifecycle import JobMismatch, Outcome, UnknownJob, Update
from service.jobs.submission import ProviderEndpoint
from service.providers import ADAPTERS, CALLBACK_ADAPTERS
from service.providers.base import CallbackAdapter, ForgedCallback, InvalidCallback
from service.storage import jobs as job_store
from service.storage.database import Database

UnknownStatusObserver = Callable[[str, str], None]
"""Called with (provider, status word) for each status word reelhook does not know."""

log = logging.getLogger(__name__)

# How each lifecycle outcome is reported: a table, not an Enum call by value per callback.
_REPORTED = {outcome: CallbackOutcome(outcome.value) for outcome in Outcome}


class _Rejected(Exception):
    def __init__(
        self, outcome: CallbackOutcome, error: ReelhookError, job_id: str | None = None
    ) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self._error: ReelhookError | None = error
        self.job_id = job_id

    def take_error(self) -> ReelhookError:
        """The error to answer with, handed over once. Raised while this is being handled, the
        error refers to this as its ``__context__``; were this still to refer to the error, the
        two (with their tracebacks' frames, the request's body among them) would be a cycle that
        only the garbage collector frees, one per refused callback, and the served process runs
        it rarely (docs/performance.md §4, "Garbage collection")."""
        error, self._error = self._error, None
        assert error is not None, "the error of a rejection is taken once"
        return error


def account_adapter(provider: str) -> CallbackAdapter | None:
    """The adapter of ``provider`` when it posts results to an account webhook."""
    adapter = CALLBACK_ADAPTERS.get(provider)
    return adapter if adapter is not None and adapter.account_webhook else None


class Callbacks:
    def __init__(
        self,
        tokens: Tokens,
        endpoints: Mapping[str, ProviderEndpoint],
        ingest: Ingest,
        *,
        db: Database,
        clock: Clock,
        max_bytes: int,
        observers: Sequence[CallbackObserver],
        budget: InboundBudget | None = None,
        body_timeout: float = 30.0,
        on_unknown_status: UnknownStatusObserver | None = None,
    ) -> None:
        self._tokens = tokens
        self._endpoints = endpoints
        self._ingest = ingest
        self._db = db
        self._clock = clock
        self._max_bytes = max_bytes
        self._observers = observers
        self._budget = budget or InboundBudget(max_bytes=64 * max_bytes, per_route=256)
        self._body_timeout = body_timeout
        self._on_unknown_status = on_unknown_status

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
            self._report(label, rejected.outcome, rejected.job_id)
            raise rejected.take_error() from None
        self._report(label, _REPORTED[outcome], job.id)
        return job, outcome

    async def receive_account(
        self,
        provider: str,
        token: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes],
        declared_length: str | None,
    ) -> tuple[Job | None, Outcome | None]:
        """Verify and apply one document posted to a provider account's webhook,
        ``/v1/callbacks/{provider}/account/{token}``: the same checks, audit and dedupe as
        :meth:`receive`, the job found by ``external_task_id`` (reelhook's job id, which it sends)
        or else the provider's job id. A document naming no job reelhook knows yet is kept and
        applied when the provider's job id is recorded: then ``(None, None)`` is returned."""
        label = provider if provider in ADAPTERS else "unknown"
        try:
            job, outcome = await self._receive_account(
                provider, token, headers, body, declared_length
            )
        except _Rejected as rejected:
            self._report(label, rejected.outcome, rejected.job_id, route="account")
            raise rejected.take_error() from None
        if job is None or outcome is None:
            self._report(label, CallbackOutcome.UNMATCHED, route="account")
            return None, None
        self._report(label, _REPORTED[outcome], job.id, route="account")
        return job, outcome

    async def _receive_account(
        self,
        provider: str,
        token: str,
        headers: Mapping[str, str],
        chunks: AsyncIterable[bytes],
        declared_length: str | None,
    ) -> tuple[Job | None, Outcome | None]:
        adapter = account_adapter(provider)
        endpoint = self._endpoints.get(provider)
        if adapter is None or endpoint is None:
            raise _Rejected(
                CallbackOutcome.UNKNOWN_PROVIDER,
                NotFound(f"no account webhook is accepted for {provider!r}"),
            )
        try:
            self._tokens.verify_account_webhook(token, provider, endpoint.api_key)
        except InvalidToken:
            raise _Rejected(
                CallbackOutcome.BAD_TOKEN, Unauthorized("the account webhook token is not valid")
            ) from None
        # The same bounds as the per-job route, with a concurrency limit of its own.
        with self._hold(f"{provider} account", declared_length) as held:
            body = await self._read(chunks, declared_length, held)
            return await self._apply_account(provider, adapter, endpoint, headers, body)

    async def _apply_account(
        self,
        provider: str,
        adapter: CallbackAdapter,
        endpoint: ProviderEndpoint,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[Job | None, Outcome | None]:
        try:
            adapter.verify_callback(headers, body, endpoint.api_key)
        except ForgedCallback as exc:
            raise _Rejected(CallbackOutcome.BAD_SIGNATURE, Unauthorized(str(exc))) from None
        now = self._clock()
        try:
            update = adapter.parse_callback(body)
        except InvalidCallback as exc:
            # No job to note it on: kept with the unmatched documents, for audit.
            async with self._db.transaction() as conn:
                await job_store.record_unmatched(
                    conn,
                    provider=provider,
                    provider_job_id=None,
                    received_at=now,
                    reason=f"unreadable: {exc}",
                    body=body,
                )
            raise _Rejected(CallbackOutcome.BAD_BODY, BadRequest(str(exc))) from None
        async with self._db.transaction() as conn:
            # One transaction: a submit answer recording the provider job id lands either before
            # (the job is found) or after (and claims this document; lifecycle.mark_submitted).
            job_id = await job_store.find_for_provider(
                conn, provider, job_id=update.external_id, provider_job_id=update.provider_job_id
            )
            if job_id is None:
                await job_store.record_unmatched(
                    conn,
                    provider=provider,
                    provider_job_id=update.provider_job_id,
                    received_at=now,
                    reason="no job with this provider job id or external_task_id yet",
                    body=body,
                )
        self._note_unknown_status(provider, update, job_id)
        if job_id is None:
            return None, None
        try:
            return await self._ingest.store(Update(job_id, provider, update, body, "account"))
        except UnknownJob:
            raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
        except JobMismatch:
            raise _Rejected(
                CallbackOutcome.JOB_MISMATCH,
                Unauthorized("the body names a different job"),
                job_id,
            ) from None

    def _note_unknown_status(
        self, provider: str, update: ProviderUpdate, job_id: str | None
    ) -> None:
        """Log and count a status word reelhook does not know (docs/providers.md §8)."""
        if update.unknown_status is None:
            return
        log.warning(
            "%s reported unknown status %r for %s; read as %s",
            provider,
            update.unknown_status,
            job_id or f"provider job {update.provider_job_id}",
            update.status.value,
            extra={"provider": provider, "provider_status": update.unknown_status},
        )
        if self._on_unknown_status is not None:
            try:
                self._on_unknown_status(provider, update.unknown_status)
            except Exception:
                log.exception("an unknown-status observer failed")

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
        with self._hold(provider, declared_length) as held:
            body = await self._read(chunks, declared_length, held)
            return await self._apply(provider, adapter, job_id, headers, body)

    def _hold(self, route: str, declared_length: str | None) -> Reservation:
        """What the body may take and a slot of ``route``, held until its commit is done
        (:mod:`service.jobs.inbound`); 503 at once when there is no room. A body declared too
        large reserves nothing: reading it is refused (413) before a byte is kept."""
        declared = int(declared_length) if declared_length and is_decimal(declared_length) else None
        reserve = self._max_bytes if declared is None else declared
        if reserve > self._max_bytes:
            reserve = 0
        return self._budget.hold(route, reserve)

    async def _read(
        self, chunks: AsyncIterable[bytes], declared_length: str | None, held: Reservation
    ) -> bytes:
        """The body, at most ``max_bytes`` of it and within the body timeout; what the
        reservation held beyond its size is handed back."""
        try:
            # asyncio's own timeout (anyio's fail_after cost ~6 % of the event loop's time per
            # callback: a cancel scope and a backend lookup each time), and made only if the read
            # has to wait: a body that has already arrived whole is read without a timer
            # (docs/performance.md §4; docs/performance-journal.md, "The ingest path's sixth pass").
            body = await within(
                read_capped(chunks, declared_length, self._max_bytes), self._body_timeout
            )
        except PayloadTooLarge as exc:
            raise _Rejected(CallbackOutcome.TOO_LARGE, exc) from None
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self._body_timeout:g} seconds"
            ) from None
        held.shrink(len(body))
        return body

    async def _apply(
        self,
        provider: str,
        adapter: CallbackAdapter,
        job_id: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[Job, Outcome]:
        try:
            adapter.verify_callback(headers, body, self._endpoints[provider].api_key)
        except ForgedCallback as exc:
            raise _Rejected(CallbackOutcome.BAD_SIGNATURE, Unauthorized(str(exc))) from None
        try:
            update = adapter.parse_callback(body)
        except InvalidCallback as exc:
            # Verified by the token (and signature), so kept for audit and noted on the job: a
            # result in a shape reelhook does not read must not turn into a silent expiry.
            try:
                await self._ingest.store(Update(job_id, provider, None, body, "job", str(exc)))
            except UnknownJob:
                raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
            raise _Rejected(CallbackOutcome.UNREADABLE, BadRequest(str(exc)), job_id) from None
        self._note_unknown_status(provider, update, job_id)
        try:
            return await self._ingest.store(Update(job_id, provider, update, body))
        except UnknownJob:
            raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
        except JobMismatch:
            raise _Rejected(
                CallbackOutcome.JOB_MISMATCH, Unauthorized("the body names a different job")
            ) from None

    def _report(
        self,
        provider: str,
        outcome: CallbackOutcome,
        job_id: str | None = None,
        *,
        route: str = "job",
    ) -> None:
        """The one place every callback's outcome is reported: the log, then each observer."""
        level = logging.DEBUG if outcome.accepted else logging.INFO
        if outcome in (CallbackOutcome.LATE_RESULT, CallbackOutcome.UNMATCHED):
            level = logging.WARNING  # a result that reached no job (yet): someone should look
        # Checked first: the arguments (a formatted string, a dict) were built for every
        # callback even when the level is off, as it is for accepted ones in production.
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %scallback %s%s",
                provider,
                "account " if route == "account" else "",
                outcome.value,
                f" for {job_id}" if job_id else "",
                extra={"provider": provider, "callback_outcome": outcome.value, "route": route},
            )
        for observe in self._observers:
            try:
                observe(provider, outcome)
            except Exception:
                log.exception("a callback observer failed")
