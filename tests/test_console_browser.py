"""The console in headless Chromium against a real reelhook on loopback, as a person would use it.

reelhook runs under uvicorn with its in-process provider simulator; subscribers are loopback sinks.
Outside CI a machine without Chromium skips these tests, saying why; under ``CI=true`` that is a
failure, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from service.app.settings import Settings
from tests.browser import chromium, missing
from tests.conftest import SettingsFactory
from tests.helpers.keys import new_key
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, served

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

if (reason := missing()) is not None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the console's browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}", allow_module_level=True)

from playwright.async_api import BrowserContext, Page, expect  # noqa: E402

V3 = "trinetra/kling-v3"


@dataclass
class Scene:
    api: httpx.AsyncClient  # the admin's API client
    url: str  # reelhook's base URL
    browser: BrowserContext
    settings: Settings


@pytest.fixture
async def scene(settings_factory: SettingsFactory) -> AsyncIterator[Scene]:
    sock = loopback_socket()
    # Mirroring on: the simulator serves its videos on loopback, so the player gets reelhook's copy.
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="1", MIRROR_OUTPUTS="true")
    async with served(settings, sock) as api, chromium() as browser:
        yield Scene(api, url_of(sock), browser, settings)


async def sign_in(page: Page, base_url: str, key: str) -> None:
    await page.goto(f"{base_url}/console/jobs")
    await expect(page).to_have_url(f"{base_url}/console/sign-in?next=%2Fconsole%2Fjobs")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()


async def submit(api: httpx.AsyncClient, key: str = ADMIN_KEY, prompt: str = "A red kite") -> str:
    response = await api.post(
        "/v1/jobs",
        json={"model": V3, "input": {"prompt": prompt, "duration": 5}},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_sign_in_see_a_job_finish_live_and_play_its_video(scene: Scene) -> None:
    page = await scene.browser.new_page()
    await sign_in(page, scene.url, ADMIN_KEY)
    live = await scene.browser.new_page()
    await live.goto(f"{scene.url}/console/live")
    await expect(live.locator("#stream-state")).to_have_text("Following live events.")

    job_id = await submit(scene.api)
    await page.goto(f"{scene.url}/console/jobs/{job_id}")
    status = page.locator("#job-status")
    # The simulator finishes the job a second later; the page follows the event stream.
    await expect(status).to_have_text("submitted")
    await expect(status).to_have_text("succeeded", timeout=15_000)
    await expect(page.get_by_role("heading", name="Outputs")).to_be_visible()
    await expect(page.locator(".timeline")).to_contain_text("job.succeeded")
    await expect(page.locator(".timeline")).to_contain_text("callback from trinetra")

    video = page.locator("video")
    await expect(video).to_have_count(1)
    # reelhook's own copy (mirror_url), served by /v1/files/ with Range support.
    assert "/v1/files/" in (await video.get_attribute("src") or "")
    played = await video.evaluate(
        """async (v) => {
            v.muted = true;
            await v.play();
            await new Promise((done) => {
                const check = () => (v.currentTime > 0.2 ? done() : setTimeout(check, 50));
                check();
            });
            return {error: v.error && v.error.code, readyState: v.readyState, time: v.currentTime};
        }"""
    )
    assert played["error"] is None, played
    assert played["readyState"] >= 2 and played["time"] > 0.2, played

    # The live view saw the same job go by.
    await expect(
        live.locator(f'#live-log li[data-event-type="job.succeeded"] >> text={job_id}')
    ).to_be_visible()
    await expect(live.locator("#live-log")).to_contain_text("job.submitted")


@dataclass
class Flaky:
    """A subscriber that answers 500 with a reason until it recovers, then 204."""

    down: bool = True
    requests: int = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            await request.body()
            self.requests += 1
            if self.down:
                return PlainTextResponse("database is down", status_code=500)
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def test_create_a_subscription_watch_it_fail_and_resend(scene: Scene) -> None:
    flaky = Flaky()
    async with run_server(flaky.app()) as sink_url:
        page = await scene.browser.new_page()
        await sign_in(page, scene.url, ADMIN_KEY)
        await page.get_by_role("link", name="Subscriptions").click()
        await page.get_by_label("Endpoint URL").fill(f"{sink_url}/hook")
        await page.get_by_label("Description").fill("chat bot")
        await page.get_by_role("button", name="Create subscription").click()
        await expect(page.locator("#new-secret")).to_contain_text("whsec_")

        await page.get_by_role("button", name="Send test ping").click()
        await expect(page.get_by_role("status")).to_contain_text("A ping event is on its way.")
        await page.get_by_role("link", name="Deliveries to this endpoint").click()
        await page.locator("a[href^='/console/deliveries/dlv_']").first.click()
        # The page reloads itself while the delivery is under way; every retry fails.
        status = page.locator("#delivery-status")
        await expect(status).to_have_text("failed", timeout=15_000)
        attempts = page.locator("#attempts tbody tr")
        await expect(attempts).to_have_count(3)
        await expect(attempts.first).to_contain_text("HTTP 500")
        await expect(attempts.first).to_contain_text("database is down")
        await expect(attempts.first).to_contain_text(" ms")

        await page.locator("a[href^='/console/subscriptions/sub_']").first.click()
        await expect(page.locator("#success-rate")).to_contain_text("0 %")
        await expect(page.locator("#last-failure")).to_contain_text("HTTP 500")
        await page.go_back()

        flaky.down = False
        await page.get_by_role("button", name="Resend now").click()
        await expect(status).to_have_text("succeeded", timeout=15_000)
        await expect(attempts).to_have_count(4)
        await expect(attempts.last).to_contain_text("HTTP 204")
        assert flaky.requests == 4


async def test_a_key_without_rights_sees_nothing_of_others(scene: Scene) -> None:
    sink = Sink()
    async with run_server(sink.app()) as sink_url:
        subscribed = await scene.api.post("/v1/subscriptions", json={"url": f"{sink_url}/hook"})
        sub_id = subscribed.json()["id"]
        admins_job = await submit(scene.api, prompt="The admin's own job")
        await sink.wait_for(lambda s: len(s.on("/hook")) >= 1)
        key = await new_key(scene.api, "jobs:write", "subscriptions:read")

        page = await scene.browser.new_page()
        await sign_in(page, scene.url, key)
        await expect(page.locator("main")).to_contain_text("No jobs.")
        await page.goto(f"{scene.url}/console/jobs/{admins_job}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("404: not found")
        await page.goto(f"{scene.url}/console/subscriptions")
        await expect(page.locator("main")).to_contain_text("No subscriptions yet.")
        await expect(page.get_by_role("button", name="Create subscription")).to_have_count(0)
        await page.goto(f"{scene.url}/console/subscriptions/{sub_id}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("404: not found")
        await page.goto(f"{scene.url}/console/deliveries")
        await expect(page.locator("main")).to_contain_text("No deliveries.")

        # Live: the admin's next job happens first, then this key's own; only its own shows.
        await page.goto(f"{scene.url}/console/live")
        await expect(page.locator("#stream-state")).to_have_text("Following live events.")
        others = await submit(scene.api, prompt="Another of the admin's jobs")
        own = await submit(scene.api, key, prompt="This key's job")
        log = page.locator("#live-log")
        await expect(log).to_contain_text(own)
        await expect(log.locator("li")).to_have_count(1)
        assert others not in await log.inner_text()
