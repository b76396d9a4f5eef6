"""Serving reelhook with uvicorn, with a shutdown that does not wait on live event streams."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import socket
import struct
import sys
import termios
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holding the GIL runs before one waiting for it gets it (Python's default is
0.005). The database thread releases the GIL for every SQLite call and must take it back after
each; while the event loop was busy, each retake waited up to the whole default interval, so a
claim of 200 rows that needed 3 ms of CPU held the write lock for up to 22 ms (a fan-out to 10
subscribers: 274 of 747 ms of claim time was waiting, against 111 of 566 at this interval, with
no more CPU per delivery; docs/performance-journal.md)."""

GC_THRESHOLDS = (20_000, 10, 10)
"""The collector's generation thresholds in the served process (Python's default is
``(700, 10, 10)``). A young collection runs when the objects allocated minus those freed since
the last one pass the first number. Serving makes almost no cyclic garbage (tests/
test_gc_garbage.py), so at 700 the collector ran 50-65 young and ~6 middle collections a second
under the isolation mix only to find nothing: 25-35 µs of CPU per callback and pauses of 2-6 ms
(middle) and up to 19 ms (full) of CPU. Steady serving nets no new objects, so at 20,000 it runs
only when the heap really grows or garbage piles up, which still bounds both; one such
collection costs 2-17 ms (docs/performance.md §4, "Garbage collection")."""


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

        Then the collector runs at ``GC_THRESHOLDS``, and the interpreter's GIL switch interval
        is shortened (``SWITCH_INTERVAL``).
        """
        await super().startup(sockets=sockets)
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
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


def guarded_http(header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline for each request's headers.

    uvicorn 0.x starts no timer on a new connection, and each byte received cancels its
    keep-alive timer, so a client dribbling its headers (slowloris) held a connection for ever
    (3,000 of them were all held). Here the headers of every request, the first and each one on
    a kept-alive connection, must be complete ``header_timeout`` seconds after the connection
    opened or the previous request ended; otherwise the connection is closed. Body read
    timeouts are the routes' (see service/jobs/callbacks.py), except for a body answered before
    it was read (a callback refused 503 when the inbound budget is spent): the rest of it is read
    past, for at most ``body_timeout`` seconds from the answer, and the next request's header
    deadline starts once it has all arrived.
    """

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        # The connection's two deadlines, as loop times (None when not running): the header
        # deadline (the next request's headers, or the rest of the body of a request answered
        # before it was read) and uvicorn's keep-alive timeout. Both are moved or cleared on
        # every request, and a timer made and cancelled for each (uvloop: a libuv timer
        # started, stopped and closed) cost ~0.6 µs apiece per request (docs/performance-journal.md,
        # "The ingest path's sixth pass"). So they are plain numbers, with one timer per
        # connection that is made only when none is pending or a deadline falls before it:
        # when it fires it runs what is due and waits again for what is not. Each deadline
        # still falls due at the same moment as its own timer did.
        _header_due: float | None = None
        _keep_alive_due: float | None = None
        _timer: asyncio.TimerHandle | None = None
        _timer_due = 0.0
        # Whether a byte of the request awaited has been parsed (its headers have begun).
        _began = False

        def _await_headers(self) -> None:
            self._began = False
            self._arm(header_timeout)

        def _arm(self, timeout: float) -> None:
            self._header_due = due = self.loop.time() + timeout
            self._wake_by(due)

        def _disarm(self) -> None:
            self._header_due = None

        def _keep_alive(self) -> None:
            """uvicorn's keep-alive timer (``timeout_keep_alive_handler`` after
            ``timeout_keep_alive`` seconds with nothing received), as a deadline."""
            self._keep_alive_due = due = self.loop.time() + self.timeout_keep_alive
            self._wake_by(due)

        def _unset_keepalive_if_required(self) -> None:
            # uvicorn calls this for every read; the deadline is dropped, the timer left.
            self._keep_alive_due = None

        def _wake_by(self, due: float) -> None:
            if self._timer is not None:
                if self._timer_due <= due:
                    return  # it fires first and waits again for the rest
                self._timer.cancel()
            self._timer_due = due
            self._timer = self.loop.call_at(due, self._on_timer)

        def _on_timer(self) -> None:
            self._timer = None
            now = self.loop.time()
            if self._keep_alive_due is not None and self._keep_alive_due <= now:
                self._keep_alive_due = None
                self.timeout_keep_alive_handler()
            if self._header_due is not None and self._header_due <= now:
                self._header_due = None
                self._too_slow()
            later = [due for due in (self._keep_alive_due, self._header_due) if due is not None]
            if later:
                self._wake_by(min(later))

        def _too_slow(self) -> None:
            self._header_due = None
            if self.transport.is_closing():
                return
            draining = not self._waiting_for_headers()
            if (draining or not self._began) and _unread_bytes(self.transport):
                # What the client sent is in the socket and this process has not read it yet:
                # the delay is ours (a loop busy with 2,000 uploads at once; after a stall the
                # event loop runs its timers before it reads), not the client's. Closing then
                # reset clients that had sent everything (isolation scenario c). A client that
                # dribbles its headers has had its first bytes parsed and gets no more time.
                self._arm(body_timeout if draining else header_timeout)
                return
            self.transport.close()

        def timeout_keep_alive_handler(self) -> None:
            if _unread_bytes(self.transport):
                # The next request is in the socket, unread by this busy process: the connection
                # is not idle (reading it cancels the keep-alive; the header deadline stands).
                self._keep_alive_due = None
                return
            super().timeout_keep_alive_handler()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def on_message_begin(self) -> None:
            self._began = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            cycle = self.cycle
            read_past = cycle is not None and cycle.response_complete
            super().on_message_complete()
            if read_past and not self.transport.is_closing():
                assert cycle is not None
                # The last of a body answered before it was read: now the next request's
                # headers are due.
                cycle.more_body = False
                self._await_headers()
                self._unset_keepalive_if_required()
                self._keep_alive()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            receiving = cycle is not None and cycle.more_body
            if receiving:
                assert cycle is not None
                # Answered before its body was read (a callback refused with 503 when the inbound
                # budget is spent): what uvicorn read ahead of the application, up to 64 KiB
                # plus one socket read of up to 256 KiB, is dropped now instead of staying with
                # the kept-alive connection until the client closes it. 2,000 such uploads at
                # once held 340-440 MiB (bench/results/latest.md, isolation scenario c).
                cycle.body = bytearray()
            # uvicorn's own on_response_complete (0.55), with its keep-alive timer a deadline.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.flow.resume_reading()
            if self.pipeline:
                # Pipelined requests are started now; otherwise the keep-alive runs.
                pipelined, app = self.pipeline.pop()
                self._start_asgi_task(pipelined, app)
            else:
                self._keep_alive()
            if receiving:
                # Not the header deadline nor uvicorn's keep-alive while the body is still coming:
                # the connection is not idle. Most clients send the whole body before they read
                # the answer, and closing with the body's rest unread resets the connection, so
                # the client lost its 503 (under load 539 of 2,000 refused uploads, isolation
                # scenario c).
                self._unset_keepalive_if_required()
                self._arm(body_timeout)
            else:
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_due = self._keep_alive_due = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes received on ``transport``'s socket that the process has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    count: int = struct.unpack("i", answer)[0]
    return count
