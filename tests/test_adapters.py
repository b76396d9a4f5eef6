"""Provider adapters, replayed against the documented examples (docs/providers.md).

Pure: no server, no database. Each adapter must turn a job into its provider's own request and the
provider's callback bodies back into a :class:`ProviderUpdate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.datastructures import Headers

from service.core.models import Cost, ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.jobs.catalog import MODELS
from service.providers import ADAPTERS, CALLBACK_ADAPTERS, HELD_ADAPTERS, trinetra
from service.providers.apiframe import ADAPTER as APIFRAME
from service.providers.apiframe import signature
from service.providers.base import ForgedCallback, InvalidCallback, redact
from service.providers.segmind import ADAPTER as SEGMIND
from service.providers.segmind import reset_after
from service.providers.trinetra import ADAPTER as TRINETRA
from tests.helpers.callbacks import APIFRAME_COMPLETED, APIFRAME_JOB

JOB_ID = "job_01JTESTADAPTERS0000000000"
CALLBACK_URL = "https://reelhook.example/v1/callbacks/{provider}/tok.en-123"
API_KEY = "afk_test_0123456789abcdef"


def make_job(model: str, raw_input: dict[str, Any]) -> Job:
    """A stored job as ``POST /v1/jobs`` would create it: input validated, defaults applied."""
    spec = MODELS[model]
    clean = spec.validate(raw_input)
    return Job(
        id=JOB_ID,
        owner_key_id="key_test",
        model=model,
        provider=spec.provider,
        status=JobStatus.PENDING,
        input=clean,
        cost=Cost(estimated=spec.price.estimate(clean), unit=spec.price.unit),
        created_at=1_700_000_000.0,
        deadline_at=1_700_003_600.0,
    )


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_registry_names_every_adapter() -> None:
    assert dict(ADAPTERS) == {"trinetra": TRINETRA, "apiframe": APIFRAME, "segmind": SEGMIND}
    assert [name for name, adapter in ADAPTERS.items() if adapter.holds_request] == ["segmind"]
    for name, adapter in ADAPTERS.items():
        assert adapter.name == name


# --- Trinetra (docs/providers.md §1) --------------------------------------------------------------

TRINETRA_DONE = {
    "id": "job_klingv25_a1b2c3",
    "model": "kling-v2.5",
    "status": "succeeded",
    "output": {
        "outputs": [{"url": "https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4", "type": "video"}]
    },
    "credits_charged": 10,
}


@pytest.mark.parametrize("model", ["trinetra/kling-v2.5", "trinetra/kling-v3"])
def test_trinetra_submit_forwards_every_parameter(model: str) -> None:
    raw_input: dict[str, Any] = {
        "prompt": "A cat chasing a laser dot",
        "negative_prompt": "blur",
        "image_url": "https://img.example/first.png",
        "last_frame_url": "https://img.example/last.png",
        "duration": 5,
        "aspect_ratio": "1:1",
        "resolution": "1080p",
        "cfg_scale": 0.3,
        "camera_control": {"type": "simple", "config": {"zoom": 5}},
    }
    job = make_job(model, raw_input)
    callback_url = CALLBACK_URL.format(provider="trinetra")

    request = TRINETRA.submit_request(job, callback_url, "trk_key")

    assert request.path == f"/v1/video/{model.removeprefix('trinetra/')}"
    assert request.headers == {"X-API-Key": "trk_key"}
    # Every validated input (including defaults such as mode) goes through under its own name.
    assert request.json == {
        **job.input,
        "external_task_id": JOB_ID,
        "callback_url": callback_url,
    }
    for name, value in raw_input.items():
        assert request.json[name] == value


def test_trinetra_submit_of_a_minimal_job_sends_only_the_documented_defaults() -> None:
    """duration 5 and aspect_ratio 9:16 are in the page's Default column; resolution (in no
    table), cfg_scale (0.5 only in a description) and mode (default garbled: "stdstdpro") are
    left to the provider unless the caller sets them (issue 15)."""
    job = make_job("trinetra/kling-v2.5", {"prompt": "Waves"})
    request = TRINETRA.submit_request(job, "https://cb.example/x", "k")
    assert request.json == {
        "prompt": "Waves",
        "duration": 5,
        "aspect_ratio": "9:16",
        "external_task_id": JOB_ID,
        "callback_url": "https://cb.example/x",
    }


def test_trinetra_submit_answer() -> None:
    assert (
        TRINETRA.accepted_job_id({"job_id": "job_klingv25_a1b2c3", "status": "queued"})
        == "job_klingv25_a1b2c3"
    )
    for answer in ({"status": "queued"}, {"job_id": 7}, ["job_x"], None):
        with pytest.raises(InvalidCallback):
            TRINETRA.accepted_job_id(answer)


def test_trinetra_documented_terminal_document() -> None:
    update = TRINETRA.parse_callback(encode(TRINETRA_DONE))
    assert update == ProviderUpdate(
        provider_job_id="job_klingv25_a1b2c3",
        status=JobStatus.SUCCEEDED,
        outputs=(Output(url="https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4", type="video"),),
        error=None,
        charged=10,
    )


def test_trinetra_failure_with_a_content_policy_message() -> None:
    body = encode(
        {
            "id": "job_klingv25_a1b2c3",
            "model": "kling-v2.5",
            "status": "failed",
            "output": None,
            "error": {"message": "content policy violation: prompt was rejected"},
        }
    )
    update = TRINETRA.parse_callback(body)
    assert update.status is JobStatus.FAILED
    assert update.provider_job_id == "job_klingv25_a1b2c3"
    assert update.outputs == ()
    assert update.error is not None
    assert update.error.kind is ErrorKind.CONTENT_POLICY
    assert update.error.message == "content policy violation: prompt was rejected"
    assert update.charged is None


def test_trinetra_failure_without_a_known_cause_is_a_provider_error() -> None:
    body = encode({"id": "job_x", "status": "failed", "error": {"message": "GPU fell over"}})
    update = TRINETRA.parse_callback(body)
    assert update.error is not None
    assert update.error.kind is ErrorKind.PROVIDER_ERROR
    assert update.error.message == "GPU fell over"


def test_trinetra_tolerates_unknown_fields() -> None:
    document = {
        **TRINETRA_DONE,
        "external_task_id": JOB_ID,
        "created_at": "2026-03-15T10:00:00Z",
        "extra": {"nested": [1, 2, 3]},
        "output": {
            "outputs": [
                {
                    "url": "https://cdn.trinetra.ai/out/kling-v2.5/a1b2c3.mp4",
                    "type": "video",
                    "duration": 5.1,
                }
            ],
            "thumbnail": "https://cdn.trinetra.ai/t.jpg",
        },
    }
    # The extra fields change nothing but the echoed external_task_id, which is read.
    assert TRINETRA.parse_callback(encode(document)) == dataclasses.replace(
        TRINETRA.parse_callback(encode(TRINETRA_DONE)), external_id=JOB_ID
    )


@pytest.mark.parametrize(
    ("raw_status", "status"),
    [("running", JobStatus.RUNNING), ("processing", JobStatus.RUNNING)],
)
def test_trinetra_intermediate_statuses(raw_status: str, status: JobStatus) -> None:
    update = TRINETRA.parse_callback(encode({"id": "job_x", "status": raw_status}))
    assert update.status is status
    assert update.outputs == ()
    assert update.error is None


@pytest.mark.parametrize(
    "document",
    [
        {key: value for key, value in TRINETRA_DONE.items() if key != "id"},
        {**TRINETRA_DONE, "id": 12345},
        {key: value for key, value in TRINETRA_DONE.items() if key != "status"},
        {**TRINETRA_DONE, "output": None},  # succeeded without a video
        {**TRINETRA_DONE, "output": {"outputs": []}},
    ],
    ids=["missing-id", "numeric-id", "missing-status", "no-output", "empty-outputs"],
)
def test_trinetra_rejects_documents_it_cannot_read(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidCallback):
        TRINETRA.parse_callback(encode(document))


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b'"succeeded"', b"\xff\xfe"])
def test_trinetra_rejects_bodies_that_are_not_json_objects(body: bytes) -> None:
    with pytest.raises(InvalidCallback):
        TRINETRA.parse_callback(body)


def test_trinetra_has_no_signature_to_check() -> None:
    TRINETRA.verify_callback(Headers({}), encode(TRINETRA_DONE), "trk_key")


# --- apiframe (docs/providers.md §2) --------------------------------------------------------------

APIFRAME_FAILED = {
    "event": "failed",
    "jobId": APIFRAME_JOB,
    "status": "FAILED",
    "error": "Provider returned an error: content policy violation",
    "model": "kling-2.5-turbo-pro",
}
APIFRAME_PROGRESS = {
    "event": "progress",
    "jobId": APIFRAME_JOB,
    "status": "PROCESSING",
    "progress": 45,
    "model": "kling-2.5-turbo-pro",
}


def test_apiframe_submit_translates_to_kling_params() -> None:
    job = make_job(
        "apiframe/kling-2.5-turbo-pro",
        {
            "prompt": "A flower blooming",
            "duration": 5,
            "aspect_ratio": "16:9",
            "image_url": "https://img.example/first.png",
            "last_frame_url": "https://img.example/last.png",
            "negative_prompt": "blur",
        },
    )
    callback_url = CALLBACK_URL.format(provider="apiframe")

    request = APIFRAME.submit_request(job, callback_url, API_KEY)

    assert request.path == "/v2/videos/generate"
    assert request.headers == {"X-API-Key": API_KEY, "Idempotency-Key": JOB_ID}
    body = request.json
    assert body["model"] == "kling-2.5-turbo-pro"
    assert body["prompt"] == "A flower blooming"
    assert body["klingParams"] == {
        "duration": 5,
        "aspect_ratio": "16:9",
        "start_image": "https://img.example/first.png",
        "end_image": "https://img.example/last.png",
        "negative_prompt": "blur",
    }
    assert body["webhookUrl"] == callback_url
    # Terminal events always; progress too, since it moves the job to running (docs/contract.md §4).
    assert {"completed", "failed", "progress"} <= set(body["webhookEvents"])
    # The OpenAPI body has additionalProperties:false: nothing of ours leaks to the top level.
    assert set(body) == {"model", "prompt", "klingParams", "webhookUrl", "webhookEvents"}


def test_apiframe_submit_sends_cfg_scale_as_guidance_scale() -> None:
    """docs/providers.md §0.6/§2: the OpenAPI schema (additionalProperties:false) names it
    ``guidance_scale``; ``cfg_scale`` may be refused with a 400."""
    job = make_job("apiframe/kling-2.5-turbo-pro", {"prompt": "A flower", "cfg_scale": 0.4})
    params = APIFRAME.submit_request(job, "https://cb.example/x", API_KEY).json["klingParams"]
    assert params.get("guidance_scale") == 0.4
    assert "cfg_scale" not in params


def test_apiframe_submit_answer() -> None:
    answer = {"jobId": APIFRAME_JOB, "status": "QUEUED"}
    assert APIFRAME.accepted_job_id(answer) == APIFRAME_JOB
    for bad in ({"job_id": APIFRAME_JOB}, {"jobId": None}, "QUEUED"):
        with pytest.raises(InvalidCallback):
            APIFRAME.accepted_job_id(bad)


def test_apiframe_completed_with_a_result_string() -> None:
    assert APIFRAME.parse_callback(encode(APIFRAME_COMPLETED)) == ProviderUpdate(
        provider_job_id=APIFRAME_JOB,
        status=JobStatus.SUCCEEDED,
        outputs=(Output(url="https://cdn.apiframe.ai/results/a1b2.mp4", type="video"),),
        error=None,
        charged=4,
    )


def test_apiframe_completed_with_a_result_object() -> None:
    document = {**APIFRAME_COMPLETED, "result": {"videoUrl": "https://cdn.apiframe.ai/v/a1.mp4"}}
    update = APIFRAME.parse_callback(encode(document))
    assert update.status is JobStatus.SUCCEEDED
    assert update.outputs == (Output(url="https://cdn.apiframe.ai/v/a1.mp4", type="video"),)
    assert update.charged == 4


def test_apiframe_completed_with_a_videos_list() -> None:
    document = {**APIFRAME_COMPLETED, "result": {"videos": ["https://cdn.apiframe.ai/v/b.mp4"]}}
    update = APIFRAME.parse_callback(encode(document))
    assert update.outputs == (Output(url="https://cdn.apiframe.ai/v/b.mp4"),)


@pytest.mark.parametrize("result", [None, "", {}, {"videoUrl": 5}, {"videos": []}])
def test_apiframe_completed_without_a_result_url_is_invalid(result: Any) -> None:
    with pytest.raises(InvalidCallback):
        APIFRAME.parse_callback(encode({**APIFRAME_COMPLETED, "result": result}))


def test_apiframe_failed() -> None:
    update = APIFRAME.parse_callback(encode(APIFRAME_FAILED))
    assert update.provider_job_id == APIFRAME_JOB
    assert update.status is JobStatus.FAILED
    assert update.outputs == ()
    assert update.error is not None
    assert update.error.kind is ErrorKind.CONTENT_POLICY
    assert update.error.message == "Provider returned an error: content policy violation"
    assert update.charged is None


def test_apiframe_progress_means_running() -> None:
    update = APIFRAME.parse_callback(encode(APIFRAME_PROGRESS))
    assert update == ProviderUpdate(
        provider_job_id=APIFRAME_JOB,
        status=JobStatus.RUNNING,
    )


def test_apiframe_event_name_is_enough_without_a_status() -> None:
    document = {k: v for k, v in APIFRAME_PROGRESS.items() if k != "status"}
    assert APIFRAME.parse_callback(encode(document)).status is JobStatus.RUNNING


def test_apiframe_cancelled_status() -> None:
    document = {"event": "failed", "jobId": APIFRAME_JOB, "status": "CANCELLED"}
    assert APIFRAME.parse_callback(encode(document)).status is JobStatus.CANCELED


@pytest.mark.parametrize(
    "document",
    [
        {k: v for k, v in APIFRAME_COMPLETED.items() if k != "jobId"},
        {**APIFRAME_COMPLETED, "jobId": 42},
        {"jobId": APIFRAME_JOB},
    ],
    ids=["missing-jobId", "numeric-jobId", "no-status"],
)
def test_apiframe_rejects_documents_it_cannot_read(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidCallback):
        APIFRAME.parse_callback(encode(document))


# The signature, computed here independently of the adapter (docs/providers.md §2 "Signing").
SIGNED_BODY = encode(APIFRAME_COMPLETED)
SIGNATURE_HEX = hmac.new(
    hashlib.sha256(API_KEY.encode()).digest(), SIGNED_BODY, hashlib.sha256
).hexdigest()


def test_apiframe_signature_matches_the_documented_construction() -> None:
    assert signature(SIGNED_BODY, API_KEY) == "sha256=" + SIGNATURE_HEX
    # The key is the raw 32-byte digest of the API key, not its hex form and not the key itself.
    for wrong_key in (API_KEY.encode(), hashlib.sha256(API_KEY.encode()).hexdigest().encode()):
        wrong = hmac.new(wrong_key, SIGNED_BODY, hashlib.sha256).hexdigest()
        assert signature(SIGNED_BODY, API_KEY) != "sha256=" + wrong


@pytest.mark.parametrize(
    "value", ["sha256=" + SIGNATURE_HEX, SIGNATURE_HEX], ids=["prefixed", "bare-hex"]
)
def test_apiframe_accepts_a_valid_signature(value: str) -> None:
    APIFRAME.verify_callback(Headers({"X-Webhook-Signature": value}), SIGNED_BODY, API_KEY)


@pytest.mark.parametrize(
    ("headers", "body", "api_key"),
    [
        ({"X-Webhook-Signature": "sha256=" + SIGNATURE_HEX}, SIGNED_BODY + b" ", API_KEY),
        (
            {"X-Webhook-Signature": "sha256=" + SIGNATURE_HEX},
            SIGNED_BODY.replace(b'"creditCost": 4', b'"creditCost": 0'),
            API_KEY,
        ),
        ({}, SIGNED_BODY, API_KEY),
        ({"X-Webhook-Signature": ""}, SIGNED_BODY, API_KEY),
        ({"X-Webhook-Signature": "sha256="}, SIGNED_BODY, API_KEY),
        ({"X-Webhook-Signature": "sha256=" + SIGNATURE_HEX}, SIGNED_BODY, "afk_other_key"),
        ({"X-Webhook-Signature": "sha256=" + "0" * 64}, SIGNED_BODY, API_KEY),
        ({"X-Webhook-Signature": "sha1=" + SIGNATURE_HEX}, SIGNED_BODY, API_KEY),
        # Header values are bytes the sender chooses; latin-1 decoding makes them non-ASCII text.
        ({"X-Webhook-Signature": "sha256=\u00e9" + SIGNATURE_HEX[1:]}, SIGNED_BODY, API_KEY),
    ],
    ids=[
        "appended-byte",
        "tampered-field",
        "missing-header",
        "empty-header",
        "empty-digest",
        "other-api-key",
        "zero-digest",
        "wrong-scheme",
        "non-ascii",
    ],
)
def test_apiframe_rejects_a_bad_signature(
    headers: dict[str, str], body: bytes, api_key: str
) -> None:
    with pytest.raises(ForgedCallback):
        APIFRAME.verify_callback(Headers(headers), body, api_key)


# --- Hostile but well-formed bodies (both callback adapters) -------------------------------------

EACH_CALLBACK_ADAPTER = pytest.mark.parametrize("provider", ["trinetra", "apiframe"])


def terminal_document(provider: str, charge: str) -> bytes:
    """A terminal document whose charge is the raw JSON text ``charge``."""
    if provider == "trinetra":
        document = {**TRINETRA_DONE, "credits_charged": "CHARGE"}
    else:
        document = {**APIFRAME_COMPLETED, "creditCost": "CHARGE"}
    return encode(document).replace(b'"CHARGE"', charge.encode())


@EACH_CALLBACK_ADAPTER
@pytest.mark.parametrize(
    "charge", ["1e999", "NaN", "1" + "0" * 400], ids=["1e999", "NaN", "10^400"]
)
def test_a_non_finite_charge_never_reaches_the_job(provider: str, charge: str) -> None:
    """``1e999`` is valid JSON that Python reads as inf, NaN a Python extension, and 10^400 an
    int that ``float()`` overflows on. None can be served back as a JSON number (Starlette refuses
    non-finite floats), so the adapter must refuse the body or drop the charge - never raise
    anything but InvalidCallback.
    """
    body = terminal_document(provider, charge)
    try:
        update = CALLBACK_ADAPTERS[provider].parse_callback(body)
    except InvalidCallback:
        return
    assert update.charged is None or math.isfinite(update.charged), update.charged


@EACH_CALLBACK_ADAPTER
def test_a_finite_charge_is_read(provider: str) -> None:
    update = CALLBACK_ADAPTERS[provider].parse_callback(terminal_document(provider, "12.5"))
    assert update.charged == 12.5


@EACH_CALLBACK_ADAPTER
def test_deeply_nested_json_is_invalid_not_a_crash(provider: str) -> None:
    """100 kB of ``[`` is well under the body cap but deeper than the JSON decoder's recursion."""
    with pytest.raises(InvalidCallback):
        CALLBACK_ADAPTERS[provider].parse_callback(b"[" * 100_000)


# --- Segmind (docs/providers.md §3) ---------------------------------------------------------------


def test_segmind_submit_translates_the_tail_image() -> None:
    job = make_job(
        "segmind/kling-2.5-turbo",
        {
            "prompt": "A 1920s street carnival",
            "negative_prompt": "blur",
            "duration": 5,
            "mode": "pro",
            "image_url": "https://img.example/first.png",
            "last_frame_url": "https://img.example/last.png",
            "cfg_scale": 0.6,
        },
    )
    request = SEGMIND.submit_request(job, "sgk_key")
    assert request.path == "/v1/kling-2.5-turbo"
    assert request.headers == {"x-api-key": "sgk_key"}
    assert request.json == {
        "prompt": "A 1920s street carnival",
        "negative_prompt": "blur",
        "cfg_scale": 0.6,
        "duration": 5,
        "mode": "pro",
        "aspect_ratio": "16:9",
        "image_url": "https://img.example/first.png",
        "tail_image_url": "https://img.example/last.png",
    }


def test_segmind_has_no_callbacks() -> None:
    """Segmind is a held adapter: it offers nothing a callback or a job id could reach."""
    assert SEGMIND.holds_request is True
    assert dict(HELD_ADAPTERS) == {"segmind": SEGMIND}
    assert "segmind" not in CALLBACK_ADAPTERS
    for method in ("parse_callback", "verify_callback", "accepted_job_id"):
        assert not hasattr(SEGMIND, method), method


# --- The documented examples, replayed byte for byte ------------------------------------------

# docs/providers.md §2's completed webhook, compact as apiframe sends it, and its signature under
# the API key below, computed outside Python: with the key digest from
#   printf %s afk_test_0123456789abcdef | openssl dgst -sha256
# as the HMAC key in
#   printf %s "$BODY" | openssl dgst -sha256 -mac HMAC -macopt hexkey:<digest>
KNOWN_BODY = (
    b'{"event":"completed","jobId":"a1b2c3d4-0000-4000-8000-000000000001","status":"COMPLETED",'
    b'"progress":100,"result":"https://cdn.apiframe.ai/results/a1b2.mp4",'
    b'"model":"kling-2.5-turbo-pro","creditCost":4,"completedAt":"2026-03-15T10:00:32.000Z"}'
)
KNOWN_SIGNATURE = "sha256=7e60f73c21ce1f734335ee9e988b782b7ddc489c0136eaf058dc2ed1328f7139"


def test_apiframe_signature_known_vector() -> None:
    assert signature(KNOWN_BODY, API_KEY) == KNOWN_SIGNATURE
    headers = Headers({"X-Webhook-Signature": KNOWN_SIGNATURE, "X-Webhook-Event": "completed"})
    APIFRAME.verify_callback(headers, KNOWN_BODY, API_KEY)
    update = APIFRAME.parse_callback(KNOWN_BODY)
    assert update.status is JobStatus.SUCCEEDED
    assert update.outputs == (Output(url="https://cdn.apiframe.ai/results/a1b2.mp4"),)
    assert update.charged == 4


@pytest.mark.parametrize(
    "tampered",
    [
        KNOWN_BODY.replace(b'"creditCost":4', b'"creditCost":0'),
        KNOWN_BODY.replace(b"a1b2.mp4", b"evil.mp4"),
        KNOWN_BODY.replace(b"COMPLETED", b"FAILED", 1),
        KNOWN_BODY + b"\n",
        KNOWN_BODY[:-1],
    ],
    ids=["charge", "result", "status", "trailing-newline", "truncated"],
)
def test_apiframe_known_signature_does_not_cover_a_tampered_body(tampered: bytes) -> None:
    headers = Headers({"X-Webhook-Signature": KNOWN_SIGNATURE})
    with pytest.raises(ForgedCallback):
        APIFRAME.verify_callback(headers, tampered, API_KEY)


def test_apiframe_seed_request_example() -> None:
    """docs/seeds/apiframe-kling-2.5-turbo-pro.txt: the curl body, plus the webhook fields reelhook
    always adds."""
    job = make_job(
        "apiframe/kling-2.5-turbo-pro",
        {"prompt": "a timelapse of a flower blooming in a garden", "aspect_ratio": "16:9"},
    )
    request = APIFRAME.submit_request(job, "https://cb.example/x", "afk_your_api_key_here")
    assert request.json == {
        "prompt": "a timelapse of a flower blooming in a garden",
        "model": "kling-2.5-turbo-pro",
        "klingParams": {"duration": 5, "aspect_ratio": "16:9"},
        "webhookUrl": "https://cb.example/x",
        "webhookEvents": ["progress", "completed", "failed"],
    }
    assert request.headers["X-API-Key"] == "afk_your_api_key_here"


def test_segmind_seed_request_example() -> None:
    """docs/seeds/segmind-kling-2.5-turbo.txt: the Python example's body (its duration is the
    string "10"; the parameter table says integer, which is what reelhook sends)."""
    seed = {
        "prompt": "A beloved community figure moves through a 1920s street carnival",
        "negative_prompt": "no dark tones, no blur, no distort",
        "cfg_scale": 0.7,
        "duration": "10",
        "mode": "pro",
        "aspect_ratio": "16:9",
    }
    job = make_job("segmind/kling-2.5-turbo", {"prompt": seed["prompt"]})
    request = SEGMIND.submit_request(job, "YOUR_API_KEY")
    assert request.path == "/v1/kling-2.5-turbo"
    assert request.headers == {"x-api-key": "YOUR_API_KEY"}
    assert request.json == {**seed, "duration": 10}


@pytest.mark.parametrize(
    ("model", "seed"),
    [
        ("kling-v2.5", {"prompt": "A cat chasing a laser dot across a living room", "duration": 5}),
        ("kling-v3", {"prompt": "A drone shot flying over a misty mountain range", "duration": 5}),
        ("kling-v3-omni", {"prompt": "A timelapse of clouds over a city skyline", "duration": 10}),
    ],
)
def test_trinetra_seed_request_examples(model: str, seed: dict[str, Any]) -> None:
    """docs/seeds/trinetra-*.txt: each page's request body goes out as sent, with the spec's
    defaults and the fields reelhook owns (external_task_id, callback_url)."""
    job = make_job(f"trinetra/{model}", seed)
    request = TRINETRA.submit_request(job, "https://cb.example/x", "trk")
    assert request.path == f"/v1/video/{model}"
    assert {k: request.json[k] for k in seed} == seed
    assert request.json["external_task_id"] == JOB_ID
    assert request.json["callback_url"] == "https://cb.example/x"
    defaults = {p.name for p in MODELS[f"trinetra/{model}"].params if p.default is not None}
    if model == "kling-v3":
        defaults.add("mode")  # t2v, as no image_url is given
    assert set(request.json) - {"external_task_id", "callback_url"} == set(seed) | defaults


@pytest.mark.parametrize(
    "document",
    [
        {
            "id": "job_klingv3_a1b2c3",
            "model": "kling-v3",
            "status": "succeeded",
            "output": {
                "outputs": [
                    {"url": "https://cdn.trinetra.ai/out/kling-v3/a1b2c3.mp4", "type": "video"}
                ]
            },
            "credits_charged": 10,
        },
        {
            "id": "job_klingv3omni_a1b2c3",
            "model": "kling-v3-omni",
            "status": "succeeded",
            "output": {
                "outputs": [
                    {"url": "https://cdn.trinetra.ai/out/kling-v3-omni/a1b2c3.mp4", "type": "video"}
                ]
            },
            "credits_charged": 10,
        },
    ],
    ids=["v3", "v3-omni"],
)
def test_trinetra_seed_terminal_documents(document: dict[str, Any]) -> None:
    update = TRINETRA.parse_callback(encode(document))
    assert update.provider_job_id == document["id"]
    assert update.status is JobStatus.SUCCEEDED
    assert update.outputs == (Output(url=document["output"]["outputs"][0]["url"], type="video"),)
    assert update.charged == 10


# --- Status vocabularies (docs/providers.md §7) --------------------------------------------------


@pytest.mark.parametrize(
    ("raw_status", "ours"),
    [
        # docs/providers.md §7: queued→submitted; running/processing→running; succeeded; failed.
        ("queued", JobStatus.SUBMITTED),
        ("running", JobStatus.RUNNING),
        ("processing", JobStatus.RUNNING),
        ("succeeded", JobStatus.SUCCEEDED),
        ("failed", JobStatus.FAILED),
        # Kling's own spellings, which a Trinetra document may carry through.
        ("submitted", JobStatus.SUBMITTED),
        ("succeed", JobStatus.SUCCEEDED),
        ("SUCCEEDED", JobStatus.SUCCEEDED),
        (" Processing ", JobStatus.RUNNING),
        ("cancelled", JobStatus.CANCELED),
        ("canceled", JobStatus.CANCELED),
        # Words of the gateways around Kling (docs/providers.md): in progress, not a failure.
        ("in_queue", JobStatus.SUBMITTED),
        ("starting", JobStatus.SUBMITTED),
        ("generating", JobStatus.RUNNING),
    ],
)
def test_trinetra_status_vocabulary(raw_status: str, ours: JobStatus) -> None:
    document: dict[str, Any] = {"id": "job_x", "status": raw_status}
    if ours is JobStatus.SUCCEEDED:
        document["output"] = TRINETRA_DONE["output"]
    update = TRINETRA.parse_callback(encode(document))
    assert update.status is ours
    if ours is JobStatus.FAILED:
        assert update.error is not None
        assert update.error.kind is ErrorKind.PROVIDER_ERROR


def test_trinetra_vocabulary_table_is_complete() -> None:
    assert set(trinetra.STATUSES.values()) == {
        JobStatus.SUBMITTED,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }
    for raw_status, ours in trinetra.STATUSES.items():
        document: dict[str, Any] = {"id": "job_x", "status": raw_status, **TRINETRA_DONE}
        document["status"] = raw_status
        assert TRINETRA.parse_callback(encode(document)).status is ours, raw_status


@pytest.mark.parametrize(
    ("raw_status", "event", "ours"),
    [
        ("QUEUED", None, JobStatus.SUBMITTED),
        ("PROCESSING", "progress", JobStatus.RUNNING),
        ("COMPLETED", "completed", JobStatus.SUCCEEDED),
        ("FAILED", "failed", JobStatus.FAILED),
        ("CANCELLED", None, JobStatus.CANCELED),
        ("processing", None, JobStatus.RUNNING),
        ("Completed", None, JobStatus.SUCCEEDED),
        (None, "completed", JobStatus.SUCCEEDED),
        (None, "failed", JobStatus.FAILED),
        (None, "PROGRESS", JobStatus.RUNNING),
        ("SOMETHING_NEW", "completed", JobStatus.SUCCEEDED),
    ],
)
def test_apiframe_status_vocabulary(
    raw_status: str | None, event: str | None, ours: JobStatus
) -> None:
    document: dict[str, Any] = {"jobId": APIFRAME_JOB, "result": "https://cdn.example/v.mp4"}
    if raw_status is not None:
        document["status"] = raw_status
    if event is not None:
        document["event"] = event
    assert APIFRAME.parse_callback(encode(document)).status is ours


# --- Failed documents and unknown fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "kind", "message", "code"),
    [
        (
            {"status": "failed", "error": "content policy violation"},
            ErrorKind.CONTENT_POLICY,
            "content policy violation",
            None,
        ),
        (
            {"status": "failed", "error": {"message": "Failure to pass the risk control system"}},
            ErrorKind.CONTENT_POLICY,
            "Failure to pass the risk control system",
            None,
        ),
        (
            {"status": "failed", "error": {"code": 1102, "message": "resource pack depleted"}},
            ErrorKind.PROVIDER_ERROR,
            "resource pack depleted",
            "1102",
        ),
        (
            {"status": "failed", "task_status_msg": "insufficient credit balance"},
            ErrorKind.INSUFFICIENT_CREDITS,
            "insufficient credit balance",
            None,
        ),
        (
            {"status": "failed", "error": None, "message": "GPU node lost"},
            ErrorKind.PROVIDER_ERROR,
            "GPU node lost",
            None,
        ),
        (
            {"status": "failed"},
            ErrorKind.PROVIDER_ERROR,
            "Trinetra reported status 'failed'",
            None,
        ),
        (
            {"status": "error", "error": {"message": ""}, "output": {"outputs": []}},
            ErrorKind.PROVIDER_ERROR,
            "Trinetra reported status 'error'",
            None,
        ),
    ],
    ids=["string", "kling-risk", "coded", "kling-msg", "message", "bare", "empty"],
)
def test_trinetra_failed_documents_in_any_shape(
    document: dict[str, Any], kind: ErrorKind, message: str, code: str | None
) -> None:
    update = TRINETRA.parse_callback(encode({"id": "job_x", "model": "kling-v3", **document}))
    assert update.status is JobStatus.FAILED
    assert update.outputs == ()
    assert update.error == JobError(kind, message, code)


