"""The live view, and the event stream that pages showing jobs follow (``EventSource``)."""

from __future__ import annotations

import json

from starlette.responses import Response

from service.app.event_streams import client_gone, stream_response
from service.console.view import View
from service.core.models import EVENT_TYPES


async def follow(view: View) -> dict[str, str]:
    """What a page needs to follow the log from now on: the stream's URL, positioned at the
    current end of the log (so nothing that happens after the page was built is missed), and the
    event types to listen for."""
    head = await view.state.events.head()
    return {
        "stream": f"/console/stream?last_event_id={head}",
        "event_types_json": json.dumps(EVENT_TYPES),
    }


async def live_page(view: View) -> Response:
    return view.render("live.html", section="live", live=await follow(view))


async def stream(view: View) -> Response:
    """``GET /v1/events/stream`` for the signed-in key: the same stream, the same scope."""
    request = view.request
    stream = await view.state.events.stream(
        view.signed_in_caller,
        request.query_params,
        request.headers.get("last-event-id"),
        client_gone(request.receive),
    )
    # Closed however the response ends, as the API's: a page left open holds one place of the
    # key's stream quota, and gives it back when it goes.
    return await stream_response(stream, request.method)
