"""``/v1/jobs``, ``/v1/models``, authentication and routing errors, in-process.

Validation happens before any provider call, so most tests need no provider at all. Where a job has
to be accepted, a separate simulator server on loopback plays the provider (reelhook calls it over
real HTTP); the ``PUBLIC_URL`` is a bound but never-listening loopback port, so anything sent there
(the in-process simulator, a ``callback_url``) is refused at once instead of going anywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.errors import ValidationFailed
from service.jobs.catalog import MODELS
from service.sim import Scenario, Simulator, create_sim_app
from service.storage.database import Database
from tests.conftest import SettingsFactory
from tests.servers import run_server
from tests.support import (
    api_client,
    assert_error,
    send_without_key,
    served_with_sink,
    wait_for_job,
)

pytestmark = pytest.mark.anyio

V3 = "trinetra/kling-v3"
V25 = "trinetra/kling-v2.5"
OMNI = "trinetra/kling-v3-omni"
APIFRAME = "apiframe/kling-2.5-turbo-pro"
SEGMIND = "segmind/kling-2.5-turbo"
MAX_BODY = 256 * 1024


def job_body(model: str = V3, **job_input: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "A lighthouse in a storm", **job_input}}


async def assert_nothing_stored(api: httpx.AsyncClient) -> None:
    """No job and no event exist: a rejected request left nothing half-way."""
    jobs = await api.get("/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    assert jobs.json() == {"data": [], "next_cursor": None}
    events = await api.get("/v1/events")
    assert events.status_code == 200, events.text
    assert events.json() == {"data": [], "next_cursor": None}


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    """A provider simulator served on loopback whose jobs never finish during a test."""
    sim = Simulator(Scenario(delay=3600))
    async with run_server(create_sim_app(sim)) as url:
        yield sim, url


@pytest.fixture
async def sim_api(
    settings_factory: SettingsFactory, dead_url: str, simulator: tuple[Simulator, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook in-process with Trinetra played by the loopback simulator (jobs are accepted)."""
    settings = settings_factory(
        PUBLIC_URL=dead_url,
        TRINETRA_API_KEY="key-trinetra",
        TRINETRA_BASE_URL=f"{simulator[1]}/trinetra",
    )
    async with api_client(settings) as http:
        yield http


# --- authentication ------------------------------------------------------------------------------

PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/job_00000000000000000000000000"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("key", [None, "", "rh_wrong_key", "rh_test_admin_key_0123456789abcdeF"])
async def test_requests_without_a_valid_api_key_are_refused(
    shared_api: httpx.AsyncClient, method: str, path: str, key: str | None
) -> None:
    if key is None:
        response = await send_without_key(shared_api, method, path, json=job_body())
    else:
        response = await shared_api.request(
            method, path, json=job_body(), headers={"X-API-Key": key}
        )
    assert_error(response, 401, "unauthorized")
    await assert_nothing_stored(shared_api)


async def test_authentication_comes_before_reading_the_body(shared_api: httpx.AsyncClient) -> None:
    response = await send_without_key(shared_api, "POST", "/v1/jobs", content=b"{not json")
    too_large = await send_without_key(
        shared_api, "POST", "/v1/jobs", content=b" " * (MAX_BODY + 1)
    )
    assert_error(response, 401, "unauthorized")
    assert_error(too_large, 401, "unauthorized")


async def test_models_catalog_lists_every_model_with_parameters_and_prices(
    shared_api: httpx.AsyncClient,
) -> None:
    response = await shared_api.get("/v1/models")
    assert response.status_code == 200, response.text
    catalog = response.json()
    assert catalog["next_cursor"] is None
    models = {entry["id"]: entry for entry in catalog["data"]}
    assert set(models) == {V25, V3, OMNI, APIFRAME, SEGMIND}
    for model_id, entry in models.items():
        assert entry["provider"] == model_id.split("/")[0]
        assert entry["parameters"]["prompt"]["required"] is True
        assert entry["pricing"]["table"], entry
        assert entry["simulated"] is True
    duration = models[V3]["parameters"]["duration"]
    assert (duration["minimum"], duration["maximum"], duration["default"]) == (1, 10, 5)
    assert models[OMNI]["parameters"]["duration"]["maximum"] == 15
    assert "seed" not in models[V3]["parameters"]


# --- POST /v1/jobs: validation -------------------------------------------------------------------

