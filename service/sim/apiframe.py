"""Simulated apiframe v2: ``POST /v2/videos/generate``, signed ``progress``/``completed``/``failed``
webhooks, ``Idempotency-Key`` replay and 409 on a changed body, and the documented error bodies
(``{"error"}`` with ``x-request-id``; 400 ``details`` per field; 402 with the credits required and
available; 429 and 503 with ``Retry-After``).

Requests are validated as apiframe's OpenAPI schema says (``GenerateVideoRequest`` and its
``klingParams``, both ``additionalProperties: false``; docs/providers.md §2), never with
reelhook's catalog: ``guidance_scale`` 0-1 (the page's ``cfg_scale`` is not in the schema),
``negative_prompt`` up to 2,500 characters, a non-empty ``webhookEvents``."""

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
    Scenario,
    Simulator,
    callback_steps,
    error,
    prompt_of,
    serve_video,
    video_url,
)

# klingParams of kling-2.5-turbo-pro in the OpenAPI schema (cfg_scale, the page's name, is not).
_KLING_PARAMS = {
    "duration",
    "aspect_ratio",
    "start_image",
    "end_image",
    "negative_prompt",
    "guidance_scale",
}
_WEBHOOK_EVENTS = ("progress", "completed", "failed")
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
    if not sim.key_ok("apiframe", api_key):
        return _error(401, "Invalid or missing API key")
    assert api_key is not None
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        return _error(400, "Validation failed", details={"Idempotency-Key": ["1-255 characters"]})
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
        final = _final(job_id, body["model"], url, plan.scenario, duration)
        steps = []
        progress = 0
        for at, kind in callback_steps(plan.scenario, progress="progress" in events):
            if kind == "progress":
                progress = min(progress + 25, 99)
                payload = _progress(job_id, body["model"], progress, plan.scenario.status_word)
            else:
                payload = final
            if payload["event"] in events:
                action = partial(_send, sim, plan, webhook_url, api_key, payload, kind)
                steps.append((at, action))
        sim.in_sequence(steps)
    if plan.scenario.submit_delay:
        # Accepted, but the answer comes late: a client that gave up sends it again.
        await anyio.sleep(plan.scenario.submit_delay)
    return JSONResponse({"jobId": job_id, "status": "QUEUED"}, status_code=202)


def _validate(body: Any) -> dict[str, list[str]]:
    """Problems per field path, as apiframe's 400 ``details`` lists them (OpenAPI rules)."""
    if not isinstance(body, dict):
        return {"": ["Expected object"]}
    problems: dict[str, list[str]] = {}
    for name in set(body) - {"model", "prompt", "klingParams", "webhookUrl", "webhookEvents"}:
        problems[name] = ["Unrecognized key"]
    if body.get("model") != "kling-2.5-turbo-pro":
        problems["model"] = ["Unsupported model (the simulator serves kling-2.5-turbo-pro)"]
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 4000:
        problems["prompt"] = ["String must contain between 1 and 4000 characters"]
    params = body.get("klingParams", {})
    if not isinstance(params, dict):
        problems["klingParams"] = ["Expected object"]
    else:
        problems.update(_kling_params(params))
    if "webhookUrl" in body:
        url = body["webhookUrl"]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            problems["webhookUrl"] = ["Invalid url"]
    if "webhookEvents" in body:
        events = body["webhookEvents"]
        if not isinstance(events, list) or not events:
            problems["webhookEvents"] = ["Array must contain at least 1 element(s)"]
        elif any(event not in _WEBHOOK_EVENTS for event in events):
            problems["webhookEvents"] = [f"Each must be one of {', '.join(_WEBHOOK_EVENTS)}"]
    return problems


def _kling_params(params: dict[str, Any]) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    for name in set(params) - _KLING_PARAMS:
        problems[f"klingParams.{name}"] = ["Unrecognized key"]
    duration = params.get("duration", 5)
    if isinstance(duration, bool) or duration not in (5, 10):
        problems["klingParams.duration"] = ["Must be 5 or 10"]
    if params.get("aspect_ratio", "16:9") not in ("16:9", "9:16", "1:1"):
        problems["klingParams.aspect_ratio"] = ["Must be one of 16:9, 9:16, 1:1"]
    for name in ("start_image", "end_image"):
        value = params.get(name)
        if value is not None and not (isinstance(value, str) and value.startswith("http")):
            problems[f"klingParams.{name}"] = ["Invalid url"]
    negative = params.get("negative_prompt", "")
    if not isinstance(negative, str) or len(negative) > 2500:
        problems["klingParams.negative_prompt"] = ["String must contain at most 2500 characters"]
    scale = params.get("guidance_scale", 0.5)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale <= 1:
        problems["klingParams.guidance_scale"] = ["Number must be between 0 and 1"]
    return problems


def _progress(job_id: str, model: str, progress: int, word: str | None) -> dict[str, Any]:
    return {
        "event": "progress",
        "jobId": job_id,
        "status": word or "PROCESSING",
        "progress": progress,
        "model": model,
    }


def _result(url: str, shape: str) -> Any:
    """The ``result`` of a completed webhook in ``shape`` (docs/providers.md §2: docs-v2 shows a
    string, apiframe.ai/docs ``{videoUrl}``; Midjourney video ``{videos}``)."""
    if shape == "url_object":
        return {"videoUrl": url}
    if shape == "videos":
        return {"videos": [{"url": url}]}
    if shape == "list":
        return [url]
    return url


def _final(job_id: str, model: str, url: str, scenario: Scenario, duration: int) -> dict[str, Any]:
    if scenario.result_shape == "kling":
        status = "succeed" if scenario.outcome == "succeed" else "failed"
        body: dict[str, Any] = {
            "event": "completed" if status == "succeed" else "failed",
            "jobId": job_id,
            "task_id": job_id,
            "task_status": status,
            "task_status_msg": "" if status == "succeed" else "content security check failed",
        }
        if status == "succeed":
            body["task_result"] = {"videos": [{"url": url, "duration": str(duration)}]}
        return body
    if scenario.outcome == "succeed":
        return {
            "event": "completed",
            "jobId": job_id,
            "status": "COMPLETED",
            "progress": 100,
            "result": _result(url, scenario.result_shape),
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
        job["status"] = payload.get("status", job["status"])
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
