"""Bounded inbound memory (service/jobs/inbound.py, service/app/server.py): a byte budget for
callback bodies in flight and queued, a concurrency limit per provider route, a body read timeout
and a header read timeout. Beyond a limit the answer is 503 + Retry-After, before any of the
body is read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.app.server import Server, guarded_http
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    TOKENS,
    TRINETRA_MODEL,
    serve,
    stored_replays,
    trinetra_done,
    trinetra_failed,
)
from tests.servers import serving
from tests.support import api_client, assert_error, stored

pytestmark = pytest.mark.anyio

BODY = b'{"id": "p_1", "status": "succeeded"}'


class Stalled:
    """A request body that sends its first bytes, then waits until released."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = 0

    def body(self) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            self.started += 1
            yield BODY[:5]
            await self.release.wait()
            yield BODY[5:]

        return chunks()


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def guarded(
    app: ASGIApp, header_timeout: float, body_timeout: float, **config: Any
) -> AsyncIterator[tuple[Server, str, int]]:
    """``app`` served by reelhook's server with its guarded HTTP protocol (:func:`guarded_http`)
    on loopback, started; yield the server, its host and its port."""
    http = guarded_http(header_timeout, body_timeout)
    options = uvicorn.Config(app, lifespan="off", log_level="warning", http=http, **config)
    async with serving(options) as (server, sock):
        host, port = sock.getsockname()[:2]
        yield server, host, port


async def post_callback(
    http: httpx.AsyncClient, content: bytes | AsyncIterator[bytes], job: str = "job_x"
) -> httpx.Response:
    token = TOKENS.callback(job, "trinetra")
    return await http.post(
        f"/v1/callbacks/trinetra/{token}",
        content=content,
        headers={"Content-Length": str(len(BODY))},
    )


async def hold_stalled(
    http: httpx.AsyncClient, stalled: Stalled, count: int, answers: list[httpx.Response]
) -> None:
    async def one() -> None:
        answers.append(await post_callback(http, stalled.body()))

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)


async def test_callback_bodies_beyond_the_byte_budget_get_503_before_being_read(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(
        INBOUND_BUFFER_BYTES="1024", MAX_CALLBACK_BYTES="1024", CALLBACK_CONCURRENCY="100"
    )
    big = 1000  # declared length of each stalled body: one fits in 1024 bytes, two do not
    stalled = Stalled()
    async with api_client(settings) as http:
        token = TOKENS.callback("job_x", "trinetra")

        async def held() -> httpx.Response:
            async def chunks() -> AsyncIterator[bytes]:
                stalled.started += 1
                yield b"x" * 10
                await stalled.release.wait()
                yield b"x" * (big - 10)

            return await http.post(
                f"/v1/callbacks/trinetra/{token}",
                content=chunks(),
                headers={"Content-Length": str(big)},
            )

        answers: list[httpx.Response] = []

        async def keep() -> None:
            answers.append(await held())

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep)
            await until(lambda: stalled.started >= 1)
            # The held body has its 1000 bytes reserved: a second one is refused at once.
            refused = await http.post(
                f"/v1/callbacks/trinetra/{token}",
                content=b"y" * 100,
            )
            stalled.release.set()
        # Its commit done (an unknown job here), the budget is free again.
        after = await post_callback(http, BODY)
    error = assert_error(refused, 503, "unavailable")
    assert "REELHOOK_INBOUND_BUFFER_BYTES" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    # The held body was read whole, then judged (not refused for want of budget).
    assert len(answers) == 1 and answers[0].status_code not in (503, 408), answers[0].text
    assert after.status_code != 503, after.text


async def test_a_provider_route_takes_at_most_its_concurrency_of_callbacks(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(CALLBACK_CONCURRENCY="2")
    stalled = Stalled()
    answers: list[httpx.Response] = []
    async with api_client(settings) as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_stalled, http, stalled, 2, answers)
            await until(lambda: stalled.started >= 2)
            refused = await post_callback(http, BODY)
            # Another provider's route has its own limit.
            other = await http.post(
                f"/v1/callbacks/apiframe/{TOKENS.callback('job_x', 'apiframe')}", content=BODY
            )
            stalled.release.set()
        after = await post_callback(http, BODY)
    error = assert_error(refused, 503, "unavailable")
    assert "REELHOOK_CALLBACK_CONCURRENCY" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    assert other.status_code != 503, other.text
    assert len(answers) == 2 and all(a.status_code != 503 for a in answers)
    assert after.status_code != 503, after.text


