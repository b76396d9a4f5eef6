"""Issue 15: never lose a result a provider was paid for.

Each test here fails with the behaviour reelhook had before: an unknown status word failing the
job, a result shape it could not read expiring silently, a result on Trinetra's account webhook
(set on the API key) never reaching the job, a confident ``charged: 0`` after a held request that
may have been billed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers

from service.core.models import ErrorKind, JobStatus
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import mark_submitted
from service.providers.apiframe import ADAPTER as APIFRAME
from service.providers.trinetra import ADAPTER as TRINETRA
from service.storage import jobs, retention
from service.storage.database import Database
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    APIFRAME_COMPLETED,
    APIFRAME_KEY,
    TOKENS,
    encode,
    serve,
    stored_callbacks,
    stored_replays,
    trinetra_done,
)
from tests.helpers.jobs import claim, make_job
from tests.servers import loopback_socket, url_of
from tests.support import send_without_key, served, store_target, wait_for_job

pytestmark = pytest.mark.anyio

SIM_TRINETRA_KEY = "sim_trinetra_key"  # what reelhook sends to its built-in simulator
VIDEO = "https://cdn.example/v/a1.mp4"
# Trinetra's documented terminal job document (docs/providers.md §1).
TRINETRA_DONE: dict[str, Any] = {
    "id": "job_klingv25_a1b2c3",
    "model": "kling-v2.5",
    "status": "succeeded",
    "output": {
        "outputs": [{"url": "https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4", "type": "video"}]
    },
    "credits_charged": 10,
}


def file_url(digest: str, media_type: str) -> str:
    return f"https://reelhook.test/v1/files/{digest}"


# --- Unknown status words (adapters) -----------------------------------------------------------


@pytest.mark.parametrize("word", ["rendering", "upscaling", "IN_REVIEW", ""])
def test_an_unknown_trinetra_word_with_outputs_is_a_success(word: str) -> None:
    update = TRINETRA.parse_callback(encode({**TRINETRA_DONE, "status": word}))
    assert update.status is JobStatus.SUCCEEDED
    assert [o.url for o in update.outputs] == ["https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4"]
    assert update.unknown_status == (word or "(empty)")


def test_an_unknown_trinetra_word_with_an_error_is_a_failure() -> None:
    body = {"id": "job_x", "status": "aborted", "error": {"message": "GPU fell over"}}
    update = TRINETRA.parse_callback(encode(body))
    assert update.status is JobStatus.FAILED
    assert update.error is not None and update.error.message == "GPU fell over"
    assert update.unknown_status == "aborted"


@pytest.mark.parametrize(
    "document",
    [
        {"id": "job_x", "status": "rendering"},
        {"id": "job_x", "status": "rendering", "message": "50% done", "output": None},
        {"id": "job_x", "status": "expired"},
    ],
)
def test_an_unknown_trinetra_word_with_neither_leaves_the_job_open(
    document: dict[str, Any],
) -> None:
    update = TRINETRA.parse_callback(encode(document))
    assert not update.status.terminal
    assert update.unknown_status == document["status"]


def test_an_unknown_apiframe_status_is_read_from_the_rest_of_the_body() -> None:
    base = {"jobId": "j1", "status": "EXPLODED", "event": "exploded"}
    assert APIFRAME.parse_callback(encode(base)).status is JobStatus.SUBMITTED
    assert APIFRAME.parse_callback(encode(base)).unknown_status == "EXPLODED"
    done = APIFRAME.parse_callback(encode({**base, "result": VIDEO}))
    assert done.status is JobStatus.SUCCEEDED and done.outputs[0].url == VIDEO
    failed = APIFRAME.parse_callback(encode({**base, "error": "provider blew up"}))
    assert failed.status is JobStatus.FAILED


# --- Alternative result shapes -----------------------------------------------------------------

APIFRAME_RESULTS = [
    VIDEO,
    {"videoUrl": VIDEO},
    {"url": VIDEO},
    {"videos": [{"url": VIDEO}]},
    {"videos": [VIDEO]},
    [VIDEO],
    [{"url": VIDEO}],
    [{"videoUrl": VIDEO, "thumbnail": "https://cdn.example/t.jpg"}],
]


@pytest.mark.parametrize("result", APIFRAME_RESULTS)
def test_every_apiframe_result_shape_yields_the_video(result: Any) -> None:
    update = APIFRAME.parse_callback(encode({**APIFRAME_COMPLETED, "result": result}))
    assert update.status is JobStatus.SUCCEEDED
    assert update.outputs[0].url == VIDEO


def kling_body(status: str, task_id: str = "867283741759111202", **extra: Any) -> dict[str, Any]:
    """Kling's own callback body (docs/providers.md, Kling callback protocol)."""
    return {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1722769557708,
        "updated_at": 1722769612000,
        "final_unit_deduction": "1",
        "task_info": {"external_task_id": "job_ours"},
        **extra,
    }


