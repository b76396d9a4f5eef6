"""The ingest baseline: a bare Starlette handler on the callback route that does no I/O."""

from __future__ import annotations

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


def serve(app: Any, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` with the server, loop and parser reelhook runs on."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def main() -> None:
    app = Starlette(routes=[Route("/v1/callbacks/{provider}/{token}", callback, methods=["POST"])])
    serve(app, int(sys.argv[1]))


if __name__ == "__main__":
    main()