ACCOUNT = f"/v1/callbacks/trinetra/account/{TOKENS.account_webhook('trinetra', 'sim_trinetra_key')}"


async def post_account(
    http: httpx.AsyncClient, content: bytes | AsyncIterator[bytes], length: int = len(BODY)
) -> httpx.Response:
    """A document on Trinetra's account webhook (the simulated account's URL)."""
    return await http.post(ACCOUNT, content=content, headers={"Content-Length": str(length)})


async def test_the_account_webhook_is_held_to_the_byte_budget(
    settings_factory: SettingsFactory,
) -> None:
    """The provider account's webhook takes bodies from the same byte budget: a held body's
    declared length is reserved, and one that does not fit is 503 before it is read."""
    settings = settings_factory(
        INBOUND_BUFFER_BYTES="1024", MAX_CALLBACK_BYTES="1024", CALLBACK_CONCURRENCY="100"
    )
    stalled = Stalled()

    async def big() -> AsyncIterator[bytes]:
        stalled.started += 1
        yield b"x" * 10
        await stalled.release.wait()
        yield b"x" * 990

    answers: list[httpx.Response] = []
    async with api_client(settings) as http:

        async def keep() -> None:
            answers.append(await post_account(http, big(), 1000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep)
            await until(lambda: stalled.started >= 1)
            refused = await post_account(http, b"y" * 100, 100)
            # The budget is one: the per-job route finds it spent too.
            per_job = await post_callback(http, BODY)
            stalled.release.set()
        after = await post_account(http, BODY)
    for answer in (refused, per_job):
        error = assert_error(answer, 503, "unavailable")
        assert "REELHOOK_INBOUND_BUFFER_BYTES" in error["message"]
        assert answer.headers["Retry-After"] == "1"
    assert len(answers) == 1 and answers[0].status_code == 400, answers[0].text  # read, judged
    assert after.status_code != 503, after.text


async def test_the_account_webhook_has_its_own_concurrency_limit(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(CALLBACK_CONCURRENCY="2")
    stalled = Stalled()
    answers: list[httpx.Response] = []
    async with api_client(settings) as http:

        async def one() -> None:
            answers.append(await post_account(http, stalled.body()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
            await until(lambda: stalled.started >= 2)
            refused = await post_account(http, BODY)
            # The per-job route of the same provider is not held up by it.
            per_job = await post_callback(http, BODY)
            stalled.release.set()
        after = await post_account(http, BODY)
    error = assert_error(refused, 503, "unavailable")
    assert "REELHOOK_CALLBACK_CONCURRENCY" in error["message"]
    assert "trinetra account" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    assert per_job.status_code != 503, per_job.text
    assert len(answers) == 2 and all(a.status_code != 503 for a in answers)
    assert after.status_code != 503, after.text


@pytest.mark.parametrize("post", [post_callback, post_account], ids=["per-job", "account"])
async def test_a_callback_body_that_does_not_arrive_in_time_gets_408(
    settings_factory: SettingsFactory,
    post: Callable[[httpx.AsyncClient, bytes | AsyncIterator[bytes]], Awaitable[httpx.Response]],
) -> None:
    """Either callback route: a body still arriving after ``BODY_TIMEOUT`` is answered 408,
    and the route takes the next one."""
    settings = settings_factory(BODY_TIMEOUT="0.2")
    stalled = Stalled()
    async with api_client(settings) as http:
        answer = await post(http, stalled.body())
        stalled.release.set()
        after = await post(http, BODY)
    error = assert_error(answer, 408, "request_timeout")
    assert "0.2 seconds" in error["message"]
    assert after.status_code != 408


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_a_client_dribbling_its_headers_is_disconnected() -> None:
    async with guarded(_ok, 0.3, 10) as (_, host, port):
        # A well-behaved client gets its answer, and its kept-alive connection stays usable.
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
            assert (await http.get("/")).status_code == 204
            assert (await http.get("/")).status_code == 204
        # A slowloris client sends a byte of header at a time and never finishes.
        stream = await anyio.connect_tcp(host, port)
        closed = False
        with anyio.fail_after(10):
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            try:
                while True:
                    await stream.send(b"X")
                    with anyio.move_on_after(0.05):
                        if await stream.receive() == b"":
                            break
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed = True
        await stream.aclose()
    assert closed


@pytest.mark.parametrize("deadline", ["keep-alive", "headers"])
async def test_a_kept_alive_connection_keeps_its_deadlines_without_a_timer_per_request(
    monkeypatch: pytest.MonkeyPatch, deadline: str
) -> None:
    """The header deadline and uvicorn's keep-alive timeout are deadlines on one timer per
    connection (docs/performance-journal.md, "The ingest path's sixth pass"): many requests on a
    connection make no timer each, and after them each deadline still falls due: an idle
    connection is closed by the keep-alive timeout, and one whose next request's headers stall
    by the header deadline (the other deadline set far off)."""
    loop = asyncio.get_running_loop()
    call_at = loop.call_at
    made: list[object] = []

    def counting(when: float, callback: Callable[..., object], *args: Any, **kw: Any) -> Any:
        if isinstance(getattr(callback, "__self__", None), HttpToolsProtocol):
            made.append(callback)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting)
    short, far = 1, 60
    header_timeout, keep_alive = (far, short) if deadline == "keep-alive" else (short, far)
    async with guarded(_ok, header_timeout, 10, timeout_keep_alive=keep_alive) as (_, host, port):
        stream = await anyio.connect_tcp(host, port)
        for _ in range(50):
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):
                answer += await stream.receive()
            assert answer.startswith(b"HTTP/1.1 204"), answer
        assert len(made) <= 2, made  # the connection's first deadlines, not one per request
        if deadline == "headers":
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        started = loop.time()
        with anyio.fail_after(10), contextlib.suppress(anyio.EndOfStream, OSError):
            assert await stream.receive() == b""
        assert loop.time() - started >= short - 0.05  # closed by its deadline, not before
        await stream.aclose()


async def test_replays_of_an_identical_callback_are_stored_once_and_counted(
    settings_factory: SettingsFactory,
) -> None:
    """A verified callback sent again byte for byte (a provider's retry, or a replay) is answered
    as before but not stored again: its row counts the replays. N replays, one copy."""
    replays = 25
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        token = TOKENS.callback(job["id"], "trinetra")
        document = json.loads(trinetra_done(job["provider_job_id"]))
        document["padding"] = "x" * 200_000  # what each copy would cost
        body = json.dumps(document).encode()
        first = await service.callback("trinetra", token, body)
        answers = [await service.callback("trinetra", token, body) for _ in range(replays - 5)]

        async def replay() -> None:
            answers.append(await service.callback("trinetra", token, body))

        async with anyio.create_task_group() as tg:  # some at once: shared batches
            for _ in range(5):
                tg.start_soon(replay)
        # A different body for the same job is a new callback, stored on its own.
        late = await service.callback("trinetra", token, trinetra_failed(job["provider_job_id"]))
        assert (await service.job(job["id"]))["status"] == "succeeded"
        assert (await service.event_types(job["id"]))["job.succeeded"] == 1
    assert first.json() == {"received": True, "job_id": job["id"], "outcome": "applied"}
    assert [a.status_code for a in answers] == [200] * replays
    assert {a.json()["outcome"] for a in answers} == {"duplicate"}
    assert late.json()["outcome"] == "late"
    assert stored_replays(service.settings) == [
        (job["id"], "applied", replays),
        (job["id"], "late", 0),
    ]
    rows = stored(
        service.settings,
        "SELECT length(body), last_replay_at >= received_at FROM callbacks ORDER BY id",
    )
    assert rows[0] == (len(body), True)
    assert sum(size for size, _ in rows) == len(body) + len(trinetra_failed(job["provider_job_id"]))


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 503 without reading the request's body (as a callback refused for want of
    budget is); a bodiless request gets 204."""
    if scope["type"] != "http":
        return
    status = 503 if scope["method"] == "POST" else 204
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_a_body_refused_unread_is_not_kept_with_the_connection() -> None:
    """What the server read of a body ahead of the application (here 200 KiB of a declared
    1 MiB) is dropped once the answer went without reading it, instead of staying with the
    kept-alive connection; the rest of the body is read past and the connection stays usable."""
    size, sent = 1 << 20, 200 * 1024
    async with guarded(_refuse, 10, 10) as (server, host, port):
        stream = await anyio.connect_tcp(host, port)
        with anyio.fail_after(10):
            await stream.send(
                b"POST /v1/callbacks/x/y HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n\r\n" % size + b"x" * sent
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
            (connection,) = server.server_state.connections
            assert isinstance(connection, HttpToolsProtocol)
            await until(lambda: connection.cycle is not None and connection.cycle.response_complete)
            assert connection.cycle is not None
            held = len(connection.cycle.body)
            await stream.send(b"x" * (size - sent))
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            again = b""
            while b"\r\n\r\n" not in again:
                again += await stream.receive()
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert held == 0
    assert again.startswith(b"HTTP/1.1 204"), again


async def test_a_refused_body_still_arriving_past_the_header_timeout_is_read_to_its_end() -> None:
    """A client that sends the whole body before reading the answer (as most HTTP clients do)
    is still sending the body of a refused upload when its 503 has gone. The header deadline of
    the next request starts only once that body has arrived: started at the answer, it closed
    the connection with the body's rest unread, the reset reached the client while it was
    still writing, and it never read its 503 (under load 539 of 2,000 refused uploads,
    bench/results/latest.md, isolation scenario c)."""
    header_timeout = 0.3
    size, chunk = 1 << 20, 64 * 1024
    async with guarded(_refuse, header_timeout, 10) as (_, host, port):
        stream = await anyio.connect_tcp(host, port)
        with anyio.fail_after(10):
            await stream.send(
                b"POST /v1/callbacks/x/y HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            )
            # The body takes about three header timeouts to send.
            for _ in range(size // chunk):
                await stream.send(b"x" * chunk)
                await anyio.sleep(3 * header_timeout / (size // chunk))
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            again = b""
            while b"\r\n\r\n" not in again:
                again += await stream.receive()
            # Once the body is in, the next request's headers have their usual deadline.
            idle = b""
            with anyio.move_on_after(10):
                try:
                    idle = await stream.receive()
                except anyio.EndOfStream:
                    idle = b"closed"
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert again.startswith(b"HTTP/1.1 204"), again
    assert idle == b"closed"


async def test_a_refused_body_that_never_ends_is_cut_after_the_body_timeout() -> None:
    """Reading a refused body to its end is bounded: a client that stops sending it (a slowloris
    on the body) is disconnected ``body_timeout`` seconds after its answer."""
    async with guarded(_refuse, 10, 0.3) as (_, host, port):
        stream = await anyio.connect_tcp(host, port)
        closed = False
        with anyio.fail_after(10):
            await stream.send(
                b"POST /v1/callbacks/x/y HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nxx"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed = True
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert closed


async def test_a_request_waiting_unread_in_the_socket_is_not_closed_as_idle() -> None:
    """When a deadline falls due while the client's request sits in the socket unread (this
    process was busy; after a stall the event loop runs its timers before it reads), neither
    the header deadline nor the keep-alive timeout closes the connection: the delay is the
    server's, and closing reset clients that had sent everything (isolation scenario c)."""
    async with guarded(_ok, 0.3, 10) as (server, host, port):
        with socket.create_connection((host, port)) as raw:
            await until(lambda: len(server.server_state.connections) == 1)
            (connection,) = server.server_state.connections
            assert isinstance(connection, HttpToolsProtocol)
            # No await from the send to the deadlines: the request is in the socket, unread.
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            fd = connection.transport.get_extra_info("socket").fileno()
            assert select.select([fd], [], [], 5)[0] == [fd]
            assert connection.cycle is None
            connection.timeout_keep_alive_handler()
            connection._too_slow()
            assert not connection.transport.is_closing()
            answer: bytes = await anyio.to_thread.run_sync(raw.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 204"), answer
