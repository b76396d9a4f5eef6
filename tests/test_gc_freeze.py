"""The served process freezes its start-up heap once the application has started
(docs/performance.md §4): full collections then no longer walk modules, routes and services.
Then it raises the collector's thresholds, so steady serving, which makes almost no cyclic
garbage, runs no collections at all (§4, "Garbage collection"). It also shortens the GIL switch
interval, so the database thread is not kept waiting (§5)."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest
import uvicorn

from service.app.server import GC_THRESHOLDS, SWITCH_INTERVAL, Server

pytestmark = pytest.mark.anyio


async def test_the_server_freezes_the_heap_after_the_lifespan_has_started() -> None:
    at_lifespan: list[int] = []
    built: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        # What the lifespan builds lives until exit: it is what the freeze must cover.
        built.append({"services": [object() for _ in range(100)]})
        at_lifespan.append(gc.get_freeze_count())
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    gc.unfreeze()
    switch = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # the interpreter's default (other tests' servers changed it)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = Server(config, on_shutdown=lambda: None)
    # What uvicorn's serve() does before startup(), without its signal handlers.
    config.load()
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup()
        assert at_lifespan == [0]
        frozen = gc.get_freeze_count()
        # Everything alive at start-up, the lifespan's objects included, is out of the
        # collector's reach (get_objects lists only what it still walks).
        assert frozen > 0
        assert not any(item is built[0] for item in gc.get_objects())
        # The database thread gets the GIL back sooner after each SQLite call.
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        # Young collections far rarer than at the interpreter's default.
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] >= 10 * 700
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*thresholds)
        if server.started:
            await server.shutdown()
        # A test process starts many applications: frozen objects would never be freed.
        gc.unfreeze()
