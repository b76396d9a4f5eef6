"""Segmind: Kling 2.5 Turbo through the synchronous v1 API.

``POST /v1/kling-2.5-turbo`` with ``x-api-key`` is held open until the video is ready (~2 min) and
answered with the mp4 bytes and an ``x-credits-consumed`` header. Segmind has no per-job callback,
so reelhook holds the request in a durable worker instead (design §6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.models import ErrorKind, Job, ProviderUpdate
from service.providers.base import InvalidCallback, ProviderRequest, SubmitFailed, submit_failure

_FORWARDED = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "cfg_scale": "cfg_scale",
    "duration": "duration",
    "mode": "mode",
    "aspect_ratio": "aspect_ratio",
    "image_url": "image_url",
    "last_frame_url": "tail_image_url",
}


class SegmindAdapter:
    name = "segmind"
    holds_request = True

    def submit_request(self, job: Job, callback_url: str, api_key: str) -> ProviderRequest:
        body = {theirs: job.input[ours] for ours, theirs in _FORWARDED.items() if ours in job.input}
        return ProviderRequest(
            f"/v1/{job.model.removeprefix('segmind/')}", body, {"x-api-key": api_key}
        )

    def accepted_job_id(self, body: Any) -> str:
        raise InvalidCallback("Segmind answers with the video, not a job id")

    def verify_callback(self, headers: Mapping[str, str], body: bytes, api_key: str) -> None:
        raise InvalidCallback("Segmind sends no callbacks")

    def parse_callback(self, body: bytes) -> ProviderUpdate:
        raise InvalidCallback("Segmind sends no callbacks")

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> SubmitFailed:
        """Classify an error answer: Segmind's page documents 406 as "Insufficient Credits"
        (it is also used for a wrong Content-Type, which reelhook never sends)."""
        failure = submit_failure(status_code, body, headers)
        if status_code == 406 and "content-type" not in failure.message.lower():
            failure.kind = ErrorKind.INSUFFICIENT_CREDITS
        return failure


ADAPTER = SegmindAdapter()
