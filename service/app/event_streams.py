"""The HTTP response of an event stream, for every edge that serves one (the API's
``GET /v1/events/stream`` and the console's live view): the stream's quota place is given back
however the response ends, and the stream ends by itself when its client goes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.core.sse import STREAM_HEADERS
from service.delivery.eventlog import EventStream


def client_gone(receive: Receive) -> Callable[[], Awaitable[None]]:
    """What returns once the client has gone (the request has no body to read: a GET)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


async def stream_response(stream: EventStream, method: str) -> Response:
    """The response for an opened ``stream``: to a HEAD only its headers, the stream closed at
    once; otherwise the stream itself, closed when the response ends."""
    if method == "HEAD":
        await stream.close()
        return Response(media_type="text/event-stream", headers=STREAM_HEADERS)
    return EventStreamResponse(stream)


class EventStreamResponse(StreamingResponse):
    """An event stream's response, which closes the stream (giving its quota place back)
    however the response ends: finished, cancelled, or never started.

    It sends the stream's chunks from the request's own task. StreamingResponse runs a second
    task per response listening for the client's disconnection; the stream watches for that
    itself while it waits (:func:`client_gone`), and ends when the client goes
    (docs/performance.md, "Idle streams")."""

    def __init__(self, stream: EventStream) -> None:
        super().__init__(stream, media_type="text/event-stream", headers=STREAM_HEADERS)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            # A server on ASGI spec 2.4 says so when the client has gone (as StreamingResponse).
            raise ClientDisconnect from None
        finally:
            await self._stream.close()
