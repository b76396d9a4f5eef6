"""Logging: text or one JSON object per line (``REELHOOK_LOG_FORMAT``), never a secret.

Every line passes a scrubber that removes the secrets reelhook is configured with (provider API
keys, signing keys, the admin key) and anything shaped like one of its own credentials (API keys,
``whsec_`` secrets, callback and file-link tokens in URLs), wherever it appears: message,
arguments, traceback. JSON lines also carry the ids a message names (``job_id``, ``event_id``,
``delivery_id``, ``subscription_id``, ``key_id``) as fields of their own, so logs can be searched
by id.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

from service.app.settings import Settings

_SHAPES = (
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_[redacted]"),
    (re.compile(r"\brh_[A-Za-z0-9_\-]{8,}"), "rh_[redacted]"),
    # A backslash ends a token too: in a JSON line it starts an escaped quote.
    (re.compile(r"(/v1/callbacks/[^/\s\"'\\]+/)[^\s\"'?\\]+"), r"\1[redacted]"),
    (re.compile(r"(/v1/files/)[^\s\"'?\\]+"), r"\1[redacted]"),
    # A stream token in an EventSource URL (GET /v1/events/stream?token=…).
    (re.compile(r"([?&]token=)[^\s\"'&\\]+"), r"\1[redacted]"),
)
_IDS = re.compile(r"\b(job|evt|dlv|sub|key)_[0-9a-hjkmnp-tv-z]{26}\b")
_ID_FIELDS = {
    "job": "job_id",
    "evt": "event_id",
    "dlv": "delivery_id",
    "sub": "subscription_id",
    "key": "key_id",
}
# Attributes every LogRecord has; anything else on a record came from ``extra=`` (but uvicorn's
# ``color_message``, the message again with terminal colour codes).
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class Scrubber:
    """Replaces known secret values and credential-shaped strings in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret containing another is removed whole. Short values would
        # redact ordinary words, and reelhook refuses short keys where it can.
        known = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub("[redacted]", text)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text


def configured_secrets(settings: Settings) -> list[str | None]:
    """Every secret value ``settings`` holds."""
    return [
        settings.admin_key,
        *settings.secret_keys,
        *(provider.api_key for provider in settings.providers.values()),
    ]


class TextFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids the message names, any
    ``extra=`` fields, and the traceback, if any."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        message = self._scrub(record.getMessage())
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for match in _IDS.finditer(message):
            line.setdefault(_ID_FIELDS[match.group(1)], match.group(0))
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # Scrubbed again as a whole: extras and tracebacks can hold secrets too.
        return self._scrub(json.dumps(line, default=repr))


def handler_for(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) in the configured format, scrubbed."""
    scrub = Scrubber(configured_secrets(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(scrub) if settings.log_format == "json" else TextFormatter(scrub)
    handler.setFormatter(formatter)
    return handler


# Loggers that would say too much below these levels: httpx logs every request URL at INFO
# (output URLs carry signed query strings), aiosqlite every statement with its parameters at DEBUG.
_CAPS = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "aiosqlite": logging.INFO}


def configure_logging(settings: Settings) -> None:
    """Send every log record (reelhook's and uvicorn's) to stderr as ``settings`` say."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler_for(settings))
    _set_levels(settings.log_level)


@contextmanager
def logging_to(stream: TextIO, settings: Settings) -> Iterator[logging.Handler]:
    """Like :func:`configure_logging`, to ``stream`` and for the block only (for tests and
    tools that run reelhook inside another program); levels are restored afterwards."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *_CAPS)}
    handler = handler_for(settings, stream)
    root.addHandler(handler)
    _set_levels(settings.log_level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _set_levels(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for name, floor in _CAPS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
