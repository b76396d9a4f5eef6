"""Operations endpoints: ``/readyz`` and ``/metrics`` (no API key: keep them off the public
site, as the Caddyfile in ``deploy/`` does)."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.operation import Reply, operation
from service.app.services import services
from service.storage import stats
from service.storage.database import DATABASE_ERRORS

# How long /readyz waits for the database to take its write before calling it not writable.
READY_WRITE_WAIT = 2.0
# /readyz counts the outbox up to this many deliveries and then says "at least": the figure is
# informational, and a full count of a million-row backlog took 0.2-0.55 s (~185 ms of CPU) of the
# reader on every health check (docs/performance-journal.md, "/readyz and /metrics over a
# million due deliveries").
READY_DEPTH_CAP = 1000

_READINESS = {
    "type": "object",
    "required": ["status", "checks", "node", "cluster"],
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
        "node": {
            "type": "object",
            "description": "This node (the process that answered).",
            "required": ["id", "leader"],
            "properties": {
                "id": {"type": "string", "description": "Its id among the nodes of the store."},
                "leader": {
                    "type": "boolean",
                    "description": "Whether it runs the singletons (deadlines, retention, the "
                    "stale-node sweep); always true on SQLite.",
                },
            },
        },
        "cluster": {
            "type": ["object", "null"],
            "description": "Figures of every node sharing the store (on SQLite the one node); "
            "null when the store could not be read.",
            "required": ["store", "nodes_alive", "leader", "outbox_depth", "outbox_depth_capped"],
            "properties": {
                "store": {"enum": ["sqlite", "postgresql"]},
                "nodes_alive": {
                    "type": "integer",
                    "description": "Nodes with a fresh heartbeat (1 on SQLite).",
                },
                "leader": {
                    "type": ["string", "null"],
                    "description": "The id of the node running the singletons; null while the "
                    "leader lease is changing hands.",
                },
                "outbox_depth": {
                    "type": "integer",
                    "description": "Deliveries waiting to be sent or in flight, on every node, "
                    f"counted up to {READY_DEPTH_CAP}: with `outbox_depth_capped` true there are "
                    "at least that many (the metric `reelhook_outbox_depth` has the full count).",
                },
                "outbox_depth_capped": {
                    "type": "boolean",
                    "description": "True when the count stopped at its cap (`outbox_depth` is a "
                    "floor), false when `outbox_depth` is exact.",
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
    """200 when the database takes a write and the dispatcher runs; 503 naming what fails. The
    body also describes this node and the cluster (nodes alive, leader, outbox depth counted up
    to :data:`READY_DEPTH_CAP`), which do not decide readiness: a node is ready whatever the
    others do. Its store work is bounded whatever the backlog."""
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
    cluster: dict[str, object] | None = None
    try:
        with anyio.fail_after(READY_WRITE_WAIT):
            depth = await stats.outbox_depth_up_to(state.db.reader, READY_DEPTH_CAP)
            cluster = {
                "store": state.db.dialect,
                "nodes_alive": await state.db.nodes_alive(),
                "leader": await state.db.leader_id(),
                "outbox_depth": depth.count,
                "outbox_depth_capped": depth.capped,
            }
    except DATABASE_ERRORS:  # (TimeoutError is an OSError, among them)
        pass  # the checks above say what fails
    if getattr(request.app.state, "draining", False):
        checks["server"] = "draining"
        ready = False
    return JSONResponse(
        {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "node": {"id": state.db.node_id, "leader": state.db.is_leader},
            "cluster": cluster,
        },
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
    (jobs by status, outbox depth, oldest waiting delivery) read from the store at most every
    second or so, more rarely when the read takes long (:class:`service.ops.metrics.Metrics`).
    The format follows the `Accept` header: Prometheus text by default, or OpenMetrics."""
    state = services(request)
    await state.metrics.refresh(state.db.reader, state.clock())
    state.metrics.cluster(await state.db.nodes_alive(), state.db.is_leader)
    body, content_type = state.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
