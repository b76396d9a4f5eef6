"""``GET /v1/events``: the append-only event log, oldest first, cursor-paged."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import authenticate, is_decimal, limit_param, services
from service.api.operation import Param, Reply, cursor_query, limit_query, operation
from service.api.schemas import page_of, ref
from service.core.errors import ValidationFailed
from service.core.models import EVENT_TYPES
from service.delivery.samples import sample_event
from service.storage import events

TYPE_QUERY = Param(
    "type",
    "query",
    {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
    "Only these event types, comma-separated (e.g. `job.succeeded,job.failed`).",
    explode=False,
)
AFTER_QUERY = Param("after", "query", {"type": "string"}, "Start after this event id.")


def type_param(request: Request) -> list[str]:
    """The ``type`` filter: comma-separated event types (empty: every type)."""
    types = [t for t in request.query_params.get("type", "").split(",") if t]
    for event_type in types:
        if event_type not in EVENT_TYPES:
            raise ValidationFailed.field(
                "type", f"unknown event type {event_type!r} (accepted: {', '.join(EVENT_TYPES)})"
            )
    return types


@operation(
    summary="List events",
    tag="events",
    params=(
        TYPE_QUERY,
        AFTER_QUERY,
        cursor_query(
            "The `next_cursor` of the previous page (wins over `after`).",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
        ),
        limit_query(100, 1000),
    ),
    replies={200: Reply("Events, oldest first.", page_of(ref("Event")))},
    errors=(422,),
)
async def list_events(request: Request) -> Response:
    """The append-only event log: every event reelhook published, oldest first. A non-admin key
    sees the events of its own jobs."""
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


@operation(
    summary="Sample events",
    tag="events",
    params=(TYPE_QUERY,),
    replies={200: Reply("One sample per requested type.", page_of(ref("Event")))},
    errors=(422,),
)
async def sample_events(request: Request) -> Response:
    """One sample event per requested `type` (every type when none is given), built by the code
    that builds real events, so it has their exact shape: what Zapier's `performList` or an n8n
    pinned test event should show before the first real event arrives."""
    await authenticate(request, "jobs:read")
    state = services(request)
    now = state.clock()
    data = [
        sample_event(event_type, now=now, file_url=state.publisher.file_url)
        for event_type in type_param(request) or EVENT_TYPES
    ]
    return JSONResponse({"data": data, "next_cursor": None})