def test_trinetra_outputs_in_other_shapes_and_videos_first() -> None:
    video = {"url": "https://cdn.example/v.mp4", "type": "video"}
    thumb = {"url": "https://cdn.example/t.jpg", "type": "image"}
    for document in (
        {"id": "j", "status": "succeeded", "output": {"outputs": [thumb, video]}},
        {"id": "j", "status": "succeeded", "outputs": [thumb, video]},
        {"id": "j", "status": "succeeded", "output": [thumb, video]},
    ):
        update = TRINETRA.parse_callback(encode(document))
        assert [o.url for o in update.outputs] == [video["url"], thumb["url"]], document


def test_apiframe_tolerates_unknown_fields_and_an_error_object() -> None:
    completed = {**APIFRAME_COMPLETED, "webhookStatus": "sent", "input": {"x": 1}, "new": [1]}
    assert APIFRAME.parse_callback(encode(completed)) == APIFRAME.parse_callback(
        encode(APIFRAME_COMPLETED)
    )
    failed = {**APIFRAME_FAILED, "error": {"message": "NSFW content detected", "code": "E42"}}
    update = APIFRAME.parse_callback(encode(failed))
    assert update.error == JobError(ErrorKind.CONTENT_POLICY, "NSFW content detected", "E42")
    bare = {k: v for k, v in APIFRAME_FAILED.items() if k != "error"}
    update = APIFRAME.parse_callback(encode({**bare, "creditCost": 0}))
    assert update.error == JobError(ErrorKind.PROVIDER_ERROR, "apiframe reported a failure")
    assert update.charged == 0  # refunded on failure


