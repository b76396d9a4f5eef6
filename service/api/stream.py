"""``GET /v1/events/stream``: the event log as Server-Sent Events, live and resumable (see
:mod:`service.delivery.eventlog`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.callers import Caller
from service.access.scopes import Scope
from service.api.context import authenticate, authenticate_stream_token
from service.api.events import AFTER_QUERY, TYPE_QUERY
from service.api.operation import Param, Reply, operation
from service.app.event_streams import client_gone, stream_response
from service.app.services import services
from service.core.clock import isoformat

_POSITION = {"type": "string", "pattern": "^[0-9]{1,18}$"}


@operation(
    summary="Follow the event log (Server-Sent Events)",
    tag="events",
    params=(
        TYPE_QUERY,
        Param(
            "Last-Event-ID",
            "header",
            _POSITION,
            "Resume after this SSE id (browsers send it when they reconnect); 0: from the start.",
        ),
        Param("last_event_id", "query", _POSITION, "Last-Event-ID, for clients without headers."),
        AFTER_QUERY,
        Param(
            "token",
            "query",
            {"type": "string"},
            "A stream token from POST /v1/events/stream-token, for a browser's EventSource "
            "(which cannot send X-API-Key).",
        ),
    ),
    replies={
        200: Reply(
            "`text/event-stream`: one message per event (`id`: its position, `event`: its type, "
            "`data`: the event as GET /v1/events lists it), keep-alive comments while idle.",
            {"type": "string"},
            media_type="text/event-stream",
        )
    },
    errors=(401, 403, 422),
)
async def stream_events(request: Request) -> Response:
    """The event log, live. Without a position the stream starts at the end of the log; it
    first sends an id-only message naming that position, so a client that reconnects with
    `Last-Event-ID` misses nothing even if no event came in between. Same filters and owner
    scope as GET /v1/events. Authenticated by `X-API-Key`, or by a `token` query parameter
    (POST /v1/events/stream-token) where a header cannot be set."""
    token = request.query_params.get("token")
    if token is not None and "x-api-key" not in request.headers:
        caller = await authenticate_stream_token(request, token, Scope.JOBS_READ)
    else:
        caller = await authenticate(request, Scope.JOBS_READ)
    return await event_stream(request, caller)


_STREAM_TOKEN = {
    "type": "object",
    "required": ["token", "expires_at", "stream_url"],
    "properties": {
        "token": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
        "stream_url": {
            "type": "string",
            "description": "GET /v1/events/stream with the token: give it to `new EventSource()`.",
        },
    },
}


@operation(
    summary="Get a stream token for a browser",
    tag="events",
    replies={200: Reply("A read-only token for the event stream.", _STREAM_TOKEN)},
)
async def create_stream_token(request: Request) -> Response:
    """A short-lived token (REELHOOK_STREAM_TOKEN_TTL, 10 minutes by default) that opens
    `GET /v1/events/stream?token=…` as this key, and is accepted nowhere else: a page can put it
    in an `EventSource` URL without holding the API key. Mint it on your server, hand it to the
    page. An open stream stays open past the expiry; a reconnection needs a fresh token."""
    caller = await authenticate(request, Scope.JOBS_READ)
    state = services(request)
    token = state.tokens.stream(caller.key_id)
    return JSONResponse(
        {
            "token": token,
            "expires_at": isoformat(state.clock() + state.settings.stream_token_ttl),
            "stream_url": f"{state.settings.public_url}/v1/events/stream?token={token}",
        },
        headers={"Cache-Control": "no-store"},
    )


async def event_stream(request: Request, caller: Caller) -> Response:
    """The SSE response following the log for ``caller`` from where the request's position
    (``Last-Event-ID``, ``last_event_id``, ``after``) says, with its ``type`` filter. Over the
    key's stream quota this raises before any response starts (a 429)."""
    stream = await services(request).events.stream(
        caller,
        request.query_params,
        request.headers.get("last-event-id"),
        client_gone(request.receive),
    )
    return await stream_response(stream, request.method)
