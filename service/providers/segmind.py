"""Segmind: Kling 2.5 Turbo through the synchronous v1 API.

``POST /v1/kling-2.5-turbo`` with ``x-api-key`` is held open until the video is ready (~2 min) and
answered with the mp4 bytes and an ``x-credits-consumed`` header. Segmind has no per-job callback,
so this is a :class:`~service.providers.base.HeldAdapter`: reelhook holds the request in a durable
worker instead (:mod:`service.jobs.held_requests`; docs/contract.md §6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from service.core.models import ErrorKind, Job
from service.providers.base import (
    ProviderRequest,
    Refusal,
    parse_retry_after,
    submit_failure,
)

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
    account_webhook = False  # account webhooks exist only for PixelFlow and fine-tune events

    def submit_request(self, job: Job, api_key: str) -> ProviderRequest:
        body = {theirs: job.input[ours] for ours, theirs in _FORWARDED.items() if ours in job.input}
        return ProviderRequest(
            f"/v1/{job.model.removeprefix('segmind/')}", body, {"x-api-key": api_key}
        )

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        """Classify an error answer (docs/providers.md §3).

        406 is "Insufficient Credits" on the model page (also a wrong Content-Type, which reelhook
        never sends). A 429 is refused before any work and is retried after
        ``x-rate-limit-reset-at-utc`` (Segmind sends no Retry-After). Nothing else is retried:
        Segmind has no idempotency key, and a 5xx after a held request may come from a generation
        that was charged, so sending it again could charge twice.
        """
        failure = submit_failure(status_code, body, headers)
        kind = failure.kind
        if status_code == 406:
            content_type = "content-type" in failure.message.lower()
            kind = ErrorKind.INVALID_INPUT if content_type else ErrorKind.INSUFFICIENT_CREDITS
        if status_code == 429:
            retry_after = failure.retry_after or reset_after(
                headers.get("x-rate-limit-reset-at-utc")
            )
            return replace(failure, kind=kind, retryable=True, retry_after=retry_after)
        return replace(failure, kind=kind, retryable=False, retry_after=None)


def reset_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``now`` (epoch s, default the system clock) until ``x-rate-limit-reset-at-utc``:
    an ISO-8601 time (UTC when it names no zone), epoch seconds or an HTTP date; None when absent or
    unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        epoch = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, epoch - now) if math.isfinite(epoch) else None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return parse_retry_after(value, now)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


ADAPTER = SegmindAdapter()
