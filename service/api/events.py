"""``GET /v1/events``: the append-only event log, oldest first, cursor-paged."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import authenticate, is_decimal, limit_param, services
from service.errors import ValidationFailed
from service.models import EVENT_TYPES
from service.samples import sample_event
from service.storage import events


def type_param(request: Request) -> list[str]:
    """The ``type`` filter: comma-separated event types (empty: every type)."""
    types = [t for t in request.query_params.get("type", "").split(",") if t]
    for event_type in types:
        if event_type not in EVENT_TYPES:
            raise ValidationFailed.field(
                "type", f"unknown event type {event_type!r} (accepted: {', '.join(EVENT_TYPES)})"
            )
    return types


async def list_events(request: Request) -> Response:
    caller = await authenticate(request, "jobs:read")
    db = services(request).db
    limit = limit_param(request, default=100, maximum=1000)
    types = type_param(request)
    after_seq = 0
    cursor = request.query_params.get("cursor")
    after = request.query_params.get("after")
    if cursor is not None:
        if not is_decimal(cursor):
            raise ValidationFailed.field("cursor", "is not a cursor this API returned")
        after_seq = int(cursor)
    elif after is not None:
        seq = await events.seq_of(db.reader, after)
        if seq is None:
            raise ValidationFailed.field("after", f"no event {after!r}")
        after_seq = seq
    rows = await events.list_page(
        db.reader,
        after_seq=after_seq,
        types=types,
        owner_key_id=caller.owner_filter,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    data = [{"id": row["id"], **json.loads(row["payload"])} for row in rows]
    return JSONResponse({"data": data, "next_cursor": str(rows[-1]["seq"]) if more else None})


async def sample_events(request: Request) -> Response:
    """One sample event per requested ``type`` (every type when none is given), shaped exactly
    like the real ones, for tools that show fields before the first event arrives."""
    await authenticate(request, "jobs:read")
    state = services(request)
    now = state.clock()
    data = [
        sample_event(event_type, now=now, file_url=state.publisher.file_url)
        for event_type in type_param(request) or EVENT_TYPES
    ]
    return JSONResponse({"data": data, "next_cursor": None})
