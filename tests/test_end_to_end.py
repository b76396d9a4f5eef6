"""The whole loop over real loopback HTTP: service, provider simulator and subscriber as servers."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from service.sim import Scenario, Simulator, create_sim_app
from tests.conftest import SettingsFactory
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import served

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

JOBS: dict[str, dict[str, Any]] = {
    "trinetra/kling-v2.5": {"prompt": "A cat chasing a laser dot across a living room"},
    "trinetra/kling-v3": {"prompt": "A drone shot over a misty mountain range", "duration": 5},
    "trinetra/kling-v3-omni": {"prompt": "A timelapse of clouds over a city", "duration": 10},
    "apiframe/kling-2.5-turbo-pro": {"prompt": "A flower blooming", "aspect_ratio": "16:9"},
    "segmind/kling-2.5-turbo": {"prompt": "A 1920s street carnival", "duration": 5},
}


async def submit_all_and_check(http: httpx.AsyncClient, sink: Sink, sink_url: str) -> None:
    created = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/hook"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]

    job_ids = {}
    for model, job_input in JOBS.items():
        response = await http.post(
            "/v1/jobs", json={"model": model, "input": job_input, "metadata": {"chat_id": 42}}
        )
        assert response.status_code == 202, response.text
        assert response.json()["model"] == model
        job_ids[response.json()["id"]] = model

    # Every job announces submitted and succeeded; apiframe's progress webhook adds running.
    await sink.wait_for(lambda s: len(s.on("/hook")) >= 2 * len(JOBS) + 1, within=30)

    for job_id in job_ids:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded", job
        assert job["outputs"] and job["outputs"][0]["url"].startswith("http"), job
        # Every video is also kept by reelhook: mirrored, or (Segmind) stored from the answer.
        assert "/v1/files/" in job["outputs"][0]["mirror_url"], job
        assert job["metadata"] == {"chat_id": 42}

    verifier = Webhook(secret)
    seen: Counter[tuple[str, str]] = Counter()
    for delivery in sink.on("/hook"):
        event = verifier.verify(delivery.body, delivery.headers)
        assert delivery.headers["webhook-id"].startswith("evt_")
        assert event["data"]["status"] == event["type"].removeprefix("job.")
        seen[(event["data"]["id"], event["type"])] += 1
    expected = {(job_id, kind) for job_id in job_ids for kind in ("job.submitted", "job.succeeded")}
    expected |= {(j, "job.running") for j, model in job_ids.items() if model.startswith("apiframe")}
    assert set(seen) == expected
    assert all(count == 1 for count in seen.values()), seen

    log = (await http.get("/v1/events", params={"limit": 100})).json()
    assert Counter(e["type"] for e in log["data"]) == {
        "job.submitted": len(JOBS),
        "job.succeeded": len(JOBS),
        "job.running": 1,  # apiframe's progress webhook
    }


@pytest.mark.slow
async def test_every_model_against_a_separate_simulator(settings_factory: SettingsFactory) -> None:
    simulator = Simulator(Scenario(delay=1.0))
    sink = Sink()
    service_sock = loopback_socket()
    async with (
        run_server(create_sim_app(simulator)) as sim_url,
        run_server(sink.app()) as sink_url,
    ):
        settings = settings_factory(
            PUBLIC_URL=url_of(service_sock),
            SIM_DELAY="1",
            MIRROR_OUTPUTS="true",
            **{
                f"{name.upper()}_{suffix}": value
                for name in ("trinetra", "apiframe", "segmind")
                for suffix, value in (("API_KEY", f"key-{name}"), ("BASE_URL", f"{sim_url}/{name}"))
            },
        )
        assert settings.simulated_providers == []
        async with served(settings, service_sock) as http:
            await submit_all_and_check(http, sink, sink_url)
    assert simulator.stats()["status_requests_total"] == 0
    assert simulator.stats()["submits"] == {"trinetra": 3, "apiframe": 1, "segmind": 1}


@pytest.mark.slow
async def test_embedded_default_serves_the_whole_loop(settings_factory: SettingsFactory) -> None:
    """What ``make run`` starts: no provider keys, the simulator mounted in-process."""
    sink = Sink()
    service_sock = loopback_socket()
    async with run_server(sink.app()) as sink_url:
        settings = settings_factory(
            PUBLIC_URL=url_of(service_sock), SIM_DELAY="1", MIRROR_OUTPUTS="true"
        )
        assert sorted(settings.simulated_providers) == ["apiframe", "segmind", "trinetra"]
        async with served(settings, service_sock) as http:
            await submit_all_and_check(http, sink, sink_url)
            stats = (await http.get("/sim/_sim/stats")).json()
    assert stats["status_requests_total"] == 0
