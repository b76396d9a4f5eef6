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

from service.core.jsonutil import InvalidJSON, finite_number, loads
from service.core.models import ErrorKind, Job, JobError, JobStatus, Output, ProviderUpdate


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
    #: True when the provider can also POST results to one webhook URL set on the account (the
    #: API key), besides or instead of the per-job callback URL reelhook sends.
    account_webhook: bool

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


# Keys under which providers (and the Kling API they front) put a video URL in a result object.
_URL_KEYS = ("url", "videoUrl", "video_url", "resource_without_watermark", "resource")
_LIST_KEYS = ("videos", "outputs", "works", "urls", "resultUrls")


def video_urls(value: Any, depth: int = 0) -> tuple[str, ...]:
    """Every http(s) URL in a result of any of the shapes providers use: a string; a list of
    strings or objects; an object with ``url``/``videoUrl``/``video_url``, or with a list under
    ``videos``/``outputs``/``works``/``urls``, or a ``video`` object. Order is kept, duplicates
    dropped. Nesting is bounded (a result is never deep)."""
    if depth > 4:
        return ()
    found: list[str] = []
    if isinstance(value, str):
        if value.startswith(("https://", "http://")):
            found.append(value)
    elif isinstance(value, list):
        for item in value[:50]:
            found.extend(video_urls(item, depth + 1))
    elif isinstance(value, dict):
        for key in _URL_KEYS:
            if isinstance(value.get(key), str) and value[key].startswith(("https://", "http://")):
                found.append(value[key])
                break
        for key in (*_LIST_KEYS, "video", "output", "result", "task_result"):
            if key in value:
                found.extend(video_urls(value[key], depth + 1))
    return tuple(dict.fromkeys(found))


KLING_STATUSES: Mapping[str, JobStatus] = {
    "submitted": JobStatus.SUBMITTED,
    "processing": JobStatus.RUNNING,
    "succeed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
}
"""Kling's own ``task_status`` words (docs/providers.md, Kling callback protocol)."""


def is_kling_document(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is Kling's own callback body, which a gateway may pass through."""
    return "task_id" in data and "task_status" in data


def kling_update(data: Mapping[str, Any]) -> ProviderUpdate:
    """Read Kling's own callback body (``task_id``, ``task_status``, ``task_result.videos[].url``,
    ``task_status_msg``, ``task_info.external_task_id``, ``final_unit_deduction``)."""
    task_id = data.get("task_id")
    word = data.get("task_status")
    if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not isinstance(word, str):
        raise InvalidCallback("a Kling document needs a task_id and a string task_status")
    outputs = tuple(Output(url=url) for url in video_urls(data.get("task_result")))
    message = data.get("task_status_msg")
    error = None
    if isinstance(message, str) and message.strip():
        error = JobError(kind_from_message(message, ErrorKind.PROVIDER_ERROR), message[:500])
    status, unknown = read_status(KLING_STATUSES.get(word.strip().lower()), word, outputs, error)
    if status is JobStatus.SUCCEEDED and not outputs:
        raise InvalidCallback("a succeeded Kling document has no video URL")
    if status is JobStatus.FAILED and error is None:
        error = JobError(ErrorKind.PROVIDER_ERROR, f"Kling reported task_status {word!r}")
    info = data.get("task_info")
    external = info.get("external_task_id") if isinstance(info, dict) else None
    charged = data.get("final_unit_deduction")
    if isinstance(charged, str):
        try:
            charged = float(charged)
        except ValueError:
            charged = None
    return ProviderUpdate(
        provider_job_id=str(task_id),
        status=status,
        outputs=outputs if status is JobStatus.SUCCEEDED else (),
        error=error if status is JobStatus.FAILED else None,
        charged=finite_number(charged),
        unknown_status=unknown,
        external_id=external if isinstance(external, str) and external else None,
    )


def read_status(
    known: JobStatus | None, word: str, outputs: tuple[Output, ...], error: JobError | None
) -> tuple[JobStatus, str | None]:
    """The status of a document whose status word is ``word`` (``known``: what it means, or None).

    An unknown word never destroys a result (docs/providers.md): with output URLs it is a
    success, with an error a failure, and otherwise a non-terminal update that leaves the job
    open. Returns the status and, when the word was unknown, the word (for the notice, the log
    line and the metric)."""
    if known is not None:
        return known, None
    word = word.strip()[:64] or "(empty)"
    if outputs:
        return JobStatus.SUCCEEDED, word
    if error is not None:
        return JobStatus.FAILED, word
    return JobStatus.SUBMITTED, word
