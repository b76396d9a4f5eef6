"""The simulator answers as each provider documents, not as reelhook's catalog says (issue 15).

Each provider validates with its own rules (Trinetra's parameter tables, apiframe's OpenAPI with
``additionalProperties: false``, Segmind's field list), checks the API key, answers errors in its
own shape, and is reachable at its real path layout: under its real host name, or on a port of
its own, where Segmind's own Python SDK runs against it unmodified.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
import segmind  # type: ignore[import-untyped]  # the SDK ships no type hints

from service.core.models import Cost, Job, JobStatus
from service.jobs.catalog import MODELS
from service.providers import CALLBACK_ADAPTERS, HELD_ADAPTERS
from service.sim import Scenario, Simulator, create_sim_app
from service.sim.simulator import HOSTS, create_provider_app
from tests.servers import run_server

pytestmark = pytest.mark.anyio

KEYS = {"trinetra": "tk_right", "apiframe": "afk_right", "segmind": "sg_right"}
CALLBACK = "http://127.0.0.1:9/v1/callbacks/x/token"  # never called: the delay is an hour


def job_for(model: str, raw: dict[str, Any]) -> Job:
    """A job whose input reelhook's catalog accepted."""
    spec = MODELS[model]
    return Job(
        id="job_01JSIMRULES00000000000000",
        owner_key_id="key_test",
        model=model,
        provider=spec.provider,
        status=JobStatus.PENDING,
        input=spec.validate(raw),
        cost=Cost(estimated=1, unit="credits"),
        created_at=0,
        deadline_at=3600,
    )


def request_for(model: str, raw: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path, body, headers) of reelhook's own request for a catalog-accepted input."""
    job = job_for(model, raw)
    provider = job.provider
    request = CALLBACK_ADAPTERS[provider].submit_request(job, CALLBACK, KEYS[provider])
    return f"/{provider}{request.path}", request.json, request.headers


