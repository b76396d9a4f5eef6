"""Every console page reached by a POST is safe to reload, in headless Chromium: reloading repeats
the GET the POST redirected to, never the action. Secrets are shown once through a one-time handle.
And a delivery waiting hours for its next attempt does not reload itself.

Outside CI a machine without Chromium skips these tests, saying why; under ``CI=true`` that is a
failure, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from tests.browser import chromium, missing
from tests.conftest import SettingsFactory
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, served

pytestmark = pytest.mark.anyio

if (reason := missing()) is not None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the console's browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}", allow_module_level=True)

from playwright.async_api import BrowserContext, Page, expect  # noqa: E402


@pytest.fixture
async def world(
    settings_factory: SettingsFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, str, BrowserContext]]:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.2")
    async with served(settings, sock) as api, chromium() as browser:
        yield api, url_of(sock), browser


async def sign_in(page: Page, base_url: str) -> None:
    await page.goto(f"{base_url}/console/sign-in")
    await page.get_by_label("API key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()


async def reload_is_a_get(page: Page) -> None:
    """Reload, and check the browser repeated a GET (a re-POST would need a resubmission)."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.method))
    await page.reload()
    await page.wait_for_load_state()
    assert requests and requests[0] == "GET", requests


async def events_of(api: httpx.AsyncClient, event_type: str, about: str) -> list[dict[str, Any]]:
    page = await api.get("/v1/events", params={"type": event_type, "limit": "1000"})
    return [
        e
        for e in page.json()["data"]
        if about in (e["data"].get("id"), e["data"].get("subscription_id"))
    ]


async def test_reloading_any_page_a_post_reached_does_nothing_twice(
    world: tuple[httpx.AsyncClient, str, BrowserContext],
) -> None:
    api, base_url, browser = world
    sink = Sink()
    async with run_server(sink.app()) as sink_url:
        page = await browser.new_page()
        await sign_in(page, base_url)
        await reload_is_a_get(page)  # signed in, still
        await expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()

        # Create: one subscription, its secret shown once.
        await page.get_by_role("link", name="Subscriptions").click()
        await page.get_by_label("Endpoint URL").fill(f"{sink_url}/hook")
        await page.get_by_role("button", name="Create subscription").click()
        await expect(page.locator("#new-secret")).to_contain_text("whsec_")
        first_secret = (await page.locator("#new-secret").text_content() or "").strip()
        assert "reveal=" in page.url and first_secret not in page.url
        await reload_is_a_get(page)
        await expect(page.locator("#secret-gone")).to_be_visible()
        await expect(page.locator("#new-secret")).to_have_count(0)
        subs = (await api.get("/v1/subscriptions")).json()["data"]
        assert len(subs) == 1
        sub_id = subs[0]["id"]

        # Rotate: one rotation, the new secret shown once.
        page.on("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Rotate secret").click()
        await expect(page.locator("#new-secret")).to_contain_text("whsec_")
        rotated = (await api.get(f"/v1/subscriptions/{sub_id}")).json()
        assert rotated["previous_secret_expires_at"] is not None
        await reload_is_a_get(page)
        await expect(page.locator("#secret-gone")).to_be_visible()
        # A second rotation would have moved the grace period's end.
        again = (await api.get(f"/v1/subscriptions/{sub_id}")).json()
        assert again["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
        assert again["updated_at"] == rotated["updated_at"]

        # Ping: one event.
        await page.get_by_role("button", name="Send test ping").click()
        await expect(page.locator("p.notice")).to_contain_text("A ping event is on its way.")
        await reload_is_a_get(page)
        assert len(await events_of(api, "ping", sub_id)) == 1

        # Save, disable, enable: each a redirect; a reload changes nothing.
        await page.locator("#s-description").fill("saved once")
        await page.get_by_role("button", name="Save changes").click()
        await expect(page.locator("p.notice")).to_contain_text("Saved.")
        stamp = (await api.get(f"/v1/subscriptions/{sub_id}")).json()["updated_at"]
        await reload_is_a_get(page)
        assert (await api.get(f"/v1/subscriptions/{sub_id}")).json()["updated_at"] == stamp
        await page.get_by_role("button", name="Disable").click()
        await expect(page.locator("p.notice")).to_contain_text("is disabled")
        await reload_is_a_get(page)
        await page.get_by_role("button", name="Enable").click()
        await expect(page.locator("p.notice")).to_contain_text("active again")
        await reload_is_a_get(page)
        assert (await api.get(f"/v1/subscriptions/{sub_id}")).json()["status"] == "active"

        # Resend: one more attempt.
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
        deliveries = (await api.get("/v1/deliveries", params={"subscription": sub_id})).json()
        delivery_id = deliveries["data"][0]["id"]
        await page.goto(f"{base_url}/console/deliveries/{delivery_id}")
        await page.get_by_role("button", name="Resend now").click()
        await expect(page.locator("p.notice")).to_contain_text("queued to be sent again")
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
        await reload_is_a_get(page)
        await anyio.sleep(0.5)  # a second resend, had there been one, would have gone out
        assert len(sink.on("/hook")) == 2

        # Recover: lands on the filtered delivery log.
        await page.goto(f"{base_url}/console/subscriptions/{sub_id}")
        await page.get_by_role("button", name="Recover failed deliveries").click()
        await expect(page).to_have_url(
            f"{base_url}/console/deliveries?subscription={sub_id}&recovered=0"
        )
        await reload_is_a_get(page)

        # Delete, then its delivery offers no resend.
        await page.goto(f"{base_url}/console/subscriptions/{sub_id}")
        await page.get_by_role("button", name="Delete").click()
        await expect(page.locator("p.notice")).to_contain_text("deleted")
        await reload_is_a_get(page)
        await page.goto(f"{base_url}/console/deliveries/{delivery_id}")
        await expect(page.locator("#subscription-gone")).to_be_visible()
        await expect(page.get_by_role("button", name="Resend now")).to_have_count(0)

        # Sign out.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.locator("p.notice")).to_contain_text("signed out")
        await reload_is_a_get(page)
        await expect(page.get_by_label("API key")).to_be_visible()


async def test_a_delivery_waiting_hours_for_its_next_attempt_does_not_reload(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), RETRY_SCHEDULE="0,3600")
    async with served(settings, sock) as api, chromium() as browser:
        base_url = url_of(sock)
        sub = await api.post("/v1/subscriptions", json={"url": f"{dead_url}/hook"})
        sub_id = sub.json()["id"]
        assert (await api.post(f"/v1/subscriptions/{sub_id}/test")).status_code == 202
        with anyio.fail_after(10):
            while True:
                listed = (await api.get("/v1/deliveries", params={"subscription": sub_id})).json()
                delivery = listed["data"][0]
                if delivery["attempt_count"] == 1 and delivery["status"] == "pending":
                    break
                await anyio.sleep(0.05)
        page = await browser.new_page()
        await sign_in(page, base_url)
        await page.goto(f"{base_url}/console/deliveries/{delivery['id']}")
        await expect(page.locator("#refresh-note")).to_contain_text("Waiting for the next attempt")
        # Each attempt's request headers, the signature masked.
        sent = page.locator("details.request-headers").first
        await expect(sent).to_contain_text(f"webhook-id: {delivery['event_id']}")
        await expect(sent).to_contain_text("webhook-signature: v1,********")
        assert "whsec_" not in await page.content()
        assert await page.locator("meta[http-equiv=refresh]").count() == 0
        # A marker in the page survives as long as the page is not reloaded.
        await page.evaluate("window.reelhookMarker = 1")
        await anyio.sleep(2.5)
        assert await page.evaluate("window.reelhookMarker") == 1