INVALID_JOBS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown model", {"model": "trinetra/kling-v9", "input": {"prompt": "x"}}, "model"),
    ("missing model", {"input": {"prompt": "x"}}, "model"),
    ("model not a string", {"model": 3, "input": {"prompt": "x"}}, "model"),
    ("model null", {"model": None, "input": {"prompt": "x"}}, "model"),
    ("missing input", {"model": V3}, "input"),
    ("input not an object", {"model": V3, "input": "a cat"}, "input"),
    ("input a list", {"model": V3, "input": [{"prompt": "x"}]}, "input"),
    ("missing prompt", {"model": V3, "input": {"duration": 5}}, "input.prompt"),
    ("null prompt", {"model": V3, "input": {"prompt": None}}, "input.prompt"),
    ("blank prompt", {"model": V3, "input": {"prompt": "   "}}, "input.prompt"),
    ("prompt not a string", {"model": V3, "input": {"prompt": 42}}, "input.prompt"),
    ("prompt too long", job_body(prompt="x" * 2501), "input.prompt"),
    ("unknown input parameter", job_body(seed=7), "input.seed"),
    (
        "provider-native name",
        job_body(APIFRAME, start_image="https://e.test/a.png"),
        "input.start_image",
    ),
    ("parameter of another model", job_body(APIFRAME, camera_control={}), "input.camera_control"),
    ("unknown top-level field", {**job_body(), "webhook": "https://e.test/h"}, "webhook"),
    ("duration as string", job_body(duration="5"), "input.duration"),
    ("duration as boolean", job_body(duration=True), "input.duration"),
    ("duration above maximum", job_body(duration=11), "input.duration"),
    ("duration below minimum", job_body(duration=0), "input.duration"),
    ("negative duration", job_body(duration=-5), "input.duration"),
    ("omni duration above 15", job_body(OMNI, duration=16), "input.duration"),
    ("apiframe duration not 5 or 10", job_body(APIFRAME, duration=7), "input.duration"),
    ("apiframe duration as float", job_body(APIFRAME, duration=5.0), "input.duration"),
    ("segmind duration not 5 or 10", job_body(SEGMIND, duration=6), "input.duration"),
    ("unknown aspect ratio", job_body(aspect_ratio="4:3"), "input.aspect_ratio"),
    ("unknown resolution", job_body(resolution="4k"), "input.resolution"),
    ("v2.5 mode not std or pro", job_body(V25, mode="turbo"), "input.mode"),
    ("cfg_scale above 1", job_body(cfg_scale=1.5), "input.cfg_scale"),
    ("cfg_scale as string", job_body(cfg_scale="0.5"), "input.cfg_scale"),
    ("image_url not http", job_body(image_url="ftp://e.test/a.png"), "input.image_url"),
    ("image_url not a string", job_body(image_url=["https://e.test/a.png"]), "input.image_url"),
    (
        "last frame without image",
        job_body(last_frame_url="https://e.test/z.png", duration=5),
        "input.last_frame_url",
    ),
    (
        "last frame on a 10 s clip",
        job_body(
            image_url="https://e.test/a.png", last_frame_url="https://e.test/z.png", duration=10
        ),
        "input.last_frame_url",
    ),
    ("i2v mode without image", job_body(mode="i2v"), "input.image_url"),
    ("camera_control not an object", job_body(camera_control="zoom"), "input.camera_control"),
    (
        "camera axis unknown",
        job_body(camera_control={"config": {"spin": 1}}),
        "input.camera_control",
    ),
    (
        "camera amount out of range",
        job_body(camera_control={"config": {"zoom": 11}}),
        "input.camera_control",
    ),
    ("metadata a list", {**job_body(), "metadata": [1, 2]}, "metadata"),
    ("metadata a string", {**job_body(), "metadata": "chat 42"}, "metadata"),
    ("metadata null", {**job_body(), "metadata": None}, "metadata"),
    ("metadata too large", {**job_body(), "metadata": {"blob": "x" * 9000}}, "metadata"),
    ("callback_url not http", {**job_body(), "callback_url": "ftp://e.test/hook"}, "callback_url"),
    ("callback_url not a URL", {**job_body(), "callback_url": "hook please"}, "callback_url"),
    ("callback_url not a string", {**job_body(), "callback_url": 42}, "callback_url"),
    (
        "callback_url credentials",
        {**job_body(), "callback_url": "https://u:p@e.test/h"},
        "callback_url",
    ),
    (
        "callback_url private",
        {**job_body(), "callback_url": "http://10.0.0.5/hook"},
        "callback_url",
    ),
    (
        "callback_url cloud metadata",
        {**job_body(), "callback_url": "http://169.254.169.254/latest/meta-data/"},
        "callback_url",
    ),
]


