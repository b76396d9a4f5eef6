"""Simulated apiframe v2: ``POST /v2/videos/generate``, signed ``progress``/``completed``/``failed``
webhooks, ``Idempotency-Key`` replay and 409 on a changed body."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.providers.apiframe import signature
from service.sim.simulator import Simulator, error, serve_video, video_url

_KLING_PARAMS = {
    "duration",
    "aspect_ratio",
    "start_image",
    "end_image",
    "negative_prompt",
    "cfg_scale",
    "guidance_scale",
}


async def submit(sim: Simulator, request: Request) -> Response:
    api_key = request.headers.get("x-api-key")
    if not api_key:
        return error(401, "Missing or invalid API key")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "Invalid JSON body")
    problems = _validate(body)
    if problems:
        return error(400, "Validation failed", details=problems)
    scenario = sim.scenario
    if scenario.submit_status is not None:
        return error(scenario.submit_status, "simulated submit failure")
    key = request.headers.get("idempotency-key")
    fingerprint = hashlib.sha256(raw).hexdigest()
    if key:
        previous = sim.jobs.get(f"idem:{api_key}:{key}")
        if previous is not None:
            if previous["fingerprint"] != fingerprint:
                return error(409, "Idempotency key reused with a different request body")
            return JSONResponse({"jobId": previous["jobId"], "status": "QUEUED"}, status_code=202)
    sim.submits["apiframe"] += 1
    job_id = str(uuid.uuid4())
    sim.jobs[job_id] = {"id": job_id, "status": "QUEUED", "model": body["model"], "progress": 0}
    if key:
        sim.jobs[f"idem:{api_key}:{key}"] = {"jobId": job_id, "fingerprint": fingerprint}
    webhook_url = body.get("webhookUrl")
    if isinstance(webhook_url, str):
        events = body.get("webhookEvents") or ["completed", "failed"]
        url = video_url(request, f"{job_id}.mp4")
        if "progress" in events:
            progress = {
                "event": "progress",
                "jobId": job_id,
                "status": "PROCESSING",
                "progress": 45,
                "model": body["model"],
            }
            sim.later(scenario.delay / 2, partial(_send, sim, webhook_url, api_key, progress))
        final = _final(job_id, body["model"], url, scenario.outcome)
        if final["event"] in events:
            sim.later(scenario.delay, partial(_send, sim, webhook_url, api_key, final))
    return JSONResponse({"jobId": job_id, "status": "QUEUED"}, status_code=202)


def _validate(body: Any) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        return {"": ["Expected an object"]}
    problems: dict[str, list[str]] = {}
    if body.get("model") != "kling-2.5-turbo-pro":
        problems["model"] = ["Unsupported model"]
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 4000:
        problems["prompt"] = ["String must contain between 1 and 4000 characters"]
    params = body.get("klingParams") or {}
    if not isinstance(params, dict):
        problems["klingParams"] = ["Expected an object"]
    else:
        for name in set(params) - _KLING_PARAMS:
            problems[f"klingParams.{name}"] = ["Unrecognized key"]
        if params.get("duration", 5) not in (5, 10):
            problems["klingParams.duration"] = ["Must be 5 or 10"]
    return problems


def _final(job_id: str, model: str, url: str, outcome: str) -> dict[str, Any]:
    if outcome == "succeed":
        return {
            "event": "completed",
            "jobId": job_id,
            "status": "COMPLETED",
            "progress": 100,
            "result": url,
            "model": model,
            "creditCost": 4,
            "completedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    return {
        "event": "failed",
        "jobId": job_id,
        "status": "FAILED",
        "model": model,
        "error": "Provider returned an error: content policy violation",
    }


async def _send(sim: Simulator, url: str, api_key: str, payload: dict[str, Any]) -> None:
    job = sim.jobs[payload["jobId"]]
    job["status"] = payload["status"]
    body = json.dumps(payload).encode()
    headers = {"X-Webhook-Signature": signature(body, api_key), "X-Webhook-Event": payload["event"]}
    await sim.post_callback("apiframe", url, body, headers)


async def status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["apiframe"] += 1
    job = sim.jobs.get(request.path_params["job_id"])
    if job is None:
        return error(404, "Job not found")
    return JSONResponse(job)


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v2/videos/generate", partial(submit, sim), methods=["POST"]),
        Route("/v2/jobs/{job_id}", partial(status, sim), methods=["GET"]),
        Route("/files/{name}", partial(serve_video, sim), methods=["GET"]),
    ]
