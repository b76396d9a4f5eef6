"""Every simulator scenario, end to end through the running service (docs/contract.md §7).

One reelhook and one provider simulator run as real uvicorn servers on loopback for the whole
module; reelhook talks to the simulator as it would to the real providers (keys and base URLs
configured). Each test registers a per-job scenario (``POST /_sim/scenario`` with a ``match`` that
only its own prompt contains), submits through ``POST /v1/jobs`` and asserts the job's state, its
error kind and its events. The simulator counts every request to a job-status endpoint: none may
ever arrive.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.sim import Scenario, Simulator, create_sim_app
from service.sim.simulator import RESULT_SHAPES
from service.storage.database import Database
from service.storage.submissions import attempts_of
from tests.conftest import SettingsFactory, settings_for
from tests.servers import loopback_socket, run_server, url_of
from tests.support import TERMINAL, served, wait_for_job

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MODELS = {
    "trinetra": ("trinetra/kling-v3", {"duration": 5}),
    "apiframe": ("apiframe/kling-2.5-turbo-pro", {"duration": 5}),
    "segmind": ("segmind/kling-2.5-turbo", {"duration": 5}),
}
CALLBACK_PROVIDERS = ("trinetra", "apiframe")
# Charged on success, as each provider reports it: Trinetra 19 credits/s at 720p for 5 s,
# apiframe 4 credits for a 5 s clip, Segmind $0.44 for 5 s.
CHARGED = {"trinetra": 95, "apiframe": 4, "segmind": 0.44}
# Two retries after the first attempt, 50 ms apart: a spent budget is three attempts.
RETRY_SCHEDULE = "0.05,0.05"
PROVIDER_TIMEOUT = 0.5
SEGMIND_TIMEOUT = 1


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Stack:
    http: httpx.AsyncClient  # reelhook, as admin
    sim: httpx.AsyncClient  # the simulator's own /_sim endpoints
    simulator: Simulator
    settings_data: Path


def provider_settings(sim_url: str) -> dict[str, str]:
    """Every provider configured with a key and the simulator as its base URL."""
    return {
        f"{name.upper()}_{suffix}": value
        for name in ("trinetra", "apiframe", "segmind")
        for suffix, value in (("API_KEY", f"key-{name}"), ("BASE_URL", f"{sim_url}/{name}"))
    }


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    simulator = Simulator(Scenario(delay=0.2))
    service_sock = loopback_socket()
    data = tmp_path_factory.mktemp("scenarios") / "data"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.delenv(name, raising=False)
        async with run_server(create_sim_app(simulator)) as sim_url:
            settings = settings_for(
                data,
                PUBLIC_URL=url_of(service_sock),
                SUBMIT_RETRY_SCHEDULE=RETRY_SCHEDULE,
                PROVIDER_TIMEOUT=str(PROVIDER_TIMEOUT),
                SEGMIND_TIMEOUT=str(SEGMIND_TIMEOUT),
                **provider_settings(sim_url),
            )
            assert settings.simulated_providers == []
            async with (
                served(settings, service_sock) as http,
                httpx.AsyncClient(base_url=sim_url) as sim,
            ):
                yield Stack(http, sim, simulator, data)
    assert simulator.stats()["status_requests_total"] == 0


# --- helpers ---------------------------------------------------------------------------------


def new_marker() -> str:
    return f"[case {uuid.uuid4().hex[:10]}]"


async def given(stack: Stack, marker: str, **scenario: Any) -> None:
    """Register a per-job scenario for the prompts containing ``marker``."""
    response = await stack.sim.post("/_sim/scenario", json={"match": marker, **scenario})
    assert response.status_code == 201, response.text


async def rule_state(stack: Stack, marker: str) -> dict[str, Any]:
    response = await stack.sim.get("/_sim/scenario")
    assert response.status_code == 200, response.text
    (rule,) = [r for r in response.json()["rules"] if r["match"] == marker]
    return dict(rule)


async def callbacks_once(stack: Stack, marker: str, count: int) -> list[dict[str, Any]]:
    """The simulator's log of the callbacks it sent (or lost) for the job, once it has ``count``."""
    with anyio.fail_after(10):
        while True:
            callbacks: list[dict[str, Any]] = (await rule_state(stack, marker))["callbacks"]
            if len(callbacks) >= count:
                return callbacks
            await anyio.sleep(0.02)


