"""A lean ASGI path for ``POST /v1/callbacks/{provider}/{token}``, in front of the framework.

Provider callbacks are reelhook's hottest route: the router, the ``Request`` object and the
operation wrapper cost about 50 µs of a callback's ~250 µs on the event loop (docs/performance.md
§4). This wrapper, in front of the whole application (service.app.factory), answers exactly that
route itself, through the same function as the routed
handler (:func:`service.api.callbacks.answer_callback`): the same checks in the same order, the
same answers, errors in the same JSON shape. Anything else, including a path the route would not
match, goes to the framework untouched. The routed handler stays: it is what ``/openapi.json``
describes, and it answers when the application is mounted under a root path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.callbacks import answer_callback
from service.api.errors import error_response
from service.app.services import Services
from service.core.errors import ReelhookError

log = logging.getLogger(__name__)

_PREFIX = "/v1/callbacks/"


class CallbackFastPath:
    """ASGI wrapper: callbacks answered directly, everything else passed to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _callback_route(scope)
        state = scope.get("state", {}).get("services") if route else None
        if route is None or not isinstance(state, Services):
            await self.app(scope, receive, send)
            return
        provider, token = route
        try:
            body = await answer_callback(
                state, provider, token, Headers(scope=scope), _body_chunks(receive)
            )
        except ReelhookError as error:
            response = error_response(error)
        except _Disconnected:
            return  # nobody is left to answer
        except Exception:
            # As the framework does for an unexpected error: logged, and a 500 in the JSON shape.
            log.exception("callback failed unexpectedly")
            response = error_response(ReelhookError())
        else:
            # The 200 as the routed handler's Response sends it (the same two headers, in the
            # same order), without building one per callback (docs/performance.md §4).
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await response(scope, receive, send)


def _callback_route(scope: Scope) -> tuple[str, str] | None:
    """(provider, token) when the request is what the callback route matches, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    provider, _, token = path[len(_PREFIX) :].partition("/")
    if not provider or not token or "/" in token:
        return None
    return provider, token


class _Disconnected(Exception):
    """The client went away before its body arrived."""


async def _body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
