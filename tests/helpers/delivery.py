"""Outbound deliveries under test: subscribing, pinging, scripted subscribers (hanging,
failing, replying), and reading the delivery log and the outbox rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.app.settings import Settings
from tests.helpers.keys import as_key
from tests.servers import Sink, run_server
from tests.support import api_client, stored_dicts


async def subscribe(http: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    created = await http.post("/v1/subscriptions", json={"url": url, **fields})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    assert body["secret"].startswith("whsec_")
    return body


async def ping(http: httpx.AsyncClient, subscription_id: str) -> str:
    response = await http.post(f"/v1/subscriptions/{subscription_id}/test")
    assert response.status_code == 202, response.text
    event_id: str = response.json()["event_id"]
    assert event_id.startswith("evt_")
    return event_id


async def delivery_of(settings: Settings, event_id: str) -> dict[str, Any]:
    rows = await query(settings, "SELECT * FROM deliveries WHERE event_id = ?", event_id)
    assert len(rows) == 1, rows
    return rows[0]


async def attempts_of(settings: Settings, event_id: str) -> list[dict[str, Any]]:
    return await query(
        settings,
        "SELECT a.* FROM attempts a JOIN deliveries d ON a.delivery_id = d.id "
        "WHERE d.event_id = ? ORDER BY a.id",
        event_id,
    )


@asynccontextmanager
async def sink_and_service(
    settings: Settings, **app_options: Any
) -> AsyncIterator[tuple[Sink, str, httpx.AsyncClient]]:
    sink = Sink()
    async with run_server(sink.app()) as sink_url, api_client(settings, **app_options) as http:
        yield sink, sink_url, http


@dataclass
class Hanging:
    """A subscriber whose ``/hang`` requests hang until released (10 s at most).

    ``/hang-once`` hangs on its first request only; ``/fast`` answers 204 at once; ``/big/<n>``
    answers 500 with an ``n``-byte body sent in two pieces.
    """

    arrivals: list[str] = field(default_factory=list)
    hanging: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def _note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            await request.body()
            path = request.url.path
            self.arrivals.append(path)
            if path.startswith("/big/"):
                return StreamingResponse(_in_two_pieces(int(path.split("/")[2])), status_code=500)
            hang = path == "/hang" or (path == "/hang-once" and self.arrivals.count(path) == 1)
            if hang:
                self.hanging += 1
                self._note()
                try:
                    with anyio.move_on_after(10):
                        await self.release.wait()
                finally:
                    self.hanging -= 1
            self._note()
            return Response(status_code=204)

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])

    def on(self, path: str) -> int:
        return self.arrivals.count(path)

    async def wait_for(self, predicate: Callable[[Hanging], bool], within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self.changed.wait()


async def subscribe_as(http: httpx.AsyncClient, raw_key: str, url: str) -> dict[str, Any]:
    created = await http.post("/v1/subscriptions", json={"url": url}, headers=as_key(raw_key))
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


JOB = {"model": "trinetra/kling-v2.5", "input": {"prompt": "A cat chasing a laser dot"}}


async def until_delivery(
    http: httpx.AsyncClient, event_id: str, predicate: Callable[[Row], bool], within: float = 10.0
) -> Row:
    """Poll the delivery log until ``event_id``'s delivery satisfies ``predicate``."""
    with anyio.fail_after(within):
        while True:
            row = await delivery_for(http, event_id)
            if predicate(row):
                return row
            await anyio.sleep(0.02)


def finished(row: Row) -> bool:
    return row["status"] in ("succeeded", "failed", "canceled")


async def detail(http: httpx.AsyncClient, delivery_id: str) -> Row:
    response = await http.get(f"/v1/deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    body: Row = response.json()
    return body


async def exhausted(http: httpx.AsyncClient, sub_id: str) -> tuple[str, Row]:
    """Ping ``sub_id`` and wait until its delivery has failed every scheduled attempt."""
    event_id = await ping(http, sub_id)
    row = await until_delivery(http, event_id, finished)
    assert row["status"] == "failed", row
    return event_id, row


def replies_app() -> Starlette:
    """``/text`` answers 500 with a UTF-8 body; ``/binary`` answers 500 with bytes that are not."""

    async def answer(request: Request) -> Response:
        await request.body()
        if request.url.path == "/text":
            return Response("upstream said: no — try later", status_code=500)
        return Response(b"\xff\xfe\x00binary", status_code=500)

    return Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])


async def query(settings: Settings, sql: str, *params: object) -> list[dict[str, Any]]:
    return await anyio.to_thread.run_sync(_query, settings, sql, params)


async def _in_two_pieces(size: int) -> AsyncIterator[bytes]:
    yield b"a" * (size // 2)
    await anyio.sleep(0.05)  # lets the first piece reach the client on its own
    yield b"b" * (size - size // 2)


Row = dict[str, Any]


async def delivery_for(http: httpx.AsyncClient, event_id: str, **params: str) -> Row:
    """The one delivery of ``event_id``, as ``GET /v1/deliveries?event_id=`` lists it."""
    listed = await http.get("/v1/deliveries", params={"event_id": event_id, **params})
    assert listed.status_code == 200, listed.text
    (row,) = listed.json()["data"]
    assert isinstance(row, dict)
    return row


def _query(settings: Settings, sql: str, params: tuple[object, ...]) -> list[dict[str, Any]]:
    return stored_dicts(settings, sql, params)
