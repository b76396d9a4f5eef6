"""Operations endpoints: ``/readyz`` and ``/metrics`` (no API key: keep them off the public
site, as the Caddyfile in ``deploy/`` does)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.operation import Reply, operation
from service.app.services import services
from service.storage.database import DATABASE_ERRORS

# How long /readyz waits for the database to take its write before calling it not writable.
READY_WRITE_WAIT = 2.0

_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "checks": {
            "type": "object",
            "required": ["database", "dispatcher"],
            "properties": {
                "database": {
                    "type": "string",
                    "description": "`writable`, or `not writable: ` and the reason.",
                },
                "dispatcher": {"enum": ["running", "not running"]},
                "server": {
                    "enum": ["draining"],
                    "description": "Present while the node drains before it stops "
                    "(`REELHOOK_DRAIN`): it still serves, but takes no new work from a balancer.",
                },
            },
        },
    },
}
_EXPOSITION = {"type": "string", "description": "Prometheus text or OpenMetrics exposition."}


@operation(
    summary="Readiness",
    tag="operations",
    replies={
        200: Reply("The database takes writes and the dispatcher runs.", _READINESS),
        503: Reply("Not ready; `checks` names what fails.", _READINESS),
    },
    authenticated=False,
)
async def readyz(request: Request) -> Response:
    """200 when the database takes a write and the dispatcher runs; 503 naming what fails."""
    state = services(request)
    checks: dict[str, str] = {}
    try:
        await state.db.probe_write(state.clock(), wait=READY_WRITE_WAIT)
        checks["database"] = "writable"
    except TimeoutError:
        checks["database"] = f"not writable: no write lock within {READY_WRITE_WAIT:g} s"
    except DATABASE_ERRORS as exc:
        checks["database"] = f"not writable: {exc}"
    checks["dispatcher"] = "running" if state.workers.dispatcher.running else "not running"
    ready = checks["database"] == "writable" and checks["dispatcher"] == "running"
    if getattr(request.app.state, "draining", False):
        checks["server"] = "draining"
        ready = False
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


@operation(
    summary="Prometheus metrics",
    tag="operations",
    replies={
        200: Reply(
            "The metrics, as Prometheus text format 0.0.4 unless `Accept` asks for OpenMetrics.",
            _EXPOSITION,
            media_type="text/plain",
            alternatives=("application/openmetrics-text",),
        )
    },
    authenticated=False,
)
async def metrics(request: Request) -> Response:
    """This process's metrics for a Prometheus scrape: provider callbacks, delivery attempts and
    lag, provider submissions, rate-limited requests and pruned rows, and gauges of stored state
    (jobs by status, outbox depth) read at scrape time. The format follows the `Accept` header:
    Prometheus text by default, or OpenMetrics."""
    state = services(request)
    await state.metrics.refresh(state.db.reader, state.clock())
    state.metrics.cluster(await state.db.nodes_alive(), state.db.is_leader)
    body, content_type = state.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
