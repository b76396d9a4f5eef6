"""Real uvicorn servers on 127.0.0.1 inside the test's event loop, and a recording subscriber."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import cache
from itertools import cycle
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Send

from service.app.server import Server


def loopback_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (bind first, so the port is known early)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


@asynccontextmanager
async def serving(
    config: uvicorn.Config,
    sock: socket.socket | None = None,
    *,
    on_shutdown: Callable[[], None] | None = None,
) -> AsyncIterator[tuple[Server, socket.socket]]:
    """reelhook's :class:`Server` for ``config`` on ``sock`` (or a fresh loopback socket),
    started; yield it and its socket, for a test that needs the server's own state. Asked to
    exit and its socket closed on the way out.

    ``on_shutdown`` runs as shutdown begins, as ``reelhook serve`` does (see service.server).
    """
    sock = sock or loopback_socket()
    server = Server(config, on_shutdown=on_shutdown or (lambda: None))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:
                    if server.should_exit:
                        raise RuntimeError("server failed to start")
                    await anyio.sleep(0.01)
            try:
                yield server, sock
            finally:
                server.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def run_server(
    app: ASGIApp,
    sock: socket.socket | None = None,
    *,
    on_shutdown: Callable[[], None] | None = None,
    graceful_timeout: int = 2,
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on ``sock`` (or a fresh loopback socket); yield its base URL
    (:func:`serving`)."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=graceful_timeout,
        http="httptools",
    )
    async with serving(config, sock, on_shutdown=on_shutdown) as (_, served):
        yield url_of(served)


PORTS_FROM = 10_000
PORTS_PER_WORKER = 1_000


def free_port() -> int:
    """A loopback port nothing listens on now, for a server started in another process.

    Between this check and the child's bind the port is free, so it must be one that nothing
    else is handed meanwhile. A port from the kernel (a bind to port 0) could be: every server
    run in-process binds port 0, and under xdist one of another test took such a port just
    freed, so the child could not listen and the other test's server got its requests (two
    tests of a make test run failed together). These come from below the kernel's ephemeral
    range, where a bind to port 0 never lands, each xdist worker from a slice of its own, in
    turn, skipping any in use."""
    return next(_ports())


def worker_ports() -> range:
    """This xdist worker's slice of the ports :func:`free_port` hands out."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    first = PORTS_FROM + index * PORTS_PER_WORKER
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if first + PORTS_PER_WORKER > ephemeral:
        raise RuntimeError(f"worker {worker}'s ports reach the ephemeral range ({ephemeral})")
    return range(first, first + PORTS_PER_WORKER)


@cache
def _ports() -> Iterator[int]:
    """This process's ports for :func:`free_port`, in turn (a cycle over its worker's slice)."""
    for port in cycle(worker_ports()):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or just closed by a server of this worker
        yield port


@contextmanager
def run_service(environ: dict[str, str]) -> Iterator[str]:
    """``reelhook serve`` in its own process, configured by ``environ`` (REELHOOK_* variables,
    with REELHOOK_PORT on loopback); yields its base URL once /healthz answers, and stops it with
    SIGTERM, as an operator would, on exit."""
    url = f"http://127.0.0.1:{environ['REELHOOK_PORT']}"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"REELHOOK_HOST": "127.0.0.1", "REELHOOK_LOG_LEVEL": "WARNING", **environ})
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log
        )

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            deadline = time.monotonic() + 20
            with httpx.Client(trust_env=False) as http:
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"reelhook exited at start:\n{output()}")
                    try:
                        if http.get(f"{url}/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"reelhook did not start in 20 s:\n{output()}")
                    time.sleep(0.05)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _no_content(count: int) -> tuple[int, dict[str, str]]:
    return 204, {}


@dataclass
class Sink:
    """A subscriber endpoint that records every delivery and answers as scripted.

    ``script`` maps a path to a function of the request count on that path returning
    (status, headers); unscripted paths answer 204.
    """

    received: list[Received] = field(default_factory=list)
    script: dict[str, Callable[[int], tuple[int, dict[str, str]]]] = field(default_factory=dict)
    arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.received.append(Received(path, dict(request.headers), body))
            count = sum(1 for r in self.received if r.path == path)
            self.arrived.set()
            self.arrived = anyio.Event()
            status, headers = self.script.get(path, _no_content)(count)
            return Response(status_code=status, headers=headers)

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, predicate: Callable[[Sink], bool], within: float = 15.0) -> None:
        """Wait until ``predicate(self)`` holds; fail the test after ``within`` seconds."""
        with anyio.fail_after(within):
            while not predicate(self):
                await self.arrived.wait()


async def run_lifespan(receive: Receive, send: Send) -> None:
    """For a bare ASGI test app: complete the lifespan's startup and shutdown, then return."""
    while True:
        message = await receive()
        kind = message["type"].rsplit(".", 1)[-1]
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def read_body(receive: Receive) -> bytes:
    """For a bare ASGI test app: the whole request body."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body
