"""A lean ASGI path for ``GET /v1/events/stream``, in front of the router.

An event stream is a request that stays open for hours. Through the framework, each one keeps
the router's, the route's and the exception middleware's coroutines and closures alive and two
``Request`` objects: about a third of the ~130 objects an idle stream holds, which every full
garbage collection walks (1,000 idle streams: docs/performance.md, "Idle streams"). This
middleware opens exactly that route itself, through the routed handler
(:data:`service.api.stream.stream_events`, with its query-parameter check), so the answers are
the same: errors in the same JSON shape, from the same function as the framework's handler. An
error that is not reelhook's own is left to the framework, which runs the route again and
answers it as for any route. Anything else, including HEAD and a path the route would not match,
goes to the framework untouched. The routed handler stays: it is what ``/openapi.json``
describes, and it answers when the application is mounted under a root path.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.stream import stream_events
from service.app.services import Services
from service.core.errors import ReelhookError

PATH = "/v1/events/stream"


class StreamFastPath:
    """ASGI middleware: event streams opened directly, everything else passed to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_stream(scope):
            await self.app(scope, receive, send)
            return
        response = await _open(scope, receive)
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def _is_stream(scope: Scope) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "GET"
        and scope["path"] == PATH
        and not scope.get("root_path")
        and isinstance(scope.get("state", {}).get("services"), Services)
    )


async def _open(scope: Scope, receive: Receive) -> Response | None:
    """The route's answer; None for an error the framework's handlers answer. Its own frame:
    the ``Request`` is not kept alive for as long as the stream is open."""
    try:
        return await stream_events(Request(scope, receive))
    except ReelhookError as error:
        return error_response(error)
    except Exception:
        return None
