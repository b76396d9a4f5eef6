"""Inbound provider webhooks: ``POST /v1/callbacks/{provider}/{token}`` (one URL per job) and
``POST /v1/callbacks/{provider}/account/{token}`` (one URL per provider account, for providers
that post results to a webhook set on the API key; docs/providers.md).

Verified before anything is parsed or stored: the URL token, then the body size, then the
provider's own signature, then the body's job id against the stored one. A callback that fails
those checks changes and stores nothing. A verified body reelhook cannot read is kept for audit
(and noted on its job); every callback, accepted or not, ends in one named
:class:`~service.callback_outcomes.CallbackOutcome`, reported in one place (:func:`_report`).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import read_body
from service.api.operation import Param, Reply, operation
from service.app.services import Services, services
from service.core.errors import BadRequest, NotFound, PayloadTooLarge, ReelhookError, Unauthorized
from service.core.models import Job, ProviderUpdate
from service.core.tokens import InvalidToken
from service.jobs.callback_outcomes import CallbackOutcome
from service.jobs.lifecycle import JobMismatch, Outcome, UnknownJob, Update
from service.providers import ADAPTERS, CALLBACK_ADAPTERS
from service.providers.base import CallbackAdapter, ForgedCallback, InvalidCallback
from service.storage import jobs as job_store

log = logging.getLogger(__name__)


class _Rejected(Exception):
    def __init__(
        self, outcome: CallbackOutcome, error: ReelhookError, job_id: str | None = None
    ) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.error = error
        self.job_id = job_id


@operation(
    summary="Receive a provider webhook",
    tag="providers",
    params=(
        Param(
            "provider",
            "path",
            {"enum": list(CALLBACK_ADAPTERS)},
            "The provider calling back.",
        ),
    ),
    body={"type": "object", "description": "The provider's own callback body."},
    replies={
        200: Reply(
            "Verified and stored (duplicates and late callbacks too, for audit).",
            {
                "type": "object",
                "required": ["received", "job_id", "outcome"],
                "properties": {
                    "received": {"const": True},
                    "job_id": {"type": "string"},
                    "outcome": {"enum": [outcome.value for outcome in Outcome]},
                },
            },
        )
    },
    errors=(400, 401, 404, 413),
    authenticated=False,
    # A provider that decorates the URL it was given must not have its webhook refused.
    strict_query=False,
)
async def receive_callback(request: Request) -> Response:
    """Where providers deliver job updates; reelhook puts this URL in each submit. The token in
    the path is the credential: it is verified, then the provider's signature, then that the
    body names the stored job, before anything is stored."""
    state = services(request)
    provider = request.path_params["provider"]
    # The path segment is the caller's: only known provider names may become a metric label.
    label = provider if provider in ADAPTERS else "unknown"
    try:
        job, outcome = await _receive(state, request, provider)
    except _Rejected as rejected:
        _report(state, label, rejected.outcome, rejected.job_id)
        raise rejected.error from None
    _report(state, label, CallbackOutcome(outcome.value), job.id)
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})


async def _receive(state: Services, request: Request, provider: str) -> tuple[Job, Outcome]:
    adapter = CALLBACK_ADAPTERS.get(provider)
    if adapter is None:
        raise _Rejected(
            CallbackOutcome.UNKNOWN_PROVIDER,
            NotFound(f"no callbacks are accepted for {provider!r}"),
        )
    try:
        job_id = state.tokens.verify_callback(request.path_params["token"], provider)
    except InvalidToken:
        raise _Rejected(
            CallbackOutcome.BAD_TOKEN, Unauthorized("the callback token is not valid")
        ) from None
    try:
        body = await read_body(request, state.settings.max_callback_bytes)
    except PayloadTooLarge as exc:
        raise _Rejected(CallbackOutcome.TOO_LARGE, exc) from None
    try:
        adapter.verify_callback(request.headers, body, state.endpoints[provider].api_key)
    except ForgedCallback as exc:
        raise _Rejected(CallbackOutcome.BAD_SIGNATURE, Unauthorized(str(exc))) from None
    try:
        update = adapter.parse_callback(body)
    except InvalidCallback as exc:
        # Verified by the token (and signature), so kept for audit and noted on the job: a
        # result in a shape reelhook does not read must not turn into a silent expiry.
        try:
            await state.ingest.store(Update(job_id, provider, None, body, "job", str(exc)))
        except UnknownJob:
            raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
        raise _Rejected(CallbackOutcome.UNREADABLE, BadRequest(str(exc)), job_id) from None
    _note_unknown_status(state, provider, update, job_id)
    try:
        return await state.ingest.store(Update(job_id, provider, update, body))
    except UnknownJob:
        raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
    except JobMismatch:
        raise _Rejected(
            CallbackOutcome.JOB_MISMATCH, Unauthorized("the body names a different job")
        ) from None


def _note_unknown_status(
    state: Services, provider: str, update: ProviderUpdate, job_id: str | None
) -> None:
    """Log and count a status word reelhook does not know (docs/providers.md)."""
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
    state.metrics.unknown_status(provider, update.unknown_status)


def _account_adapter(provider: str) -> CallbackAdapter | None:
    adapter = CALLBACK_ADAPTERS.get(provider)
    return adapter if adapter is not None and adapter.account_webhook else None


@operation(
    summary="Receive a provider account webhook",
    tag="providers",
    params=(
        Param(
            "provider",
            "path",
            {"enum": [name for name in ADAPTERS if _account_adapter(name) is not None]},
            "The provider calling back.",
        ),
    ),
    body={"type": "object", "description": "The provider's terminal job document."},
    replies={
        200: Reply(
            "Verified, matched to its job and stored (duplicates and late ones too, for audit).",
            {
                "type": "object",
                "required": ["received", "job_id", "outcome"],
                "properties": {
                    "received": {"const": True},
                    "job_id": {"type": "string"},
                    "outcome": {"enum": [outcome.value for outcome in Outcome]},
                },
            },
        ),
        202: Reply(
            "Verified but naming no job reelhook knows yet: kept, and applied when the "
            "provider's job id is recorded.",
            {
                "type": "object",
                "required": ["received", "job_id", "outcome"],
                "properties": {
                    "received": {"const": True},
                    "job_id": {"type": "null"},
                    "outcome": {"const": "unmatched"},
                },
            },
        ),
    },
    errors=(400, 401, 404, 413),
    authenticated=False,
    strict_query=False,
)
async def receive_account_callback(request: Request) -> Response:
    """The webhook URL to set on a provider API key (Trinetra: "set a webhook_url on your API
    key"); see `GET /v1/providers` for it. The token in the path is bound to that account. The
    document is matched to its job by `external_task_id` (reelhook's job id, which it sends)
    and the provider's job id, with the same checks, audit and dedupe as per-job callbacks: a
    result that arrives on both routes moves the job once."""
    state = services(request)
    provider = request.path_params["provider"]
    label = provider if provider in ADAPTERS else "unknown"
    try:
        job, outcome = await _receive_account(state, request, provider)
    except _Rejected as rejected:
        _report(state, label, rejected.outcome, rejected.job_id, route="account")
        raise rejected.error from None
    if job is None:
        _report(state, label, CallbackOutcome.UNMATCHED, route="account")
        return JSONResponse(
            {"received": True, "job_id": None, "outcome": "unmatched"}, status_code=202
        )
    _report(state, label, CallbackOutcome(outcome.value), job.id, route="account")
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})


async def _receive_account(
    state: Services, request: Request, provider: str
) -> tuple[Job | None, Outcome]:
    adapter = _account_adapter(provider)
    endpoint = state.endpoints.get(provider)
    if adapter is None or endpoint is None:
        raise _Rejected(
            CallbackOutcome.UNKNOWN_PROVIDER,
            NotFound(f"no account webhook is accepted for {provider!r}"),
        )
    try:
        state.tokens.verify_account_webhook(
            request.path_params["token"], provider, endpoint.api_key
        )
    except InvalidToken:
        raise _Rejected(
            CallbackOutcome.BAD_TOKEN, Unauthorized("the account webhook token is not valid")
        ) from None
    try:
        body = await read_body(request, state.settings.max_callback_bytes)
    except PayloadTooLarge as exc:
        raise _Rejected(CallbackOutcome.TOO_LARGE, exc) from None
    try:
        adapter.verify_callback(request.headers, body, endpoint.api_key)
    except ForgedCallback as exc:
        raise _Rejected(CallbackOutcome.BAD_SIGNATURE, Unauthorized(str(exc))) from None
    now = state.clock()
    try:
        update = adapter.parse_callback(body)
    except InvalidCallback as exc:
        # No job to note it on: kept with the unmatched documents, for audit.
        async with state.db.transaction() as conn:
            await job_store.record_unmatched(
                conn,
                provider=provider,
                provider_job_id=None,
                received_at=now,
                reason=f"unreadable: {exc}",
                body=body,
            )
        raise _Rejected(CallbackOutcome.BAD_BODY, BadRequest(str(exc))) from None
    async with state.db.transaction() as conn:
        # One transaction: a submit answer recording the provider job id either lands before
        # (and the job is found) or after (and claims this document; lifecycle.mark_submitted).
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
    _note_unknown_status(state, provider, update, job_id)
    if job_id is None:
        return None, Outcome.STALE
    try:
        return await state.ingest.store(Update(job_id, provider, update, body, "account"))
    except UnknownJob:
        raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
    except JobMismatch:
        raise _Rejected(
            CallbackOutcome.JOB_MISMATCH, Unauthorized("the body names a different job"), job_id
        ) from None


def _report(
    state: Services,
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
    log.log(
        level,
        "%s %scallback %s%s",
        provider,
        "account " if route == "account" else "",
        outcome.value,
        f" for {job_id}" if job_id else "",
        extra={"provider": provider, "callback_outcome": outcome.value, "route": route},
    )
    for observe in state.callback_observers:
        try:
            observe(provider, outcome)
        except Exception:
            log.exception("a callback observer failed")
