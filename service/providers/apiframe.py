"""apiframe (API v2): Kling 2.5 Turbo Pro.

Submit ``POST /v2/videos/generate`` with ``X-API-Key`` and ``Idempotency-Key``; 202
``{"jobId", "status": "QUEUED"}``. Webhooks (``progress``, ``completed``, ``failed``) carry
``X-Webhook-Signature: sha256=<hex>``, an HMAC-SHA256 of the raw body keyed with the SHA-256 digest
of the API key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from service.core.jsonutil import InvalidJSON, finite_number, loads
from service.core.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.providers.base import (
    ForgedCallback,
    InvalidCallback,
    ProviderRequest,
    Refusal,
    kind_from_message,
    load_object,
    submit_failure,
)

STATUSES: Mapping[str, JobStatus] = {
    "QUEUED": JobStatus.SUBMITTED,
    "PROCESSING": JobStatus.RUNNING,
    "COMPLETED": JobStatus.SUCCEEDED,
    "FAILED": JobStatus.FAILED,
    "CANCELLED": JobStatus.CANCELED,  # the OpenAPI Job schema's spelling
    "CANCELED": JobStatus.CANCELED,
}
"""apiframe's job statuses (docs/providers.md §2, §7) in reelhook's vocabulary, matched ignoring
case."""
EVENTS: Mapping[str, JobStatus] = {
    "progress": JobStatus.RUNNING,
    "completed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
}
"""apiframe's webhook events, used when a body carries no status reelhook knows."""
# Our vocabulary → klingParams names. The Kling 2.5 Turbo Pro page says cfg_scale, but apiframe's
# OpenAPI schema (additionalProperties: false) names it guidance_scale, and the schema is what
# rejects a request (docs/providers.md §0.6).
_KLING_PARAMS = {
    "duration": "duration",
    "aspect_ratio": "aspect_ratio",
    "image_url": "start_image",
    "last_frame_url": "end_image",
    "negative_prompt": "negative_prompt",
    "cfg_scale": "guidance_scale",
}


def signature(body: bytes, api_key: str) -> str:
    """The ``X-Webhook-Signature`` value apiframe sends for ``body``."""
    key = hashlib.sha256(api_key.encode()).digest()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class ApiframeAdapter:
    name = "apiframe"
    holds_request = False

    def submit_request(self, job: Job, callback_url: str, api_key: str) -> ProviderRequest:
        params = {
            theirs: job.input[ours] for ours, theirs in _KLING_PARAMS.items() if ours in job.input
        }
        body = {
            "model": job.model.removeprefix("apiframe/"),
            "prompt": job.input["prompt"],
            "klingParams": params,
            "webhookUrl": callback_url,
            "webhookEvents": ["progress", "completed", "failed"],
        }
        # The job id as Idempotency-Key: a resubmission after a lost answer returns the same job.
        headers = {"X-API-Key": api_key, "Idempotency-Key": job.id}
        return ProviderRequest("/v2/videos/generate", body, headers)

    def accepted_job_id(self, body: Any) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("jobId"), str):
            raise InvalidCallback("apiframe's answer carries no jobId")
        return str(body["jobId"])

    def verify_callback(self, headers: Mapping[str, str], body: bytes, api_key: str) -> None:
        given = headers.get("x-webhook-signature", "").strip().encode(errors="replace")
        expected = signature(body, api_key).encode()
        # The SDK accepts the bare hex too.
        if not given or not (
            hmac.compare_digest(given, expected)
            or hmac.compare_digest(given, expected.removeprefix(b"sha256="))
        ):
            raise ForgedCallback("X-Webhook-Signature does not match the body")

    def parse_callback(self, body: bytes) -> ProviderUpdate:
        data = load_object(body)
        job_id = data.get("jobId")
        if not isinstance(job_id, str):
            raise InvalidCallback("an apiframe webhook needs a string jobId")
        raw_status = data.get("status")
        event = data.get("event")
        status = STATUSES.get(raw_status.strip().upper()) if isinstance(raw_status, str) else None
        if status is None and isinstance(event, str):
            status = EVENTS.get(event.strip().lower())
        if status is None:
            raise InvalidCallback(f"unknown apiframe status {raw_status!r} / event {event!r}")
        outputs: tuple[Output, ...] = ()
        error = None
        if status is JobStatus.SUCCEEDED:
            url = _result_url(data.get("result"))
            if url is None:
                raise InvalidCallback("a completed apiframe webhook has no result URL")
            outputs = (Output(url=url),)
        elif status is JobStatus.FAILED:
            error = _error(data.get("error"))
        return ProviderUpdate(
            provider_job_id=job_id,
            status=status,
            outputs=outputs,
            error=error,
            charged=finite_number(data.get("creditCost")),
        )

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        """apiframe's error answers (docs/providers.md §2): ``{"error"}``, a 400 with ``details``
        per field, a 402 with the credits required and available."""
        failure = submit_failure(status_code, body, headers)
        extra = _error_extra(body)
        return replace(failure, message=f"{failure.message} ({extra})") if extra else failure


def _error(error: Any) -> JobError:
    """``error`` is a string in the documented webhook; an object with a message is tolerated."""
    code = None
    if isinstance(error, dict):
        code = error.get("code")
        error = error.get("message")
    message = error[:500] if isinstance(error, str) and error else "apiframe reported a failure"
    return JobError(
        kind_from_message(message, ErrorKind.PROVIDER_ERROR),
        message,
        str(code)[:40] if code not in (None, "") else None,
    )


def _error_extra(body: bytes) -> str:
    """The field problems of a 400 or the credit figures of a 402, as one short phrase."""
    try:
        data = loads(body)
    except InvalidJSON:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = []
    details = data.get("details")
    if isinstance(details, dict):
        for path, problems in list(details.items())[:5]:
            text = "; ".join(str(p) for p in problems) if isinstance(problems, list) else problems
            parts.append(f"{path}: {text}")
    for key in ("creditsRequired", "creditsAvailable"):
        if isinstance(data.get(key), int | float) and not isinstance(data.get(key), bool):
            parts.append(f"{key} {data[key]}")
    return ", ".join(parts)[:500]


def _result_url(result: Any) -> str | None:
    """``result`` is a URL string in docs-v2 and ``{"videoUrl"}`` (or ``{"videos"}``) elsewhere."""
    if isinstance(result, str) and result:
        return result
    if isinstance(result, dict):
        if isinstance(result.get("videoUrl"), str):
            return str(result["videoUrl"])
        videos = result.get("videos")
        if isinstance(videos, list) and videos and isinstance(videos[0], str):
            return videos[0]
    return None


ADAPTER = ApiframeAdapter()
