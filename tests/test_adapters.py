"""Provider adapters, replayed against the documented examples (shared/reference/providers.md).

Pure: no server, no database. Each adapter must turn a job into its provider's own request and the
provider's callback bodies back into a :class:`ProviderUpdate`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

import pytest
from starlette.datastructures import Headers

from service.catalog import MODELS
from service.models import Cost, ErrorKind, Job, JobStatus, Output, ProviderUpdate
from service.providers import ADAPTERS
from service.providers.apiframe import ADAPTER as APIFRAME
from service.providers.apiframe import signature
from service.providers.base import ForgedCallback, InvalidCallback
from service.providers.segmind import ADAPTER as SEGMIND
from service.providers.trinetra import ADAPTER as TRINETRA

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


# --- Trinetra (providers.md §1) -----------------------------------------------------------------

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


def test_trinetra_submit_of_a_minimal_job_sends_the_defaults() -> None:
    job = make_job("trinetra/kling-v2.5", {"prompt": "Waves"})
    request = TRINETRA.submit_request(job, "https://cb.example/x", "k")
    assert request.json == {
        "prompt": "Waves",
        "duration": 5,
        "aspect_ratio": "9:16",
        "mode": "std",
        "resolution": "720p",
        "cfg_scale": 0.5,
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
    assert TRINETRA.parse_callback(encode(document)) == TRINETRA.parse_callback(
        encode(TRINETRA_DONE)
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


# --- apiframe (providers.md §2) -----------------------------------------------------------------

APIFRAME_JOB = "a1b2c3d4-0000-4000-8000-000000000001"
APIFRAME_COMPLETED = {
    "event": "completed",
    "jobId": APIFRAME_JOB,
    "status": "COMPLETED",
    "progress": 100,
    "result": "https://cdn.apiframe.ai/results/a1b2.mp4",
    "model": "kling-2.5-turbo-pro",
    "creditCost": 4,
    "completedAt": "2026-03-15T10:00:32.000Z",
}
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
    # Terminal events always; progress too, since it moves the job to running (design §4).
    assert {"completed", "failed", "progress"} <= set(body["webhookEvents"])
    # The OpenAPI body has additionalProperties:false: nothing of ours leaks to the top level.
    assert set(body) == {"model", "prompt", "klingParams", "webhookUrl", "webhookEvents"}


def test_apiframe_submit_sends_cfg_scale_as_guidance_scale() -> None:
    """providers.md §0.6/§2: the OpenAPI schema (additionalProperties:false) names it
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
        {"jobId": APIFRAME_JOB, "event": "exploded", "status": "EXPLODED"},
        {"jobId": APIFRAME_JOB},
    ],
    ids=["missing-jobId", "numeric-jobId", "unknown-status", "no-status"],
)
def test_apiframe_rejects_documents_it_cannot_read(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidCallback):
        APIFRAME.parse_callback(encode(document))


# The signature, computed here independently of the adapter (providers.md §2 "Signing").
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

CALLBACK_ADAPTERS = pytest.mark.parametrize("provider", ["trinetra", "apiframe"])


def terminal_document(provider: str, charge: str) -> bytes:
    """A terminal document whose charge is the raw JSON text ``charge``."""
    if provider == "trinetra":
        document = {**TRINETRA_DONE, "credits_charged": "CHARGE"}
    else:
        document = {**APIFRAME_COMPLETED, "creditCost": "CHARGE"}
    return encode(document).replace(b'"CHARGE"', charge.encode())


@CALLBACK_ADAPTERS
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
        update = ADAPTERS[provider].parse_callback(body)
    except InvalidCallback:
        return
    assert update.charged is None or math.isfinite(update.charged), update.charged


@CALLBACK_ADAPTERS
def test_a_finite_charge_is_read(provider: str) -> None:
    update = ADAPTERS[provider].parse_callback(terminal_document(provider, "12.5"))
    assert update.charged == 12.5


@CALLBACK_ADAPTERS
def test_deeply_nested_json_is_invalid_not_a_crash(provider: str) -> None:
    """100 kB of ``[`` is well under the body cap but deeper than the JSON decoder's recursion."""
    with pytest.raises(InvalidCallback):
        ADAPTERS[provider].parse_callback(b"[" * 100_000)


# --- Segmind (providers.md §3) ------------------------------------------------------------------


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
    request = SEGMIND.submit_request(job, "https://cb.example/unused", "sgk_key")
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
    assert SEGMIND.holds_request is True
    with pytest.raises(InvalidCallback):
        SEGMIND.parse_callback(encode(TRINETRA_DONE))
    with pytest.raises(InvalidCallback):
        SEGMIND.verify_callback(Headers({}), b"{}", "sgk_key")
    with pytest.raises(InvalidCallback):
        SEGMIND.accepted_job_id({"request_id": "x"})
