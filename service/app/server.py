"""Serving reelhook with uvicorn, with a shutdown that does not wait on live event streams."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holding the GIL runs before one waiting for it gets it (Python's default is
0.005). The database thread releases the GIL for every SQLite call and must take it back after
each; while the event loop was busy, each retake waited up to the whole default interval, so a
claim of 200 rows that needed 3 ms of CPU held the write lock for up to 22 ms (a fan-out to 10
subscribers: 274 of 747 ms of claim time was waiting, against 111 of 566 at this interval, with
no more CPU per delivery; docs/performance.md §5)."""


class Server(uvicorn.Server):
    """uvicorn that ends reelhook's open event streams as soon as shutdown begins.

    uvicorn lets open responses finish before it runs the application's lifespan exit (and cancels
    them after ``timeout_graceful_shutdown``); an event stream never finishes by itself, so without
    this every stop would wait out that timeout and then cut the streams mid-response.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_shutdown: Callable[[], None],
        on_drain: Callable[[], None] | None = None,
        drain: float = 0.0,
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._on_drain = on_drain
        self._drain = drain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start (the application's lifespan runs here), then freeze the start-up heap.

        Everything built so far (modules, routes, the lifespan's services) lives until exit.
        ``gc.freeze`` moves it to a generation the collector never walks, so its full
        collections stop pausing the event loop for the whole heap (17-26 ms measured; see
        docs/performance.md). Only the served process does this: a test process starts many
        applications, and frozen objects are never freed.

        It also shortens the interpreter's GIL switch interval (``SWITCH_INTERVAL``).
        """
        await super().startup(sockets=sockets)
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain first (``REELHOOK_DRAIN`` seconds): report not ready while still serving every
        request, so a load balancer's health check takes this node out before it closes its
        connections. Closing at once raced the balancer: a request it had just sent on a kept-
        alive connection was cut, and a provider's callback answered 502 may never come again
        (docs/scaling.md). A second signal ends the drain early."""
        if self._drain > 0 and self._on_drain is not None:
            self._on_drain()
            deadline = asyncio.get_running_loop().time() + self._drain
            while not self.force_exit and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - uvicorn sets a plain flag
                await asyncio.sleep(0.05)
        self._on_shutdown()
        await super().shutdown(sockets=sockets)


def guarded_http(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline for each request's headers.

    uvicorn 0.x starts no timer on a new connection, and each byte received cancels its
    keep-alive timer, so a client dribbling its headers (slowloris) held a connection for ever
    (3,000 of them were all held). Here the headers of every request, the first and each one on
    a kept-alive connection, must be complete ``header_timeout`` seconds after the connection
    opened or the previous response ended; otherwise the connection is closed. Body read
    timeouts are the routes' (see service/jobs/callbacks.py).
    """

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body:
                # Answered before its body was read (a callback refused with 503 when the inbound
                # budget is spent): what uvicorn read ahead of the application, up to 64 KiB
                # plus one socket read of up to 256 KiB, is dropped now instead of staying with
                # the kept-alive connection until the client closes it. 2,000 such uploads at
                # once held 340-440 MiB (bench/results/latest.md, isolation scenario c).
                cycle.body = bytearray()
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
