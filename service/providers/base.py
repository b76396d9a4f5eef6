"""What every provider adapter offers, and the errors a provider call can end in."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from service.jsonutil import InvalidJSON, loads
from service.models import ErrorKind, Job, ProviderUpdate


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One HTTP request to a provider, relative to its base URL."""

    path: str
    json: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class InvalidCallback(Exception):
    """A callback body reelhook cannot read as this provider's job document."""


class ForgedCallback(Exception):
    """A callback whose provider signature does not verify."""


class SubmitFailed(Exception):
    """The provider did not accept the job.

    ``retryable`` failures (429, 5xx, timeouts, connection errors) may succeed if sent again with
    the same idempotency key; the others are final and become a failed job of ``kind``.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status_code: int | None = None,
        provider_code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.provider_code = provider_code
        self.retryable = retryable
        self.retry_after = retry_after


class Adapter(Protocol):
    name: str
    #: True when the provider answers the submit request with the finished video (no callback).
    holds_request: bool

    def submit_request(self, job: Job, callback_url: str, api_key: str) -> ProviderRequest:
        """The provider's own request for ``job``, announcing ``callback_url`` where it can."""
        ...

    def accepted_job_id(self, body: Any) -> str:
        """The provider's job id from its 2xx answer to the submit request."""
        ...

    def verify_callback(self, headers: Mapping[str, str], body: bytes, api_key: str) -> None:
        """Raise :class:`ForgedCallback` unless the provider's own signature verifies."""
        ...

    def parse_callback(self, body: bytes) -> ProviderUpdate:
        """Read a verified callback body; raise :class:`InvalidCallback` if it is not one."""
        ...


def load_object(body: bytes) -> dict[str, Any]:
    """Parse a callback body that must be a JSON object."""
    try:
        data = loads(body)
    except InvalidJSON as exc:
        raise InvalidCallback(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidCallback("body is not a JSON object")
    return data


def error_message(body: bytes) -> str:
    """The provider's error message from an error response body, kept short."""
    try:
        data = loads(body)
    except InvalidJSON:
        return body[:200].decode(errors="replace").strip() or "no message"
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:500]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:500]
    return json.dumps(data)[:500]


def kind_from_message(message: str, default: ErrorKind) -> ErrorKind:
    lowered = message.lower()
    if any(word in lowered for word in ("content", "policy", "moderation", "risk", "nsfw")):
        return ErrorKind.CONTENT_POLICY
    if "credit" in lowered or "balance" in lowered:
        return ErrorKind.INSUFFICIENT_CREDITS
    return default


def submit_failure(status_code: int, body: bytes, headers: Mapping[str, str]) -> SubmitFailed:
    """Classify a non-2xx answer to a submit request (providers.md §7 heuristics)."""
    message = error_message(body)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status_code == 429:
        return SubmitFailed(
            ErrorKind.RATE_LIMITED,
            message,
            status_code=429,
            retryable=True,
            retry_after=retry_after,
        )
    if status_code >= 500:
        kind = ErrorKind.TIMEOUT if status_code == 504 else ErrorKind.PROVIDER_ERROR
        return SubmitFailed(
            kind, message, status_code=status_code, retryable=True, retry_after=retry_after
        )
    if status_code == 402:
        return SubmitFailed(ErrorKind.INSUFFICIENT_CREDITS, message, status_code=402)
    if status_code in (401, 403):
        return SubmitFailed(ErrorKind.PROVIDER_ERROR, message, status_code=status_code)
    return SubmitFailed(
        kind_from_message(message, ErrorKind.INVALID_INPUT), message, status_code=status_code
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds after ``now`` (epoch s, default the system clock).

    Accepts delta-seconds or an HTTP date; None when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value[:12])  # a longer number of seconds is "never" anyway
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
