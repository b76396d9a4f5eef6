"""Simulated apiframe v2: ``POST /v2/videos/generate``, signed ``progress``/``completed``/``failed``
webhooks, ``Idempotency-Key`` replay and 409 on a changed body, and the documented error bodies
(``{"error"}`` with ``x-request-id``; 400 ``details`` per field; 402 with the credits required and
available; 429 and 503 with ``Retry-After``)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.providers.apiframe import signature
from service.sim.simulator import (
    Plan,
    Simulator,
    callback_steps,
    error,
    prompt_of,
    serve_video,
    video_url,
)

_KLING_PARAMS = {
    "duration",
    "aspect_ratio",
    "start_image",
    "end_image",
    "negative_prompt",
    "cfg_scale",
    "guidance_scale",
}
_CREDITS = {5: 4, 10: 7}
_MESSAGES = {
    400: "Validation failed",
    401: "Invalid or missing API key",
    402: "Insufficient credits",
    403: "API key is inactive or lacks permission",
    404: "Not found",
    406: "Not acceptable",
    409: "Idempotency key reused with a different request body",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service unavailable: queue is not accepting jobs",
}


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return error(status, message, {"x-request-id": str(uuid.uuid4()), **(headers or {})}, **extra)


def refusal(status: int, retry_after: float | None, duration: int) -> Response:
    message = _MESSAGES.get(status, "Request failed")
    headers = {}
    extra: dict[str, Any] = {}
    if status in (429, 503):
        headers["Retry-After"] = str(max(0, round(retry_after if retry_after is not None else 1)))
    if status == 400:
        extra["details"] = {"klingParams.start_image": ["Image could not be downloaded"]}
    if status == 402:
        extra.update(creditsRequired=_CREDITS.get(duration, 4), creditsAvailable=0)
    return _error(status, message, headers, **extra)


async def submit(sim: Simulator, request: Request) -> Response:
    api_key = request.headers.get("x-api-key")
    if not api_key:
        return _error(401, "Invalid or missing API key")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "Invalid JSON body")
    problems = _validate(body)
    if problems:
        return _error(400, "Validation failed", details=problems)
    plan = sim.plan("apiframe", prompt_of(body))
    duration = (body.get("klingParams") or {}).get("duration", 5)
    if plan.refuse_with is not None:
        return refusal(plan.refuse_with, plan.scenario.retry_after, duration)
    key = request.headers.get("idempotency-key")
    fingerprint = hashlib.sha256(raw).hexdigest()
    if key:
        previous = sim.jobs.get(f"idem:{api_key}:{key}")
        if previous is not None:
            if previous["fingerprint"] != fingerprint:
                return _error(409, _MESSAGES[409])
            return JSONResponse({"jobId": previous["jobId"], "status": "QUEUED"}, status_code=202)
    sim.accepted(plan)
    job_id = str(uuid.uuid4())
    sim.jobs[job_id] = {"id": job_id, "status": "QUEUED", "model": body["model"], "progress": 0}
    if key:
        sim.jobs[f"idem:{api_key}:{key}"] = {"jobId": job_id, "fingerprint": fingerprint}
    webhook_url = body.get("webhookUrl")
    if isinstance(webhook_url, str):
        events = body.get("webhookEvents") or ["completed", "failed"]
        url = video_url(request, f"{job_id}.mp4")
        final = _final(job_id, body["model"], url, plan.scenario.outcome, duration)
        steps = []
        for at, kind in callback_steps(plan.scenario, progress="progress" in events):
            payload = _progress(job_id, body["model"]) if kind == "progress" else final
            if payload["event"] in events:
                action = partial(_send, sim, plan, webhook_url, api_key, payload, kind)
                steps.append((at, action))
        sim.in_sequence(steps)
    if plan.scenario.submit_delay:
        # Accepted, but the answer comes late: a client that gave up sends it again.
        await anyio.sleep(plan.scenario.submit_delay)
    return JSONResponse({"jobId": job_id, "status": "QUEUED"}, status_code=202)


def _validate(body: Any) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        return {"": ["Expected an object"]}
    problems: dict[str, list[str]] = {}
    for name in set(body) - {"model", "prompt", "klingParams", "webhookUrl", "webhookEvents"}:
        problems[name] = ["Unrecognized key"]
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
        if params.get("aspect_ratio", "16:9") not in ("16:9", "9:16", "1:1"):
            problems["klingParams.aspect_ratio"] = ["Must be one of 16:9, 9:16, 1:1"]
    events = body.get("webhookEvents", [])
    if not isinstance(events, list) or set(events) - {"progress", "completed", "failed"}:
        problems["webhookEvents"] = ["Must be a list of progress, completed, failed"]
    return problems


def _progress(job_id: str, model: str) -> dict[str, Any]:
    return {
        "event": "progress",
        "jobId": job_id,
        "status": "PROCESSING",
        "progress": 45,
        "model": model,
    }


def _final(job_id: str, model: str, url: str, outcome: str, duration: int) -> dict[str, Any]:
    if outcome == "succeed":
        return {
            "event": "completed",
            "jobId": job_id,
            "status": "COMPLETED",
            "progress": 100,
            "result": url,
            "model": model,
            "creditCost": _CREDITS.get(duration, 4),
            "completedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    return {
        "event": "failed",
        "jobId": job_id,
        "status": "FAILED",
        "model": model,
        "error": "Provider returned an error: content policy violation",
    }


async def _send(
    sim: Simulator, plan: Plan, url: str, api_key: str, payload: dict[str, Any], kind: str
) -> None:
    job = sim.jobs[payload["jobId"]]
    if job["status"] not in ("COMPLETED", "FAILED"):
        job["status"] = payload["status"]
    if kind == "lost":
        sim.record(plan, job_id=payload["jobId"], kind=kind, status=None)
        return
    body = json.dumps(payload).encode()
    # A forged webhook is one apiframe did not sign: any key but the account's.
    key = f"forged:{api_key}" if plan.scenario.callback == "forged" else api_key
    headers = {"X-Webhook-Signature": signature(body, key), "X-Webhook-Event": payload["event"]}
    await sim.post_callback(plan, url, body, headers, job_id=payload["jobId"], kind=kind)


async def status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["apiframe"] += 1
    job = sim.jobs.get(request.path_params["job_id"])
    if job is None or "id" not in job:
        return _error(404, "Job not found")
    return JSONResponse(job)


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v2/videos/generate", partial(submit, sim), methods=["POST"]),
        Route("/v2/jobs/{job_id}", partial(status, sim), methods=["GET"]),
        Route("/files/{name}", partial(serve_video, sim), methods=["GET"]),
    ]
