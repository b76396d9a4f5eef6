"""Inbound callbacks under test: the secret key and tokens the test settings use, provider
callback bodies as the providers document them, and a served reelhook to post them to."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from service.app.factory import create_app
from service.app.settings import Settings
from service.core.tokens import Tokens
from service.providers.apiframe import signature
from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, stored

SECRET_KEY = "test-secret-key-0123456789"  # REELHOOK_SECRET_KEYS in settings_factory


TOKENS = Tokens([SECRET_KEY])


APIFRAME_KEY = "afk_test_callbacks_0123456789"


TRINETRA_MODEL = "trinetra/kling-v2.5"


@dataclass
class Service:
    settings: Settings
    api: httpx.AsyncClient  # a client of the API, with the admin key
    provider: httpx.AsyncClient  # what a provider sends with: no API key at all

    async def create_job(self, model: str) -> dict[str, Any]:
        response = await self.api.post(
            "/v1/jobs", json={"model": model, "input": {"prompt": "A flower blooming"}}
        )
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        assert job["status"] == "submitted", job
        assert job["provider_job_id"], job
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    async def events(self, job_id: str, event_type: str | None = None) -> list[dict[str, Any]]:
        params = {"limit": "1000"}
        if event_type is not None:
            params["type"] = event_type
        response = await self.api.get("/v1/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["next_cursor"] is None
        return [event for event in page["data"] if event["data"].get("id") == job_id]

    async def event_types(self, job_id: str) -> Counter[str]:
        return Counter(event["type"] for event in await self.events(job_id))

    async def callback(
        self, provider: str, token: str, body: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.provider.post(
            f"/v1/callbacks/{provider}/{token}",
            content=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    async def apiframe_callback(
        self, token: str, document: dict[str, Any], *, key: str = APIFRAME_KEY
    ) -> httpx.Response:
        body = encode(document)
        headers = {
            "X-Webhook-Signature": signature(body, key),
            "X-Webhook-Event": str(document.get("event")),
        }
        return await self.callback("apiframe", token, body, headers)


@contextlib.asynccontextmanager
async def serve(settings_factory: SettingsFactory, **overrides: str) -> AsyncIterator[Service]:
    """reelhook on a loopback port with its simulator mounted; apiframe gets a known API key."""
    assert SECRET_KEY in settings_factory(**overrides).secret_keys
    sock = loopback_socket()
    public_url = url_of(sock)
    settings = settings_factory(
        PUBLIC_URL=public_url,
        SIM_DELAY="3600",
        APIFRAME_API_KEY=APIFRAME_KEY,
        APIFRAME_BASE_URL=f"{public_url}/sim/apiframe",
        **overrides,
    )
    async with (
        contextlib.AsyncExitStack() as stack,
        run_server(create_app(settings), stack.enter_context(sock)) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}) as api,
        httpx.AsyncClient(base_url=base_url) as provider,
    ):
        yield Service(settings, api, provider)


def stored_callbacks(settings: Settings) -> list[tuple[str, str, str, bytes]]:
    """(job id, provider, outcome, raw body) of every stored callback, read after shutdown."""
    rows = stored(settings, "SELECT job_id, provider, outcome, body FROM callbacks ORDER BY id")
    return [(str(j), str(p), str(o), bytes(b)) for j, p, o, b in rows]


def stored_replays(settings: Settings) -> list[tuple[str, str, int]]:
    """(job id, outcome, replays) of every stored callback, read after shutdown: a replay (the
    same bytes again for the same job) is counted on the row its first copy made."""
    rows = stored(settings, "SELECT job_id, outcome, replays FROM callbacks ORDER BY id")
    return [(str(j), str(o), int(n)) for j, o, n in rows]


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def trinetra_done(provider_job_id: str, url: str = "https://cdn.trinetra.ai/out/a1.mp4") -> bytes:
    """The terminal job document exactly as docs/providers.md §1 shows it."""
    return encode(
        {
            "id": provider_job_id,
            "model": "kling-v2.5",
            "status": "succeeded",
            "output": {"outputs": [{"url": url, "type": "video"}]},
            "credits_charged": 10,
        }
    )


def trinetra_failed(provider_job_id: str) -> bytes:
    return encode(
        {
            "id": provider_job_id,
            "model": "kling-v2.5",
            "status": "failed",
            "output": None,
            "error": {"message": "content policy violation: prompt was rejected"},
        }
    )


def apiframe_completed(provider_job_id: str) -> dict[str, Any]:
    """apiframe's documented ``completed`` webhook, for this job."""
    return {**APIFRAME_COMPLETED, "jobId": provider_job_id}


def apiframe_progress(provider_job_id: str) -> dict[str, Any]:
    return {
        "event": "progress",
        "jobId": provider_job_id,
        "status": "PROCESSING",
        "progress": 45,
        "model": "kling-2.5-turbo-pro",
    }


APIFRAME_JOB = "a1b2c3d4-0000-4000-8000-000000000001"
APIFRAME_COMPLETED = {
    "event": "completed",
    "jobId": APIFRAME_JOB,
    "status": "COMPLETED",
    "progress": 100,
    "result": "https://cdn.apiframe.ai/results/a1b2.mp4",
    "model": "kling-2.5-turbo-pro",
    "creditCost": 4,
    "completedAt": "2026-03-15T10:00:32.000Z",
}
