"""Serving reelhook with uvicorn, with a shutdown that does not wait on live event streams."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable

import uvicorn


class Server(uvicorn.Server):
    """uvicorn that ends reelhook's open event streams as soon as shutdown begins.

    uvicorn lets open responses finish before it runs the application's lifespan exit (and cancels
    them after ``timeout_graceful_shutdown``); an event stream never finishes by itself, so without
    this every stop would wait out that timeout and then cut the streams mid-response.
    """

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start (the application's lifespan runs here), then freeze the start-up heap.

        Everything built so far (modules, routes, the lifespan's services) lives until exit.
        ``gc.freeze`` moves it to a generation the collector never walks, so its full
        collections stop pausing the event loop for the whole heap (17-26 ms measured; see
        docs/performance.md). Only the served process does this: a test process starts many
        applications, and frozen objects are never freed.
        """
        await super().startup(sockets=sockets)
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets=sockets)
