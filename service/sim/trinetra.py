"""Simulated Trinetra: ``POST /v1/video/{model}``; the terminal document goes to callback_url,
to the webhook_url set on the account (the API key), or both.

Requests are checked with Trinetra's own parameter tables (docs/seeds/trinetra-*.txt), written
out here and never taken from reelhook's catalog, so the simulator can disagree with reelhook.
Where the pages are silent the simulator is strict (an unknown parameter is refused) and says so.
``external_task_id`` is honoured as the idempotency id it is documented to be: the same id again
is the same job. The error body is ``{"error": "…"}`` (Trinetra documents none; this is the shape
of its peers) and a 429 or 503 carries ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

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
# Credits per second by resolution, from each page's pricing table.
_CREDITS = {
    "kling-v2.5": {"720p": 10, "1080p": 15},
    "kling-v3": {"720p": 19, "1080p": 30},
    "kling-v3-omni": {"720p": 29, "1080p": 46},
}
_MAX_DURATION = {"kling-v2.5": 10, "kling-v3": 10, "kling-v3-omni": 15}
# The modes each page lists ("stdstdpro" on v2.5 read as std|pro; none on v3-omni).
_MODES: dict[str, tuple[str, ...]] = {
    "kling-v2.5": ("std", "pro"),
    "kling-v3": ("t2v", "i2v"),
    "kling-v3-omni": (),
}
_STRINGS = ("prompt", "image_url", "last_frame_url", "aspect_ratio", "negative_prompt")
_AXES = ("horizontal", "vertical", "pan", "tilt", "roll", "zoom")

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
    if not sim.key_ok("trinetra", api_key):
        return error(401, "missing or invalid API key")
    assert api_key is not None
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object")
    plan = sim.plan("trinetra", prompt_of(body))
    if plan.refuse_with is not None:
        return refusal(plan.refuse_with, plan.scenario.retry_after)
    problem = _problem(model, body)
    if problem:
        return error(400, problem)
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
    callback_url = callback_url if isinstance(callback_url, str) else None
    if plan.scenario.callback == "forged" and callback_url is not None:
        callback_url = _tampered(callback_url)
    targets = _targets(sim, plan, callback_url)
    if targets:
        url = video_url(request, f"{job_id}.mp4")
        credits = _credits(model, body)
        sim.in_sequence(
            [
                (at, partial(_callback, sim, plan, job_id, targets, url, credits, kind))
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


def _problem(model: str, body: dict[str, Any]) -> str | None:
    """Why Trinetra's parameter table for ``model`` refuses ``body``, or None."""
    known = {
        *_STRINGS,
        "duration",
        "mode",
        "cfg_scale",
        "camera_control",
        "external_task_id",
        "callback_url",
        # Not in any table, but the pricing text says "pass resolution in your request".
        "resolution",
    }
    if not _MODES[model]:
        known.discard("mode")
    unknown = sorted(set(body) - known)
    if unknown:
        # The pages are silent on unknown parameters; the simulator refuses them (an assumption)
        # so that reelhook sending anything no table lists is caught.
        return f"unknown parameter {unknown[0]!r}"
    if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        return "prompt is required"
    for name in (*_STRINGS, "external_task_id", "callback_url"):
        if name in body and not isinstance(body[name], str):
            return f"{name} must be a string"
    duration = body.get("duration", 5)
    if not _number(duration) or not 1 <= duration <= _MAX_DURATION[model]:
        return f"duration must be a number from 1 to {_MAX_DURATION[model]}"
    if "mode" in body and body["mode"] not in _MODES[model]:
        return f"mode must be one of {', '.join(_MODES[model])}"
    if model == "kling-v3" and body.get("mode") == "i2v" and "image_url" not in body:
        return "image_url is required for i2v mode"
    if "resolution" in body and body["resolution"] not in ("720p", "1080p"):
        return "resolution must be 720p or 1080p"
    cfg = body.get("cfg_scale", 0.5)
    if not _number(cfg) or not 0 <= cfg <= 1:
        return "cfg_scale must be between 0 and 1"
    if "last_frame_url" in body:
        if "image_url" not in body:
            return "last_frame_url requires image_url (first frame)"
        if duration != 5:
            return "last_frame_url is supported on 5s clips only"
    return _camera_problem(body.get("camera_control"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _camera_problem(camera: Any) -> str | None:
    if camera is None:
        return None
    if not isinstance(camera, dict):
        return "camera_control must be an object"
    config = camera.get("config", {})
    if not isinstance(config, dict):
        return "camera_control.config must be an object"
    for axis, value in config.items():
        if axis not in _AXES or not _number(value) or not -10 <= value <= 10:
            return f"camera_control.config.{axis} must be one of {_AXES} from -10 to 10"
    return None


def _credits(model: str, body: dict[str, Any]) -> float:
    """Credits per second of output by resolution, as on Trinetra's pricing tables (720p, the
    base price, when no resolution is passed; an assumption, as the pages are silent)."""
    table = _CREDITS[model]
    duration = body.get("duration", 5)
    return table.get(str(body.get("resolution", "720p")), table["720p"]) * float(duration)


def _targets(sim: Simulator, plan: Plan, callback_url: str | None) -> list[str]:
    """Where the job's documents go under the scenario's ``route``."""
    account = sim.account_webhooks.get("trinetra")
    route = plan.scenario.route
    targets = []
    if callback_url is not None and route in ("job", "both"):
        targets.append(callback_url)
    if account is not None and (route in ("account", "both") or callback_url is None):
        targets.append(account)
    return targets


def _shaped(document: dict[str, Any], url: str, shape: str) -> dict[str, Any]:
    """A success document with its URL in ``shape`` (one of ``RESULT_SHAPES``)."""
    if shape == "url_object":
        return {**document, "output": {"url": url}}
    if shape == "videos":
        return {**document, "output": {"videos": [{"url": url}]}}
    if shape == "list":
        return {**{k: v for k, v in document.items() if k != "output"}, "outputs": [url]}
    if shape == "kling":
        return _kling(document, "succeed", {"videos": [{"id": "v1", "url": url, "duration": "5"}]})
    return document


def _kling(document: dict[str, Any], status: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """Kling's own callback body (docs/providers.md §4), as Trinetra might pass it through."""
    body: dict[str, Any] = {
        "task_id": str(int(hashlib.sha256(document["id"].encode()).hexdigest()[:12], 16)),
        "task_status": status,
        "task_status_msg": "" if status != "failed" else "content security check failed",
        "created_at": 1722769557708,
        "updated_at": 1722769612000,
        "final_unit_deduction": "1",
        "task_info": {"external_task_id": document.get("external_task_id", "")},
    }
    if result is not None:
        body["task_result"] = result
    return body


async def _callback(
    sim: Simulator,
    plan: Plan,
    job_id: str,
    targets: list[str],
    url: str,
    credits: float,
    kind: str,
) -> None:
    document = sim.jobs[job_id]
    scenario = plan.scenario
    if kind == "progress":
        word = scenario.status_word or "running"
        body: dict[str, Any] = {"id": job_id, "model": document["model"], "status": word}
        if scenario.result_shape == "kling" and scenario.status_word is None:
            body = _kling(document, "processing", None)
    else:
        if scenario.outcome == "succeed":
            document.update(
                status="succeeded",
                output={"outputs": [{"url": url, "type": "video"}]},
                credits_charged=credits,
            )
            body = _shaped(document, url, scenario.result_shape)
        else:
            # An assumed failure shape (docs/providers.md §1): status, error.message, no output.
            document.update(
                status="failed",
                output=None,
                error={"message": "content policy violation: prompt was rejected"},
                credits_charged=0,
            )
            body = (
                _kling(document, "failed", None) if scenario.result_shape == "kling" else document
            )
    if kind == "lost":
        sim.record(plan, job_id=job_id, kind=kind, status=None)
        return
    encoded = json.dumps(body).encode()
    for target in targets:
        await sim.post_callback(plan, target, encoded, job_id=job_id, kind=kind)


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
