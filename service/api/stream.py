"""``GET /v1/events/stream``: the event log as Server-Sent Events, live and resumable.

Each event is one SSE message: ``id`` is its position in the log (``seq``), ``event`` its type and
``data`` the same JSON object ``GET /v1/events`` lists. A client that reconnects with
``Last-Event-ID`` gets every later event exactly once. The stream reads the log, then sleeps until
a commit wakes it (see :mod:`service.eventfeed`) or a keep-alive comment is due.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from service.api.context import (
    Caller,
    authenticate,
    authenticate_stream_token,
    is_decimal,
    services,
)
from service.api.events import AFTER_QUERY, TYPE_QUERY, type_param
from service.api.operation import Param, Reply, operation
from service.core import sse
from service.core.clock import isoformat
from service.core.errors import ValidationFailed
from service.core.jsonutil import dumps
from service.delivery.eventfeed import EventFeed
from service.storage import events
from service.storage.database import Database

PAGE = 200
RECONNECT_MS = 2000
_HEADERS = {
    "Cache-Control": "no-cache",
    # Tell nginx-style proxies not to buffer: an event must reach the client when it happens.
    "X-Accel-Buffering": "no",
}


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
        caller = await authenticate_stream_token(request, token, "jobs:read")
    else:
        caller = await authenticate(request, "jobs:read")
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
    caller = await authenticate(request, "jobs:read")
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
    (``Last-Event-ID``, ``last_event_id``, ``after``) says, with its ``type`` filter."""
    types = type_param(request)
    state = services(request)
    after_seq = await _start(request, state.db)
    if request.method == "HEAD":
        return Response(media_type="text/event-stream", headers=_HEADERS)
    body = _follow(
        state.db,
        state.feed,
        after_seq=after_seq,
        types=types,
        owner_key_id=caller.owner_filter,
        keepalive=state.settings.stream_keepalive,
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=_HEADERS)


async def _start(request: Request, db: Database) -> int:
    """Where the stream starts: after ``Last-Event-ID`` (header, or ``last_event_id`` for clients
    that cannot set headers), else after the event ``after``, else at the current end of the log."""
    head = await events.last_seq(db.reader)
    for name, raw in (
        ("Last-Event-ID", request.headers.get("last-event-id")),
        ("last_event_id", request.query_params.get("last_event_id")),
    ):
        if raw is None:
            continue
        if not is_decimal(raw) or int(raw) > head:
            raise ValidationFailed.field(name, "is not an event id this stream sent")
        return int(raw)
    after = request.query_params.get("after")
    if after is not None:
        seq = await events.seq_of(db.reader, after)
        if seq is None:
            raise ValidationFailed.field("after", f"no event {after!r}")
        return seq
    return head


async def _follow(
    db: Database,
    feed: EventFeed,
    *,
    after_seq: int,
    types: list[str],
    owner_key_id: str | None,
    keepalive: float,
) -> AsyncIterator[bytes]:
    # An id-only block: the client's Last-Event-ID is right even before the first event arrives.
    yield sse.message(id=str(after_seq), retry_ms=RECONNECT_MS)
    while not feed.closed:
        # Taken before the read: a commit landing after the read still wakes the wait below.
        changed = feed.changed()
        rows = await events.list_page(
            db.reader, after_seq=after_seq, types=types, owner_key_id=owner_key_id, limit=PAGE
        )
        if rows:
            yield b"".join(
                sse.message(
                    id=str(row["seq"]),
                    event=row["type"],
                    data=dumps({"id": row["id"], **json.loads(row["payload"])}),
                )
                for row in rows
            )
            after_seq = rows[-1]["seq"]
            if len(rows) == PAGE:
                continue
        with anyio.move_on_after(keepalive) as idle:
            await changed.wait()
        if idle.cancelled_caught:
            yield sse.comment("keep-alive")
