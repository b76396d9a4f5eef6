"""``REELHOOK_ENV=production``: no built-in simulator, and a provider without a key is unavailable.

In development a provider without a key is played by the simulator mounted at ``/sim``. In
production that simulator would be an unauthenticated endpoint making reelhook send requests, so
it is not mounted, and jobs for such a provider are refused with a 503 naming the missing setting.
Here Trinetra has a key (its base URL is a bound but never-listening loopback port) and apiframe
and Segmind have none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, url_of
from tests.support import api_client, assert_error, wait_for_job

pytestmark = pytest.mark.anyio

APIFRAME = "apiframe/kling-2.5-turbo-pro"
SEGMIND = "segmind/kling-2.5-turbo"


@pytest.fixture
async def production(settings_factory: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    with closing(loopback_socket()) as nobody:
        settings = settings_factory(
            ENV="production",
            PUBLIC_URL="https://reelhook.example.test",
            TRINETRA_API_KEY="k",
            TRINETRA_BASE_URL=url_of(nobody),
            SUBMIT_RETRY_SCHEDULE="0",
        )
        assert settings.env == "production"
        async with api_client(settings) as http:
            yield http


async def assert_nothing_stored(http: httpx.AsyncClient) -> None:
    jobs = await http.get("/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    assert jobs.json() == {"data": [], "next_cursor": None}
    events = await http.get("/v1/events")
    assert events.status_code == 200, events.text
    assert events.json() == {"data": [], "next_cursor": None}


# Routes of the simulator (service/sim), as the development build mounts them under /sim.
SIMULATOR_ROUTES = [
    ("GET", "/sim/_sim/stats"),
    ("GET", "/sim/_sim/scenario"),
    ("PUT", "/sim/_sim/scenario"),
    ("POST", "/sim/apiframe/v2/videos/generate"),
    ("POST", "/sim/segmind/v1/kling-2.5-turbo"),
]


@pytest.mark.parametrize(("method", "path"), SIMULATOR_ROUTES)
async def test_the_simulator_is_not_mounted(
    production: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await production.request(method, path, json={})
    assert_error(response, 404, "not_found")


async def test_the_simulator_is_mounted_in_development(settings_factory: SettingsFactory) -> None:
    """The contrast: in development the same paths reach the simulator."""
    async with api_client(settings_factory()) as http:
        stats = await http.get("/sim/_sim/stats")
        scenario = await http.get("/sim/_sim/scenario")
    assert stats.status_code == 200, stats.text
    assert "submits" in stats.json()
    assert scenario.status_code == 200, scenario.text


async def test_models_without_a_key_are_listed_as_unavailable(
    production: httpx.AsyncClient,
) -> None:
    response = await production.get("/v1/models")
    assert response.status_code == 200, response.text
    models: dict[str, dict[str, Any]] = {m["id"]: m for m in response.json()["data"]}
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for entry in models.values():
        by_provider.setdefault(entry["provider"], []).append(entry)
    assert set(by_provider) == {"trinetra", "apiframe", "segmind"}
    assert APIFRAME in models and SEGMIND in models
    for entry in by_provider["apiframe"] + by_provider["segmind"]:
        assert entry["available"] is False, entry["id"]
        assert entry["simulated"] is False, entry["id"]
    for entry in by_provider["trinetra"]:
        assert entry["available"] is True, entry["id"]
        assert entry["simulated"] is False, entry["id"]


@pytest.mark.parametrize(
    ("model", "variable"),
    [(APIFRAME, "REELHOOK_APIFRAME_API_KEY"), (SEGMIND, "REELHOOK_SEGMIND_API_KEY")],
)
async def test_a_job_for_a_provider_without_a_key_is_a_503_naming_the_setting(
    production: httpx.AsyncClient, model: str, variable: str
) -> None:
    body = {"model": model, "input": {"prompt": "A lighthouse in a storm"}}
    response = await production.post("/v1/jobs", json=body)
    error = assert_error(response, 503, "provider_unavailable")
    assert variable in error["message"], error
    assert error["details"]["provider"] == model.split("/")[0]
    await assert_nothing_stored(production)


async def test_a_job_for_a_provider_with_a_key_goes_to_its_configured_url(
    production: httpx.AsyncClient,
) -> None:
    """Trinetra is configured, so its job is stored and sent to TRINETRA_BASE_URL, which refuses
    the connection: the job is accepted, tried again, and fails there, not for want of a key."""
    body = {"model": "trinetra/kling-v3", "input": {"prompt": "A lighthouse in a storm"}}
    response = await production.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    fetched = await wait_for_job(production, response.json()["id"], ("failed",))
    assert fetched["error"]["kind"] == "provider_error"
    assert "could not reach trinetra" in fetched["error"]["message"], fetched["error"]
    assert "API_KEY" not in fetched["error"]["message"]


async def test_production_refuses_plain_http_subscriber_and_callback_urls(
    production: httpx.AsyncClient,
) -> None:
    refused = await production.post("/v1/subscriptions", json={"url": "http://hooks.example/x"})
    error = assert_error(refused, 422, "validation_failed", "url")
    assert "https" in error["message"] and "REELHOOK_ALLOW_HTTP_SUBSCRIBERS" in error["message"]
    job = {
        "model": "trinetra/kling-v3",
        "input": {"prompt": "p"},
        "callback_url": "http://hooks.example/cb",
    }
    assert_error(await production.post("/v1/jobs", json=job), 422, "validation_failed")
    await assert_nothing_stored(production)
    listed = await production.get("/v1/subscriptions")
    assert listed.json()["data"] == []
    accepted = await production.post("/v1/subscriptions", json={"url": "https://hooks.example/x"})
    assert accepted.status_code == 201, accepted.text


async def test_production_accepts_http_subscribers_when_the_setting_says_so(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(
        ENV="production",
        PUBLIC_URL="https://reelhook.example.test",
        ALLOW_HTTP_SUBSCRIBERS="true",
    )
    async with api_client(settings) as http:
        created = await http.post("/v1/subscriptions", json={"url": "http://hooks.example/x"})
        assert created.status_code == 201, created.text


async def test_development_accepts_http_and_a_private_address_names_the_setting(
    settings_factory: SettingsFactory,
) -> None:
    async with api_client(settings_factory()) as http:
        created = await http.post("/v1/subscriptions", json={"url": "http://hooks.example/x"})
        assert created.status_code == 201, created.text
        private = await http.post("/v1/subscriptions", json={"url": "http://10.1.2.3:3000/h"})
        error = assert_error(private, 422, "validation_failed", "url")
        assert "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS=10.1.2.3/32" in error["message"]
