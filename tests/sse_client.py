"""Reading reelhook's event stream in tests, through the same SSE reader the CLI uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from service.core import sse


class Stream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.reader = sse.Reader()
        self.comments: list[str] = []
        self._lines = response.aiter_lines()

    async def line(self, within: float = 5.0) -> str | None:
        """The next raw line, or None at the end of the stream."""
        with anyio.fail_after(within):
            try:
                return await anext(self._lines)
            except StopAsyncIteration:
                return None

    async def message(self, within: float = 5.0) -> sse.Message:
        """The next dispatched message; fails the test if none comes ``within`` seconds."""
        with anyio.fail_after(within):
            while True:
                line = await self.line(within)
                assert line is not None, "the stream ended"
                if line.startswith(":"):
                    self.comments.append(line)
                found = self.reader.feed(line)
                if found is not None:
                    return found

    async def events(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` events, as the dicts ``GET /v1/events`` lists, with their SSE id."""
        found = []
        for _ in range(count):
            msg = await self.message(within)
            event = json.loads(msg.data)
            assert msg.event == event["type"], msg
            found.append({**event, "seq": msg.id})
        return found

    async def position(self, within: float = 5.0) -> str:
        """Read the id-only block a stream opens with; return the position it names."""
        while self.reader.last_event_id is None:
            line = await self.line(within)
            assert line is not None, "the stream ended"
            assert self.reader.feed(line) is None, "an event came before the position"
        return self.reader.last_event_id


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, *, params: dict[str, str] | None = None, **headers: str
) -> AsyncIterator[Stream]:
    """``GET /v1/events/stream``; the connection is dropped when the block ends."""
    async with http.stream(
        "GET",
        "/v1/events/stream",
        params=params or {},
        headers={name.replace("_", "-"): value for name, value in headers.items()},
        timeout=httpx.Timeout(10.0),
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)
