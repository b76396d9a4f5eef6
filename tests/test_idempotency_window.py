"""``Idempotency-Key`` on ``POST /v1/jobs`` over time (docs/contract.md §2): a key names one job
for 24 h.

reelhook runs in-process with Trinetra played by a simulator on loopback, whose submit counter
shows what reached the provider; time moves by an injectable clock.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.sim import Scenario, Simulator, create_sim_app
from tests.conftest import SettingsFactory
from tests.servers import run_server
from tests.support import FakeClock, api_client, assert_error

pytestmark = pytest.mark.anyio

DAY = 24 * 3600


def body(prompt: str) -> dict[str, Any]:
    return {"model": "trinetra/kling-v3", "input": {"prompt": prompt}, "metadata": {"n": 1}}


async def post(
    http: httpx.AsyncClient, job: dict[str, Any], key: str = "order-17"
) -> httpx.Response:
    return await http.post("/v1/jobs", json=job, headers={"Idempotency-Key": key})


async def test_a_key_replays_for_24_hours_then_names_a_new_job(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    sim = Simulator(Scenario(delay=3600))
    clock = FakeClock()
    async with run_server(create_sim_app(sim)) as sim_url:
        settings = settings_factory(
            PUBLIC_URL=dead_url, TRINETRA_API_KEY="key-t", TRINETRA_BASE_URL=f"{sim_url}/trinetra"
        )
        async with api_client(settings, clock=clock) as http:
            first = await post(http, body("A lighthouse"))
            assert first.status_code == 202, first.text
            assert sim.submits["trinetra"] == 1

            clock.offset = DAY - 60
            replayed = await post(http, body("A lighthouse"))
            conflict = await post(http, body("A different prompt"))
            submits_within = sim.submits["trinetra"]

            clock.offset = DAY + 1
            fresh = await post(http, body("A different prompt"))
            old_body_now = await post(http, body("A lighthouse"))
            listed = (await http.get("/v1/jobs")).json()["data"]

    assert replayed.status_code == 202, replayed.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == first.json()["id"]
    error = assert_error(conflict, 409, "conflict")
    assert error["details"]["job_id"] == first.json()["id"]
    # Within the window nothing more reached the provider.
    assert submits_within == 1

    assert fresh.status_code == 202, fresh.text
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] != first.json()["id"]
    assert sim.submits["trinetra"] == 2
    # The key now names the new job, so the first body conflicts with it.
    assert assert_error(old_body_now, 409, "conflict")["details"]["job_id"] == fresh.json()["id"]
    assert sorted(j["id"] for j in listed) == sorted([first.json()["id"], fresh.json()["id"]])
