"""The model catalog and health endpoints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import services
from service.catalog import MODELS


async def list_models(request: Request) -> Response:
    endpoints = services(request).endpoints
    data = []
    for spec in MODELS.values():
        entry = spec.describe()
        endpoint = endpoints.get(spec.provider)
        entry["available"] = endpoint is not None
        entry["simulated"] = endpoint is not None and endpoint.simulated
        data.append(entry)
    return JSONResponse({"data": data, "next_cursor": None})


async def healthz(request: Request) -> Response:
    state = services(request)
    dispatcher = "running" if state.dispatcher.running else "stopped"
    return JSONResponse(
        {"status": "ok", "dispatcher": dispatcher},
        status_code=200 if state.dispatcher.running else 503,
    )
