"""Serving a callback makes no cyclic garbage: the served process runs the collector rarely
(``GC_THRESHOLDS`` in service/app/server.py, docs/performance.md §4 "Garbage collection"), which
is safe only while what the hot path leaves behind is freed by reference counting. A cycle made
per request (an exception kept with its traceback, a future or closure referring to itself)
would pile up between collections, holding whatever its frames hold."""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.conftest import SettingsFactory
from tests.helpers.callbacks import TOKENS, TRINETRA_MODEL, serve, trinetra_done
from tests.servers import run_server

pytestmark = pytest.mark.anyio

CALLBACKS = 40


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Only this test's explicit collections run while it measures."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class RawClient:
    """HTTP/1.1 over one kept-alive loopback connection, with no client library: httpx leaves
    ~40 objects in cycles per request, which would hide the server's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line, _, headers = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answer = json.loads(await self.reader.readexactly(length))
        return int(status_line.split()[1]), answer


@asynccontextmanager
async def raw_client(provider: httpx.AsyncClient) -> AsyncIterator[RawClient]:
    """A :class:`RawClient` on a connection of its own to the server ``provider`` talks to."""
    url = urlsplit(str(provider.base_url))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        yield RawClient(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


def successes(jobs: list[dict[str, Any]]) -> tuple[list[str], list[bytes]]:
    """The callback path and the success body of each of ``jobs``."""
    paths = [f"/v1/callbacks/trinetra/{TOKENS.callback(job['id'], 'trinetra')}" for job in jobs]
    return paths, [trinetra_done(job["provider_job_id"]) for job in jobs]


def cyclic_garbage() -> Counter[str]:
    """What a full collection finds unreachable now, by type (code name for frames)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(
            f"frame {item.f_code.co_qualname}"
            if isinstance(item, FrameType)
            else type(item).__qualname__
            for item in gc.garbage
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()  # the cycles kept for counting, now freed


async def test_storing_callbacks_leaves_no_cyclic_garbage(
    settings_factory: SettingsFactory, collector_off: None
) -> None:
    async with serve(settings_factory) as service:
        jobs = [await service.create_job(TRINETRA_MODEL) for _ in range(CALLBACKS + 1)]
        paths, bodies = successes(jobs)
        async with raw_client(service.provider) as client:
            # The first callback warms what is built once (caches, statements, connections).
            assert (await client.post(paths[0], bodies[0]))[0] == 200
            # What creating the jobs left (httpx's requests, the test's and the submissions').
            cyclic_garbage()
            for path, body in zip(paths[1:], bodies[1:], strict=True):
                status, answer = await client.post(path, body)
                assert (status, answer["outcome"]) == (200, "applied")
                # A replay is answered as a duplicate: the other path every provider takes.
                status, answer = await client.post(path, body)
                assert (status, answer["outcome"]) == (200, "duplicate")
            found = cyclic_garbage()
    # Nothing at all today; fewer than one object per callback leaves room for a cache filling.
    assert sum(found.values()) < CALLBACKS, found.most_common(20)


async def test_refused_callbacks_leave_no_cyclic_garbage(
    settings_factory: SettingsFactory, collector_off: None
) -> None:
    # A refusal is an exception on its way to an error answer: one kept with its traceback
    # would be a cycle holding the request's frames, its body among them, and any client can
    # send refused callbacks as fast as it likes.
    async with serve(settings_factory, MAX_CALLBACK_BYTES="4096") as service:
        job, other = [await service.create_job(TRINETRA_MODEL) for _ in range(2)]
        token = TOKENS.callback(job["id"], "trinetra")
        nobody = TOKENS.callback("job_01JNOSUCHJOB0000000000000", "trinetra")
        refused = [
            # A forged token: 401.
            (f"/v1/callbacks/trinetra/{token[:-2]}xx", trinetra_done(job["provider_job_id"]), 401),
            # Another job's document under this job's token, refused by the writer: 401.
            (f"/v1/callbacks/trinetra/{token}", trinetra_done(other["provider_job_id"]), 401),
            # A job that does not exist: 404.
            (
                f"/v1/callbacks/trinetra/{nobody}",
                trinetra_done(job["provider_job_id"]),
                404,
            ),
            # A body that is not JSON: 400.
            (f"/v1/callbacks/trinetra/{token}", b"{not json", 400),
            # A body over the limit: 413.
            (f"/v1/callbacks/trinetra/{token}", b" " * 5000, 413),
            # The account webhook's route (through the framework's stack): a forged token, 401.
            ("/v1/callbacks/trinetra/account/not-a-token", trinetra_done("p-1"), 401),
        ]
        async with raw_client(service.provider) as client:
            for path, body, status in refused:
                assert (await client.post(path, body))[0] == status
            cyclic_garbage()
            for _ in range(CALLBACKS // len(refused)):
                for path, body, status in refused:
                    assert (await client.post(path, body))[0] == status
            found = cyclic_garbage()
    assert sum(found.values()) < CALLBACKS // 2, found.most_common(20)


async def test_callbacks_fanned_out_to_subscribers_leave_no_cyclic_garbage(
    settings_factory: SettingsFactory, collector_off: None
) -> None:
    # The delivery path too: each callback's event claimed at ingest and sent to 3 subscribers.
    received: list[str] = []
    expected = [0]
    arrived = asyncio.Event()  # set once ``expected[0]`` deliveries have been received

    async def subscriber(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        received.append(scope["path"])
        if len(received) >= expected[0]:
            arrived.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def delivered(count: int) -> None:
        expected[0] = count
        arrived.clear()
        if len(received) < count:
            with anyio.fail_after(30):
                await arrived.wait()

    async with run_server(subscriber) as subscriber_url, serve(settings_factory) as service:
        for n in range(3):
            answer = await service.api.post(
                "/v1/subscriptions",
                json={"url": f"{subscriber_url}/s{n}", "event_types": ["job.succeeded"]},
            )
            assert answer.status_code == 201, answer.text
        jobs = [await service.create_job(TRINETRA_MODEL) for _ in range(CALLBACKS + 1)]
        paths, bodies = successes(jobs)
        async with raw_client(service.provider) as client:
            # The first callback and its deliveries warm the subscribers' connections.
            assert (await client.post(paths[0], bodies[0]))[0] == 200
            await delivered(3)
            cyclic_garbage()
            for path, body in zip(paths[1:], bodies[1:], strict=True):
                assert (await client.post(path, body))[0] == 200
            await delivered(3 * len(jobs))
            found = cyclic_garbage()
    assert sorted(received) == sorted(f"/s{n}" for n in range(3) for _ in jobs)
    assert sum(found.values()) < CALLBACKS, found.most_common(20)
