"""n8n: the importable workflow in examples/n8n, and static headers standing in for n8n's Header
Auth on its Webhook trigger (n8n verifies no signature, only a header)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, run_server, url_of
from tests.support import served

pytestmark = pytest.mark.anyio

WORKFLOW = Path(__file__).parent.parent / "examples" / "n8n" / "reelhook-video-ready.json"
HEADER, TOKEN = "X-Reelhook-Token", "n8n-header-auth-value"


def resolve(value: Any, path: str) -> Any:
    """``outputs[0].mirror_url`` looked up in ``value``, as an n8n expression would."""
    for part in re.findall(r"[^.\[\]]+", path):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


async def test_the_workflow_uses_fields_real_events_have(client: httpx.AsyncClient) -> None:
    workflow = json.loads(WORKFLOW.read_text())
    # `n8n import:workflow --input=…` refuses a workflow without "active" (the UI import does not).
    assert workflow["active"] is False
    assert {"name", "nodes", "connections"} <= set(workflow)
    nodes = {node["name"]: node for node in workflow["nodes"]}
    [trigger] = [n for n in nodes.values() if n["type"] == "n8n-nodes-base.webhook"]
    assert trigger["parameters"]["httpMethod"] == "POST"
    assert trigger["parameters"]["authentication"] == "headerAuth"
    assert "httpHeaderAuth" in trigger["credentials"]

    # trigger → "Video ready?" (true branch) → "Video fields" → "Download the video"
    chain = [trigger["name"]]
    while chain[-1] in workflow["connections"]:
        chain.append(workflow["connections"][chain[-1]]["main"][0][0]["node"])
    assert [nodes[name]["type"] for name in chain] == [
        "n8n-nodes-base.webhook",
        "n8n-nodes-base.if",
        "n8n-nodes-base.set",
        "n8n-nodes-base.httpRequest",
    ]

    # Every field the workflow reads exists in a real job.succeeded event (n8n puts the request
    # body under $json.body), and the download reads the URL the previous node set.
    sample = (await client.get("/v1/events/sample", params={"type": "job.succeeded"})).json()
    event = sample["data"][0]
    text = WORKFLOW.read_text()
    paths = re.findall(r"\$json\.body\.([\w.\[\]]+)", text)
    assert {"type", "data.id", "data.outputs[0].mirror_url", "data.outputs[0].url"} <= set(paths)
    for path in paths:
        assert resolve(event, path) is not None, path
    condition = nodes[chain[1]]["parameters"]["conditions"]["conditions"][0]
    assert condition["rightValue"] == event["type"]
    assignments = nodes[chain[2]]["parameters"]["assignments"]["assignments"]
    assert nodes[chain[3]]["parameters"]["url"] == "={{ $json.video_url }}"
    assert "video_url" in [a["name"] for a in assignments]


class FakeN8n:
    """Webhook triggers with Header Auth, answering as n8n does: 403 without the exact value."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[str] = []
        self.arrived = anyio.Event()

    def app(self) -> Starlette:
        async def webhook(request: Request) -> Response:
            try:
                if request.headers.get(HEADER) != TOKEN:
                    self.refused.append(request.url.path)
                    return Response("Authorization data is wrong!", status_code=403)
                self.accepted.append((request.url.path, await request.json()))
                return JSONResponse({"message": "Workflow was started"})
            finally:
                self.arrived.set()
                self.arrived = anyio.Event()

        return Starlette(routes=[Route("/webhook/{path}", webhook, methods=["POST"])])

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await self.arrived.wait()


async def test_static_headers_pass_n8n_header_auth(settings_factory: SettingsFactory) -> None:
    n8n = FakeN8n()
    with loopback_socket() as sock:
        settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.05")
        async with run_server(n8n.app()) as n8n_url, served(settings, sock) as http:
            with_header = await http.post(
                "/v1/subscriptions",
                json={
                    "url": f"{n8n_url}/webhook/reelhook",
                    "event_types": ["job.succeeded"],
                    "headers": {HEADER: TOKEN},
                },
            )
            assert with_header.status_code == 201, with_header.text
            assert with_header.json()["headers"] == {HEADER: "********"}
            without = await http.post(
                "/v1/subscriptions",
                json={"url": f"{n8n_url}/webhook/no-header", "event_types": ["job.succeeded"]},
            )
            assert without.status_code == 201, without.text
            job = await http.post(
                "/v1/jobs", json={"model": "segmind/kling-2.5-turbo", "input": {"prompt": "p"}}
            )
            assert job.status_code == 202, job.text
            await n8n.wait_until(lambda: len(n8n.accepted) == 1 and len(n8n.refused) >= 1)
            [(path, event)] = n8n.accepted
            assert path == "/webhook/reelhook"
            assert event["type"] == "job.succeeded" and event["data"]["id"] == job.json()["id"]
            assert set(n8n.refused) == {"/webhook/no-header"}
