"""Simulated Trinetra: ``POST /v1/video/{model}``; the terminal document goes to callback_url.

Requests are checked against the model's parameter table (the seed pages). ``external_task_id``
is honoured as the idempotency id it is documented to be: the same id again is the same job. The
error body is ``{"error": "…"}`` (Trinetra documents none; this is the shape of its peers) and a
429 or 503 carries ``Retry-After``.
"""

from __future__ import annotations

import json
import secrets
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.core.errors import ValidationFailed
from service.jobs.catalog import MODELS
from service.sim.simulator import (
    Plan,
    Simulator,
    callback_steps,
    error,
    prompt_of,
    serve_video,
    video_url,
)

TRINETRA_MODELS = ("kling-v2.5", "kling-v3", "kling-v3-omni")
_OURS = ("external_task_id", "callback_url")

_MESSAGES = {
    400: "invalid request parameters",
    401: "missing or invalid API key",
    402: "insufficient credits",
    403: "this API key may not use this model",
    404: "no such model",
    406: "request not acceptable",
    409: "external_task_id conflict",
    429: "rate limit exceeded, slow down",
    500: "internal server error",
    502: "bad gateway",
    503: "service temporarily unavailable",
    504: "gateway timeout",
}


def refusal(status: int, retry_after: float | None) -> Response:
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = str(max(0, round(retry_after if retry_after is not None else 1)))
    return error(status, _MESSAGES.get(status, "request failed"), headers)


async def submit(sim: Simulator, request: Request) -> Response:
    model = request.path_params["model"]
    if model not in TRINETRA_MODELS:
        return error(404, f"unknown model {model!r}")
    api_key = request.headers.get("x-api-key")
    if not api_key:
        return error(401, "missing or invalid API key")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object")
    plan = sim.plan("trinetra", prompt_of(body))
    if plan.refuse_with is not None:
        return refusal(plan.refuse_with, plan.scenario.retry_after)
    try:
        MODELS[f"trinetra/{model}"].validate({k: v for k, v in body.items() if k not in _OURS})
    except ValidationFailed as exc:
        return error(400, exc.message)
    external_id = body.get("external_task_id")
    known = f"ext:{api_key}:{external_id}" if isinstance(external_id, str) else None
    if known is not None and known in sim.jobs:
        job_id = sim.jobs[known]["job_id"]
        return JSONResponse({"job_id": job_id, "status": sim.jobs[job_id]["status"]}, 202)
    sim.accepted(plan)
    job_id = f"job_{model.replace('-', '').replace('.', '')}_{secrets.token_hex(6)}"
    document: dict[str, Any] = {"id": job_id, "model": model, "status": "queued"}
    if isinstance(external_id, str):
        document["external_task_id"] = external_id
    sim.jobs[job_id] = document
    if known is not None:
        sim.jobs[known] = {"job_id": job_id}
    callback_url = body.get("callback_url")
    if isinstance(callback_url, str):
        if plan.scenario.callback == "forged":
            callback_url = _tampered(callback_url)
        url = video_url(request, f"{job_id}.mp4")
        credits = _credits(model, body)
        sim.in_sequence(
            [
                (at, partial(_callback, sim, plan, job_id, callback_url, url, credits, kind))
                for at, kind in callback_steps(plan.scenario, progress=False)
            ]
        )
    if plan.scenario.submit_delay:
        # Accepted, but the answer comes late: a client that gave up sends it again.
        await anyio.sleep(plan.scenario.submit_delay)
    return JSONResponse({"job_id": job_id, "status": "queued"}, status_code=202)


def _tampered(url: str) -> str:
    """The callback URL with its token's signature altered: a callback Trinetra did not send.

    The first character of the signature is changed, as all six of its bits are significant
    (the last character of a base64 string may carry padding bits only).
    """
    at = url.rfind(".") + 1
    return url[:at] + ("A" if url[at] != "A" else "B") + url[at + 1 :]


def _credits(model: str, body: dict[str, Any]) -> float:
    """Credits per second of output by resolution, as on Trinetra's pricing tables."""
    table = MODELS[f"trinetra/{model}"].price.table
    duration = body.get("duration", 5)
    return table.get(str(body.get("resolution", "720p")), table["720p"]) * float(duration)


async def _callback(
    sim: Simulator,
    plan: Plan,
    job_id: str,
    callback_url: str,
    url: str,
    credits: float,
    kind: str,
) -> None:
    document = sim.jobs[job_id]
    if kind == "progress":
        body: dict[str, Any] = {"id": job_id, "model": document["model"], "status": "running"}
    else:
        if plan.scenario.outcome == "succeed":
            document.update(
                status="succeeded",
                output={"outputs": [{"url": url, "type": "video"}]},
                credits_charged=credits,
            )
        else:
            # An assumed failure shape (docs/providers.md §1): status, error.message, no output.
            document.update(
                status="failed",
                output=None,
                error={"message": "content policy violation: prompt was rejected"},
                credits_charged=0,
            )
        body = document
    if kind == "lost":
        sim.record(plan, job_id=job_id, kind=kind, status=None)
        return
    encoded = json.dumps(body).encode()
    await sim.post_callback(plan, callback_url, encoded, job_id=job_id, kind=kind)


async def status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["trinetra"] += 1
    document = sim.jobs.get(request.path_params["job_id"])
    if document is None or "id" not in document:
        return error(404, "job not found")
    return JSONResponse(document)


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v1/video/{model}", partial(submit, sim), methods=["POST"]),
        Route("/v1/jobs/{job_id}", partial(status, sim), methods=["GET"]),
        Route("/files/{name}", partial(serve_video, sim), methods=["GET"]),
    ]
