"""``make screenshots``: PNGs of the console's main pages for the README, taken in the same headless
Chromium as the browser tests, against a real reelhook on loopback with the simulator.

Run as ``python -m tests.screenshots OUTPUT_DIR``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
import httpx
from playwright.async_api import Page, expect

from service.app.settings import load_settings
from tests.browser import chromium, missing
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, served

JOBS: list[tuple[str, dict[str, object]]] = [
    ("trinetra/kling-v3", {"prompt": "A drone shot over misty mountains at dawn", "duration": 5}),
    ("apiframe/kling-2.5-turbo-pro", {"prompt": "A paper boat drifting down a rainy street"}),
    ("segmind/kling-2.5-turbo", {"prompt": "A 1920s street carnival, film grain", "duration": 5}),
]


async def take(output: Path) -> None:
    sink = Sink(script={"/flaky": lambda count: (500, {})})
    with tempfile.TemporaryDirectory(prefix="reelhook-screenshots-") as data:
        sock = loopback_socket()
        settings = load_settings(
            {
                "REELHOOK_DATA_DIR": data,
                "REELHOOK_PUBLIC_URL": url_of(sock),
                "REELHOOK_ADMIN_KEY": ADMIN_KEY,
                "REELHOOK_SIM_DELAY": "1",
                "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
                "REELHOOK_RETRY_SCHEDULE": "0,0.2,0.2",
            }
        )
        async with (
            run_server(sink.app()) as sink_url,
            served(settings, sock) as api,
            chromium() as browser,
        ):
            base = url_of(sock)
            await api.post(
                "/v1/subscriptions",
                json={
                    "url": f"{sink_url}/n8n",
                    "description": "n8n workflow (Header Auth)",
                    "headers": {"X-N8N-Auth": "example"},
                },
            )
            flaky = await api.post(
                "/v1/subscriptions",
                json={
                    "url": f"{sink_url}/flaky",
                    "event_types": ["job.succeeded"],
                    "description": "chat bot (down for maintenance)",
                },
            )
            flaky_id = flaky.json()["id"]

            page = await browser.new_page()
            await page.goto(f"{base}/console/sign-in")
            await page.screenshot(path=output / "sign-in.png")
            await page.get_by_label("API key").fill(ADMIN_KEY)
            await page.get_by_role("button", name="Sign in").click()

            live = await browser.new_page()
            await live.goto(f"{base}/console/live")
            await expect(live.locator("#stream-state")).to_have_text("Following live events.")
            job_ids = [await _submit(api, model, job_input) for model, job_input in JOBS]
            # Each job's submitted and succeeded events, and apiframe's running one.
            await sink.wait_for(lambda s: len(s.on("/n8n")) >= 7, within=30)
            await expect(live.locator("#live-log li")).to_have_count(7, timeout=15_000)
            await live.screenshot(path=output / "live.png")

            await page.goto(f"{base}/console/jobs")
            await page.screenshot(path=output / "jobs.png")
            await page.goto(f"{base}/console/jobs/{job_ids[0]}")
            await _show_frame(page)
            await page.screenshot(path=output / "job.png", full_page=True)

            await page.goto(f"{base}/console/jobs/new?model=trinetra/kling-v3")
            await page.screenshot(path=output / "new-job.png", full_page=True)
            await page.goto(f"{base}/console/keys")
            await page.screenshot(path=output / "keys.png")
            await page.goto(f"{base}/console/subscriptions")
            await page.screenshot(path=output / "subscriptions.png")
            await page.goto(f"{base}/console/subscriptions/{flaky_id}")
            await page.screenshot(path=output / "subscription.png", full_page=True)
            await page.goto(f"{base}/console/deliveries")
            await page.screenshot(path=output / "deliveries.png")
            failed = (await api.get("/v1/deliveries", params={"subscription": flaky_id})).json()[
                "data"
            ][0]["id"]
            await page.goto(f"{base}/console/deliveries/{failed}")
            await page.screenshot(path=output / "delivery.png", full_page=True)

            # The same pages at a phone's width.
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.goto(f"{base}/console/jobs/{job_ids[0]}")
            await _show_frame(page)
            await page.screenshot(path=output / "phone-job.png")


async def _submit(api: httpx.AsyncClient, model: str, job_input: dict[str, object]) -> str:
    response = await api.post("/v1/jobs", json={"model": model, "input": job_input})
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


async def _show_frame(page: Page) -> None:
    """Move the player off its first (black) frame so the picture shows something."""
    await page.locator("video").first.evaluate(
        """(v) => new Promise((done) => {
            const seek = () => {
                v.currentTime = 1;
                v.addEventListener("seeked", done, {once: true});
            };
            v.readyState >= 1 ? seek() : v.addEventListener("loadedmetadata", seek, {once: true});
        })"""
    )


def main() -> int:
    if (reason := missing()) is not None:
        print(f"make screenshots: {reason}", file=sys.stderr)
        return 1
    output = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    output.mkdir(parents=True, exist_ok=True)
    anyio.run(take, output)
    print(f"screenshots written to {output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
