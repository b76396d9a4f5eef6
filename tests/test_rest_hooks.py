"""Zapier REST Hooks against reelhook: subscribe, receive, unsubscribe, 410 Gone, and samples.

Zapier's side is played by a recording sink on loopback; reelhook runs under uvicorn with its
simulator finishing Segmind jobs (their video is stored, so events carry ``mirror_url``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from service.core.models import EVENT_TYPES, JOB_EVENT_TYPES
from tests.conftest import SettingsFactory
from tests.support import assert_error, send_without_key, served_with_sink, wait_for_job

pytestmark = pytest.mark.anyio

SEGMIND = "segmind/kling-2.5-turbo"


async def submit(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/v1/jobs", json={"model": SEGMIND, "input": {"prompt": "p"}, "metadata": {"chat_id": 7}}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def shape(value: Any) -> Any:
    """The keys of every object inside ``value``, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


async def test_a_zap_subscribes_receives_and_unsubscribes(
    settings_factory: SettingsFactory,
) -> None:
    async with served_with_sink(settings_factory, SIM_DELAY="0.05") as (http, sink, sink_url):
        # performSubscribe: POST the target URL with the API key; 201 with an id.
        subscribed = await http.post(
            "/v1/subscriptions",
            json={"url": f"{sink_url}/zap/1", "event_types": ["job.succeeded"]},
        )
        assert subscribed.status_code == 201, subscribed.text
        hook = subscribed.json()
        assert hook["id"].startswith("sub_") and hook["secret"].startswith("whsec_")
        assert subscribed.headers["location"] == f"/v1/subscriptions/{hook['id']}"

        job_id = await submit(http)
        await sink.wait_for(lambda s: len(s.on("/zap/1")) == 1)
        [delivery] = sink.on("/zap/1")
        event = Webhook(hook["secret"]).verify(delivery.body, delivery.headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id

        # The sample a Zap shows before its first event has the real event's exact shape.
        sample = await http.get("/v1/events/sample", params={"type": "job.succeeded"})
        assert sample.status_code == 200, sample.text
        [preview] = sample.json()["data"]
        assert preview["id"].startswith("evt_")
        del preview["id"]  # delivered as the webhook-id header, not in the body
        # (Only input differs: it holds the sample model's parameters, not Segmind's.)
        assert set(preview["data"]["input"]) != set(event["data"]["input"])
        preview["data"]["input"] = event["data"]["input"] = {}
        assert shape(preview) == shape(event)
        assert event["data"]["outputs"][0]["mirror_url"].startswith("http")

        # performUnsubscribe: DELETE it; nothing more arrives.
        deleted = await http.delete(f"/v1/subscriptions/{hook['id']}")
        assert deleted.status_code == 204, deleted.text
        assert_error(await http.get(f"/v1/subscriptions/{hook['id']}"), 404, "not_found")
        watcher = await http.post(
            "/v1/subscriptions", json={"url": f"{sink_url}/watch", "event_types": ["job.succeeded"]}
        )
        await submit(http)
        await sink.wait_for(lambda s: len(s.on("/watch")) == 1)
        assert len(sink.on("/zap/1")) == 1
        assert watcher.status_code == 201


async def test_a_410_from_a_deleted_zap_removes_its_subscription(
    settings_factory: SettingsFactory,
) -> None:
    async with served_with_sink(settings_factory, SIM_DELAY="0.05") as (http, sink, sink_url):
        sink.script["/zap/gone"] = lambda count: (410, {})
        gone = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/zap/gone"})
        kept = await http.post("/v1/subscriptions", json={"url": f"{sink_url}/zap/kept"})
        assert gone.status_code == kept.status_code == 201
        await submit(http)
        await sink.wait_for(lambda s: len(s.on("/zap/kept")) == 2)  # submitted and succeeded
        listed = await http.get("/v1/subscriptions")
        assert [s["id"] for s in listed.json()["data"]] == [kept.json()["id"]]
        # Answered 410 once, never asked again: not for a retry, not for the next event.
        assert len(sink.on("/zap/gone")) == 1
        await submit(http)
        await sink.wait_for(lambda s: len(s.on("/zap/kept")) == 4)
        assert len(sink.on("/zap/gone")) == 1


async def test_samples_cover_every_event_type_in_the_real_shape(client: httpx.AsyncClient) -> None:
    everything = await client.get("/v1/events/sample")
    assert everything.status_code == 200, everything.text
    samples = everything.json()["data"]
    assert [s["type"] for s in samples] == list(EVENT_TYPES)
    assert everything.json()["next_cursor"] is None
    for sample in samples:
        assert set(sample) == {"id", "type", "timestamp", "data"}
        if sample["type"] in JOB_EVENT_TYPES:
            assert sample["data"]["status"] == sample["type"].removeprefix("job.")
            assert sample["data"]["object"] == "job"
    by_type = {s["type"]: s["data"] for s in samples}
    assert by_type["job.succeeded"]["outputs"][0]["mirror_url"].startswith("http://")
    assert by_type["job.failed"]["error"]["kind"] == "content_policy"
    assert by_type["ping"] == {"subscription_id": by_type["ping"]["subscription_id"]}
    assert by_type["subscription.disabled"]["status"] == "disabled"
    assert "secret" not in by_type["subscription.disabled"]

    two = await client.get("/v1/events/sample", params={"type": "job.failed,ping"})
    assert [s["type"] for s in two.json()["data"]] == ["job.failed", "ping"]


async def test_a_sample_job_has_the_shape_of_a_stored_job(api: httpx.AsyncClient) -> None:
    """The job inside a sample is rendered by the same code as GET /v1/jobs/{id}."""
    accepted = await api.post(
        "/v1/jobs",
        # With a resolution, as the sample has one: without, the cost also names the resolution
        # its estimate assumed (issue 15).
        json={
            "model": "trinetra/kling-v3",
            "input": {"prompt": "p", "resolution": "720p"},
            "metadata": {"chat_id": 1},
        },
    )
    # The provider is unreachable here: the job fails once its one retry is spent.
    job = await wait_for_job(api, accepted.json()["id"], {"failed"})
    sample = await api.get("/v1/events/sample", params={"type": "job.failed"})
    assert shape(sample.json()["data"][0]["data"]) == shape(job)


async def test_sample_errors(api: httpx.AsyncClient) -> None:
    assert_error(
        await api.get("/v1/events/sample", params={"type": "job.done"}),
        422,
        "validation_failed",
        "type",
    )
    assert_error(await send_without_key(api, "GET", "/v1/events/sample"), 401, "unauthorized")
