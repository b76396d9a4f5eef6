"""``POST /v1/callbacks/{provider}/{token}``: inbound provider webhooks.

Verified before anything is parsed or stored: the URL token, then the provider's own signature,
then the body's job id against the stored one. Rejected callbacks store nothing.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import read_body, services
from service.api.operation import Param, Reply, operation
from service.errors import BadRequest, NotFound, Unauthorized
from service.lifecycle import JobMismatch, Outcome, UnknownJob, apply_update
from service.providers import ADAPTERS
from service.providers.base import ForgedCallback, InvalidCallback
from service.tokens import InvalidToken

log = logging.getLogger(__name__)


@operation(
    summary="Receive a provider webhook",
    tag="providers",
    params=(
        Param(
            "provider",
            "path",
            {"enum": [name for name, adapter in ADAPTERS.items() if not adapter.holds_request]},
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
    adapter = ADAPTERS.get(provider)
    if adapter is None or adapter.holds_request:
        raise NotFound(f"no callbacks are accepted for {provider!r}")

    def reject(outcome: str, error: Exception) -> Exception:
        log.info("rejected %s callback: %s", provider, outcome)
        return error

    try:
        job_id = state.tokens.verify_callback(request.path_params["token"], provider)
    except InvalidToken:
        raise reject("bad_token", Unauthorized("the callback token is not valid")) from None
    body = await read_body(request, state.settings.max_callback_bytes)
    try:
        adapter.verify_callback(request.headers, body, state.endpoints[provider].api_key)
    except ForgedCallback as exc:
        raise reject("bad_signature", Unauthorized(str(exc))) from None
    try:
        update = adapter.parse_callback(body)
    except InvalidCallback as exc:
        raise reject("bad_body", BadRequest(str(exc))) from None
    try:
        job, outcome = await apply_update(
            state.db,
            state.publisher,
            job_id=job_id,
            provider=provider,
            update=update,
            raw=body,
            now=state.clock(),
        )
    except UnknownJob:
        raise reject("unknown_job", NotFound("no such job")) from None
    except JobMismatch:
        raise reject("job_mismatch", Unauthorized("the body names a different job")) from None
    state.dispatcher.wake()
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})
