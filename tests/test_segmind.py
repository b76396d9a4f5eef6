"""Segmind's held synchronous request (docs/contract.md §6) over real loopback HTTP, embedded
simulator."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import SettingsFactory
from tests.helpers.segmind import SAMPLE_MP4, finished_segmind_job, job_events, sim_stats, submit
from tests.servers import loopback_socket, url_of
from tests.support import TERMINAL, served, wait_for_job

pytestmark = pytest.mark.anyio


async def test_a_segmind_job_succeeds_with_a_mirrored_mp4(
    settings_factory: SettingsFactory,
) -> None:
    sock = loopback_socket()
    public_url = url_of(sock)
    settings = settings_factory(PUBLIC_URL=public_url, SIM_DELAY="0.3")
    assert "segmind" in settings.simulated_providers

    async with served(settings, sock) as http:
        created = await submit(http, duration=5)
        assert created["status"] in ("pending", "submitted")
        assert created["cost"]["estimated"] == pytest.approx(0.44)
        assert created["cost"]["unit"] == "usd"

        job = await wait_for_job(http, created["id"])
        assert job["status"] == "succeeded", job
        assert job["error"] is None
        assert job["cost"] == {"estimated": 0.44, "charged": 0.44, "unit": "usd"}
        assert job["submitted_at"] is not None and job["completed_at"] is not None

        (output,) = job["outputs"]
        assert output["type"] == "video"
        assert output["url"].startswith(f"{public_url}/v1/files/"), output
        assert output["mirror_url"] == output["url"]

        # The link is the credential: it works without an API key.
        async with httpx.AsyncClient() as anonymous:
            video = await anonymous.get(output["url"])
        assert video.status_code == 200, video.text
        assert video.headers["content-type"] == "video/mp4"
        assert video.content == SAMPLE_MP4
        assert int(video.headers["content-length"]) == len(SAMPLE_MP4)

        assert await job_events(http, job["id"]) == ["job.submitted", "job.succeeded"]
        stats = await sim_stats(http)
        assert stats["submits"] == {"segmind": 1}
        assert stats["status_requests_total"] == 0, "Segmind must never be polled"


async def test_a_ten_second_segmind_clip_is_charged_0_88(
    settings_factory: SettingsFactory,
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1")
    async with served(settings, sock) as http:
        job, _ = await finished_segmind_job(http)
    assert job["input"]["duration"] == 10
    assert job["cost"] == {"estimated": 0.88, "charged": 0.88, "unit": "usd"}


@pytest.mark.parametrize(
    ("scenario", "kind"),
    [
        ({"outcome": "fail"}, "content_policy"),
        # Segmind documents 406 as "Insufficient Credits" (docs/seeds/segmind-kling-2.5-turbo.txt,
        # Common Error Codes).
        ({"submit_status": 406}, "insufficient_credits"),
        ({"submit_status": 401}, "provider_error"),
    ],
)
async def test_a_segmind_error_answer_fails_the_job_with_its_kind(
    settings_factory: SettingsFactory, scenario: dict[str, Any], kind: str
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1")
    async with served(settings, sock) as http:
        changed = await http.put("/sim/_sim/scenario", json=scenario)
        assert changed.status_code == 200, changed.text
        created = await submit(http, duration=5)
        job = await wait_for_job(http, created["id"])
        events = await job_events(http, job["id"])

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == kind, job["error"]
    assert job["outputs"] == []
    assert events == ["job.submitted", "job.failed"]


@pytest.mark.slow
async def test_a_held_request_lost_to_a_restart_ends_interrupted_and_is_not_resent(
    settings_factory: SettingsFactory,
) -> None:
    first_sock = loopback_socket()
    first = settings_factory(PUBLIC_URL=url_of(first_sock), SIM_DELAY="30")
    async with served(first, first_sock) as http:
        created = await submit(http, duration=5)
        job_id = created["id"]
        submitted = await wait_for_job(http, job_id, ("submitted", *TERMINAL))
        assert submitted["status"] == "submitted", submitted
        with anyio.fail_after(10):
            while True:
                if (await sim_stats(http))["submits"].get("segmind", 0) >= 1:
                    break
                await anyio.sleep(0.02)
    # The server has stopped with the held request still open.

    second_sock = loopback_socket()
    second = settings_factory(PUBLIC_URL=url_of(second_sock), SIM_DELAY="0.1")
    assert second.data_dir == first.data_dir
    async with served(second, second_sock) as http:
        job = await wait_for_job(http, job_id)
        assert job["status"] == "failed", job
        assert job["error"]["kind"] == "interrupted", job["error"]
        assert "REELHOOK_SEGMIND_RESUBMIT" in job["error"]["message"]
        assert job["outputs"] == []
        assert job["completed_at"] is not None

        failed = await http.get("/v1/events", params={"type": "job.failed"})
        assert [e["data"]["id"] for e in failed.json()["data"]] == [job_id]
        assert failed.json()["data"][0]["data"]["error"]["kind"] == "interrupted"
        assert await job_events(http, job_id) == ["job.submitted", "job.failed"]

        # A new job still works after the restart, and the lost one was never sent again.
        fresh, _ = await finished_segmind_job(http, duration=5)
        assert fresh["id"] != job_id
        assert (await sim_stats(http))["submits"] == {"segmind": 1}
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "failed"
