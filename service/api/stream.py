"""``GET /v1/events/stream``: the event log as Server-Sent Events, live and resumable (see
:mod:`service.delivery.eventlog`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.access.callers import Caller
from service.access.scopes import Scope
from service.api.context import authenticate
from service.api.events import AFTER_QUERY, TYPE_QUERY
from service.api.operation import Param, Reply, operation
from service.app.services import services
from service.core.sse import STREAM_HEADERS

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
    ),
    replies={
        200: Reply(
            "`text/event-stream`: one message per event (`id`: its position, `event`: its type, "
            "`data`: the event as GET /v1/events lists it), keep-alive comments while idle.",
            {"type": "string"},
            media_type="text/event-stream",
        )
    },
    errors=(422,),
)
async def stream_events(request: Request) -> Response:
    """The event log, live. Without a position the stream starts at the end of the log; it
    first sends an id-only message naming that position, so a client that reconnects with
    `Last-Event-ID` misses nothing even if no event came in between. Same filters and owner
    scope as GET /v1/events."""
    caller = await authenticate(request, Scope.JOBS_READ)
    return await event_stream(request, caller)


async def event_stream(request: Request, caller: Caller) -> Response:
    """The SSE response following the log for ``caller`` from where the request's position
    (``Last-Event-ID``, ``last_event_id``, ``after``) says, with its ``type`` filter."""
    body = await services(request).events.stream(
        caller, request.query_params, request.headers.get("last-event-id")
    )
    if request.method == "HEAD":
        return Response(media_type="text/event-stream", headers=STREAM_HEADERS)
    return StreamingResponse(body, media_type="text/event-stream", headers=STREAM_HEADERS)