@pytest.fixture
async def sim() -> Any:
    simulator = Simulator(Scenario(delay=3600), api_keys=KEYS)
    async with (
        run_server(create_sim_app(simulator)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        yield http


async def test_reelhook_s_own_requests_are_accepted(sim: httpx.AsyncClient) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("trinetra/kling-v2.5", {"prompt": "A fox", "mode": "pro", "cfg_scale": 0.3}),
        ("trinetra/kling-v3", {"prompt": "A fox", "resolution": "1080p"}),
        ("trinetra/kling-v3-omni", {"prompt": "A fox", "duration": 15}),
        ("apiframe/kling-2.5-turbo-pro", {"prompt": "A fox", "cfg_scale": 0.5, "duration": 10}),
    ]
    for model, raw in cases:
        path, body, headers = request_for(model, raw)
        answer = await sim.post(path, json=body, headers=headers)
        assert answer.status_code == 202, (model, answer.text)


@pytest.mark.parametrize(
    ("model", "raw", "change", "problem"),
    [
        # apiframe's Kling page calls it cfg_scale; its OpenAPI schema (additionalProperties:
        # false) knows only guidance_scale. The catalog accepts cfg_scale; a request that named
        # it as the page does is refused.
        (
            "apiframe/kling-2.5-turbo-pro",
            {"prompt": "A fox", "cfg_scale": 0.5},
            lambda b: {**b, "klingParams": {"cfg_scale": 0.5}},
            "klingParams.cfg_scale",
        ),
        (
            "apiframe/kling-2.5-turbo-pro",
            {"prompt": "A fox"},
            lambda b: {**b, "webhookEvents": []},
            "webhookEvents",
        ),
        (
            "apiframe/kling-2.5-turbo-pro",
            {"prompt": "A fox"},
            lambda b: {**b, "klingParams": {**b["klingParams"], "guidance_scale": 1.5}},
            "klingParams.guidance_scale",
        ),
        (
            "apiframe/kling-2.5-turbo-pro",
            {"prompt": "A fox"},
            lambda b: {**b, "klingParams": {"negative_prompt": "n" * 2501}},
            "klingParams.negative_prompt",
        ),
        (
            "apiframe/kling-2.5-turbo-pro",
            {"prompt": "A fox"},
            lambda b: {**b, "callbackUrl": CALLBACK},
            "callbackUrl",
        ),
    ],
)
async def test_apiframe_refuses_what_its_openapi_refuses(
    sim: httpx.AsyncClient, model: str, raw: dict[str, Any], change: Any, problem: str
) -> None:
    path, body, headers = request_for(model, raw)
    answer = await sim.post(path, json=change(body), headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.headers["x-request-id"]
    assert answer.json()["error"] == "Validation failed"
    assert problem in answer.json()["details"]


@pytest.mark.parametrize(
    ("model", "raw", "change", "problem"),
    [
        # Sent only when set (issue 15); a table that lists no such parameter refuses it.
        ("trinetra/kling-v3", {"prompt": "A fox"}, {"seed": 7}, "unknown parameter 'seed'"),
        ("trinetra/kling-v3-omni", {"prompt": "A fox"}, {"mode": "pro"}, "unknown parameter"),
        ("trinetra/kling-v2.5", {"prompt": "A fox"}, {"duration": 12}, "duration"),
        ("trinetra/kling-v3", {"prompt": "A fox"}, {"resolution": "4k"}, "resolution"),
        ("trinetra/kling-v2.5", {"prompt": "A fox"}, {"mode": "t2v"}, "mode"),
    ],
)
async def test_trinetra_refuses_what_its_tables_refuse(
    sim: httpx.AsyncClient, model: str, raw: dict[str, Any], change: dict[str, Any], problem: str
) -> None:
    path, body, headers = request_for(model, raw)
    answer = await sim.post(path, json={**body, **change}, headers=headers)
    assert answer.status_code == 400, answer.text
    assert problem in answer.json()["error"]


@pytest.mark.parametrize(
    ("provider", "path", "body", "header"),
    [
        ("trinetra", "/trinetra/v1/video/kling-v3", {"prompt": "A fox"}, "X-API-Key"),
        (
            "apiframe",
            "/apiframe/v2/videos/generate",
            {"model": "kling-2.5-turbo-pro", "prompt": "A fox"},
            "X-API-Key",
        ),
        ("segmind", "/segmind/v1/kling-2.5-turbo", {"prompt": "A fox"}, "x-api-key"),
    ],
)
async def test_each_provider_checks_the_api_key(
    sim: httpx.AsyncClient, provider: str, path: str, body: dict[str, Any], header: str
) -> None:
    for headers in ({}, {header: "wrong"}):
        answer = await sim.post(path, json=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert isinstance(answer.json()["error"], str)
        assert ("x-request-id" in answer.headers) is (provider == "apiframe")


async def test_each_provider_answers_at_its_real_host_and_paths(sim: httpx.AsyncClient) -> None:
    """A client using the provider's real base URL, routed to the simulator, reaches it."""
    cases = [
        ("trinetra", "/v1/video/kling-v3", {"prompt": "A fox", "callback_url": CALLBACK}),
        (
            "apiframe",
            "/v2/videos/generate",
            {"model": "kling-2.5-turbo-pro", "prompt": "A fox", "webhookUrl": CALLBACK},
        ),
    ]
    for provider, path, body in cases:
        answer = await sim.post(
            path,
            json=body,
            headers={"Host": HOSTS[provider], "X-API-Key": KEYS[provider]},
        )
        assert answer.status_code == 202, (provider, answer.text)


# --- Segmind's own SDK -------------------------------------------------------------------------


@pytest.fixture
async def segmind_url() -> Any:
    simulator = Simulator(Scenario(delay=0.05), api_keys=KEYS)
    async with run_server(create_provider_app(simulator, "segmind")) as url:
        yield url


def run_sync(url: str, key: str, **params: Any) -> httpx.Response:
    client = segmind.SegmindClient(api_key=key, base_url=f"{url}/v1")
    try:
        response: httpx.Response = client.run_sync("kling-2.5-turbo", **params)
        response.read()
        return response
    finally:
        client._client.close()


async def test_segmind_s_sdk_runs_unmodified_against_the_simulator(segmind_url: str) -> None:
    # The page's own example, duration as the string "10".
    example = {
        "prompt": "A beloved community figure moves through a 1920s street carnival",
        "negative_prompt": "no dark tones, no blur, no distort",
        "cfg_scale": 0.7,
        "duration": "10",
        "mode": "pro",
        "aspect_ratio": "16:9",
    }
    answer = await anyio.to_thread.run_sync(
        lambda: run_sync(segmind_url, KEYS["segmind"], **example)
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["x-credits-consumed"] == "0.88"
    assert answer.content.startswith(b"\x00\x00\x00") and b"ftyp" in answer.content[:16]

    # reelhook's own request for the same choices (the integer the table documents).
    job = job_for("segmind/kling-2.5-turbo", {**example, "duration": "10"})
    ours = HELD_ADAPTERS["segmind"].submit_request(job, KEYS["segmind"]).json
    assert ours["duration"] == 10
    answer = await anyio.to_thread.run_sync(lambda: run_sync(segmind_url, KEYS["segmind"], **ours))
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("key", "params", "status", "detail"),
    [
        ("wrong", {"prompt": "A fox"}, 401, "Unauthorized"),
        (KEYS["segmind"], {"prompt": "A fox", "mode": "std"}, 400, "mode must be pro"),
        (KEYS["segmind"], {"prompt": "A fox", "duration": 7}, 400, "duration must be 5 or 10"),
        (
            KEYS["segmind"],
            {"prompt": "A fox", "tail_image_url": "https://example.org/t.png"},
            400,
            "tail_image_url requires",
        ),
    ],
)
async def test_segmind_s_sdk_reads_the_simulator_s_errors(
    segmind_url: str, key: str, params: dict[str, Any], status: int, detail: str
) -> None:
    with pytest.raises(segmind.SegmindError) as raised:
        await anyio.to_thread.run_sync(lambda: run_sync(segmind_url, key, **params))
    assert raised.value.status == status
    assert raised.value.detail is not None and detail in raised.value.detail


def test_the_simulator_does_not_read_reelhook_s_catalog() -> None:
    """The import contract "simulator-disagrees" (pyproject.toml) keeps it so; this names it."""
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    contracts = {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}
    assert contracts["simulator-disagrees"]["forbidden_modules"] == [
        "service.jobs.catalog",
        "service.jobs.modelspec",
    ]
