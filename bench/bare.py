"""The ingest baseline: a bare Starlette handler on the callback route that does no I/O."""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.body()
    return JSONResponse({"received": True})


def serve(app: Any, fd: int, **options: Any) -> None:
    """Serve ``app`` on the listening socket inherited as file descriptor ``fd``
    (:func:`bench.procs.start_served`), with the server, loop and parser reelhook runs on;
    ``options`` for :class:`uvicorn.Config` on top."""
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", log_level="warning", access_log=False, **options
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def main() -> None:
    app = Starlette(routes=[Route("/v1/callbacks/{provider}/{token}", callback, methods=["POST"])])
    serve(app, int(sys.argv[1]))


if __name__ == "__main__":
    main()
