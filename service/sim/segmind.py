"""Simulated Segmind v1: the request is held until the video is ready, then answered with mp4 bytes
and credit headers. The v2 status endpoint exists only to count polling, which must never happen."""

from __future__ import annotations

import json
from functools import partial

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.sim.simulator import Simulator, error

MODELS = ("kling-2.5-turbo",)


async def generate(sim: Simulator, request: Request) -> Response:
    if request.path_params["model"] not in MODELS:
        return error(404, "Model not found")
    if not request.headers.get("x-api-key"):
        return error(401, "Unauthorized: missing or invalid API key")
    if "application/json" not in request.headers.get("content-type", ""):
        return error(406, "Content-Type must be application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "Invalid JSON")
    if not isinstance(body, dict) or not body.get("prompt"):
        return error(400, "prompt is required")
    if "tail_image_url" in body and (body.get("mode", "pro") != "pro" or "image_url" not in body):
        return error(400, "tail_image_url requires pro mode and image_url")
    scenario = sim.scenario
    if scenario.submit_status is not None:
        return error(scenario.submit_status, "simulated failure")
    sim.submits["segmind"] += 1
    await anyio.sleep(scenario.delay)
    if scenario.outcome != "succeed":
        return error(400, "Prompt flagged by content moderation policy")
    credits = "0.88" if str(body.get("duration", 10)) == "10" else "0.44"
    return Response(
        sim.video,
        media_type="video/mp4",
        headers={"x-credits-consumed": credits, "x-remaining-credits": "99.12"},
    )


async def request_status(sim: Simulator, request: Request) -> Response:
    sim.status_requests["segmind"] += 1
    return error(404, "Request not found")


def routes(sim: Simulator) -> list[BaseRoute]:
    return [
        Route("/v1/{model}", partial(generate, sim), methods=["POST"]),
        Route("/v1/requests/{request_id}", partial(request_status, sim), methods=["GET"]),
        Route("/v2/requests/{request_id}/status", partial(request_status, sim), methods=["GET"]),
    ]
