"""The model catalog and health endpoints."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.operation import Reply, operation
from service.api.schemas import page_of, ref
from service.app.services import services
from service.jobs.catalog import MODELS

_HEALTH = {
    "type": "object",
    "required": ["status", "dispatcher"],
    "properties": {"status": {"type": "string"}, "dispatcher": {"enum": ["running", "stopped"]}},
}


@operation(
    summary="List the models",
    tag="models",
    replies={
        200: Reply("Every model: parameters, defaults, limits, prices.", page_of(ref("Model")))
    },
    authenticated=False,
)
async def list_models(request: Request) -> Response:
    """Each model's parameters (the `input` it accepts), price table, and whether its provider is
    configured (`available`) or served by the built-in simulator (`simulated`)."""
    endpoints = services(request).endpoints
    data = []
    for spec in MODELS.values():
        entry = spec.describe()
        endpoint = endpoints.get(spec.provider)
        entry["available"] = endpoint is not None
        entry["simulated"] = endpoint is not None and endpoint.simulated
        data.append(entry)
    return JSONResponse({"data": data, "next_cursor": None})


@operation(
    summary="Liveness",
    tag="operations",
    replies={
        200: Reply("The dispatcher is running.", _HEALTH),
        503: Reply("The dispatcher has stopped.", _HEALTH),
    },
    authenticated=False,
)
async def healthz(request: Request) -> Response:
    """200 while the delivery dispatcher runs."""
    state = services(request)
    dispatcher = "running" if state.workers.dispatcher.running else "stopped"
    return JSONResponse(
        {"status": "ok", "dispatcher": dispatcher},
        status_code=200 if state.workers.dispatcher.running else 503,
    )
