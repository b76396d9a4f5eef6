"""The delivery fast path: POSTs to plain-HTTP subscribers over keep-alive HTTP/1.1 connections
of our own, parsed by httptools.

aiohttp costs ~150 µs of CPU per request on the event loop on this machine (its request and
response objects, header multidicts, timers and stream readers); a request written in one
``write`` on a pooled connection and its answer parsed by httptools (uvicorn's parser) costs ~40
(docs/performance.md §4). A delivery needs only a fraction of a client: one POST of bytes held in
memory, the status, ``Retry-After`` and a prefix of the answer, no redirects, no cookies, no
decompression.

What stays as with aiohttp (:func:`service.net.client.guarded_session`), so the delivery log and
retries read the same:

- every address is checked by the SSRF guard after resolution, on every new connection;
- failures are raised as the aiohttp errors :mod:`service.net.failures` classifies and words
  (a refused address, a name that does not resolve, a refused connection, a connect timeout, a
  connection closed without an answer, an unreadable answer), and a deadline as TimeoutError;
- one deadline (the delivery timeout) covers connecting, sending and reading the answer (a
  TimeoutError, as aiohttp's total timeout);
- the answer's body is read up to the caller's limit; a longer one closes the connection.

HTTPS subscribers go through aiohttp (:class:`service.delivery.sender.Sender` asks
:meth:`PostPool.handles` first): TLS is not this module's to get right.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import httptools
from aiohttp.client_reqrep import ConnectionKey

from service.net.guard import AddressRefused, IPNetwork, permitted

IDLE_SECONDS = 4.0
"""How long an idle connection is kept: under the 5 s keep-alive of uvicorn, nginx's 75 s and
most servers', so a server rarely closes one just as it is reused."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-cased names; the last value of a repeated header."""
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    head: bytes
    """``POST {path} HTTP/1.1`` and the Host header, ready to write."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._name = b""
        self._body = bytearray()
        self._headers_done = False
        self.received = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except _Enough:
            pass
        except httptools.HttpParserError as exc:
            # (Also how httptools reports _Enough raised in a callback; the answer is set then.)
            self._fail(aiohttp.ClientPayloadError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        if self._headers_done and not self._framed():
            # An answer without a length ends when the connection does.
            self._complete(keep_alive=False)
        else:
            self._fail(aiohttp.ServerDisconnectedError())

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self._keep - len(self._body)
        self._body += body[:room]
        if len(body) > room:
            # More than the caller keeps: answer with the prefix and drop the connection (the
            # rest would have to be read to reuse it).
            self._complete(keep_alive=False)
            raise _Enough

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            self._reset()  # an interim answer (100 Continue): the real one follows
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # -- the request ------------------------------------------------------------------------------

    def _framed(self) -> bool:
        return "content-length" in self._headers or "transfer-encoding" in self._headers

    def _complete(self, *, keep_alive: bool) -> None:
        answer = Answer(self._status, self._headers, bytes(self._body))
        if not keep_alive:
            self.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)

    def _fail(self, error: Exception) -> None:
        self.close()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._reset()
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._answer

    def done(self) -> bool:
        """Whether the last answer ended cleanly and the connection can take another request."""
        return (
            not self.closed
            and self._answer is not None
            and self._answer.done()
            and not self._answer.cancelled()
            and self._answer.exception() is None
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Enough(Exception):
    """Stops the parser once the kept prefix is full."""


@dataclass
class PostPool:
    """Keep-alive connections per origin for delivery POSTs; use as an async context manager
    (closing every connection on exit)."""

    allow: Sequence[IPNetwork]
    user_agent: str
    _idle: dict[tuple[str, int], deque[_Connection]] = field(default_factory=dict)
    _targets: dict[str, _Target | None] = field(default_factory=dict)
    _heads: dict[tuple[object, ...], bytes] = field(default_factory=dict)

    async def __aenter__(self) -> PostPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.popleft().close()
        self._idle.clear()

    def handles(self, url: str) -> bool:
        """Whether :meth:`post` takes ``url`` (plain HTTP with a host); else use aiohttp."""
        return self._target(url) is not None

    def _target(self, url: str) -> _Target | None:
        if url in self._targets:
            return self._targets[url]
        if len(self._targets) >= 4096:
            self._targets.clear()
        target: _Target | None = None
        try:
            parts = urlsplit(url)
            port = parts.port or 80
        except ValueError:
            parts, port = None, 0
        if parts is not None and parts.scheme == "http" and parts.hostname and _plain(url):
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            if parts.port is not None:
                shown += f":{parts.port}"
            head = f"POST {path} HTTP/1.1\r\nHost: {shown}\r\nUser-Agent: {self.user_agent}\r\n"
            target = _Target(host.lower(), port, head.encode("latin-1"))
        self._targets[url] = target
        return target

    def head(self, url: str, headers: Mapping[str, str]) -> bytes:
        """The start of a request to ``url`` (one :meth:`handles` took) with ``headers``: the
        request line, Host, User-Agent and ``headers``, each line ended; the caller appends its
        own last headers, ``Content-Length`` and the body. Kept per URL and headers, so a
        subscription's fixed part is checked and encoded once, not per delivery. Raises
        ValueError for a header that holds a line break."""
        key = (url, *headers.items())
        head = self._heads.get(key)
        if head is not None:
            return head
        target = self._target(url)
        if target is None:
            raise aiohttp.InvalidURL(url)
        lines = [target.head]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        head = b"".join(lines)
        if len(self._heads) >= 4096:
            self._heads.clear()
        self._heads[key] = head
        return head

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 - one deadline over connect, send and answer
        keep: int,
    ) -> Answer:
        """POST ``body`` with ``headers`` to ``url`` (one :meth:`handles` took); the answer with
        at most ``keep`` bytes of its body. Raises the aiohttp errors described above, or
        TimeoutError when the answer did not come within ``timeout`` seconds."""
        request = b"".join(
            (self.head(url, headers), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        return await self.exchange(url, request, timeout=timeout, keep=keep)

    async def exchange(
        self,
        url: str,
        request: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 - one deadline over connect, send and answer
        keep: int,
    ) -> Answer:
        """Send ``request`` (a whole HTTP/1.1 request to ``url``, starting with its
        :meth:`head`) and return the answer as :meth:`post` does."""
        target = self._target(url)
        if target is None:
            raise aiohttp.InvalidURL(url)
        loop = asyncio.get_running_loop()
        origin = (target.host, target.port)
        started = loop.time()
        conn = self._reuse(origin, started)
        if conn is not None:
            # The usual case, an idle connection reused: the deadline is one timer that fails
            # the answer (what asyncio.timeout's context manager did at about twice the cost).
            answer = conn.send(request)
            timer = loop.call_at(started + timeout, _expire, answer)
            try:
                return await self._finish(origin, conn, answer, loop)
            except aiohttp.ServerDisconnectedError:
                # The server closed the idle connection as it was reused, before answering
                # a byte: send once more on a new one (at-least-once allows a duplicate).
                if conn.received:
                    raise
            finally:
                timer.cancel()
        async with asyncio.timeout_at(started + timeout):
            conn = await self._connect(target, keep)
            return await self._finish(origin, conn, conn.send(request), loop)

    async def _finish(
        self,
        origin: tuple[str, int],
        conn: _Connection,
        answer: asyncio.Future[Answer],
        loop: asyncio.AbstractEventLoop,
    ) -> Answer:
        try:
            result = await answer
        except BaseException:
            conn.close()  # cancelled or failed half-way: never reused
            raise
        if conn.done():
            conn.idle_since = loop.time()
            self._idle.setdefault(origin, deque()).append(conn)
        return result

    def _reuse(self, origin: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                # The older ones have been idle longer still.
                while idle and now - idle[0].idle_since >= IDLE_SECONDS:
                    idle.popleft().close()
                return conn
            conn.close()
        return None

    async def _connect(self, target: _Target, keep: int) -> _Connection:
        key = ConnectionKey(target.host, target.port, False, True, None, None, None)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise aiohttp.ClientConnectorDNSError(key, exc) from exc
        last: OSError | None = None
        for family, kind, proto, _, address in found:
            if not permitted(str(address[0]), self.allow):
                last = AddressRefused(f"refused to connect to {address[0]}: not a public address")
                continue
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                _, conn = await loop.create_connection(partial(_Connection, keep), sock=sock)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return conn
        raise aiohttp.ClientConnectorError(key, last or OSError(f"{target.host} has no address"))


def _expire(answer: asyncio.Future[Answer]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def _plain(url: str) -> bool:
    """No characters a request line cannot carry as they are (aiohttp would quote them)."""
    return url.isascii() and not any(c in url for c in " \r\n\t#")
