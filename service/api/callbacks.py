"""``POST /v1/callbacks/{provider}/{token}``: inbound provider webhooks.

Verified before anything is parsed or stored: the URL token, then the body size, then the
provider's own signature, then the body's job id against the stored one. A rejected callback
changes and stores nothing; every callback, accepted or not, ends in one named
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
from service.core.models import Job
from service.core.tokens import InvalidToken
from service.jobs.callback_outcomes import CallbackOutcome
from service.jobs.lifecycle import JobMismatch, Outcome, UnknownJob, Update
from service.providers import ADAPTERS, CALLBACK_ADAPTERS
from service.providers.base import ForgedCallback, InvalidCallback

log = logging.getLogger(__name__)


class _Rejected(Exception):
    def __init__(self, outcome: CallbackOutcome, error: ReelhookError) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.error = error


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
        _report(state, label, rejected.outcome)
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
        raise _Rejected(CallbackOutcome.BAD_BODY, BadRequest(str(exc))) from None
    try:
        return await state.ingest.store(Update(job_id, provider, update, body))
    except UnknownJob:
        raise _Rejected(CallbackOutcome.UNKNOWN_JOB, NotFound("no such job")) from None
    except JobMismatch:
        raise _Rejected(
            CallbackOutcome.JOB_MISMATCH, Unauthorized("the body names a different job")
        ) from None


def _report(
    state: Services, provider: str, outcome: CallbackOutcome, job_id: str | None = None
) -> None:
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
    for observe in state.callback_observers:
        try:
            observe(provider, outcome)
        except Exception:
            log.exception("a callback observer failed")