SPEC_CASES = [
    pytest.param(body["model"], body["input"], field, id=name)
    for name, body, field in INVALID_JOBS
    if field.startswith("input") and "input" in body and body.get("model") in MODELS
]


@pytest.mark.parametrize(("model", "job_input", "field"), SPEC_CASES)
def test_the_models_spec_names_the_bad_input_field(model: str, job_input: Any, field: str) -> None:
    """The input cases above as pure unit tests of the model's spec, the one validation of
    ``input`` (no app): the error names the field, in its details and its message."""
    with pytest.raises(ValidationFailed) as refused:
        MODELS[model].validate(job_input)
    assert field in refused.value.details["fields"], refused.value.details
    assert field in str(refused.value)
    assert refused.value.status_code == 422


def test_every_input_case_is_also_a_spec_case() -> None:
    """Every ``input`` case above reaches the spec's unit test (none is filtered out by mistake)."""
    input_cases = [name for name, body, field in INVALID_JOBS if field.startswith("input.")]
    assert {case.id for case in SPEC_CASES} >= set(input_cases)


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in INVALID_JOBS],
)
async def test_invalid_job_is_a_422_naming_the_field_and_stores_nothing(
    shared_api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await shared_api.post("/v1/jobs", json=body)
    assert_error(response, 422, "validation_failed", field)
    await assert_nothing_stored(shared_api)


async def test_every_bad_input_field_is_named_at_once(shared_api: httpx.AsyncClient) -> None:
    response = await shared_api.post(
        "/v1/jobs", json={"model": V3, "input": {"duration": 99, "seed": 1, "aspect_ratio": "2:1"}}
    )
    error = assert_error(response, 422, "validation_failed")
    assert set(error["details"]["fields"]) == {
        "input.prompt",
        "input.duration",
        "input.seed",
        "input.aspect_ratio",
    }
    await assert_nothing_stored(shared_api)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[]", id="list"),
        pytest.param(b'["model", "input"]', id="list of strings"),
        pytest.param(b'"trinetra/kling-v3"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
    ],
)
async def test_a_body_that_is_not_an_object_is_a_422(
    shared_api: httpx.AsyncClient, content: bytes
) -> None:
    response = await shared_api.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 422, "validation_failed")
    assert "object" in error["message"]
    await assert_nothing_stored(shared_api)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"{not json", id="malformed"),
        pytest.param(b'{"model": "trinetra/kling-v3",}', id="trailing comma"),
        pytest.param(b"{'model': 'trinetra/kling-v3'}", id="single quotes"),
        pytest.param(b'{"model": "trinetra/kling-v3"} {}', id="two documents"),
        pytest.param(b'{"model": "\xff\xfe"}', id="not utf-8"),
        pytest.param(b"model=trinetra/kling-v3", id="form encoded"),
    ],
)
async def test_a_body_that_is_not_json_is_a_400(
    shared_api: httpx.AsyncClient, content: bytes
) -> None:
    response = await shared_api.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad_request")
    await assert_nothing_stored(shared_api)


async def test_an_empty_body_is_a_400(shared_api: httpx.AsyncClient) -> None:
    response = await shared_api.post("/v1/jobs")
    error = assert_error(response, 400, "bad_request")
    assert "empty" in error["message"]
    await assert_nothing_stored(shared_api)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(
            b'{"model": "trinetra/kling-v3", "input": {"prompt": "x", "cfg_scale": NaN}}',
            id="NaN input",
        ),
        pytest.param(
            b'{"model": "trinetra/kling-v3", "input": {"prompt": "x"}, "metadata": {"n": NaN}}',
            id="NaN metadata",
        ),
        pytest.param(
            b'{"model": "trinetra/kling-v3", "input": {"prompt": "x"}, '
            + b'"metadata": {"n": Infinity}}',
            id="Infinity metadata",
        ),
        pytest.param(b'{"model": ' + b"9" * 5000 + b"}", id="5000-digit integer"),
        pytest.param(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deeply nested"),
        pytest.param(
            b'{"model": "trinetra/kling-v3", "input": {"prompt": "\\ud800"}}', id="lone surrogate"
        ),
    ],
)
async def test_hostile_json_is_a_client_error_never_a_500(
    shared_api: httpx.AsyncClient, content: bytes
) -> None:
    """Python's json module accepts or chokes on these; none is valid input (RFC 8259)."""
    response = await shared_api.post(
        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code, response.json()["error"]["code"])
    await assert_nothing_stored(shared_api)


