"""Query-string parameters: plain strings in, typed values out, or :class:`ValidationFailed`
naming the parameter. Shared by every edge that reads a query (the API and the console), so the
same filter is spelt and checked the same way everywhere."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from service.core.errors import ValidationFailed
from service.core.ids import timestamp_of

Query = Mapping[str, str]


def is_decimal(text: str) -> bool:
    """A non-negative integer SQLite can hold: ASCII digits only (``str.isdigit`` also accepts
    superscripts), at most 18 of them."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def limit(query: Query, default: int = 50, maximum: int = 200) -> int:
    """The page size ``limit``: ``default`` when absent, 422 outside 1..``maximum``."""
    raw = query.get("limit")
    if raw is None:
        return default
    if not is_decimal(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationFailed.field("limit", f"must be an integer from 1 to {maximum}")
    return int(raw)


def cursor(query: Query, prefix: str) -> str | None:
    """The ``cursor`` of an id-ordered listing: an id a ``next_cursor`` named (``{prefix}_`` and
    26 base32 characters). Anything else is a 422, one rule for every list (as the event log's
    positions have it), rather than an empty or a first page that would look like an answer."""
    raw = query.get("cursor")
    if raw is None:
        return None
    try:
        timestamp_of(raw)
        valid = raw.partition("_")[0] == prefix
    except ValueError:
        valid = False
    if not valid:
        raise ValidationFailed.field("cursor", "is not a cursor this API returned")
    return raw


def choice(query: Query, name: str, choices: Iterable[str]) -> str | None:
    """The parameter ``name`` if it is one of ``choices``; None when absent."""
    value = query.get(name)
    allowed = tuple(choices)
    if value is not None and value not in allowed:
        raise ValidationFailed.field(name, f"must be one of {', '.join(allowed)}")
    return value


def one_of_two(query: Query, name: str, alias: str) -> str | None:
    """A parameter that may be spelt ``name`` or ``alias``; both given must agree."""
    value = query.get(name)
    other = query.get(alias)
    if value is not None and other is not None and value != other:
        raise ValidationFailed.field(name, f"differs from {alias}; send one of them")
    return value if value is not None else other


def choices_list(query: Query, name: str, choices: Iterable[str], noun: str) -> list[str]:
    """A comma-separated list of ``choices`` (empty: none given)."""
    allowed = tuple(choices)
    values = [v for v in query.get(name, "").split(",") if v]
    for value in values:
        if value not in allowed:
            raise ValidationFailed.field(
                name, f"unknown {noun} {value!r} (accepted: {', '.join(allowed)})"
            )
    return values


UNIX_SECONDS = r"[0-9]{1,12}(\.[0-9]{1,9})?"
"""Unix seconds as the query string may spell them (the OpenAPI schema uses the same)."""
_UNIX_SECONDS = re.compile(UNIX_SECONDS)
_TIME_HINT = "an ISO 8601 time such as 2026-11-21T10:00:00Z, or Unix seconds"


def time(query: Query, name: str, *, required: bool = False) -> float | None:
    """A point in time from the query string, as epoch seconds (see :func:`parse_time`)."""
    return parse_time(query.get(name, ""), name, required=required)


def parse_time(text: str, name: str, *, required: bool = False) -> float | None:
    """A point in time as epoch seconds: ISO 8601 (without a zone it is UTC) or Unix seconds.
    422 naming ``name`` when missing (if ``required``) or unreadable; None when empty."""
    raw = text.strip()
    if not raw:
        if required:
            raise ValidationFailed.field(name, f"is required: {_TIME_HINT}")
        return None
    if _UNIX_SECONDS.fullmatch(raw):
        return float(raw)
    # An unencoded "+02:00" in a query string arrives as " 02:00", hence the second spelling.
    head, _, tail = raw.rpartition(" ")
    for spelling in (raw, f"{head}+{tail}" if head else raw):
        try:
            moment = datetime.fromisoformat(spelling)
            break
        except ValueError:
            continue
    else:
        raise ValidationFailed.field(name, f"{raw!r} is not {_TIME_HINT}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        value = moment.timestamp()
    except (OverflowError, OSError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValidationFailed.field(name, f"{raw!r} is out of range")
    return value