@pytest.mark.parametrize("adapter", [TRINETRA, APIFRAME], ids=["trinetra", "apiframe"])
def test_a_kling_body_passed_through_is_read_as_kling_s(adapter: Any) -> None:
    result = {"videos": [{"id": "a1", "url": VIDEO, "duration": "5.1"}]}
    done = adapter.parse_callback(encode(kling_body("succeed", task_result=result)))
    assert done.status is JobStatus.SUCCEEDED
    assert [o.url for o in done.outputs] == [VIDEO]
    assert done.external_id == "job_ours"
    # Trinetra fronts Kling: a passed-through task_id is Kling's, so the echoed external id
    # (reelhook's job id) names the job; apiframe has no external id, so task_id is the id.
    expected_id = None if adapter is TRINETRA else "867283741759111202"
    assert done.provider_job_id == expected_id
    assert done.charged == 1
    failed = adapter.parse_callback(
        encode({**kling_body("failed"), "task_status_msg": "content security check failed"})
    )
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.kind is ErrorKind.CONTENT_POLICY
    assert adapter.parse_callback(encode(kling_body("processing"))).status is JobStatus.RUNNING


def test_an_uppercase_hex_signature_verifies() -> None:
    body = encode(APIFRAME_COMPLETED)
    digest = hmac.new(
        hashlib.sha256(APIFRAME_KEY.encode()).digest(), body, hashlib.sha256
    ).hexdigest()
    for value in (digest.upper(), "sha256=" + digest.upper(), "SHA256=" + digest.upper()):
        APIFRAME.verify_callback(Headers({"X-Webhook-Signature": value}), body, APIFRAME_KEY)


# --- End to end: shapes, words and the account webhook over loopback ----------------------------


async def test_alternative_shapes_and_words_end_each_job_right_with_its_video(
    settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.api.callbacks")
    async with serve(settings_factory) as service:
        shapes = [
            await service.create_job("apiframe/kling-2.5-turbo-pro") for _ in APIFRAME_RESULTS
        ]
        for job, result in zip(shapes, APIFRAME_RESULTS, strict=True):
            document = {**APIFRAME_COMPLETED, "jobId": job["provider_job_id"], "result": result}
            response = await service.apiframe_callback(
                TOKENS.callback(job["id"], "apiframe"), document
            )
            assert response.status_code == 200, response.text

        trinetra = await service.create_job("trinetra/kling-v3")
        token = TOKENS.callback(trinetra["id"], "trinetra")
        provider_id = trinetra["provider_job_id"]
        answers = [
            await service.callback("trinetra", token, encode({"id": provider_id, "status": w}))
            for w in ("generating", "in_queue", "starting", "rendering")
        ]
        still_open = await service.job(trinetra["id"])
        kling = kling_body("succeed", task_id=provider_id, task_result={"videos": [{"url": VIDEO}]})
        finished = await service.callback("trinetra", token, encode(kling))
        done = await service.job(trinetra["id"])
        events = await service.event_types(trinetra["id"])
        metrics = (await service.provider.get("/metrics")).text
        results = [await service.job(job["id"]) for job in shapes]

    for job in results:
        assert job["status"] == "succeeded", job
        assert job["outputs"][0]["url"] == VIDEO
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["outcome"] for a in answers] == ["applied", "stale", "stale", "unrecognised"]
    assert still_open["status"] == "running"
    assert [n["kind"] for n in still_open["notices"]] == ["unknown_status"]
    assert "'rendering'" in still_open["notices"][0]["message"]
    assert finished.json()["outcome"] == "applied"
    assert done["status"] == "succeeded" and done["outputs"][0]["url"] == VIDEO
    assert events == {"job.submitted": 1, "job.running": 1, "job.succeeded": 1}
    # A metric and a log line, both naming the word.
    assert (
        'reelhook_provider_unknown_statuses_total{provider="trinetra",status="rendering"} 1.0'
        in (metrics)
    )
    assert any("unknown status 'rendering'" in r.getMessage() for r in caplog.records)


async def account_url(http: httpx.AsyncClient, provider: str = "trinetra") -> str:
    response = await http.get("/v1/providers")
    assert response.status_code == 200, response.text
    found = {p["name"]: p for p in response.json()["data"]}
    url = found[provider]["account_webhook_url"]
    assert isinstance(url, str)
    return url