async def submit(stack: Stack, provider: str, marker: str) -> httpx.Response:
    model, job_input = MODELS[provider]
    prompt = f"A lighthouse in a storm {marker}"
    return await stack.http.post(
        "/v1/jobs", json={"model": model, "input": {"prompt": prompt, **job_input}}
    )


async def accepted(stack: Stack, provider: str, marker: str) -> dict[str, Any]:
    response = await submit(stack, provider, marker)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def events_of(stack: Stack, job_id: str) -> list[str]:
    """The types of the job's events in the log, oldest first."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        response = await stack.http.get("/v1/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found += [e["type"] for e in page["data"] if e["data"].get("id") == job_id]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def assert_never_polled(stack: Stack) -> None:
    assert stack.simulator.stats()["status_requests_total"] == 0


def happy_events(provider: str) -> list[str]:
    running = ["job.running"] if provider == "apiframe" else []
    return ["job.submitted", *running, "job.succeeded"]


# --- delay and success -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_delayed_job_succeeds_when_the_provider_says_so(
    stack: Stack, provider: str
) -> None:
    marker = new_marker()
    await given(stack, marker, delay=0.6)
    created = await accepted(stack, provider, marker)
    assert created["status"] in ("pending", "submitted")

    soon = (await stack.http.get(f"/v1/jobs/{created['id']}")).json()
    assert soon["status"] not in TERMINAL, "finished before the provider's delay"
    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert len(job["outputs"]) == 1 and job["outputs"][0]["url"].startswith("http")
    assert job["cost"]["charged"] == pytest.approx(CHARGED[provider])
    assert job["cost"]["estimated"] == pytest.approx(CHARGED[provider])
    assert await events_of(stack, job["id"]) == happy_events(provider)
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (1, 1)
    assert_never_polled(stack)


# --- submit-time refusals ----------------------------------------------------------------------

# provider → status → (client status, error code, job error kind, words of the provider's message)
REFUSALS: dict[str, dict[int, tuple[int, str, str, str]]] = {
    "trinetra": {
        400: (422, "validation_failed", "invalid_input", "invalid request parameters"),
        401: (502, "provider_error", "provider_error", "missing or invalid API key"),
        402: (502, "provider_error", "insufficient_credits", "insufficient credits"),
        406: (502, "provider_error", "provider_error", "request not acceptable"),
    },
    "apiframe": {
        400: (422, "validation_failed", "invalid_input", "klingParams.start_image"),
        401: (502, "provider_error", "provider_error", "Invalid or missing API key"),
        402: (502, "provider_error", "insufficient_credits", "creditsRequired 4"),
        406: (502, "provider_error", "provider_error", "Not acceptable"),
    },
}
SEGMIND_REFUSALS = {
    400: ("invalid_input", "invalid parameters"),
    401: ("provider_error", "missing or invalid API key"),
    402: ("insufficient_credits", "Payment required"),
    406: ("insufficient_credits", "Insufficient credits"),
}


@pytest.mark.parametrize("status", [400, 401, 402, 406])
@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_refused_submit_fails_the_job_and_tells_the_client(
    stack: Stack, provider: str, status: int
) -> None:
    client_status, code, kind, words = REFUSALS[provider][status]
    marker = new_marker()
    await given(stack, marker, submit_status=status)

    response = await submit(stack, provider, marker)

    assert response.status_code == client_status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"], error
    assert "key-" not in error["message"], "the provider API key must never be echoed"
    assert error["details"]["kind"] == kind
    assert error["details"]["provider_status"] == status
    job = (await stack.http.get(f"/v1/jobs/{error['details']['job_id']}")).json()
    assert job["status"] == "failed"
    assert job["error"]["kind"] == kind
    assert job["error"]["provider_code"] == str(status)
    assert job["cost"]["charged"] == 0
    assert await events_of(stack, job["id"]) == ["job.failed"]
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (1, 0), "a 4xx is never retried"
    assert_never_polled(stack)


@pytest.mark.parametrize("status", [400, 401, 402, 406])
async def test_a_refused_segmind_request_fails_the_held_job(stack: Stack, status: int) -> None:
    """Segmind's answer comes to the held request, after the client's 202."""
    kind, words = SEGMIND_REFUSALS[status]
    marker = new_marker()
    await given(stack, marker, submit_status=status)
    created = await accepted(stack, "segmind", marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == kind
    assert words in job["error"]["message"], job["error"]
    assert job["error"]["provider_code"] == str(status)
    assert await events_of(stack, job["id"]) == ["job.submitted", "job.failed"]
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (1, 0)
    assert_never_polled(stack)


# --- retried submits ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_429_is_retried_after_retry_after_and_then_accepted(
    stack: Stack, provider: str
) -> None:
    """The provider throttles the first submit and asks for a second's pause (Retry-After, or
    Segmind's x-rate-limit-reset-at-utc); the job stays pending (a held Segmind request stays
    submitted: a job's status only moves forward), is sent again no sooner, once, and runs to the
    end with each event announced once."""
    marker = new_marker()
    await given(stack, marker, submit_status=429, submit_failures=1, retry_after=1)
    created = await accepted(stack, provider, marker)
    started = time.monotonic()
    waiting = ("submitted",) if provider == "segmind" else ("pending",)
    pending = await wait_for_job(stack.http, created["id"], waiting)
    assert pending["error"] is None

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert time.monotonic() - started >= 0.9 - 0.1, "the second submit came before Retry-After"
    assert job["status"] == "succeeded", job
    assert job["cost"]["charged"] == pytest.approx(CHARGED[provider])
    assert await events_of(stack, job["id"]) == happy_events(provider)
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (2, 1)
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_provider_that_keeps_throttling_fails_the_job_when_the_budget_is_spent(
    stack: Stack, provider: str
) -> None:
    marker = new_marker()
    await given(stack, marker, submit_status=429, retry_after=0)
    created = await accepted(stack, provider, marker)
    assert created["status"] == "pending"

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "rate_limited"
    assert "after 3 attempts" in job["error"]["message"], job["error"]
    assert job["error"]["provider_code"] == "429"
    assert job["cost"]["charged"] == 0
    announced = ["job.submitted"] if provider == "segmind" else []
    assert await events_of(stack, job["id"]) == [*announced, "job.failed"]
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (3, 0)
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_server_error_is_retried_until_the_budget_is_spent(
    stack: Stack, provider: str
) -> None:
    marker = new_marker()
    await given(stack, marker, submit_status=500)
    created = await accepted(stack, provider, marker)
    assert created["status"] == "pending"

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "provider_error"
    assert "after 3 attempts" in job["error"]["message"], job["error"]
    assert await events_of(stack, job["id"]) == ["job.failed"]
    assert (await rule_state(stack, marker))["submit_requests"] == 3
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_passing_outage_is_ridden_out(stack: Stack, provider: str) -> None:
    marker = new_marker()
    await given(stack, marker, submit_status=503, submit_failures=2, retry_after=0)
    created = await accepted(stack, provider, marker)
    assert created["status"] == "pending"

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert await events_of(stack, job["id"]) == happy_events(provider)
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (3, 1)
    assert_never_polled(stack)


async def test_a_segmind_server_error_is_not_sent_twice(stack: Stack) -> None:
    """A 5xx to a held request may follow a generation Segmind charged for: no resubmission."""
    marker = new_marker()
    await given(stack, marker, submit_status=500)
    created = await accepted(stack, "segmind", marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "provider_error"
    assert await events_of(stack, job["id"]) == ["job.submitted", "job.failed"]
    assert (await rule_state(stack, marker))["submit_requests"] == 1
    assert_never_polled(stack)


@pytest.mark.slow
@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_lost_submit_answer_is_resent_under_the_same_idempotency_key(
    stack: Stack, provider: str
) -> None:
    """The provider accepts the job but answers after reelhook stopped waiting. reelhook sends it
    again with the same external_task_id / Idempotency-Key, gets the same job back, and the job
    runs once: one accepted submit, one terminal callback, each event once."""
    marker = new_marker()
    await given(stack, marker, submit_delay=PROVIDER_TIMEOUT * 2, delay=PROVIDER_TIMEOUT * 3)
    created = await accepted(stack, provider, marker)
    assert created["status"] == "pending"

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert await events_of(stack, job["id"]) == happy_events(provider)
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (2, 1)
    terminal = [c for c in rule["callbacks"] if c["kind"] == "terminal"]
    assert len(terminal) == 1
    assert terminal[0]["job_id"] == job["provider_job_id"]
    assert_never_polled(stack)


# --- terminal failure and callback misbehaviour --------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_content_policy_failure_fails_the_job(stack: Stack, provider: str) -> None:
    marker = new_marker()
    await given(stack, marker, outcome="fail")
    created = await accepted(stack, provider, marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "content_policy"
    assert job["outputs"] == []
    assert job["cost"]["charged"] == 0
    running = ["job.running"] if provider == "apiframe" else []
    assert await events_of(stack, job["id"]) == ["job.submitted", *running, "job.failed"]
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_duplicate_callbacks_announce_the_end_once(stack: Stack, provider: str) -> None:
    marker = new_marker()
    await given(stack, marker, callback="duplicate")
    created = await accepted(stack, provider, marker)
    expected = 5 if provider == "apiframe" else 2  # apiframe reports progress three times first

    callbacks = await callbacks_once(stack, marker, expected)
    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert [c["kind"] for c in callbacks].count("terminal") == 2
    assert all(c["status"] == 200 for c in callbacks), callbacks  # both acknowledged
    assert job["status"] == "succeeded", job
    assert await events_of(stack, job["id"]) == happy_events(provider)
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_progress_callback_after_the_end_changes_nothing(
    stack: Stack, provider: str
) -> None:
    marker = new_marker()
    await given(stack, marker, callback="out_of_order")
    created = await accepted(stack, provider, marker)

    callbacks = await callbacks_once(stack, marker, 2)

    assert [c["kind"] for c in callbacks] == ["terminal", "progress"]
    assert all(c["status"] == 200 for c in callbacks), callbacks
    job = (await stack.http.get(f"/v1/jobs/{created['id']}")).json()
    assert job["status"] == "succeeded", job
    assert await events_of(stack, job["id"]) == ["job.submitted", "job.succeeded"]
    assert_never_polled(stack)


@pytest.mark.parametrize(
    ("provider", "status"), [("trinetra", "submitted"), ("apiframe", "running")]
)
async def test_a_lost_callback_leaves_the_job_waiting(
    stack: Stack, provider: str, status: str
) -> None:
    """Nothing tells reelhook the job ended; it does not poll to find out (the job deadline,
    not the simulator, ends such a job)."""
    marker = new_marker()
    await given(stack, marker, callback="lost")
    created = await accepted(stack, provider, marker)

    # apiframe reports progress three times first.
    callbacks = await callbacks_once(stack, marker, 4 if provider == "apiframe" else 1)

    assert callbacks[-1] == {
        "provider": provider,
        "job_id": created["provider_job_id"],
        "kind": "lost",
        "status": None,
    }
    job = (await stack.http.get(f"/v1/jobs/{created['id']}")).json()
    assert job["status"] == status, job
    assert job["completed_at"] is None
    running = ["job.running"] if provider == "apiframe" else []
    assert await events_of(stack, job["id"]) == ["job.submitted", *running]
    assert_never_polled(stack)


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_a_forged_callback_is_refused_and_changes_nothing(
    stack: Stack, provider: str
) -> None:
    """apiframe's webhooks signed with the wrong key, or a Trinetra callback to a URL whose token
    was tampered with: each is answered 401 and the job is untouched."""
    marker = new_marker()
    await given(stack, marker, callback="forged")
    created = await accepted(stack, provider, marker)

    # apiframe reports progress three times first.
    callbacks = await callbacks_once(stack, marker, 4 if provider == "apiframe" else 1)

    assert [c["status"] for c in callbacks] == [401] * len(callbacks), callbacks
    job = (await stack.http.get(f"/v1/jobs/{created['id']}")).json()
    assert job["status"] == "submitted", job
    assert job["outputs"] == [] and job["completed_at"] is None
    assert await events_of(stack, job["id"]) == ["job.submitted"]
    assert_never_polled(stack)


async def test_a_segmind_request_that_hangs_times_out(stack: Stack) -> None:
    marker = new_marker()
    await given(stack, marker, hang=True)
    created = await accepted(stack, "segmind", marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL, within=SEGMIND_TIMEOUT + 10)

    assert job["status"] == "failed", job
    assert job["error"]["kind"] == "timeout"
    assert f"within {SEGMIND_TIMEOUT} s" in job["error"]["message"], job["error"]
    assert await events_of(stack, job["id"]) == ["job.submitted", "job.failed"]
    rule = await rule_state(stack, marker)
    assert (rule["submit_requests"], rule["accepted"]) == (1, 1), "a held request is not resent"
    assert_never_polled(stack)


# --- global scenarios --------------------------------------------------------------------------


async def test_a_global_scenario_applies_to_every_job_a_rule_does_not_match(stack: Stack) -> None:
    changed = await stack.sim.put("/_sim/scenario", json={"outcome": "fail"})
    assert changed.status_code == 200, changed.text
    try:
        assert changed.json()["scenario"]["outcome"] == "fail"
        everyone = await accepted(stack, "trinetra", new_marker())
        exempt = new_marker()
        await given(stack, exempt, outcome="succeed")
        excepted = await accepted(stack, "trinetra", exempt)

        failed = await wait_for_job(stack.http, everyone["id"], TERMINAL)
        succeeded = await wait_for_job(stack.http, excepted["id"], TERMINAL)
    finally:
        reset = await stack.sim.put("/_sim/scenario", json={"outcome": "succeed"})
        assert reset.status_code == 200, reset.text
    assert failed["status"] == "failed" and failed["error"]["kind"] == "content_policy"
    assert succeeded["status"] == "succeeded", succeeded
    assert_never_polled(stack)


@pytest.mark.parametrize(
    "body",
    [
        {"match": "x", "outcome": "explode"},
        {"match": "x", "submit_status": 200},
        {"match": "x", "callback": "sometimes"},
        {"match": "x", "delay": -1},
        {"match": "x", "hang": "yes"},
        {"match": "x", "color": "red"},
        {"match": ""},
        {"outcome": "fail"},
        {"match": "x", "provider": "kling"},
    ],
)
async def test_a_bad_scenario_is_refused(stack: Stack, body: dict[str, Any]) -> None:
    response = await stack.sim.post("/_sim/scenario", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert all(
        rule["match"] != "x" for rule in (await stack.sim.get("/_sim/scenario")).json()["rules"]
    )


# --- across a restart, and with no provider to reach ---------------------------------------------


async def test_a_pending_submit_survives_a_restart(settings_factory: SettingsFactory) -> None:
    """The provider is down when the job is submitted and the next attempt is 30 s away when
    reelhook stops. The attempt is in SQLite: the restarted reelhook (its clock 31 s on) sends it,
    with the same idempotency key, and the job runs to the end."""
    simulator = Simulator(Scenario(delay=0.2))
    marker = new_marker()
    simulator.add_rule(marker, None, {"submit_status": 503, "submit_failures": 1, "retry_after": 0})
    async with run_server(create_sim_app(simulator)) as sim_url:
        first_sock = loopback_socket()
        settings = settings_factory(
            PUBLIC_URL=url_of(first_sock), SUBMIT_RETRY_SCHEDULE="30", **provider_settings(sim_url)
        )
        async with served(settings, first_sock) as http:
            model, job_input = MODELS["trinetra"]
            response = await http.post(
                "/v1/jobs", json={"model": model, "input": {"prompt": marker, **job_input}}
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert response.json()["status"] == "pending"
        async with Database.open(settings.database_path) as db:
            attempts, next_at = await attempts_of(db.reader, job_id) or (0, None)
        assert attempts == 1
        assert next_at is not None and next_at - time.time() > 20

        second_sock = loopback_socket()
        restarted = settings_factory(
            PUBLIC_URL=url_of(second_sock), SUBMIT_RETRY_SCHEDULE="30", **provider_settings(sim_url)
        )
        async with served(restarted, second_sock, clock=lambda: time.time() + 31) as http:
            job = await wait_for_job(http, job_id, TERMINAL)
            log = (await http.get("/v1/events")).json()["data"]
    events = [e["type"] for e in log if e["data"]["id"] == job_id]
    assert job["status"] == "succeeded", job
    assert events == ["job.submitted", "job.succeeded"]
    (rule,) = simulator.rules
    assert (rule.submit_requests, rule.accepted) == (2, 1)
    assert simulator.stats()["status_requests_total"] == 0


async def test_an_unreachable_provider_is_retried_then_fails(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    """Connection refused on every provider: each job is tried three times, then fails."""
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock),
        SUBMIT_RETRY_SCHEDULE=RETRY_SCHEDULE,
        **provider_settings(dead_url),
    )
    async with served(settings, sock) as http:
        for provider, (model, job_input) in MODELS.items():
            response = await http.post(
                "/v1/jobs", json={"model": model, "input": {"prompt": "p", **job_input}}
            )
            assert response.status_code == 202, response.text
            job = await wait_for_job(http, response.json()["id"], TERMINAL)
            assert job["status"] == "failed", job
            assert job["error"]["kind"] == "provider_error"
            assert "after 3 attempts" in job["error"]["message"], job["error"]
            assert "could not reach" in job["error"]["message"], job["error"]
            log = (await http.get("/v1/events", params={"limit": "200"})).json()["data"]
            announced = ["job.submitted"] if provider == "segmind" else []
            assert [e["type"] for e in log if e["data"]["id"] == job["id"]] == [
                *announced,
                "job.failed",
            ]


# --- issue 15: unknown status words, result shapes, the account webhook -------------------------


@pytest.mark.parametrize("provider", CALLBACK_PROVIDERS)
async def test_an_unknown_status_word_leaves_the_job_open_until_its_result(
    stack: Stack, provider: str
) -> None:
    marker = new_marker()
    await given(stack, marker, status_word="rendering", delay=0.4)
    created = await accepted(stack, provider, marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert job["outputs"][0]["url"].endswith(f"{job['provider_job_id']}.mp4")
    # Noted once however often the word came (apiframe reports progress three times).
    assert [n["kind"] for n in job["notices"]] == ["unknown_status"]
    assert "'rendering'" in job["notices"][0]["message"]
    # apiframe's event name ("progress") still says the job runs; Trinetra's word says nothing.
    assert await events_of(stack, job["id"]) == happy_events(provider)
    assert_never_polled(stack)


@pytest.mark.parametrize(
    ("provider", "shape"),
    [(provider, shape) for provider in CALLBACK_PROVIDERS for shape in RESULT_SHAPES],
)
async def test_every_result_shape_succeeds_with_its_video(
    stack: Stack, provider: str, shape: str
) -> None:
    marker = new_marker()
    await given(stack, marker, result_shape=shape)
    created = await accepted(stack, provider, marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert [o["url"] for o in job["outputs"]] == [
        f"{str(stack.sim.base_url).rstrip('/')}/{provider}/files/{job['provider_job_id']}.mp4"
    ]
    assert job["notices"] == []
    assert await events_of(stack, job["id"]) == happy_events(provider)
    assert_never_polled(stack)


async def set_account_webhook(stack: Stack) -> None:
    """Paste reelhook's account webhook URL into the (simulated) Trinetra dashboard."""
    listed = (await stack.http.get("/v1/providers")).json()["data"]
    (trinetra,) = [p for p in listed if p["name"] == "trinetra"]
    answer = await stack.sim.put(
        "/_sim/accounts/trinetra", json={"webhook_url": trinetra["account_webhook_url"]}
    )
    assert answer.status_code == 200, answer.text


async def test_a_result_only_on_the_account_webhook_completes_the_job(stack: Stack) -> None:
    await set_account_webhook(stack)
    marker = new_marker()
    await given(stack, marker, route="account")
    created = await accepted(stack, "trinetra", marker)

    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert job["status"] == "succeeded", job
    assert job["outputs"][0]["url"].endswith(f"{job['provider_job_id']}.mp4")
    assert await events_of(stack, job["id"]) == happy_events("trinetra")
    callbacks = (await rule_state(stack, marker))["callbacks"]
    assert [(c["kind"], c["status"]) for c in callbacks] == [("terminal", 200)]
    assert_never_polled(stack)


async def test_a_result_on_both_routes_is_announced_once(stack: Stack) -> None:
    await set_account_webhook(stack)
    marker = new_marker()
    await given(stack, marker, route="both")
    created = await accepted(stack, "trinetra", marker)

    callbacks = await callbacks_once(stack, marker, 2)
    job = await wait_for_job(stack.http, created["id"], TERMINAL)

    assert [(c["kind"], c["status"]) for c in callbacks] == [("terminal", 200)] * 2
    assert job["status"] == "succeeded", job
    assert await events_of(stack, job["id"]) == happy_events("trinetra")
    assert_never_polled(stack)
