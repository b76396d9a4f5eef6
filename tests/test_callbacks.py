"""``POST /v1/callbacks/{provider}/{token}`` over real loopback HTTP (docs/contract.md §3-§4).

reelhook runs under uvicorn with its in-process simulator; the simulator's own callbacks are pushed
an hour out (SIM_DELAY) so the test plays the provider itself. Each test then checks the job, the
event log and - after the service has stopped - the ``callbacks`` audit table in SQLite.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest
from itsdangerous import URLSafeSerializer

from service.core.tokens import Tokens
from service.providers.apiframe import signature
from tests.conftest import SettingsFactory
from tests.helpers.callbacks import (
    APIFRAME_KEY,
    SECRET_KEY,
    TOKENS,
    TRINETRA_MODEL,
    apiframe_completed,
    apiframe_progress,
    encode,
    serve,
    stored_callbacks,
    stored_replays,
    trinetra_done,
    trinetra_failed,
)
from tests.support import ADMIN_KEY, assert_error

pytestmark = pytest.mark.anyio

APIFRAME_MODEL = "apiframe/kling-2.5-turbo-pro"


# --- accepted callbacks --------------------------------------------------------------------------


async def test_terminal_duplicate_and_late_callbacks(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        job_id, provider_job_id = job["id"], job["provider_job_id"]
        token = TOKENS.callback(job_id, "trinetra")
        body = trinetra_done(provider_job_id)

        response = await service.callback("trinetra", token, body)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "job_id": job_id, "outcome": "applied"}
        # Compact JSON, as the framework's JSONResponse renders it (the answer is built by
        # orjson, docs/performance.md §4).
        assert (
            response.content
            == json.dumps(
                {"received": True, "job_id": job_id, "outcome": "applied"}, separators=(",", ":")
            ).encode()
        )
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(response.content))
        done = await service.job(job_id)
        assert done["status"] == "succeeded"
        assert done["outputs"] == [{"url": "https://cdn.trinetra.ai/out/a1.mp4", "type": "video"}]
        assert done["error"] is None
        assert done["cost"]["charged"] == 10
        assert done["completed_at"] is not None
        assert done["provider_job_id"] == provider_job_id
        succeeded = await service.events(job_id, "job.succeeded")
        assert len(succeeded) == 1
        assert succeeded[0]["data"] == done

        # The provider delivers the same document again: acknowledged, nothing announced.
        again = await service.callback("trinetra", token, body)
        assert again.status_code == 200, again.text
        assert again.json()["outcome"] == "duplicate"
        assert await service.events(job_id, "job.succeeded") == succeeded

        # A contradicting report after the terminal state is stored, but changes nothing.
        late = await service.callback("trinetra", token, trinetra_failed(provider_job_id))
        assert late.status_code == 200, late.text
        assert late.json()["outcome"] == "late"
        assert await service.job(job_id) == done
        assert await service.event_types(job_id) == {"job.submitted": 1, "job.succeeded": 1}
        assert await service.events(job_id, "job.failed") == []

    # The same document again is stored once and counted (issue 18), never copied.
    assert stored_callbacks(service.settings) == [
        (job_id, "trinetra", "applied", body),
        (job_id, "trinetra", "late", trinetra_failed(provider_job_id)),
    ]
    assert stored_replays(service.settings) == [(job_id, "applied", 1), (job_id, "late", 0)]


async def test_trinetra_failure_callback(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        token = TOKENS.callback(job["id"], "trinetra")
        response = await service.callback(
            "trinetra", token, trinetra_failed(job["provider_job_id"])
        )
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "applied"
        failed = await service.job(job["id"])
        assert failed["status"] == "failed"
        assert failed["outputs"] == []
        assert failed["error"]["kind"] == "content_policy"
        assert failed["cost"]["charged"] == 0
        assert await service.event_types(job["id"]) == {"job.submitted": 1, "job.failed": 1}
    assert [row[2] for row in stored_callbacks(service.settings)] == ["applied"]


async def test_apiframe_progress_then_completed_then_stragglers(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(APIFRAME_MODEL)
        job_id, provider_job_id = job["id"], job["provider_job_id"]
        token = TOKENS.callback(job_id, "apiframe")

        progress = apiframe_progress(provider_job_id)
        first = await service.apiframe_callback(token, progress)
        assert first.status_code == 200, first.text
        assert first.json()["outcome"] == "applied"
        assert (await service.job(job_id))["status"] == "running"

        repeat = await service.apiframe_callback(token, {**progress, "progress": 60})
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["outcome"] == "stale"

        completed = await service.apiframe_callback(token, apiframe_completed(provider_job_id))
        assert completed.status_code == 200, completed.text
        assert completed.json()["outcome"] == "applied"
        done = await service.job(job_id)
        assert done["status"] == "succeeded"
        assert done["outputs"] == [
            {"url": "https://cdn.apiframe.ai/results/a1b2.mp4", "type": "video"}
        ]
        assert done["cost"]["charged"] == 4

        # Progress delivered out of order, after completion: the job stays succeeded.
        straggler = await service.apiframe_callback(token, progress)
        assert straggler.status_code == 200, straggler.text
        assert straggler.json()["outcome"] == "late"
        assert await service.job(job_id) == done
        assert await service.event_types(job_id) == {
            "job.submitted": 1,
            "job.running": 1,
            "job.succeeded": 1,
        }

    outcomes = [(row[0], row[1], row[2]) for row in stored_callbacks(service.settings)]
    # The straggler repeats the first progress byte for byte: counted on its row, not copied.
    assert outcomes == [
        (job_id, "apiframe", "applied"),
        (job_id, "apiframe", "stale"),
        (job_id, "apiframe", "applied"),
    ]
    assert [replays for _, _, replays in stored_replays(service.settings)] == [1, 0, 0]


async def test_apiframe_accepts_a_bare_hex_signature(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(APIFRAME_MODEL)
        body = encode(apiframe_completed(job["provider_job_id"]))
        bare = signature(body, APIFRAME_KEY).removeprefix("sha256=")
        token = TOKENS.callback(job["id"], "apiframe")
        response = await service.callback("apiframe", token, body, {"X-Webhook-Signature": bare})
        assert response.status_code == 200, response.text
        assert (await service.job(job["id"]))["status"] == "succeeded"


# --- rejected callbacks --------------------------------------------------------------------------


async def test_bad_tokens_are_refused(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        job_id = job["id"]
        body = trinetra_done(job["provider_job_id"])
        genuine = TOKENS.callback(job_id, "trinetra")
        payload, _, mac = genuine.rpartition(".")
        other_payload, _, other_mac = TOKENS.callback("job_01JOTHER", "trinetra").rpartition(".")
        forged = [
            "not-a-token",
            f"{payload}.{other_mac}",  # another token's signature
            f"{other_payload}.{mac}",  # this token's signature on another payload
            f"{payload}.",  # no signature at all
            payload,
            URLSafeSerializer(SECRET_KEY).dumps([job_id, "trinetra"]),  # no salt
            URLSafeSerializer(SECRET_KEY, salt="reelhook.file-link.v1").dumps(
                [job_id, "trinetra"]
            ),  # the file-link purpose
            Tokens(["another-secret-key-0123456789"]).callback(job_id, "trinetra"),
        ]
        for token in forged:
            response = await service.callback("trinetra", token, body)
            assert_error(response, 401, "unauthorized")

        # A genuine token minted for another provider's path.
        response = await service.callback("apiframe", genuine, body)
        assert_error(response, 401, "unauthorized")
        # And a genuine apiframe token (for this job) on the Trinetra path.
        response = await service.callback("trinetra", TOKENS.callback(job_id, "apiframe"), body)
        assert_error(response, 401, "unauthorized")

        assert await service.job(job_id) == job
        assert await service.event_types(job_id) == {"job.submitted": 1}
    assert stored_callbacks(service.settings) == []


async def test_a_rotated_key_still_verifies_old_tokens(settings_factory: SettingsFactory) -> None:
    """Keys are a list, newest last: tokens minted with an older key keep working."""
    async with serve(
        settings_factory, SECRET_KEYS=f"{SECRET_KEY},a-newer-secret-key-0123456789"
    ) as service:
        job = await service.create_job(TRINETRA_MODEL)
        response = await service.callback(
            "trinetra",
            TOKENS.callback(job["id"], "trinetra"),
            trinetra_done(job["provider_job_id"]),
        )
        assert response.status_code == 200, response.text
        assert (await service.job(job["id"]))["status"] == "succeeded"


async def test_bad_apiframe_signatures_are_refused(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(APIFRAME_MODEL)
        job_id = job["id"]
        token = TOKENS.callback(job_id, "apiframe")
        body = encode(apiframe_completed(job["provider_job_id"]))
        tampered = body.replace(b'"creditCost": 4', b'"creditCost": 0')
        assert tampered != body
        attempts: list[tuple[bytes, dict[str, str]]] = [
            (body, {"X-Webhook-Signature": signature(body, "afk_some_other_key")}),
            (tampered, {"X-Webhook-Signature": signature(body, APIFRAME_KEY)}),
            (body, {}),
            (body, {"X-Webhook-Signature": ""}),
            # The signature is checked before the body is parsed.
            (b"{not json", {"X-Webhook-Signature": signature(body, APIFRAME_KEY)}),
        ]
        for attempt_body, headers in attempts:
            response = await service.callback("apiframe", token, attempt_body, headers)
            assert_error(response, 401, "unauthorized")

        assert await service.job(job_id) == job
        assert await service.event_types(job_id) == {"job.submitted": 1}
    assert stored_callbacks(service.settings) == []


async def test_a_body_naming_another_provider_job_is_refused(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        trinetra = await service.create_job(TRINETRA_MODEL)
        other = await service.create_job(TRINETRA_MODEL)
        apiframe = await service.create_job(APIFRAME_MODEL)

        # Job A's token carrying job B's terminal document.
        response = await service.callback(
            "trinetra",
            TOKENS.callback(trinetra["id"], "trinetra"),
            trinetra_done(other["provider_job_id"]),
        )
        assert_error(response, 401, "unauthorized")
        # A correctly signed apiframe webhook about some other apiframe job.
        response = await service.apiframe_callback(
            TOKENS.callback(apiframe["id"], "apiframe"),
            apiframe_completed("00000000-0000-4000-8000-000000000000"),
        )
        assert_error(response, 401, "unauthorized")

        for job in (trinetra, other, apiframe):
            assert await service.job(job["id"]) == job
            assert await service.event_types(job["id"]) == {"job.submitted": 1}
    assert stored_callbacks(service.settings) == []


async def test_a_token_for_an_unknown_job_is_not_found(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        response = await service.callback(
            "trinetra",
            TOKENS.callback("job_01JNOSUCHJOB0000000000000", "trinetra"),
            trinetra_done(job["provider_job_id"]),
        )
        assert_error(response, 404, "not_found")
        # A genuine token whose job belongs to another provider is no job of this one.
        apiframe = await service.create_job(APIFRAME_MODEL)
        response = await service.callback(
            "trinetra",
            TOKENS.callback(apiframe["id"], "trinetra"),
            trinetra_done(apiframe["provider_job_id"]),
        )
        assert_error(response, 404, "not_found")

        assert await service.job(job["id"]) == job
        assert await service.job(apiframe["id"]) == apiframe
        assert await service.event_types(job["id"]) == {"job.submitted": 1}
        assert await service.event_types(apiframe["id"]) == {"job.submitted": 1}
        assert await service.events(job["id"], "job.succeeded") == []
    assert stored_callbacks(service.settings) == []


async def test_oversized_bodies_are_refused(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory, MAX_CALLBACK_BYTES="2048") as service:
        job = await service.create_job(TRINETRA_MODEL)
        token = TOKENS.callback(job["id"], "trinetra")
        document = json.loads(trinetra_done(job["provider_job_id"]))
        document["padding"] = "x" * 3000
        big = encode(document)
        assert len(big) > 2048

        response = await service.callback("trinetra", token, big)
        assert_error(response, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 1024):
                yield big[start : start + 1024]

        # Without a Content-Length the cap must hold while streaming, too.
        streamed = await service.provider.post(
            f"/v1/callbacks/trinetra/{token}",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert_error(streamed, 413, "payload_too_large")

        assert await service.job(job["id"]) == job
        assert await service.event_types(job["id"]) == {"job.submitted": 1}

        # Just under the cap is fine.
        document["padding"] = "x" * (2048 - len(big) + 3000 - 1)
        fits = encode(document)
        assert len(fits) == 2047
        response = await service.callback("trinetra", token, fits)
        assert response.status_code == 200, response.text
    assert [row[2] for row in stored_callbacks(service.settings)] == ["applied"]


UNREADABLE = [b"", b"{not json", b"\xff\xfe\x00", b"[1, 2, 3]", b'"succeeded"', b"null", b"42"]


async def test_unreadable_bodies_are_bad_requests(settings_factory: SettingsFactory) -> None:
    """Bad JSON and JSON that is not an object: 400, never a 500, the job's state unchanged.

    Verified bodies (the token, and apiframe's signature) are kept for audit as ``unreadable``
    and noted on the job (issue 15: a result in a shape reelhook cannot read must not become a
    silent expiry)."""
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        apiframe = await service.create_job(APIFRAME_MODEL)
        for body in UNREADABLE:
            response = await service.callback(
                "trinetra", TOKENS.callback(job["id"], "trinetra"), body
            )
            assert_error(response, 400, "bad_request")
            # Correctly signed by apiframe, still unreadable.
            response = await service.callback(
                "apiframe",
                TOKENS.callback(apiframe["id"], "apiframe"),
                body,
                {"X-Webhook-Signature": signature(body, APIFRAME_KEY)},
            )
            assert_error(response, 400, "bad_request")
        for unchanged in (job, apiframe):
            now = await service.job(unchanged["id"])
            notices = now.pop("notices")
            assert now == {k: v for k, v in unchanged.items() if k != "notices"}
            assert [n["kind"] for n in notices] == ["unreadable_callback"] * len(UNREADABLE)
            assert await service.event_types(unchanged["id"]) == {"job.submitted": 1}
            assert await service.events(unchanged["id"], "job.succeeded") == []
    stored = stored_callbacks(service.settings)
    assert {row[2] for row in stored} == {"unreadable"}
    assert [row[3] for row in stored] == [body for body in UNREADABLE for _ in range(2)]


async def test_documents_without_a_job_id_are_bad_requests(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        trinetra = await service.create_job(TRINETRA_MODEL)
        apiframe = await service.create_job(APIFRAME_MODEL)
        document = json.loads(trinetra_done(trinetra["provider_job_id"]))
        del document["id"]
        response = await service.callback(
            "trinetra", TOKENS.callback(trinetra["id"], "trinetra"), encode(document)
        )
        assert_error(response, 400, "bad_request")
        # Valid JSON object, correctly signed, but not an apiframe webhook.
        response = await service.apiframe_callback(
            TOKENS.callback(apiframe["id"], "apiframe"), {"hello": "world"}
        )
        assert_error(response, 400, "bad_request")
        for unchanged in (trinetra, apiframe):
            now = await service.job(unchanged["id"])
            assert [n["kind"] for n in now.pop("notices")] == ["unreadable_callback"]
            assert now == {k: v for k, v in unchanged.items() if k != "notices"}
    assert [row[2] for row in stored_callbacks(service.settings)] == ["unreadable"] * 2


async def test_providers_without_callbacks_are_not_found(
    settings_factory: SettingsFactory,
) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        body = trinetra_done(job["provider_job_id"])
        for provider in ("segmind", "kling", "fal", "Trinetra", "sim"):
            for token in (
                TOKENS.callback(job["id"], provider),
                TOKENS.callback(job["id"], "trinetra"),
            ):
                response = await service.callback(provider, token, body)
                assert_error(response, 404, "not_found")
        assert await service.job(job["id"]) == job
        assert await service.event_types(job["id"]) == {"job.submitted": 1}
    assert stored_callbacks(service.settings) == []


async def test_callbacks_need_no_api_key_and_ignore_one(settings_factory: SettingsFactory) -> None:
    """The token is the credential: an API key (even a wrong one) neither helps nor hurts."""
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        token = TOKENS.callback(job["id"], "trinetra")
        response = await service.callback(
            "trinetra", "forged", trinetra_done(job["provider_job_id"]), {"X-API-Key": ADMIN_KEY}
        )
        assert_error(response, 401, "unauthorized")
        response = await service.callback(
            "trinetra", token, trinetra_done(job["provider_job_id"]), {"X-API-Key": "wrong"}
        )
        assert response.status_code == 200, response.text
        assert (await service.job(job["id"]))["status"] == "succeeded"


async def test_a_non_ascii_signature_is_refused_not_a_crash(
    settings_factory: SettingsFactory,
) -> None:
    """Header bytes are attacker-controlled; a forged value must be a 401, never a 500."""
    async with serve(settings_factory) as service:
        job = await service.create_job(APIFRAME_MODEL)
        body = encode(apiframe_completed(job["provider_job_id"]))
        response = await service.provider.post(
            f"/v1/callbacks/apiframe/{TOKENS.callback(job['id'], 'apiframe')}",
            content=body,
            headers={b"Content-Type": b"application/json", b"X-Webhook-Signature": b"sha256=\xe9"},
        )
        assert_error(response, 401, "unauthorized")
        assert await service.job(job["id"]) == job
        assert await service.event_types(job["id"]) == {"job.submitted": 1}
    assert stored_callbacks(service.settings) == []


async def test_deeply_nested_json_is_a_bad_request(settings_factory: SettingsFactory) -> None:
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        body = b"[" * 200_000  # a fifth of the default cap
        response = await service.callback("trinetra", TOKENS.callback(job["id"], "trinetra"), body)
        assert_error(response, 400, "bad_request")
        now = await service.job(job["id"])
        assert [n["kind"] for n in now.pop("notices")] == ["unreadable_callback"]
        assert now == {k: v for k, v in job.items() if k != "notices"}
    # Verified by its token, so kept for audit (issue 15), byte for byte.
    assert [(row[2], row[3]) for row in stored_callbacks(service.settings)] == [
        ("unreadable", body)
    ]


async def test_a_non_finite_charge_cannot_poison_the_api(settings_factory: SettingsFactory) -> None:
    """``1e999`` is valid JSON (Python reads it as inf). Whether the callback is refused or the
    charge dropped, the job and the event log must stay servable as JSON."""
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        body = trinetra_done(job["provider_job_id"]).replace(
            b'"credits_charged": 10', b'"credits_charged": 1e999'
        )
        assert b"1e999" in body
        response = await service.callback("trinetra", TOKENS.callback(job["id"], "trinetra"), body)
        assert response.status_code in (200, 400), response.text

        fetched = await service.api.get(f"/v1/jobs/{job['id']}")
        assert fetched.status_code == 200, fetched.text
        charged = fetched.json()["cost"]["charged"]
        assert charged is None or isinstance(charged, int | float)
        log = await service.api.get("/v1/events")
        assert log.status_code == 200, log.text
        for event in log.json()["data"]:
            # What subscribers receive must be strict JSON, too.
            json.dumps(event, allow_nan=False)


async def test_concurrent_duplicates_apply_once(settings_factory: SettingsFactory) -> None:
    """Providers retry; a burst of the same terminal callback announces the job exactly once."""
    async with serve(settings_factory) as service:
        job = await service.create_job(TRINETRA_MODEL)
        token = TOKENS.callback(job["id"], "trinetra")
        body = trinetra_done(job["provider_job_id"])
        outcomes: Counter[str] = Counter()

        async def deliver() -> None:
            response = await service.callback("trinetra", token, body)
            assert response.status_code == 200, response.text
            outcomes[response.json()["outcome"]] += 1

        async with anyio.create_task_group() as tasks:
            for _ in range(12):
                tasks.start_soon(deliver)

        assert outcomes == {"applied": 1, "duplicate": 11}
        assert (await service.job(job["id"]))["status"] == "succeeded"
        assert len(await service.events(job["id"], "job.succeeded")) == 1
    # Stored once, the eleven replays counted on it (issue 18).
    assert stored_callbacks(service.settings) == [(job["id"], "trinetra", "applied", body)]
    assert stored_replays(service.settings) == [(job["id"], "applied", 11)]