async def test_the_account_webhook_url_is_shown_to_admins_and_bound_to_the_account(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        listed = (await service.api.get("/v1/providers")).json()["data"]
        anonymous = await send_without_key(service.api, "GET", "/v1/providers")
        url = await account_url(service.api)
        job = await service.create_job("trinetra/kling-v2.5")
        body = trinetra_done(job["provider_job_id"])
        wrong = [
            # Minted for another API key of the same provider: the old key's URL stops working.
            TOKENS.account_webhook("trinetra", "another_key"),
            TOKENS.account_webhook("apiframe", SIM_TRINETRA_KEY),
            TOKENS.callback(job["id"], "trinetra"),  # a per-job token is not an account token
            url.rsplit("/", 1)[1][:-2] + "xx",
        ]
        refused = [
            (await service.callback("trinetra", f"account/{token}", body)).status_code
            for token in wrong
        ]
        apiframe = await service.callback(
            "apiframe", f"account/{TOKENS.account_webhook('apiframe', APIFRAME_KEY)}", body
        )
        unchanged = await service.job(job["id"])

    assert anonymous.status_code == 401
    by_name = {p["name"]: p for p in listed}
    assert by_name["trinetra"]["callbacks"] == "per_job"
    assert by_name["segmind"]["callbacks"] == "held_request"
    assert by_name["apiframe"]["account_webhook_url"] is None  # apiframe documents none
    assert by_name["segmind"]["account_webhook_url"] is None
    assert url == (
        f"{service.settings.public_url}/v1/callbacks/trinetra/account/"
        f"{TOKENS.account_webhook('trinetra', SIM_TRINETRA_KEY)}"
    )
    assert refused == [401, 401, 401, 401]
    assert apiframe.status_code == 404
    assert unchanged["status"] == "submitted"
    assert stored_callbacks(service.settings) == []


async def test_a_result_only_on_the_account_webhook_completes_the_job(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        url = await account_url(service.api)
        by_id = await service.create_job("trinetra/kling-v3")
        by_external = await service.create_job("trinetra/kling-v3")
        # Matched by the provider's job id, as the documented terminal document carries it.
        first = await service.provider.post(url, content=trinetra_done(by_id["provider_job_id"]))
        # Matched by external_task_id (reelhook's job id, which it sends) where the document's
        # own id is in another form (here Kling's numeric task id, passed through).
        kling = kling_body("succeed", task_id="8672837", task_result={"videos": [{"url": VIDEO}]})
        kling["task_info"] = {"external_task_id": by_external["id"]}
        second = await service.provider.post(url, content=encode(kling))
        done = [await service.job(by_id["id"]), await service.job(by_external["id"])]
        events = [await service.event_types(job["id"]) for job in (by_id, by_external)]

    assert first.json() == {"received": True, "job_id": by_id["id"], "outcome": "applied"}
    assert second.json() == {"received": True, "job_id": by_external["id"], "outcome": "applied"}
    assert done[0]["status"] == "succeeded"
    assert done[0]["outputs"] == [{"url": "https://cdn.trinetra.ai/out/a1.mp4", "type": "video"}]
    assert done[1]["status"] == "succeeded"
    assert done[1]["outputs"] == [{"url": VIDEO, "type": "video"}]
    assert events == [{"job.submitted": 1, "job.succeeded": 1}] * 2
    rows = stored_callbacks(service.settings)
    assert [(row[0], row[2]) for row in rows] == [
        (by_id["id"], "applied"),
        (by_external["id"], "applied"),
    ]


async def test_an_account_document_naming_another_job_is_refused(
    settings_factory: SettingsFactory,
) -> None:
    """external_task_id names one job, the provider job id another: the same mismatch check as
    per-job callbacks, and nothing changes."""
    async with serve(settings_factory) as service:
        url = await account_url(service.api)
        one = await service.create_job("trinetra/kling-v3")
        other = await service.create_job("trinetra/kling-v3")
        document = {
            **TRINETRA_DONE,
            "id": other["provider_job_id"],
            "external_task_id": one["id"],
        }
        answer = await service.provider.post(url, content=encode(document))
        unchanged = [await service.job(one["id"]), await service.job(other["id"])]
    assert answer.status_code == 401, answer.text
    assert [job["status"] for job in unchanged] == ["submitted", "submitted"]
    assert stored_callbacks(service.settings) == []


async def test_external_task_id_alone_finds_the_job(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        url = await account_url(service.api)
        job = await service.create_job("trinetra/kling-v3")
        document = {
            "id": job["provider_job_id"],
            "external_task_id": job["id"],
            "status": "succeeded",
            "output": {"outputs": [{"url": VIDEO, "type": "video"}]},
        }
        answer = await service.provider.post(url, content=encode(document))
        done = await service.job(job["id"])
    assert answer.json() == {"received": True, "job_id": job["id"], "outcome": "applied"}
    assert done["status"] == "succeeded" and done["outputs"][0]["url"] == VIDEO


async def test_a_result_on_both_routes_gets_one_terminal_event(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        url = await account_url(service.api)
        job = await service.create_job("trinetra/kling-v2.5")
        body = trinetra_done(job["provider_job_id"])
        per_job = await service.callback("trinetra", TOKENS.callback(job["id"], "trinetra"), body)
        account = await service.provider.post(url, content=body)
        again = await service.provider.post(url, content=body)
        events = await service.event_types(job["id"])
    assert [r.json()["outcome"] for r in (per_job, account, again)] == [
        "applied",
        "duplicate",
        "duplicate",
    ]
    assert events == {"job.submitted": 1, "job.succeeded": 1}
    # One document, three arrivals: stored once, the two on the account route counted.
    assert stored_replays(service.settings) == [(job["id"], "applied", 2)]


async def test_an_account_document_for_no_known_job_is_kept_not_refused(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        url = await account_url(service.api)
        answer = await service.provider.post(url, content=trinetra_done("job_not_yet_known"))
        unreadable = await service.provider.post(url, content=b"{not json")
    assert answer.status_code == 202
    assert answer.json() == {"received": True, "job_id": None, "outcome": "unmatched"}
    assert unreadable.status_code == 400
    db = service.settings.database_url
    async with Database.open(db) as database:
        assert await jobs.count_unmatched(database.reader, "trinetra") == 2


async def test_an_early_account_document_completes_its_job_when_the_id_is_recorded(
    tmp_path: Path,
) -> None:
    """The result overtook the provider's answer to the submit: it is applied the moment the
    provider's job id is recorded."""
    publisher = Publisher(file_url)
    job = make_job(1, model="trinetra/kling-v2.5")
    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction() as conn:
            await jobs.insert(conn, job)
            await jobs.record_unmatched(
                conn,
                provider="trinetra",
                provider_job_id="job_klingv25_early",
                received_at=1.0,
                reason="no job yet",
                body=trinetra_done("job_klingv25_early"),
            )
        after, moved = await mark_submitted(
            db, publisher, job.id, "job_klingv25_early", 2.0, token=await claim(db, job.id)
        )
        events = await db.reader.execute_fetchall("SELECT type FROM events ORDER BY seq")
        waiting = await jobs.count_unmatched(db.reader)
    assert moved and after is not None
    assert after.status is JobStatus.SUCCEEDED
    assert after.outputs[0].url == "https://cdn.trinetra.ai/out/a1.mp4"
    assert [row[0] for row in events] == ["job.submitted", "job.succeeded"]
    assert waiting == 0


# --- Charged cost unknown, not zero ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "charged", "unknown"), [(500, None, True), (502, None, True), (400, 0, False)]
)
async def test_a_held_request_that_failed_after_it_started_has_an_unknown_charge(
    settings_factory: SettingsFactory, status: int, charged: float | None, unknown: bool
) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1")
    async with served(settings, sock) as http:
        changed = await http.put("/sim/_sim/scenario", json={"submit_status": status})
        assert changed.status_code == 200, changed.text
        created = await http.post(
            "/v1/jobs",
            json={"model": "segmind/kling-2.5-turbo", "input": {"prompt": "A fox", "duration": 5}},
        )
        assert created.status_code == 202, created.text
        job = await wait_for_job(http, created.json()["id"])
    assert job["status"] == "failed"
    assert job["cost"]["charged"] == charged
    assert job["cost"].get("charged_unknown", False) is unknown


async def test_retention_prunes_old_unmatched_account_documents(tmp_path: Path) -> None:
    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction() as conn:
            for received_at in (10.0, 20.0, 500.0):
                await jobs.record_unmatched(
                    conn,
                    provider="trinetra",
                    provider_job_id=f"job_{received_at:g}",
                    received_at=received_at,
                    reason="no job yet",
                    body=b"{}",
                )
        async with db.transaction() as conn:
            batch = await retention.prune_unmatched(conn, cutoff=100.0, after=0, limit=100)
        left = await db.reader.execute_fetchall("SELECT provider_job_id FROM unmatched_callbacks")
    assert batch.deleted == {"unmatched_callbacks": 2}
    assert [row[0] for row in left] == ["job_500"]