# --- Submit failures: the providers' error answers (docs/providers.md §2, §3, §7) ---------------


def answer(body: dict[str, Any] | str) -> bytes:
    return body.encode() if isinstance(body, str) else encode(body)


@pytest.mark.parametrize(
    ("adapter", "status", "body", "headers", "kind", "retryable", "retry_after"),
    [
        (
            "trinetra",
            400,
            {"error": "prompt is required"},
            {},
            ErrorKind.INVALID_INPUT,
            False,
            None,
        ),
        (
            "trinetra",
            400,
            {"code": 1301, "message": "content security check failed"},
            {},
            ErrorKind.CONTENT_POLICY,
            False,
            None,
        ),
        ("trinetra", 401, {"error": "bad key"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("trinetra", 402, {"error": "pay up"}, {}, ErrorKind.INSUFFICIENT_CREDITS, False, None),
        ("trinetra", 403, {"error": "no policy"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("trinetra", 404, "<html>nope</html>", {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("trinetra", 406, {"error": "no"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("trinetra", 408, {"error": "slow"}, {}, ErrorKind.TIMEOUT, True, None),
        (
            "trinetra",
            429,
            {"error": "slow down"},
            {"Retry-After": "7"},
            ErrorKind.RATE_LIMITED,
            True,
            7,
        ),
        ("trinetra", 500, {"error": "boom"}, {}, ErrorKind.PROVIDER_ERROR, True, None),
        (
            "trinetra",
            503,
            {"error": "down"},
            {"Retry-After": "3"},
            ErrorKind.PROVIDER_ERROR,
            True,
            3,
        ),
        ("trinetra", 504, "", {}, ErrorKind.TIMEOUT, True, None),
        (
            "apiframe",
            400,
            {
                "error": "Validation failed",
                "details": {"klingParams.duration": ["Must be 5 or 10"]},
            },
            {"x-request-id": "r1"},
            ErrorKind.INVALID_INPUT,
            False,
            None,
        ),
        (
            "apiframe",
            402,
            {"error": "Insufficient credits", "creditsRequired": 4, "creditsAvailable": 1},
            {},
            ErrorKind.INSUFFICIENT_CREDITS,
            False,
            None,
        ),
        (
            "apiframe",
            409,
            {"error": "Idempotency conflict"},
            {},
            ErrorKind.PROVIDER_ERROR,
            False,
            None,
        ),
        (
            "apiframe",
            429,
            {"error": "Rate limit"},
            {"Retry-After": "30"},
            ErrorKind.RATE_LIMITED,
            True,
            30,
        ),
        ("apiframe", 503, {"error": "queue outage"}, {}, ErrorKind.PROVIDER_ERROR, True, None),
        ("segmind", 400, {"error": "bad"}, {}, ErrorKind.INVALID_INPUT, False, None),
        ("segmind", 401, {"error": "key"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        (
            "segmind",
            406,
            {"error": "Insufficient credits"},
            {},
            ErrorKind.INSUFFICIENT_CREDITS,
            False,
            None,
        ),
        (
            "segmind",
            406,
            {"error": "Content-Type must be application/json"},
            {},
            ErrorKind.INVALID_INPUT,
            False,
            None,
        ),
        ("segmind", 500, {"error": "bad cfg"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("segmind", 502, {"error": "gateway"}, {}, ErrorKind.PROVIDER_ERROR, False, None),
        ("segmind", 504, {"error": "timed out"}, {}, ErrorKind.TIMEOUT, False, None),
    ],
)
def test_submit_failures_are_classified(
    adapter: str,
    status: int,
    body: dict[str, Any] | str,
    headers: dict[str, str],
    kind: ErrorKind,
    retryable: bool,
    retry_after: float | None,
) -> None:
    failure = ADAPTERS[adapter].failure(status, answer(body), Headers(headers))
    assert failure.kind is kind
    assert failure.retryable is retryable
    assert failure.retry_after == retry_after
    assert failure.status_code == status
    assert failure.message


def test_submit_failure_messages_carry_the_providers_words() -> None:
    refused = APIFRAME.failure(
        400,
        encode({"error": "Validation failed", "details": {"prompt": ["Required"]}}),
        Headers({}),
    )
    assert refused.message == "Validation failed (prompt: Required)"
    broke = APIFRAME.failure(
        402,
        encode({"error": "Insufficient credits", "creditsRequired": 7, "creditsAvailable": 2}),
        Headers({}),
    )
    assert broke.message == "Insufficient credits (creditsRequired 7, creditsAvailable 2)"
    kling = TRINETRA.failure(
        429,
        encode({"code": 1303, "message": "parallel task over resource pack limit"}),
        Headers({}),
    )
    assert kling.kind is ErrorKind.RATE_LIMITED
    assert kling.provider_code == "1303"
    assert kling.message == "parallel task over resource pack limit"


def test_segmind_429_waits_until_the_reset_time() -> None:
    now = time.time()
    reset = datetime.fromtimestamp(now + 42, UTC).isoformat()
    failure = SEGMIND.failure(
        429, encode({"error": "Too many"}), Headers({"x-rate-limit-reset-at-utc": reset})
    )
    assert failure.retryable is True
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.retry_after == pytest.approx(42, abs=2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:01:00Z", 60),
        ("2026-01-01T00:01:00+00:00", 60),
        ("2026-01-01T00:01:00", 60),  # no zone: the header's name says UTC
        ("2026-01-01T01:01:00+01:00", 60),
        ("1767225660", 60),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60),
        ("2025-12-31T23:59:00Z", 0),  # already past
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_segmind_reset_header_forms(value: str | None, expected: float | None) -> None:
    assert reset_after(value, now=NEW_YEAR_2026) == expected


NEW_YEAR_2026 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def test_an_echoed_key_is_redacted() -> None:
    assert redact("bad key afk_secret given", "afk_secret") == "bad key [redacted] given"
    assert redact("nothing to hide", "") == "nothing to hide"
