"""The live stream from a browser: CORS for configured origins, and read-only stream tokens for an
``EventSource`` URL (``POST /v1/events/stream-token``), tested over loopback and in headless
Chromium. Outside CI a machine without Chromium skips the browser test, saying why; under
``CI=true`` that is a failure."""

from __future__ import annotations

import io
import logging
import os

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from service.app.logs import logging_to
from service.app.settings import SettingsError, load_settings
from tests.browser import chromium, missing
from tests.conftest import SettingsFactory
from tests.servers import run_server
from tests.sse_client import open_stream
from tests.support import ADMIN_KEY, assert_error
from tests.test_stream import ping, service, subscription

pytestmark = pytest.mark.anyio


async def stream_token(http: httpx.AsyncClient, key: str = ADMIN_KEY) -> dict[str, str]:
    response = await http.post("/v1/events/stream-token", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, str] = response.json()
    return body


async def test_a_stream_token_opens_the_stream_and_nothing_else(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with service(settings_factory) as http:
        sub_id = await subscription(http, dead_url)
        minted = await stream_token(http)
        assert minted["stream_url"].endswith(f"/v1/events/stream?token={minted['token']}")
        anonymous = httpx.AsyncClient(base_url=str(http.base_url))
        async with anonymous, open_stream(anonymous, params={"token": minted["token"]}) as live:
            await live.position()
            sent = await ping(http, sub_id)
            [received] = await live.events(1)
        assert received["id"] == sent
        # Read-only: no other endpoint takes the token, as a parameter or as an API key.
        async with httpx.AsyncClient(base_url=str(http.base_url)) as bare:
            listed = await bare.get("/v1/events", params={"token": minted["token"]})
            assert_error(listed, 422, "validation_failed", "token")
            assert_error(
                await bare.get("/v1/jobs", headers={"X-API-Key": minted["token"]}),
                401,
                "unauthorized",
            )
            bad = await bare.get("/v1/events/stream", params={"token": minted["token"] + "x"})
            assert "not valid" in assert_error(bad, 401, "unauthorized")["message"]


async def test_a_stream_token_expires_and_dies_with_its_key(
    settings_factory: SettingsFactory,
) -> None:
    async with service(settings_factory, STREAM_TOKEN_TTL="1") as http:
        created = await http.post("/v1/keys", json={"name": "page", "scopes": ["jobs:read"]})
        assert created.status_code == 201, created.text
        member = created.json()
        token = (await stream_token(http, member["key"]))["token"]
        async with httpx.AsyncClient(base_url=str(http.base_url)) as bare:
            revoked = await http.delete(f"/v1/keys/{member['id']}")
            assert revoked.status_code in (200, 204), revoked.text
            gone = await bare.get("/v1/events/stream", params={"token": token})
            assert "revoked" in assert_error(gone, 401, "unauthorized")["message"]
            old = (await stream_token(http))["token"]
            await anyio.sleep(2.1)  # itsdangerous counts whole seconds
            expired = await bare.get("/v1/events/stream", params={"token": old})
            assert "expired" in assert_error(expired, 401, "unauthorized")["message"]
        writer = await http.post("/v1/keys", json={"name": "w", "scopes": ["subscriptions:read"]})
        assert_error(
            await http.post("/v1/events/stream-token", headers={"X-API-Key": writer.json()["key"]}),
            403,
            "forbidden",
        )


async def test_cors_answers_configured_origins_only(settings_factory: SettingsFactory) -> None:
    async with service(settings_factory, CORS_ORIGINS="https://app.example.com") as http:
        preflight = await http.options(
            "/v1/jobs",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers
        listed = await http.get("/v1/jobs", headers={"Origin": "https://app.example.com"})
        assert listed.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await http.get("/v1/jobs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    async with service(settings_factory) as http:
        plain = await http.get("/v1/jobs", headers={"Origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in plain.headers


async def test_the_event_stream_answers_configured_origins_too(
    settings_factory: SettingsFactory,
) -> None:
    """The stream is opened in front of the router (service/api/streampath.py), inside CORS:
    an open stream and a refused one both carry the origin's header, another origin's not."""
    origin = "https://app.example.com"
    async with service(settings_factory, CORS_ORIGINS=origin) as http:
        async with http.stream(
            "GET", "/v1/events/stream", headers={"Origin": origin}, timeout=10
        ) as opened:
            assert opened.status_code == 200
            assert opened.headers["access-control-allow-origin"] == origin
        refused = await http.get(
            "/v1/events/stream", headers={"Origin": origin, "X-API-Key": "rh_wrong"}
        )
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["access-control-allow-origin"] == origin
        async with http.stream(
            "GET", "/v1/events/stream", headers={"Origin": "https://evil.example"}, timeout=10
        ) as other:
            assert other.status_code == 200
            assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("value", ["app.example.com", "https://a.example/path", "ftp://x"])
def test_a_bad_cors_origin_stops_start_up_naming_it(value: str) -> None:
    with pytest.raises(SettingsError, match=r"REELHOOK_CORS_ORIGINS: .* is not an origin"):
        load_settings({"REELHOOK_CORS_ORIGINS": value})
    settings = load_settings({"REELHOOK_CORS_ORIGINS": "https://a.example/, *"})
    assert settings.cors_origins == ("https://a.example", "*")


def test_a_stream_token_in_a_logged_url_is_redacted() -> None:
    out = io.StringIO()
    with logging_to(out, load_settings({})):
        logging.getLogger("service.test").warning(
            'GET /v1/events/stream?token=eyJzdHJlYW0iLCJrZXkifQ.abc&type=ping HTTP/1.1" 200'
        )
    assert "eyJzdHJlYW0" not in out.getvalue()
    assert "token=[redacted]&type=ping" in out.getvalue()


async def test_an_event_source_on_another_origin_receives_events_with_a_stream_token(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    if (reason := missing()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test cannot run under CI: {reason}", pytrace=False)
        pytest.skip(f"browser test skipped: {reason}")
    from playwright.async_api import expect

    page_html = """<!doctype html><title>live</title><ul id="events"></ul><script>
      const source = new EventSource(new URLSearchParams(location.search).get("stream"));
      source.addEventListener("open", () => document.title = "open");
      source.addEventListener("ping", (m) => {
        const li = document.createElement("li");
        li.textContent = JSON.parse(m.data).id;
        document.getElementById("events").append(li);
      });
    </script>"""
    page_app = Starlette(routes=[Route("/", lambda request: HTMLResponse(page_html))])
    async with (
        run_server(page_app) as page_url,
        service(settings_factory, CORS_ORIGINS=page_url) as http,
        chromium() as browser,
    ):
        sub_id = await subscription(http, dead_url)
        minted = await stream_token(http)
        page = await browser.new_page()
        await page.goto(f"{page_url}/?{httpx.QueryParams(stream=minted['stream_url'])}")
        await expect(page).to_have_title("open")
        # Open: the stream's start was fixed before its headers went out, so nothing is missed.
        sent = [await ping(http, sub_id) for _ in range(2)]
        await expect(page.locator("#events li")).to_have_text(sent)
