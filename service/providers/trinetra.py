"""Trinetra (brahmand-api.bulletshorts.co): Kling v2.5, v3 and v3-omni.

Submit ``POST /v1/video/{model}`` with ``X-API-Key``; 202 ``{"job_id", "status": "queued"}``. The
callback body is the terminal job document. Trinetra documents no callback signature, so the token
in the callback URL is the credential. Only ``queued`` and ``succeeded`` are documented; the failure
shape and the intermediate statuses are inferred (docs/providers.md §1), so the parser is lenient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from service.core.jsonutil import finite_number
from service.core.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.providers.base import (
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
    # Documented on the provider pages (docs/seeds/, summarised in docs/providers.md §1).
    "queued": JobStatus.SUBMITTED,
    "succeeded": JobStatus.SUCCEEDED,
    # Inferred (docs/providers.md, Trinetra): usual spellings, those of Kling, which Trinetra
    # fronts, and of the gateways around it (fal: in_queue/in_progress, Replicate: starting,
    # kie.ai: generating).
    "pending": JobStatus.SUBMITTED,
    "submitted": JobStatus.SUBMITTED,
    "in_queue": JobStatus.SUBMITTED,
    "starting": JobStatus.SUBMITTED,
    "running": JobStatus.RUNNING,
    "processing": JobStatus.RUNNING,
    "in_progress": JobStatus.RUNNING,
    "generating": JobStatus.RUNNING,
    "succeed": JobStatus.SUCCEEDED,
    "success": JobStatus.SUCCEEDED,
    "completed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "error": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
    "cancelled": JobStatus.CANCELED,
}
"""Trinetra's job statuses in reelhook's vocabulary. Any other word is read from the rest of the
document (:func:`~service.providers.base.read_status`): outputs make it a success, an error a
failure, and neither leaves the job open."""
# Where a failed document may carry its reason, after ``error`` (docs/providers.md §1: unknown).
_MESSAGE_FIELDS = ("message", "error_message", "failure_reason", "task_status_msg")
_FORWARDED = (
    "prompt",
    "image_url",
    "last_frame_url",
    "duration",
    "aspect_ratio",
    "mode",
    "resolution",
    "negative_prompt",
    "cfg_scale",
    "camera_control",
)


class TrinetraAdapter:
    name = "trinetra"
    holds_request = False
    # "set a webhook_url on your API key to receive a POST with the terminal job document"
    # (all three Trinetra pages; docs/providers.md).
    account_webhook = True

    def submit_request(self, job: Job, callback_url: str, api_key: str) -> ProviderRequest:
        model = job.model.removeprefix("trinetra/")
        body: dict[str, Any] = {key: job.input[key] for key in _FORWARDED if key in job.input}
        # external_task_id makes a resubmission after a lost answer idempotent.
        body["external_task_id"] = job.id
        body["callback_url"] = callback_url
        return ProviderRequest(f"/v1/video/{model}", body, {"X-API-Key": api_key})

    def accepted_job_id(self, body: Any) -> str:
        if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
            raise InvalidCallback("Trinetra's answer carries no job_id")
        return str(body["job_id"])

    def verify_callback(self, headers: Mapping[str, str], body: bytes, api_key: str) -> None:
        return None

    def parse_callback(self, body: bytes) -> ProviderUpdate:
        """Read the terminal job document (or a progress document, or Kling's own callback body
        passed through). Only ``queued`` and ``succeeded`` are documented, so the reading is
        lenient: an unknown status word never fails a job by itself."""
        data = load_object(body)
        if is_kling_document(data):
            update = kling_update(data)
            if update.external_id is not None:
                # Passed through from Kling, task_id is Kling's id, not the job_id Trinetra
                # answered with; the echoed external_task_id (reelhook's job id) names the job.
                update = dataclasses.replace(update, provider_job_id=None)
            return update
        job_id = data.get("id") or data.get("job_id")
        raw_status = data.get("status")
        if not isinstance(job_id, str) or not isinstance(raw_status, str):
            raise InvalidCallback("a Trinetra job document needs string id and status")
        outputs = _outputs(data)
        error = _error(data, raw_status) if _has_error(data) else None
        status, unknown = read_status(
            STATUSES.get(raw_status.strip().lower()), raw_status, outputs, error
        )
        if status is JobStatus.SUCCEEDED and not outputs:
            raise InvalidCallback("a succeeded Trinetra job document has no output URL")
        if status is JobStatus.FAILED and error is None:
            error = _error(data, raw_status)
        external = data.get("external_task_id")
        return ProviderUpdate(
            provider_job_id=job_id,
            status=status,
            outputs=outputs if status is JobStatus.SUCCEEDED else (),
            error=error if status is JobStatus.FAILED else None,
            charged=finite_number(data.get("credits_charged")),
            unknown_status=unknown,
            external_id=external if isinstance(external, str) and external else None,
        )

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        return submit_failure(status_code, body, headers)


def _outputs(data: dict[str, Any]) -> tuple[Output, ...]:
    """``output.outputs[]`` as documented; also any other result shape (``outputs[]``, an
    ``output`` list, string or ``{url}``, ``result``), videos first."""
    typed: list[Output] = []
    output = data.get("output")
    items = output.get("outputs") if isinstance(output, dict) else output
    if not isinstance(items, list):
        items = data.get("outputs")
    if isinstance(items, list):
        typed = [
            Output(url=item["url"], type=str(item.get("type") or "video"))
            for item in items
            if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]
        ]
    if not typed:
        urls = video_urls(data.get("output")) or video_urls(data.get("outputs"))
        typed = [Output(url=url) for url in urls or video_urls(data.get("result"))]
    # Videos first (docs/providers.md: the output URL is the one of type video).
    return tuple(sorted(typed, key=lambda output: output.type != "video"))


def _has_error(data: dict[str, Any]) -> bool:
    """Whether the document carries an error (a plain ``message`` may be progress chatter)."""
    error = data.get("error")
    if isinstance(error, str | dict) and error:
        return True
    return any(
        isinstance(data.get(key), str) and data[key].strip()
        for key in ("error_message", "failure_reason")
    )


def _error(data: dict[str, Any], raw_status: str) -> JobError:
    error = data.get("error")
    message: str | None = None
    code: Any = None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message.strip():
        found = (data.get(key) for key in _MESSAGE_FIELDS)
        message = next((m for m in found if isinstance(m, str) and m.strip()), None)
    if message is None:
        return JobError(ErrorKind.PROVIDER_ERROR, f"Trinetra reported status {raw_status!r}")
    message = message[:500]
    return JobError(
        kind_from_message(message, ErrorKind.PROVIDER_ERROR),
        message,
        str(code)[:40] if code not in (None, "") else None,
    )


ADAPTER = TrinetraAdapter()
