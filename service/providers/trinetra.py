"""Trinetra (brahmand-api.bulletshorts.co): Kling v2.5, v3 and v3-omni.

Submit ``POST /v1/video/{model}`` with ``X-API-Key``; 202 ``{"job_id", "status": "queued"}``. The
callback body is the terminal job document. Trinetra documents no callback signature, so the token
in the callback URL is the credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.jsonutil import finite_number
from service.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate
from service.providers.base import InvalidCallback, ProviderRequest, kind_from_message, load_object

_STATUSES = {
    "queued": JobStatus.SUBMITTED,
    "pending": JobStatus.SUBMITTED,
    "running": JobStatus.RUNNING,
    "processing": JobStatus.RUNNING,
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
    "cancelled": JobStatus.CANCELED,
}
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
        data = load_object(body)
        job_id = data.get("id") or data.get("job_id")
        raw_status = data.get("status")
        if not isinstance(job_id, str) or not isinstance(raw_status, str):
            raise InvalidCallback("a Trinetra job document needs string id and status")
        # Anything outside the known vocabulary is treated as a terminal failure (providers.md §1).
        status = _STATUSES.get(raw_status.lower(), JobStatus.FAILED)
        outputs: tuple[Output, ...] = ()
        error = None
        if status is JobStatus.SUCCEEDED:
            outputs = _outputs(data.get("output"))
            if not outputs:
                raise InvalidCallback("a succeeded Trinetra job document has no output URL")
        elif status is JobStatus.FAILED:
            error = _error(data.get("error"), raw_status)
        return ProviderUpdate(
            provider_job_id=job_id,
            status=status,
            outputs=outputs,
            error=error,
            charged=finite_number(data.get("credits_charged")),
        )


def _outputs(output: Any) -> tuple[Output, ...]:
    items = output.get("outputs") if isinstance(output, dict) else None
    if not isinstance(items, list):
        return ()
    return tuple(
        Output(url=item["url"], type=str(item.get("type", "video")))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("url"), str)
    )


def _error(error: Any, raw_status: str) -> JobError:
    if isinstance(error, dict):
        message = str(error.get("message") or "the provider reported a failure")
        code = error.get("code")
        return JobError(
            kind_from_message(message, ErrorKind.PROVIDER_ERROR),
            message,
            str(code) if code is not None else None,
        )
    if isinstance(error, str) and error:
        return JobError(kind_from_message(error, ErrorKind.PROVIDER_ERROR), error)
    return JobError(ErrorKind.PROVIDER_ERROR, f"the provider reported status {raw_status!r}")


ADAPTER = TrinetraAdapter()
