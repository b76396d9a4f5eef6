"""Deadlines (docs/contract.md §3): a job with no terminal callback by its deadline becomes
``expired``.

reelhook runs under uvicorn with its in-process simulator, whose callbacks are pushed an hour out
(SIM_DELAY): they are lost as far as each test can tell. Time moves by an injectable clock.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from service.app.settings import SettingsError, load_settings
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    TOKENS,
    stored_callbacks,
    stored_replays,
    trinetra_done,
    trinetra_failed,
)
from tests.helpers.delivery import subscribe
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import FakeClock, served, wait_for_job

pytestmark = pytest.mark.anyio

V3 = "trinetra/kling-v3"
V25 = "trinetra/kling-v2.5"


async def create(http: httpx.AsyncClient, model: str = V3) -> dict[str, Any]:
    response = await http.post(
        "/v1/jobs", json={"model": model, "input": {"prompt": "A lighthouse in a storm"}}
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "submitted", job
    return job


async def job_events(http: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await http.get("/v1/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [e for e in response.json()["data"] if e["data"].get("id") == job_id]


async def test_a_lost_callback_expires_the_job_at_its_deadline(
    settings_factory: SettingsFactory,
) -> None:
    clock = FakeClock()
    sink = Sink()
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="3600")
    assert settings.job_deadline == 3600
    async with run_server(sink.app()) as sink_url, served(settings, sock, clock=clock) as http:
        sub = await subscribe(http, f"{sink_url}/hook", event_types=["job.expired"])
        lost = await create(http)
        shifted_at = time.time()
        clock.offset = 3600.5
        # Storing a job wakes the timer, whose own deadline has passed by the clock by now.
        later = await create(http)
        expired = await wait_for_job(http, lost["id"], ("expired",))
        await sink.wait_for(lambda s: len(s.on("/hook")) >= 1)
        still_waiting = (await http.get(f"/v1/jobs/{later['id']}")).json()
        lost_events = await job_events(http, lost["id"])
        later_events = await job_events(http, later["id"])

    assert expired["status"] == "expired"
    assert expired["error"]["kind"] == "timeout", expired["error"]
    assert "3600 seconds" in expired["error"]["message"]
    assert expired["outputs"] == []
    assert expired["completed_at"] is not None
    # The job whose deadline is still an hour away was left alone by the same pass.
    assert still_waiting["status"] == "submitted"
    assert [e["type"] for e in lost_events] == ["job.submitted", "job.expired"]
    assert lost_events[1]["data"] == expired
    assert [e["type"] for e in later_events] == ["job.submitted"]

    (delivery,) = sink.on("/hook")
    # Signed at the shifted time, so Webhook.verify would call it an hour early; check the
    # signature itself, as a Standard Webhooks library computes it.
    signed_at = datetime.fromtimestamp(int(delivery.headers["webhook-timestamp"]), UTC)
    expected = Webhook(sub["secret"]).sign(
        delivery.headers["webhook-id"], signed_at, delivery.body.decode()
    )
    assert expected in delivery.headers["webhook-signature"].split()
    assert int(delivery.headers["webhook-timestamp"]) >= int(shifted_at + 3600)
    event = delivery.json()
    assert event["type"] == "job.expired"
    assert event["data"]["id"] == lost["id"]
    assert event["data"]["status"] == "expired"


async def test_a_callback_after_expiry_is_kept_for_audit_and_revives_nothing(
    settings_factory: SettingsFactory,
) -> None:
    """The choice documented in the README: ``expired`` is terminal like any other state, so the
    late result is stored (raw, with outcome ``late``) but the job and its events stay as they
    were; a subscriber never hears of a job succeeding after it was told it expired."""
    clock = FakeClock()
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="3600")
    async with served(settings, sock, clock=clock) as http:
        job = await create(http)
        clock.offset = 3601
        await create(http)
        expired = await wait_for_job(http, job["id"], ("expired",))

        token = TOKENS.callback(job["id"], "trinetra")
        late_result = trinetra_done(job["provider_job_id"])
        responses = [
            await http.post(f"/v1/callbacks/trinetra/{token}", content=body)
            for body in (late_result, late_result, trinetra_failed(job["provider_job_id"]))
        ]
        after = (await http.get(f"/v1/jobs/{job['id']}")).json()
        events = Counter(e["type"] for e in await job_events(http, job["id"]))

    # Issue 15: the first late success is surfaced on the job (a notice with its video), once.
    outcomes = ["late_result", "late", "late"]
    for response, outcome in zip(responses, outcomes, strict=True):
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "job_id": job["id"], "outcome": outcome}
    notices = after.pop("notices")
    assert after == {k: v for k, v in expired.items() if k != "notices"}
    assert [(n["kind"], n["outputs"]) for n in notices] == [
        ("late_result", [{"url": "https://cdn.trinetra.ai/out/a1.mp4", "type": "video"}])
    ]
    assert events == {"job.submitted": 1, "job.expired": 1}
    # The second late success repeats the first byte for byte: counted on its row, not copied.
    assert stored_callbacks(settings) == [
        (job["id"], "trinetra", "late_result", late_result),
        (job["id"], "trinetra", "late", trinetra_failed(job["provider_job_id"])),
    ]
    assert stored_replays(settings) == [(job["id"], "late_result", 1), (job["id"], "late", 0)]


@pytest.mark.slow
async def test_a_model_with_a_shorter_deadline_wakes_the_timer_early(
    settings_factory: SettingsFactory,
) -> None:
    """With the timer asleep until an hour-away deadline, a job whose model has a one-second
    deadline is expired one second later (on the real clock)."""
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="3600", JOB_DEADLINES=f"{V25}=1")
    async with served(settings, sock) as http:
        slow = await create(http, V3)
        fast = await create(http, V25)
        expired = await wait_for_job(http, fast["id"], ("expired",), within=10)
        slow_now = (await http.get(f"/v1/jobs/{slow['id']}")).json()
    assert expired["error"]["message"].endswith("within 1 seconds")
    assert slow_now["status"] == "submitted"


async def test_a_deadline_that_passed_while_stopped_expires_the_job_at_start(
    settings_factory: SettingsFactory,
) -> None:
    first_sock = loopback_socket()
    first = settings_factory(PUBLIC_URL=url_of(first_sock), SIM_DELAY="3600")
    async with served(first, first_sock) as http:
        job = await create(http)

    second_sock = loopback_socket()
    second = settings_factory(PUBLIC_URL=url_of(second_sock), SIM_DELAY="3600")
    clock = FakeClock()
    clock.offset = 3601
    async with served(second, second_sock, clock=clock) as http:
        expired = await wait_for_job(http, job["id"], ("expired",))
        events = [e["type"] for e in await job_events(http, job["id"])]
    assert expired["error"]["kind"] == "timeout"
    assert events == ["job.submitted", "job.expired"]


# --- REELHOOK_JOB_DEADLINES ---------------------------------------------------------------------


def test_per_model_deadlines_are_read() -> None:
    settings = load_settings(
        {
            "REELHOOK_JOB_DEADLINE": "600",
            "REELHOOK_JOB_DEADLINES": f" {V25}=60 , segmind/kling-2.5-turbo=900.5",
        }
    )
    assert settings.job_deadlines == {V25: 60, "segmind/kling-2.5-turbo": 900.5}
    assert settings.deadline_for(V25) == 60
    assert settings.deadline_for("segmind/kling-2.5-turbo") == 900.5
    assert settings.deadline_for(V3) == 600
    assert load_settings({}).job_deadlines == {}


@pytest.mark.parametrize(
    "value",
    [f"{V25}", f"{V25}=", f"{V25}=soon", f"{V25}=0.5", f"{V25}=nan", "trinetra/kling-v9=60", "=60"],
)
def test_a_bad_per_model_deadline_is_refused(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"REELHOOK_JOB_DEADLINES": value})
    assert str(raised.value).startswith("REELHOOK_JOB_DEADLINES: ")
