"""``GET /v1/events``: the append-only event log, oldest first, cursor-paged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.scopes import Scope
from service.api.context import authenticate
from service.api.operation import Param, Reply, cursor_query, limit_query, operation
from service.api.schemas import page_of, ref
from service.app.services import services
from service.core import params
from service.core.models import EVENT_TYPES
from service.delivery.eventlog import event_types
from service.delivery.samples import sample_event

TYPE_QUERY = Param(
    "type",
    "query",
    {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
    "Only these event types, comma-separated (e.g. `job.succeeded,job.failed`).",
    explode=False,
)
AFTER_QUERY = Param("after", "query", {"type": "string"}, "Start after this event id.")


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
    caller = await authenticate(request, Scope.JOBS_READ)
    query = request.query_params
    page = await services(request).events.page(
        caller,
        event_types(query),
        cursor=query.get("cursor"),
        after=query.get("after"),
        limit=params.limit(query, default=100, maximum=1000),
    )
    return JSONResponse({"data": page.items, "next_cursor": page.next_cursor})


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
    await authenticate(request, Scope.JOBS_READ)
    state = services(request)
    now = state.clock()
    data = [
        sample_event(event_type, now=now, file_url=state.publisher.file_url)
        for event_type in event_types(request.query_params) or EVENT_TYPES
    ]
    return JSONResponse({"data": data, "next_cursor": None})
