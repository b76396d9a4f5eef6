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
    is_kling_document,
    kind_from_message,
    kling_update,
    load_object,
    read_status,
    submit_failure,
    video_urls,
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
    account_webhook = False  # webhooks are per job (webhookUrl); no account webhook is documented

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
        # Hex is case-insensitive: an uppercase digest (or prefix) is the same signature.
        given = headers.get("x-webhook-signature", "").strip().lower().encode(errors="replace")
        expected = signature(body, api_key).encode()
        # The SDK accepts the bare hex too.
        if not given or not (
            hmac.compare_digest(given, expected)
            or hmac.compare_digest(given, expected.removeprefix(b"sha256="))
        ):
            raise ForgedCallback("X-Webhook-Signature does not match the body")

    def parse_callback(self, body: bytes) -> ProviderUpdate:
        """Read a webhook. ``result`` may be a URL string (docs-v2), ``{videoUrl}``, ``{url}``,
        ``{videos: [...]}`` or a bare list; a Kling body passed through is read as Kling's. An
        unknown status word is read from the rest of the body, never failed by itself."""
        data = load_object(body)
        if is_kling_document(data):
            return kling_update(data)
        job_id = data.get("jobId", data.get("id"))
        if not isinstance(job_id, str):
            raise InvalidCallback("an apiframe webhook needs a string jobId")
        raw_status = data.get("status")
        event = data.get("event")
        status = STATUSES.get(raw_status.strip().upper()) if isinstance(raw_status, str) else None
        if status is None and isinstance(event, str):
            status = EVENTS.get(event.strip().lower())
        word = raw_status if isinstance(raw_status, str) else event
        if status is None and not isinstance(word, str):
            raise InvalidCallback("an apiframe webhook needs a status or an event")
        outputs = tuple(Output(url=url) for url in video_urls(data.get("result")))
        error = _error(data.get("error")) if data.get("error") else None
        status, unknown = read_status(status, str(word), outputs, error)
        word_is_new = isinstance(raw_status, str) and raw_status.strip().upper() not in STATUSES
        if unknown is None and word_is_new and isinstance(raw_status, str) and raw_status.strip():
            # Read from the event name, but the status word is still news: noted and counted.
            unknown = raw_status.strip()[:64]
        if status is JobStatus.SUCCEEDED and not outputs:
            raise InvalidCallback("a completed apiframe webhook has no result URL")
        if status is JobStatus.FAILED and error is None:
            error = _error(None)
        return ProviderUpdate(
            provider_job_id=job_id,
            status=status,
            outputs=outputs if status is JobStatus.SUCCEEDED else (),
            error=error if status is JobStatus.FAILED else None,
            charged=finite_number(data.get("creditCost")),
            unknown_status=unknown,
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


ADAPTER = ApiframeAdapter()
