"""Simulated Trinetra: ``POST /v1/video/{model}``; the terminal document goes to callback_url."""

from __future__ import annotations

import json
import secrets
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.catalog import MODELS
from service.sim.simulator import Simulator, error, serve_video, video_url

TRINETRA_MODELS = ("kling-v2.5", "kling-v3", "kling-v3-omni")


async def submit(sim: Simulator, request: Request) -> Response:
    model = request.path_params["model"]
    if model not in TRINETRA_MODELS:
        return error(404, f"unknown model {model!r}")
    if not request.headers.get("x-api-key"):
        return error(401, "missing or invalid API key")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "request body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return error(400, "prompt is required")
    duration = body.get("duration", 5)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return error(400, "duration must be a number")
    scenario = sim.scenario
    if scenario.submit_status is not None:
        return error(scenario.submit_status, "simulated submit failure")
    sim.submits["trinetra"] += 1
    job_id = f"job_{model.replace('-', '').replace('.', '')}_{secrets.token_hex(6)}"
    document: dict[str, Any] = {"id": job_id, "model": model, "status": "queued"}
    sim.jobs[job_id] = document
    credits = _credits(model, body)
    callback_url = body.get("callback_url")
    if isinstance(callback_url, str):
        url = video_url(request, f"{job_id}.mp4")
        finish = partial(_finish, sim, job_id, callback_url, url, scenario.outcome, credits)
        sim.later(scenario.delay, finish)
    return JSONResponse({"job_id": job_id, "status": "queued"}, status_code=202)


def _credits(model: str, body: dict[str, Any]) -> float:
    """Credits per second of output by resolution, as on Trinetra's pricing tables."""
    table = MODELS[f"trinetra/{model}"].price.table
    duration = body.get("duration", 5)
    return table.get(str(body.get("resolution", "720p")), table["720p"]) * float(duration)


async def _finish(
    sim: Simulator, job_id: str, callback_url: str, url: str, outcome: str, credits: float
) -> None:
    document = sim.jobs[job_id]
    if outcome == "succeed":
        document.update(
            status="succeeded",
            output={"outputs": [{"url": url, "type": "video"}]},
            credits_charged=credits,
        )
    else:
        document.update(
            status="failed",
            output=None,
            error={"message": "content policy violation: prompt was rejected"},
            credits_charged=0,
        )
    await sim.post_callback("trinetra", callback_url, json.dumps(document).encode())


async def status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["trinetra"] += 1
    document = sim.jobs.get(request.path_params["job_id"])
    if document is None:
        return error(404, "job not found")
    return JSONResponse(document)


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v1/video/{model}", partial(submit, sim), methods=["POST"]),
        Route("/v1/jobs/{job_id}", partial(status, sim), methods=["GET"]),
        Route("/files/{name}", partial(serve_video, sim), methods=["GET"]),
    ]