def _body_of_size(size: int) -> bytes:
    head, tail = b'{"model": "trinetra/kling-v3", "input": {"prompt": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_a_body_over_256_kib_is_a_413(shared_api: httpx.AsyncClient) -> None:
    response = await shared_api.post(
        "/v1/jobs",
        content=_body_of_size(MAX_BODY + 1),
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")
    await assert_nothing_stored(shared_api)


async def test_a_body_of_exactly_256_kib_is_read_and_validated(
    shared_api: httpx.AsyncClient,
) -> None:
    response = await shared_api.post(
        "/v1/jobs", content=_body_of_size(MAX_BODY), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "validation_failed", "input.prompt")


async def test_a_chunked_body_over_256_kib_is_a_413(shared_api: httpx.AsyncClient) -> None:
    """Without Content-Length the cap is enforced while streaming."""
    body = _body_of_size(MAX_BODY * 2)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await shared_api.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    await assert_nothing_stored(shared_api)


# --- POST /v1/jobs: accepted jobs ----------------------------------------------------------------


async def test_a_valid_job_is_accepted_with_202_and_its_document(
    sim_api: httpx.AsyncClient,
) -> None:
    body = {**job_body(V3, duration=5, resolution="1080p"), "metadata": {"chat_id": 42}}
    response = await sim_api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["id"].startswith("job_")
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert "idempotent-replayed" not in response.headers
    assert job["status"] == "submitted"
    assert job["provider"] == "trinetra" and job["provider_job_id"]
    assert job["cost"] == {"estimated": 150, "charged": None, "unit": "credits"}
    assert job["input"] == {
        "prompt": "A lighthouse in a storm",
        "duration": 5,
        "resolution": "1080p",
        "mode": "t2v",
        "aspect_ratio": "16:9",
    }
    assert job["metadata"] == {"chat_id": 42}
    assert job["error"] is None and job["outputs"] == []
    assert "callback_secret" not in job

    fetched = await sim_api.get(f"/v1/jobs/{job['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == job


async def test_a_job_without_resolution_states_the_one_its_estimate_assumed(
    sim_api: httpx.AsyncClient,
) -> None:
    response = await sim_api.post("/v1/jobs", json=job_body(V3, duration=5))
    assert response.status_code == 202, response.text
    job = response.json()
    assert "resolution" not in job["input"] and "cfg_scale" not in job["input"]
    assert job["cost"] == {
        "estimated": 95,
        "charged": None,
        "unit": "credits",
        "assumed": {"resolution": "720p"},
    }


async def test_a_held_segmind_job_is_accepted_pending(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/jobs", json=job_body(SEGMIND))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "pending"
    assert job["cost"] == {"estimated": 0.88, "charged": None, "unit": "usd"}
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"


async def test_callback_url_secret_is_shown_once(api: httpx.AsyncClient, dead_url: str) -> None:
    body = {**job_body(SEGMIND), "callback_url": f"{dead_url}/hook"}
    response = await api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["callback_secret"].startswith("whsec_")
    fetched = (await api.get(f"/v1/jobs/{job['id']}")).json()
    assert "callback_secret" not in fetched
    listed = (await api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert "callback_secret" not in listed[0]
    # The one-off subscription is the job's, not a listed subscription.
    subscriptions = await api.get("/v1/subscriptions")
    assert subscriptions.json() == {"data": [], "next_cursor": None}


# --- provider failures ---------------------------------------------------------------------------


async def test_an_unreachable_provider_is_tried_again_then_the_job_fails(
    api: httpx.AsyncClient,
) -> None:
    """A connection error is retryable: the client gets the pending job, and once the retry
    budget (one immediate retry in the ``api`` fixture) is spent the job fails."""
    response = await api.post("/v1/jobs", json=job_body(V3))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    job_id = response.json()["id"]

    job = await wait_for_job(api, job_id, ("failed",))
    assert job["error"]["kind"] == "provider_error"
    assert "after 2 attempts" in job["error"]["message"], job["error"]
    assert "could not reach trinetra" in job["error"]["message"], job["error"]
    assert job["cost"]["charged"] == 0
    assert job["submitted_at"] is None
    assert job["completed_at"] is not None
    events = (await api.get("/v1/events")).json()["data"]
    assert [(e["type"], e["data"]["id"]) for e in events] == [("job.failed", job_id)]


@pytest.mark.parametrize(
    ("provider_status", "status", "code", "kind"),
    [
        (402, 502, "provider_error", "insufficient_credits"),
        (401, 502, "provider_error", "provider_error"),
        (403, 502, "provider_error", "provider_error"),
        (406, 502, "provider_error", "provider_error"),
        (409, 502, "provider_error", "provider_error"),
        (400, 422, "validation_failed", "invalid_input"),
    ],
)
async def test_a_provider_refusal_fails_the_job_with_a_json_error(
    sim_api: httpx.AsyncClient,
    simulator: tuple[Simulator, str],
    provider_status: int,
    status: int,
    code: str,
    kind: str,
) -> None:
    simulator[0].scenario = Scenario(delay=3600, submit_status=provider_status)
    response = await sim_api.post("/v1/jobs", json=job_body(V3))
    error = assert_error(response, status, code)
    assert error["details"]["kind"] == kind
    assert error["details"]["provider_status"] == provider_status
    assert error["message"].startswith("trinetra refused the job: "), error
    job = (await sim_api.get(f"/v1/jobs/{error['details']['job_id']}")).json()
    assert job["status"] == "failed"
    assert job["error"]["kind"] == kind
    assert job["error"]["provider_code"] == str(provider_status)
    # The provider's own message reaches both the client and the job.
    assert job["error"]["message"] in error["message"]
    assert job["cost"]["charged"] == 0
    events = (await sim_api.get("/v1/events")).json()["data"]
    assert [e["type"] for e in events] == ["job.failed"]
    assert simulator[0].stats()["submit_requests"] == {"trinetra": 1}


@pytest.mark.parametrize("provider_status", [429, 500, 502, 503, 504, 408])
async def test_a_retryable_refusal_leaves_the_job_pending(
    sim_api: httpx.AsyncClient, simulator: tuple[Simulator, str], provider_status: int
) -> None:
    """429, 408 and 5xx are retried later (the default schedule waits 5 s first): the client gets
    the pending job at once and nothing is announced yet."""
    simulator[0].scenario = Scenario(delay=3600, submit_status=provider_status)
    response = await sim_api.post("/v1/jobs", json=job_body(V3))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "pending"
    assert job["error"] is None
    assert (await sim_api.get(f"/v1/jobs/{job['id']}")).json()["status"] == "pending"
    assert (await sim_api.get("/v1/events")).json()["data"] == []
    assert simulator[0].stats()["submit_requests"] == {"trinetra": 1}


# --- Idempotency-Key ---------------------------------------------------------------------------


async def test_same_idempotency_key_and_body_replays_the_same_job(
    sim_api: httpx.AsyncClient,
) -> None:
    body = {**job_body(V3), "metadata": {"attempt": 1}}
    first = await sim_api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = await sim_api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    listed = (await sim_api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


async def test_one_idempotency_key_sent_many_times_at_once_makes_one_job(
    api: httpx.AsyncClient,
) -> None:
    """Requests with one key arriving together (a client retrying fast) store one job and replay
    it to the others (across nodes: tests/test_cluster.py)."""
    answers: list[httpx.Response] = []

    async def create() -> None:
        answers.append(
            await api.post("/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": "k-9"})
        )

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(create)
    assert [answer.status_code for answer in answers] == [202] * 6, [a.text for a in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum(answer.headers.get("idempotent-replayed") == "true" for answer in answers) == 5
    listed = (await api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [answers[0].json()["id"]]


async def test_same_idempotency_key_with_another_body_is_a_409(api: httpx.AsyncClient) -> None:
    first = await api.post("/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    other = await api.post(
        "/v1/jobs", json=job_body(SEGMIND, duration=5), headers={"Idempotency-Key": "k-1"}
    )
    error = assert_error(other, 409, "conflict")
    assert error["details"]["job_id"] == first.json()["id"]
    listed = (await api.get("/v1/jobs")).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


async def test_idempotency_body_comparison_ignores_json_key_order(api: httpx.AsyncClient) -> None:
    """The same JSON object serialised with its keys in another order is the same body."""
    first = await api.post(
        "/v1/jobs",
        content=json.dumps({"model": SEGMIND, "input": {"prompt": "p", "duration": 5}}),
        headers={"Idempotency-Key": "k-order", "Content-Type": "application/json"},
    )
    assert first.status_code == 202, first.text
    again = await api.post(
        "/v1/jobs",
        content=json.dumps({"input": {"duration": 5, "prompt": "p"}, "model": SEGMIND}),
        headers={"Idempotency-Key": "k-order", "Content-Type": "application/json"},
    )
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_different_idempotency_keys_make_different_jobs(api: httpx.AsyncClient) -> None:
    ids = set()
    for key in ("k-a", "k-b"):
        response = await api.post(
            "/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": key}
        )
        assert response.status_code == 202, response.text
        ids.add(response.json()["id"])
    assert len(ids) == 2


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    api: httpx.AsyncClient,
) -> None:
    responses: list[httpx.Response] = []

    async def post() -> None:
        responses.append(
            await api.post("/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": "race"})
        )

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(post)
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 4
    assert len((await api.get("/v1/jobs")).json()["data"]) == 1


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256 characters"])
async def test_a_bad_idempotency_key_is_a_422(shared_api: httpx.AsyncClient, key: str) -> None:
    response = await shared_api.post(
        "/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": key}
    )
    assert_error(response, 422, "validation_failed", "Idempotency-Key")
    await assert_nothing_stored(shared_api)


async def test_an_idempotency_key_of_255_characters_is_accepted(api: httpx.AsyncClient) -> None:
    key = "k" * 255
    first = await api.post("/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    again = await api.post("/v1/jobs", json=job_body(SEGMIND), headers={"Idempotency-Key": key})
    assert again.json()["id"] == first.json()["id"]


async def test_a_rejected_request_does_not_consume_its_idempotency_key(
    api: httpx.AsyncClient,
) -> None:
    bad = await api.post(
        "/v1/jobs", json=job_body(SEGMIND, duration=7), headers={"Idempotency-Key": "k-retry"}
    )
    assert_error(bad, 422, "validation_failed", "input.duration")
    good = await api.post(
        "/v1/jobs", json=job_body(SEGMIND, duration=5), headers={"Idempotency-Key": "k-retry"}
    )
    assert good.status_code == 202, good.text
    assert "idempotent-replayed" not in good.headers


# --- GET /v1/jobs/{id} and GET /v1/jobs ----------------------------------------------------------


@pytest.mark.parametrize("job_id", ["job_00000000000000000000000000", "nope", "sub_x", "%00"])
async def test_an_unknown_job_is_a_404(shared_api: httpx.AsyncClient, job_id: str) -> None:
    response = await shared_api.get(f"/v1/jobs/{job_id}")
    assert_error(response, 404, "not_found")


async def _submit_mixed_jobs(
    sim_api: httpx.AsyncClient, simulator: Simulator
) -> dict[str, list[str]]:
    """3 submitted v3 jobs, 2 submitted v2.5 jobs and 2 failed v3 jobs; ids by kind."""
    made: dict[str, list[str]] = {"v3": [], "v25": [], "failed": []}
    for model, kind, count in ((V3, "v3", 3), (V25, "v25", 2)):
        for _ in range(count):
            response = await sim_api.post("/v1/jobs", json=job_body(model))
            assert response.status_code == 202, response.text
            made[kind].append(response.json()["id"])
    simulator.scenario = Scenario(delay=3600, submit_status=400)
    for _ in range(2):
        response = await sim_api.post("/v1/jobs", json=job_body(V3))
        assert response.status_code == 422, response.text
        made["failed"].append(response.json()["error"]["details"]["job_id"])
    return made


async def _ids(http: httpx.AsyncClient, **params: str) -> list[str]:
    response = await http.get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return [job["id"] for job in response.json()["data"]]


async def test_job_listing_filters_by_status_and_model(
    sim_api: httpx.AsyncClient, simulator: tuple[Simulator, str]
) -> None:
    made = await _submit_mixed_jobs(sim_api, simulator[0])
    everything = made["v3"] + made["v25"] + made["failed"]
    assert await _ids(sim_api) == sorted(everything, reverse=True)  # newest first
    assert set(await _ids(sim_api, status="submitted")) == set(made["v3"] + made["v25"])
    assert set(await _ids(sim_api, status="failed")) == set(made["failed"])
    assert await _ids(sim_api, status="succeeded") == []
    assert set(await _ids(sim_api, model=V25)) == set(made["v25"])
    assert set(await _ids(sim_api, model=V3)) == set(made["v3"] + made["failed"])
    assert set(await _ids(sim_api, model=V3, status="failed")) == set(made["failed"])
    assert await _ids(sim_api, model=APIFRAME) == []
    for job in (await sim_api.get("/v1/jobs", params={"status": "failed"})).json()["data"]:
        assert job["status"] == "failed"


async def _walk(http: httpx.AsyncClient, **params: str) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = dict(params) if cursor is None else {**params, "cursor": cursor}
        response = await http.get("/v1/jobs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([job["id"] for job in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20, "pagination does not end"


async def test_job_listing_pages_with_a_cursor(
    sim_api: httpx.AsyncClient, simulator: tuple[Simulator, str]
) -> None:
    made = await _submit_mixed_jobs(sim_api, simulator[0])
    everything = sorted(made["v3"] + made["v25"] + made["failed"], reverse=True)

    pages = await _walk(sim_api, limit="3")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == everything

    exact = await _walk(sim_api, limit="7")
    assert exact == [everything]  # a full last page still ends with next_cursor null

    submitted = await _walk(sim_api, limit="2", status="submitted")
    assert [len(page) for page in submitted] == [2, 2, 1]
    flat = [job_id for page in submitted for job_id in page]
    assert len(set(flat)) == len(flat) == 5
    assert set(flat) == set(made["v3"] + made["v25"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "SUCCEEDED"}, "status"),
        ({"status": ""}, "status"),
        ({"model": "trinetra/kling-v9"}, "model"),
        ({"model": "kling-v3"}, "model"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "1e2"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # superscript two: str.isdigit() says yes, int() says no
        ({"limit": "0" * 19 + "1"}, "limit"),  # the value is 1, but no more than 18 digits
        ({"limit": "1" * 30}, "limit"),
        ({"limit": "1" * 5000}, "limit"),  # past int()'s default digit limit: not a 500
    ],
)
async def test_a_bad_job_listing_query_is_a_422(
    shared_api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await shared_api.get("/v1/jobs", params=params)
    assert_error(response, 422, "validation_failed", field)


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/jobs", "/", "/v1/jobs/a/b"])
@pytest.mark.parametrize("key", [True, False], ids=["with key", "without key"])
async def test_an_unknown_route_is_a_json_404(
    shared_api: httpx.AsyncClient, path: str, key: bool
) -> None:
    response = await (shared_api.get(path) if key else send_without_key(shared_api, "GET", path))
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/jobs"),
        ("PUT", "/v1/jobs"),
        ("PATCH", "/v1/jobs/job_00000000000000000000000000"),
        ("DELETE", "/v1/jobs/job_00000000000000000000000000"),
        ("POST", "/v1/models"),
    ],
)
async def test_a_wrong_method_is_a_json_405(
    shared_api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await shared_api.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers.get("allow"), response.headers


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/jobs", {"GET", "POST"}),
        ("PUT", "/v1/jobs/job_00000000000000000000000000", {"GET"}),
        ("PUT", "/v1/subscriptions/sub_00000000000000000000000000", {"GET", "PATCH", "DELETE"}),
    ],
)
async def test_a_405_allow_header_lists_every_supported_method(
    shared_api: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 section 15.5.6: a 405 carries Allow with the resource's supported methods."""
    response = await shared_api.request(method, path)
    assert response.status_code == 405, response.text
    listed = {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD"}
    assert listed == allowed


# --- API keys are never echoed ---------------------------------------------------------------


SECRET_PROVIDER_KEY = "trk_live_do_not_leak_0123456789"


def echoing_provider(status: int) -> Starlette:
    """A provider whose error message repeats the API key it was sent."""

    async def refuse(request: Request) -> Response:
        key = request.headers.get("x-api-key", "")
        return JSONResponse({"error": f"the key {key} is not valid here"}, status_code=status)

    return Starlette(routes=[Route("/v1/video/{model}", refuse, methods=["POST"])])


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_a_provider_echoing_its_api_key_never_gets_it_repeated(
    settings_factory: SettingsFactory,
    dead_url: str,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_server(echoing_provider(status)) as provider_url:
        settings = settings_factory(
            PUBLIC_URL=dead_url,
            TRINETRA_API_KEY=SECRET_PROVIDER_KEY,
            TRINETRA_BASE_URL=provider_url,
            SUBMIT_RETRY_SCHEDULE="0",
        )
        async with api_client(settings) as http:
            response = await http.post("/v1/jobs", json=job_body(V3))
            job_id = (
                response.json()["id"]
                if response.status_code == 202
                else response.json()["error"]["details"]["job_id"]
            )
            job = await wait_for_job(http, job_id, ("failed",))
            events = (await http.get("/v1/events")).json()

    assert job["error"]["message"].count("[redacted]") == 1, job["error"]
    for text in (response.text, json.dumps(job), json.dumps(events), caplog.text):
        assert SECRET_PROVIDER_KEY not in text


async def test_cancel_announces_once_and_a_later_result_is_kept_for_audit_only(
    settings_factory: SettingsFactory,
) -> None:
    async with served_with_sink(settings_factory, SIM_DELAY="0.5") as (http, sink, sink_url):
        sub = await http.post(
            "/v1/subscriptions", json={"url": sink_url + "/hook", "event_types": ["job.canceled"]}
        )
        assert sub.status_code == 201, sub.text
        created = await http.post("/v1/jobs", json=job_body())
        job_id = created.json()["id"]
        canceled = await http.post(f"/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200, canceled.text
        job = canceled.json()
        assert job["status"] == "canceled" and job["error"]["kind"] == "canceled"
        assert job["completed_at"] is not None
        again = await http.post(f"/v1/jobs/{job_id}/cancel")
        assert "already finished (canceled)" in assert_error(again, 409, "conflict")["message"]
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
        assert sink.on("/hook")[0].json()["data"]["id"] == job_id
        # The simulator finishes the job anyway and calls back: stored as late, nothing moves.
        # Read through the store (SQLite file or PostgreSQL database, whichever the run uses).
        async with Database.open(settings_factory().database_url) as store:
            with anyio.fail_after(10):
                while True:
                    outcomes = [
                        row[0]
                        for row in await store.reader.execute_fetchall(
                            "SELECT outcome FROM callbacks WHERE job_id = ?", (job_id,)
                        )
                    ]
                    if outcomes:
                        break
                    await anyio.sleep(0.05)
        # A success after the cancel is surfaced as a late_result notice (docs/providers.md):
        # the job keeps its state and outputs.
        assert outcomes == ["late_result"]
        after = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert after["status"] == "canceled" and after["outputs"] == []
        events = (await http.get("/v1/events")).json()["data"]
        assert [e["type"] for e in events if e["data"].get("id") == job_id] == [
            "job.submitted",
            "job.canceled",
        ]


async def test_cancel_an_unknown_or_others_job_is_a_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/v1/jobs/job_missing/cancel"), 404, "not_found")
    response = await send_without_key(client, "POST", "/v1/jobs/job_missing/cancel")
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "good"),
    [
        ("/v1/jobs", "job_00000000000000000000000000"),
        ("/v1/deliveries", "dlv_00000000000000000000000000"),
        ("/v1/subscriptions", "sub_00000000000000000000000000"),
        ("/v1/keys", "key_00000000000000000000000000"),
    ],
)
@pytest.mark.parametrize(
    "cursor", ["garbage", "zzz", "", "job_", "sub_0000000000000000000000000!", "evt_0" + "0" * 25]
)
async def test_a_bad_cursor_is_a_422_on_every_list(
    client: httpx.AsyncClient, path: str, good: str, cursor: str
) -> None:
    # One rule for every list, as GET /v1/events has it: a cursor not from next_cursor is a 422.
    response = await client.get(path, params={"cursor": cursor})
    assert_error(response, 422, "validation_failed", "cursor")
    wrong_kind = good.replace(good[:3], "evt")
    assert_error(await client.get(path, params={"cursor": wrong_kind}), 422, "validation_failed")
    assert (await client.get(path, params={"cursor": good})).status_code == 200


async def test_a_model_parameter_beside_input_is_told_where_it_goes(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/jobs", json={"model": V3, "prompt": "a cat", "colour": 1})
    error = assert_error(response, 422, "validation_failed", "prompt")
    assert error["details"]["fields"]["prompt"] == (
        'unknown field; model parameters go in input: {"input": {"prompt": …}}'
    )
    assert error["details"]["fields"]["colour"] == "unknown field"
    await assert_nothing_stored(api)
