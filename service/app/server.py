"""Serving reelhook with uvicorn, with a shutdown that does not wait on live event streams."""

from __future__ import annotations

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets=sockets)
