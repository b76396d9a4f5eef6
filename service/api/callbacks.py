"""``POST /v1/callbacks/{provider}/{token}``: inbound provider webhooks.

Verified before anything is parsed or stored: the URL token, then the provider's own signature,
then the body's job id against the stored one. Rejected callbacks store nothing.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import read_body, services
from service.errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized
from service.lifecycle import JobMismatch, UnknownJob, apply_update
from service.providers import ADAPTERS
from service.providers.base import ForgedCallback, InvalidCallback
from service.tokens import InvalidToken

log = logging.getLogger(__name__)


async def receive_callback(request: Request) -> Response:
    state = services(request)
    provider = request.path_params["provider"]
    adapter = ADAPTERS.get(provider)

    def reject(outcome: str, error: Exception) -> Exception:
        log.info("rejected %s callback: %s", provider if adapter else "unknown", outcome)
        # Only known names become labels: the path is the sender's to choose.
        state.metrics.callback(provider if adapter else "unknown", outcome)
        return error

    if adapter is None or adapter.holds_request:
        raise reject("no_callbacks", NotFound(f"no callbacks are accepted for {provider!r}"))

    try:
        job_id = state.tokens.verify_callback(request.path_params["token"], provider)
    except InvalidToken:
        raise reject("bad_token", Unauthorized("the callback token is not valid")) from None
    try:
        body = await read_body(request, state.settings.max_callback_bytes)
    except PayloadTooLarge as exc:
        raise reject("too_large", exc) from None
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
    state.metrics.callback(provider, outcome.value)
    log.debug("%s callback for %s: %s", provider, job.id, outcome.value)
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})
