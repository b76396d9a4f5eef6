"""What provider adapters offer, and how a provider's refusal of a job is described.

Two kinds of provider, two protocols: a :class:`CallbackAdapter` accepts a job with its own job id
and reports on it by callback (Trinetra, apiframe); a :class:`HeldAdapter` answers the submit
request itself, with the finished video, after holding it open (Segmind). Both describe a
refusal the same way, as a :class:`Refusal` value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from service.core.jsonutil import InvalidJSON, loads
from service.core.models import ErrorKind, Job, ProviderUpdate


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


@dataclass(frozen=True, slots=True)
class Refusal:
    """The provider did not accept the job (or could not be asked).

    ``retryable`` refusals (429, 5xx, timeouts, connection errors) may succeed if sent again with
    the same idempotency key, no sooner than ``retry_after`` seconds; the others are final and
    become a failed job of ``kind``.
    """

    kind: ErrorKind
    message: str
    status_code: int | None = None
    provider_code: str | None = None
    retryable: bool = False
    retry_after: float | None = None

    def redacted(self, secret: str) -> Refusal:
        """This refusal with ``secret`` (an API key the provider echoed) masked in its message."""
        return replace(self, message=redact(self.message, secret))


class CallbackAdapter(Protocol):
    """A provider that accepts a job with its own job id and reports on it by callback."""

    name: str
    holds_request: bool  # False

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

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        """Classify the provider's non-2xx answer to a submit request."""
        ...


class HeldAdapter(Protocol):
    """A provider that answers the submit request itself with the finished video: reelhook holds
    the request open instead of waiting for a callback (see :mod:`service.jobs.held_requests`)."""

    name: str
    holds_request: bool  # True

    def submit_request(self, job: Job, api_key: str) -> ProviderRequest:
        """The provider's own request for ``job``."""
        ...

    def failure(self, status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        """Classify the provider's non-200 answer: whether it did any work decides whether the
        request may be sent again."""
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
    return error_details(body)[0]


def error_details(body: bytes) -> tuple[str, str | None]:
    """``(message, code)`` from an error response body: ``{"error": "…"}`` (apiframe, Segmind),
    ``{"error": {"message", "code"}}``, or Kling's ``{"code", "message"}``; the code may be None."""
    try:
        data = loads(body)
    except InvalidJSON:
        return body[:200].decode(errors="replace").strip() or "no message", None
    if not isinstance(data, dict):
        return json.dumps(data)[:500], None
    code = _code(data.get("code"))
    for key in ("error", "message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value[:500], code
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])[:500], code or _code(value.get("code"))
    return json.dumps(data)[:500], code


def _code(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | str) or value in ("", 0):
        return None
    return str(value)[:40]


# Words providers use for a refusal on content grounds (Kling: "risk control", "content security").
_CONTENT_WORDS = ("policy", "moderation", "nsfw", "unsafe", "risk", "content security")

# Kling's documented business codes (docs/providers.md §4), for providers that pass them through.
_KLING_CODES = {
    "1102": ErrorKind.INSUFFICIENT_CREDITS,
    "1200": ErrorKind.INVALID_INPUT,
    "1201": ErrorKind.INVALID_INPUT,
    "1300": ErrorKind.CONTENT_POLICY,
    "1301": ErrorKind.CONTENT_POLICY,
    "1302": ErrorKind.RATE_LIMITED,
    "1303": ErrorKind.RATE_LIMITED,
}


def kind_from_message(message: str, default: ErrorKind) -> ErrorKind:
    """The error kind a provider's message names (content policy, credits), else ``default``."""
    lowered = message.lower()
    if any(word in lowered for word in _CONTENT_WORDS):
        return ErrorKind.CONTENT_POLICY
    if "credit" in lowered or "balance" in lowered or "quota" in lowered:
        return ErrorKind.INSUFFICIENT_CREDITS
    return default


def submit_failure(status_code: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
    """Classify a non-2xx answer to a submit request (docs/providers.md §2, §7 heuristics).

    429, 408 and 5xx are retryable: the request is sent again under the same idempotency key.
    400/413/422 are the input's fault (``invalid_input`` or ``content_policy``); 402 is
    ``insufficient_credits``; any other 4xx (401, 403, 404, 406, 409, …) is reelhook's account or
    configuration, a ``provider_error``.
    """
    message, code = error_details(body)
    retry_after = parse_retry_after(headers.get("retry-after"))
    provider_code = code or str(status_code)
    coded = _KLING_CODES.get(code or "")
    if status_code == 429 or coded is ErrorKind.RATE_LIMITED:
        kind = ErrorKind.RATE_LIMITED
    elif status_code in (408, 504):
        kind = ErrorKind.TIMEOUT
    elif status_code >= 500:
        kind = ErrorKind.PROVIDER_ERROR
    elif coded is not None:
        kind = coded
    elif status_code == 402:
        kind = ErrorKind.INSUFFICIENT_CREDITS
    elif status_code in (400, 413, 422):
        kind = kind_from_message(message, ErrorKind.INVALID_INPUT)
    else:
        kind = kind_from_message(message, ErrorKind.PROVIDER_ERROR)
        if kind is ErrorKind.CONTENT_POLICY:
            kind = ErrorKind.PROVIDER_ERROR  # e.g. "no permission under the key's policy"
    retryable = status_code in (408, 429) or status_code >= 500 or kind is ErrorKind.RATE_LIMITED
    return Refusal(
        kind,
        message,
        status_code=status_code,
        provider_code=provider_code,
        retryable=retryable,
        retry_after=retry_after if retryable else None,
    )


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` (an API key a provider echoed) masked."""
    return text.replace(secret, "[redacted]") if secret else text


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
