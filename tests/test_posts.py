"""The delivery fast path (service/net/posts.py): POSTs to plain-HTTP subscribers on keep-alive
connections of its own, with aiohttp's answers and errors, against scripted loopback servers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
import uvloop

from service.delivery.sender import Sender
from service.net.client import guarded_session
from service.net.failures import NetworkFailure, classify
from service.net.guard import IPNetwork
from service.net.posts import PostPool

pytestmark = pytest.mark.anyio

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class Server:
    """A loopback server answering each request with ``handler``; counts connections and
    keeps the requests' heads and bodies."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return body


@asynccontextmanager
async def scripted(
    answer: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Server]:
    server = Server(lambda r, w: answer(server, r, w))
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()


async def keep_answering(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """204 to every request on the connection, as a keep-alive server does."""
    while True:
        await server.read_request(r)
        w.write(NO_CONTENT)
        await w.drain()


def pool() -> PostPool:
    return PostPool(LOOPBACK, "reelhook-test")


async def test_posts_reuse_one_connection_and_send_the_headers_and_body() -> None:
    async with scripted(keep_answering) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/hooks/a?x=1"
        for n in range(3):
            answer = await posts.post(url, {"X-N": str(n)}, b"body %d" % n, timeout=5, keep=100)
            assert answer.status == 204 and answer.body == b""
    assert server.connections == 1
    head, body = server.requests[2]
    assert head.startswith(b"POST /hooks/a?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"X-N: 2\r\n" in head and b"User-Agent: reelhook-test\r\n" in head
    assert body == b"body 2"


async def test_an_answer_is_read_by_length_by_chunks_or_to_the_close() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRetry-After: 7\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nno length, ends at the close",
    ]

    async def answer(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(r)
            w.write(answers[len(server.requests) - 1])
            await w.drain()
            if len(server.requests) == len(answers):
                return  # the last one is delimited by closing

    async with scripted(answer) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/"
        got = [await posts.post(url, {}, b"x", timeout=5, keep=100) for _ in answers]
    assert [(a.status, a.body) for a in got] == [
        (200, b"hello"),
        (201, b"abcde"),
        (202, b"ok"),
        (500, b"no length, ends at the close"),
    ]
    assert got[0].headers["retry-after"] == "7"
    assert server.connections == 1


async def test_a_long_answer_keeps_its_prefix_and_drops_the_connection() -> None:
    async def answer(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            await server.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100_000)
            await w.drain()
        await keep_answering(server, r, w)

    async with scripted(answer) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/"
        first = await posts.post(url, {}, b"x", timeout=5, keep=10)
        second = await posts.post(url, {}, b"x", timeout=5, keep=10)
    assert (first.status, first.body) == (200, b"y" * 10)
    assert second.status == 204
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def answer_once(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(r)
        w.write(NO_CONTENT)  # keep-alive as far as the client knows, then closed
        await w.drain()

    async with scripted(answer_once) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/"
        assert (await posts.post(url, {}, b"1", timeout=5, keep=10)).status == 204
        await asyncio.sleep(0.1)
        assert (await posts.post(url, {}, b"2", timeout=5, keep=10)).status == 204
    assert server.connections == 2
    assert [body for _, body in server.requests] == [b"1", b"2"]


async def test_a_reused_connection_closed_before_any_answer_is_sent_again_once() -> None:
    async def close_on_second(
        server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        if server.connections == 1:
            await server.read_request(r)
            w.write(NO_CONTENT)
            await w.drain()
            await server.read_request(r)
            return  # closed with the second request unanswered (a keep-alive timeout race)
        await keep_answering(server, r, w)

    async with scripted(close_on_second) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/"
        assert (await posts.post(url, {}, b"1", timeout=5, keep=10)).status == 204
        assert (await posts.post(url, {}, b"2", timeout=5, keep=10)).status == 204
    assert server.connections == 2
    # At least once: the unanswered request went again on the new connection.
    assert [body for _, body in server.requests] == [b"1", b"2", b"2"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _sent(url: str, *, allow: tuple[IPNetwork, ...] = LOOPBACK) -> str:
    """The error Sender records for ``url`` through the fast path."""
    async with (
        guarded_session(allow, timeout=0.5, concurrency=4) as session,
        PostPool(allow, "t") as posts,
    ):
        sender = Sender(session, posts)
        result = await sender.send(
            url=url, event_id="evt_1", payload=b"{}", secrets=[SECRET], headers={}, timestamp=1
        )
    assert result.status_code is None and result.error is not None
    return result.error


async def test_failures_read_as_they_do_through_aiohttp() -> None:
    # A refused address: never dialled.
    assert (await _sent("http://127.0.0.1:9/", allow=())).startswith(
        "not sent: refused to connect to 127.0.0.1"
    )
    # Nothing listening.
    port = _free_port()
    assert await _sent(f"http://127.0.0.1:{port}/") == (
        f"could not connect to 127.0.0.1:{port} (Connection refused)"
    )

    async def hang_up(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(r)

    async with scripted(hang_up) as server:
        assert await _sent(f"http://127.0.0.1:{server.port}/") == (
            "the connection was closed without an answer"
        )

    async def garbage(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(r)
        w.write(b"SMTP ready\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async with scripted(garbage) as server:
        assert await _sent(f"http://127.0.0.1:{server.port}/") == (
            "the answer could not be read (ClientPayloadError)"
        )

    async def silent(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await server.read_request(r)
        await asyncio.sleep(5)

    async with scripted(silent) as server:
        assert await _sent(f"http://127.0.0.1:{server.port}/") == "timed out"


async def test_the_errors_classify_as_aiohttps_do() -> None:
    port = _free_port()
    async with pool() as posts:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await posts.post(f"http://127.0.0.1:{port}/", {}, b"", timeout=5, keep=1)
        with pytest.raises(TimeoutError) as timed_out:
            async with scripted(lambda s, r, w: asyncio.sleep(5)) as server:
                await posts.post(f"http://127.0.0.1:{server.port}/", {}, b"", timeout=0.2, keep=1)
    assert classify(refused.value) is NetworkFailure.UNREACHABLE
    assert classify(timed_out.value).timed_out


def test_only_plain_http_urls_take_the_fast_path() -> None:
    posts = pool()
    assert posts.handles("http://127.0.0.1:8000/hook")
    assert posts.handles("http://[::1]:8000/hook")
    assert not posts.handles("https://example.com/hook")  # TLS goes through aiohttp
    assert not posts.handles("http://example.com/a b")  # aiohttp would quote it
    assert not posts.handles("http:///nohost")


def test_the_fast_path_runs_on_uvloop_as_served() -> None:
    async def main() -> list[int]:
        async with scripted(keep_answering) as server, pool() as posts:
            url = f"http://127.0.0.1:{server.port}/"
            return [(await posts.post(url, {}, b"x", timeout=5, keep=1)).status for _ in range(3)]

    assert uvloop.run(main()) == [204, 204, 204]