async def test_a_job_submitted_from_the_form_finishes_plays_and_is_not_resubmitted_by_a_reload(
    settings_factory: SettingsFactory,
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.5", MIRROR_OUTPUTS="true")
    async with served(settings, sock) as api, chromium() as browser:
        base_url = url_of(sock)
        page = await browser.new_page()
        await sign_in(page, base_url)
        await page.get_by_role("link", name="New job").click()
        await page.locator("#j-model-pick").select_option("trinetra/kling-v3")
        await page.get_by_role("button", name="Show its parameters").click()
        # The form is the model's parameters from GET /v1/models.
        await expect(page.locator("#j-duration")).to_be_visible()
        await expect(page.locator("#j-aspect_ratio option")).to_have_count(4)  # default + 3
        await page.locator("#j-prompt").fill("A paper boat on a rainy street")
        # The browser itself checks min/max; without that, reelhook's own check answers.
        await page.locator("#j-duration").evaluate("(e) => e.removeAttribute('max')")
        await page.locator("#j-duration").fill("99")
        await page.get_by_role("button", name="Submit job").click()
        await expect(page.get_by_role("alert")).to_contain_text("input.duration")
        await expect(page.locator("#j-prompt")).to_have_value("A paper boat on a rainy street")
        assert (await api.get("/v1/jobs")).json()["data"] == []  # nothing stored half-way
        await page.locator("#j-duration").fill("5")
        await page.locator("#j-aspect_ratio").select_option("9:16")
        await page.locator("#j-metadata").fill('{"from": "console"}')
        await page.get_by_role("button", name="Submit job").click()
        await expect(page.locator("p.notice")).to_contain_text("Submitted")
        await expect(page.locator("#job-status")).to_have_text("succeeded", timeout=15_000)
        # The live page reloads itself at a final state; a reload of ours during that one is
        # aborted by the browser. Its end is the page drawn final: the video, no live note.
        await expect(page.locator("video")).to_be_attached(timeout=15_000)
        await expect(page.locator("[data-live-note]")).to_have_count(0)
        await page.wait_for_load_state()
        await reload_is_a_get(page)
        [job] = (await api.get("/v1/jobs")).json()["data"]
        assert job["input"]["prompt"] == "A paper boat on a rainy street"
        assert job["input"]["duration"] == 5 and job["input"]["aspect_ratio"] == "9:16"
        assert job["metadata"] == {"from": "console"}
        video = page.locator("video")
        played = await video.evaluate(
            """async (v) => {
                v.muted = true;
                await v.play();
                await new Promise((done) => {
                    const check = () => (v.currentTime > 0.2 ? done() : setTimeout(check, 50));
                    check();
                });
                return {error: v.error && v.error.code, time: v.currentTime};
            }"""
        )
        assert played["error"] is None and played["time"] > 0.2, played
        # The list shows its prompt and a thumbnail of its video.
        await page.goto(f"{base_url}/console/jobs")
        await expect(page.locator("td.prompt").first).to_have_text("A paper boat on a rainy street")
        await expect(page.locator("video.thumb")).to_have_count(1)
        await expect(page.locator("#signed-in-as")).to_contain_text("admin")


async def test_admins_manage_api_keys_and_a_reload_makes_no_second_key(
    world: tuple[httpx.AsyncClient, str, BrowserContext],
) -> None:
    api, base_url, browser = world
    page = await browser.new_page()
    await sign_in(page, base_url)
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Name").fill("ci bot")
    await page.locator("input[name=scopes][value='jobs:read']").check()
    await page.get_by_role("button", name="Create key").click()
    await expect(page.locator("#new-key")).to_contain_text("rh_")
    secret = (await page.locator("#new-key").text_content() or "").strip()
    assert secret not in page.url
    await reload_is_a_get(page)
    await expect(page.locator("#key-gone")).to_be_visible()
    named = [k for k in (await api.get("/v1/keys")).json()["data"] if k["name"] == "ci bot"]
    assert len(named) == 1 and named[0]["scopes"] == ["jobs:read"]
    key_id = named[0]["id"]
    # The new key works, and is read-only: no API keys page for it.
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": secret}) as as_bot:
        assert (await as_bot.get("/v1/jobs")).status_code == 200
    page.on("dialog", lambda dialog: dialog.accept())
    await page.locator(f"tr[data-key='{key_id}'] button", has_text="Revoke").click()
    await expect(page.locator("p.notice")).to_contain_text("revoked")
    await reload_is_a_get(page)
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": secret}) as as_bot:
        assert (await as_bot.get("/v1/jobs")).status_code == 401
    other = await browser.new_page()
    created = await api.post("/v1/keys", json={"name": "reader", "scopes": ["read"]})
    await other.goto(f"{base_url}/console/sign-in")
    await other.get_by_label("API key").fill(created.json()["key"])
    await other.get_by_role("button", name="Sign in").click()
    await expect(other.get_by_role("link", name="API keys")).to_have_count(0)
    response = await other.goto(f"{base_url}/console/keys")
    assert response is not None and response.status == 403


async def test_filter_deliveries_and_retry_the_filtered_set_once(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), RETRY_SCHEDULE="0")
    async with served(settings, sock) as api, chromium() as browser:
        base_url = url_of(sock)
        sub_id = (await api.post("/v1/subscriptions", json={"url": f"{dead_url}/h"})).json()["id"]
        for _ in range(2):
            assert (await api.post(f"/v1/subscriptions/{sub_id}/test")).status_code == 202
        with anyio.fail_after(10):
            while True:
                failed = await api.get("/v1/deliveries", params={"status": "failed"})
                if len(failed.json()["data"]) == 2:
                    break
                await anyio.sleep(0.05)
        page = await browser.new_page()
        await sign_in(page, base_url)
        await page.goto(f"{base_url}/console/deliveries")
        await page.locator("#f-event-type").select_option("ping")
        await page.locator("#f-dstatus").select_option("failed")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("[data-delivery-status]")).to_have_count(2)
        await page.locator("#f-event-type").select_option("job.succeeded")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("[data-delivery-status]")).to_have_count(0)
        await page.locator("#f-event-type").select_option("ping")
        await page.get_by_role("button", name="Filter").click()
        page.on("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Retry all matching").click()
        await expect(page.locator("#bulk-result")).to_contain_text("2 deliveries are queued")
        assert "event_type=ping" in page.url and "status=failed" in page.url
        with anyio.fail_after(10):
            while True:
                listed = (await api.get("/v1/deliveries")).json()["data"]
                if all(d["attempt_count"] == 2 and d["status"] == "failed" for d in listed):
                    break
                await anyio.sleep(0.05)
        await reload_is_a_get(page)
        await anyio.sleep(0.5)  # a second bulk retry, had there been one, would have started
        listed = (await api.get("/v1/deliveries")).json()["data"]
        assert [d["attempt_count"] for d in listed] == [2, 2]
