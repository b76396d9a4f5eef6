"""Every inbound callback ends in one named outcome, reported in one place (docs/contract.md §4).

The outcomes are what a metrics counter by provider and outcome hooks into; this drives reelhook
through each of them over real loopback HTTP and checks what observers and the log hear, and that
no rejected callback touched the job.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import httpx
import pytest

from service.jobs.callback_outcomes import CallbackOutcome
from service.jobs.lifecycle import Outcome
from service.providers.apiframe import signature
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    APIFRAME_KEY,
    TOKENS,
    apiframe_completed,
    apiframe_progress,
    encode,
    stored_replays,
    trinetra_done,
)
from tests.servers import loopback_socket, url_of
from tests.support import served

pytestmark = pytest.mark.anyio

Out = CallbackOutcome


async def create(http: httpx.AsyncClient, model: str) -> dict[str, Any]:
    response = await http.post("/v1/jobs", json={"model": model, "input": {"prompt": "A fox"}})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def event_types(http: httpx.AsyncClient, job_id: str) -> Counter[str]:
    events = (await http.get("/v1/events", params={"limit": 1000})).json()["data"]
    return Counter(e["type"] for e in events if e["data"].get("id") == job_id)


async def test_each_outcome_is_named_once_and_rejections_touch_nothing(
    settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.jobs.callbacks")
    heard: list[tuple[str, CallbackOutcome]] = []

    def broken(provider: str, outcome: CallbackOutcome) -> None:
        raise RuntimeError("an observer that fails must not fail the callback")

    sock = loopback_socket()
    public_url = url_of(sock)
    settings = settings_factory(
        PUBLIC_URL=public_url,
        SIM_DELAY="3600",
        APIFRAME_API_KEY=APIFRAME_KEY,
        APIFRAME_BASE_URL=f"{public_url}/sim/apiframe",
        MAX_CALLBACK_BYTES="2048",
    )
    observers = [lambda provider, outcome: heard.append((provider, outcome)), broken]
    async with served(settings, sock, callback_observers=observers) as http:
        trinetra = await create(http, "trinetra/kling-v3")
        other = await create(http, "trinetra/kling-v3")
        apiframe = await create(http, "apiframe/kling-2.5-turbo-pro")
        t_token = TOKENS.callback(trinetra["id"], "trinetra")
        a_token = TOKENS.callback(apiframe["id"], "apiframe")
        done = trinetra_done(trinetra["provider_job_id"])
        padded = json.loads(done)
        padded["padding"] = "x" * 4000

        async def post(
            provider: str, token: str, body: bytes, headers: dict[str, str] | None = None
        ) -> int:
            response = await http.post(
                f"/v1/callbacks/{provider}/{token}", content=body, headers=headers or {}
            )
            return response.status_code

        async def apiframe_post(document: dict[str, Any], key: str = APIFRAME_KEY) -> int:
            body = encode(document)
            return await post(
                "apiframe", a_token, body, {"X-Webhook-Signature": signature(body, key)}
            )

        rejected = [
            await post("kling", t_token, done),
            await post("segmind", t_token, done),
            await post("trinetra", t_token[:-2] + "xx", done),
            await post("trinetra", t_token, encode(padded)),
            await apiframe_post(apiframe_completed(apiframe["provider_job_id"]), key="afk_wrong"),
            # Verified by its token but unreadable: kept and noted on its own job (issue 15).
            await post("trinetra", TOKENS.callback(other["id"], "trinetra"), b"{not json"),
            await post(
                "trinetra", TOKENS.callback("job_01JNOSUCHJOB0000000000000", "trinetra"), done
            ),
            await post("trinetra", t_token, trinetra_done(other["provider_job_id"])),
        ]
        untouched = [(await http.get(f"/v1/jobs/{j['id']}")).json() for j in (trinetra, apiframe)]
        untouched_events = [await event_types(http, j["id"]) for j in (trinetra, apiframe)]

        progress = apiframe_progress(apiframe["provider_job_id"])
        completed = apiframe_completed(apiframe["provider_job_id"])
        accepted = [
            await apiframe_post(progress),
            await apiframe_post({**progress, "progress": 60}),
            await apiframe_post(completed),
            await apiframe_post(completed),
            await apiframe_post(progress),
        ]
        final = (await http.get(f"/v1/jobs/{apiframe['id']}")).json()
        final_events = await event_types(http, apiframe["id"])

        # Issue 15: the account webhook, unknown status words, a success after a failure.
        account = TOKENS.account_webhook("trinetra", "sim_trinetra_key")
        provider_id = trinetra["provider_job_id"]
        failed = {"id": provider_id, "status": "failed", "error": {"message": "GPU fell over"}}
        issue15 = [
            await post("trinetra", f"account/{account}", b"{not json"),
            await post("trinetra", f"account/{account}", trinetra_done("job_nobody_knows")),
            await post("trinetra", t_token, encode({"id": provider_id, "status": "rendering"})),
            await post("trinetra", t_token, encode(failed)),
            await post("trinetra", f"account/{account}", trinetra_done(provider_id)),
        ]
        noted = (await http.get(f"/v1/jobs/{trinetra['id']}")).json()

    assert rejected == [404, 404, 401, 413, 401, 400, 404, 401]
    assert issue15 == [400, 202, 200, 200, 200]
    assert noted["status"] == "failed"
    assert [n["kind"] for n in noted["notices"]] == ["unknown_status", "late_result"]
    assert noted["notices"][1]["outputs"] == [
        {"url": "https://cdn.trinetra.ai/out/a1.mp4", "type": "video"}
    ]
    assert untouched == [trinetra, apiframe]
    assert untouched_events == [{"job.submitted": 1}, {"job.submitted": 1}]
    assert accepted == [200] * 5
    assert final["status"] == "succeeded"
    assert final_events == {"job.submitted": 1, "job.running": 1, "job.succeeded": 1}

    expected = [
        ("unknown", Out.UNKNOWN_PROVIDER),  # the path segment is never used as a label
        ("segmind", Out.UNKNOWN_PROVIDER),
        ("trinetra", Out.BAD_TOKEN),
        ("trinetra", Out.TOO_LARGE),
        ("apiframe", Out.BAD_SIGNATURE),
        ("trinetra", Out.UNREADABLE),
        ("trinetra", Out.UNKNOWN_JOB),
        ("trinetra", Out.JOB_MISMATCH),
        ("apiframe", Out.APPLIED),
        ("apiframe", Out.STALE),
        ("apiframe", Out.APPLIED),
        ("apiframe", Out.DUPLICATE),
        ("apiframe", Out.LATE),
        ("trinetra", Out.BAD_BODY),
        ("trinetra", Out.UNMATCHED),
        ("trinetra", Out.UNRECOGNISED),
        ("trinetra", Out.APPLIED),
        ("trinetra", Out.LATE_RESULT),
    ]
    assert heard == expected
    assert {outcome for _, outcome in heard} == set(CallbackOutcome)
    logged = [
        (getattr(r, "provider", None), r.callback_outcome)
        for r in caplog.records
        if hasattr(r, "callback_outcome")
    ]
    assert logged == [(provider, outcome.value) for provider, outcome in expected]
    # Stored: the unreadable body (on its job), the accepted apiframe callbacks, and the
    # Trinetra ones that reached a job; the unmatched account documents are kept apart.
    # The apiframe duplicate and straggler repeat earlier bodies byte for byte: each is counted
    # on the row of its first copy, not stored again (issue 18).
    assert stored_replays(settings) == [
        (other["id"], "unreadable", 0),
        (apiframe["id"], "applied", 1),
        (apiframe["id"], "stale", 0),
        (apiframe["id"], "applied", 1),
        *((trinetra["id"], outcome.value, 0) for _, outcome in expected[15:]),
    ]
    assert [outcome for _, outcome in expected[8:13]] == [
        Out.APPLIED,
        Out.STALE,
        Out.APPLIED,
        Out.DUPLICATE,
        Out.LATE,
    ]


def test_accepted_outcomes_are_the_lifecycles_own() -> None:
    # An unreadable body is stored by the lifecycle but answered 400; an unmatched account
    # document is accepted (202) before any job is known.
    assert {o.value for o in CallbackOutcome if o.accepted} == (
        {o.value for o in Outcome} - {"unreadable"}
    ) | {"unmatched"}
