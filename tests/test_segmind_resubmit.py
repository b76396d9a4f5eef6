"""``REELHOOK_SEGMIND_RESUBMIT``: a held request lost to a restart may be sent once more
(docs/contract.md §6).

Without the setting the job ends ``interrupted`` (tests/test_segmind.py); with it, the request is
sent again once, and a job lost a second time ends ``interrupted`` after all.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from service.app.settings import Settings, SettingsError, load_settings
from tests.conftest import SettingsFactory
from tests.helpers.segmind import SAMPLE_MP4, job_events, sim_stats, submit
from tests.servers import loopback_socket, url_of
from tests.support import TERMINAL, served, stored, wait_for_job

pytestmark = pytest.mark.anyio


async def hold_and_stop(
    settings_factory: SettingsFactory, job_id: str | None = None, **overrides: str
) -> str:
    """Start reelhook, have a Segmind request held (submitting a job unless ``job_id`` is given:
    then the restart itself sends it), and stop with it still open. Returns the job id."""
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="30", **overrides)
    async with served(settings, sock) as http:
        if job_id is None:
            job_id = (await submit(http, duration=5))["id"]
        with anyio.fail_after(10):
            while True:
                if (await sim_stats(http))["submits"].get("segmind", 0) >= 1:
                    break
                await anyio.sleep(0.02)
        held = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert held["status"] == "submitted", held
    return job_id


def held_summaries(settings: Settings, job_id: str) -> list[dict[str, object]]:
    rows = stored(settings, "SELECT body FROM callbacks WHERE job_id = ? ORDER BY id", (job_id,))
    return [json.loads(body)["held_response"] for (body,) in rows]


@pytest.mark.slow
async def test_a_lost_request_is_sent_once_more_when_allowed(
    settings_factory: SettingsFactory,
) -> None:
    job_id = await hold_and_stop(settings_factory, SEGMIND_RESUBMIT="true")

    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1", SEGMIND_RESUBMIT="1")
    async with served(settings, sock) as http:
        job = await wait_for_job(http, job_id)
        stats = await sim_stats(http)
        events = await job_events(http, job_id)
        async with httpx.AsyncClient() as anonymous:
            video = await anonymous.get(job["outputs"][0]["url"])

    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert video.content == SAMPLE_MP4
    assert stats["submits"] == {"segmind": 1}  # this run's simulator: the one resubmission
    assert events == ["job.submitted", "job.succeeded"]
    (summary,) = held_summaries(settings, job_id)
    assert summary["resubmitted"] is True
    assert summary["status_code"] == 200


@pytest.mark.slow
async def test_a_request_lost_twice_is_not_sent_a_third_time(
    settings_factory: SettingsFactory,
) -> None:
    job_id = await hold_and_stop(settings_factory, SEGMIND_RESUBMIT="true")
    # The restart resends it, and that request is lost to the next stop as well.
    await hold_and_stop(settings_factory, job_id, SEGMIND_RESUBMIT="true")

    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1", SEGMIND_RESUBMIT="true")
    async with served(settings, sock) as http:
        job = await wait_for_job(http, job_id, TERMINAL)
        stats = await sim_stats(http)
        events = await job_events(http, job_id)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "interrupted"
    assert "already been sent again once" in job["error"]["message"]
    assert stats["submits"] == {}
    assert events == ["job.submitted", "job.failed"]


def test_the_setting_is_off_by_default_and_read_strictly() -> None:
    assert load_settings({}).segmind_resubmit is False
    assert load_settings({"REELHOOK_SEGMIND_RESUBMIT": "yes"}).segmind_resubmit is True
    with pytest.raises(SettingsError, match=r"^REELHOOK_SEGMIND_RESUBMIT: "):
        load_settings({"REELHOOK_SEGMIND_RESUBMIT": "once"})
