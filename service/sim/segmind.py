"""Simulated Segmind v1: the request is held until the video is ready, then answered with mp4 bytes
and credit headers. Fields and types are checked as the model page lists them
(docs/seeds/segmind-kling-2.5-turbo.txt), never with reelhook's catalog; ``duration`` is also
accepted as the string the page's own example sends (``"10"``). Segmind's SDK
(``segmind.SegmindClient(base_url=…/v1).run_sync("kling-2.5-turbo", …)``) works against it
unmodified (:func:`~service.sim.simulator.create_provider_app`). Errors are ``{"error": "…"}``
with the model page's status codes (406 is "Insufficient Credits"); a 429 carries
``x-rate-limit-reset-at-utc`` and no ``Retry-After``. The v2 status endpoints exist only to
count polling, which must never happen."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.sim.simulator import Simulator, error, prompt_of

MODELS = ("kling-2.5-turbo",)
_HANG_LIMIT = 3600.0

_MESSAGES = {
    400: "Bad Request: invalid parameters or request format",
    401: "Unauthorized: missing or invalid API key",
    402: "Payment required",
    403: "Forbidden: insufficient permissions",
    404: "Model not found",
    406: "Insufficient credits: not enough credits to process request",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway: service temporarily unavailable",
    503: "Service unavailable",
    504: "Request timed out",
}


def refusal(status: int, retry_after: float | None) -> Response:
    headers = {}
    if status == 429:
        reset = datetime.now(UTC) + timedelta(seconds=retry_after if retry_after is not None else 1)
        headers["x-rate-limit-reset-at-utc"] = reset.isoformat(timespec="milliseconds")
    return error(status, _MESSAGES.get(status, "Request failed"), headers)


_STRINGS = ("prompt", "negative_prompt", "aspect_ratio", "mode", "image_url", "tail_image_url")


def _problem(body: dict[str, Any]) -> str | None:
    """Why the page's parameter list refuses ``body``, or None. Fields the page does not list
    are ignored (it is silent on them; an assumption)."""
    for name in _STRINGS:
        if name in body and not isinstance(body[name], str):
            return f"{name} must be a string"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt is required"
    duration = body.get("duration", 10)
    if isinstance(duration, bool) or str(duration).strip() not in ("5", "10"):
        return "duration must be 5 or 10"
    if body.get("mode", "pro") != "pro":
        return "mode must be pro"
    if body.get("aspect_ratio", "16:9") not in ("16:9", "9:16", "1:1"):
        return "aspect_ratio must be one of 16:9, 9:16, 1:1"
    cfg = body.get("cfg_scale", 0.7)
    if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 0 <= cfg <= 1:
        return "cfg_scale must be between 0 and 1"
    for name in ("image_url", "tail_image_url"):
        if name in body and not body[name].startswith(("https://", "http://")):
            return f"{name} must be a URI"
    if "tail_image_url" in body and "image_url" not in body:
        return "tail_image_url requires pro mode and image_url"
    return None


async def generate(sim: Simulator, request: Request) -> Response:
    if request.path_params["model"] not in MODELS:
        return error(404, "Model not found")
    if not sim.key_ok("segmind", request.headers.get("x-api-key")):
        return error(401, _MESSAGES[401])
    if "application/json" not in request.headers.get("content-type", ""):
        return error(406, "Content-Type must be application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "Invalid JSON")
    if not isinstance(body, dict):
        return error(400, "the body must be a JSON object")
    plan = sim.plan("segmind", prompt_of(body))
    if plan.refuse_with is not None:
        return refusal(plan.refuse_with, plan.scenario.retry_after)
    problem = _problem(body)
    if problem:
        return error(400, problem)
    sim.accepted(plan)
    if plan.scenario.hang:
        await _until_disconnected(request)
        return error(504, _MESSAGES[504])
    await anyio.sleep(plan.scenario.delay)
    if plan.scenario.outcome != "succeed":
        return error(400, "Prompt flagged by content moderation policy")
    credits = "0.88" if str(body.get("duration", 10)).strip() == "10" else "0.44"
    return Response(
        sim.video,
        media_type="video/mp4",
        headers={"x-credits-consumed": credits, "x-remaining-credits": "99.12"},
    )


async def _until_disconnected(request: Request) -> None:
    """Hold the request until the client gives up (or an hour passes)."""
    with anyio.move_on_after(_HANG_LIMIT):
        while (await request.receive())["type"] != "http.disconnect":
            pass


async def request_status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["segmind"] += 1
    return error(404, "Request not found")


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v1/{model}", partial(generate, sim), methods=["POST"]),
        Route("/v1/requests/{request_id}", partial(request_status, sim), methods=["GET"]),
        Route("/v2/requests/{request_id}/status", partial(request_status, sim), methods=["GET"]),
    ]
