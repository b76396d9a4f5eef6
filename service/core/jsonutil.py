"""Strict JSON: compact encoding for storage and signing, and parsing that refuses what RFC 8259
does not allow (NaN, Infinity) or what would exhaust the parser (absurd nesting)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

# A run of 19 digits, found as 19 NUL bytes once every digit is one: one C pass (~0.7 µs for a
# 635-byte callback body, where the regular expression [0-9]{19} took ~5.4 µs). A NUL already in
# the data (never valid JSON) can only send it to the stdlib parser, which decides.
_DIGITS_TO_NUL = bytes.maketrans(b"0123456789", bytes(10))
_NINETEEN_DIGITS = bytes(19)


class InvalidJSON(ValueError):
    """The bytes are not a JSON document reelhook accepts."""


# allow_nan=False: a non-finite number must fail here, before it is stored or signed. Built once
# (a constant, like a compiled pattern): json.dumps with any non-default argument builds an encoder
# per call, ~1.2 of ~2.7 µs for a small value, and ingest encodes four values per callback. No
# circular check: reelhook encodes trees of its own, and a cycle still fails (RecursionError).
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``; raises ValueError for NaN and Infinity."""
    fast = _orjson_dumps(value)
    return fast.decode() if fast is not None else _ENCODER.encode(value)


def dumps_bytes(value: Any) -> bytes:
    """:func:`dumps` as UTF-8 bytes (an event's payload, what subscribers receive)."""
    fast = _orjson_dumps(value)
    return fast if fast is not None else _ENCODER.encode(value).encode()


def _orjson_dumps(value: Any) -> bytes | None:
    """The bytes the stdlib encoder above gives for ``value``, encoded by orjson (~1 against
    ~5 µs for an event payload; docs/performance.md §4), or None when orjson's could differ.

    orjson writes every string and integer as the stdlib does (checked for every code point,
    tests/test_jsonutil.py), and every float too except below 1e-4, where it writes ``0.00001``
    or ``1e-7`` for the stdlib's ``1e-05`` and ``1e-07``: output with ``e-`` or ``0.0000`` in
    it goes to the stdlib (a string holding them only costs the slower encoder). What orjson
    refuses (integers past 64 bits, keys that are not strings, lone surrogates) goes there too.
    What it writes where the stdlib refuses or writes otherwise (NaN and Infinity as ``null``;
    dataclasses, enums, dates as values) does not read back equal to ``value``: also the
    stdlib's, which refuses NaN as reelhook must.
    """
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    if b"e-" in encoded or b"0.0000" in encoded or orjson.loads(encoded) != value:
        return None
    return encoded


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 bytes, or text as the store returns a JSON column); raise
    :class:`InvalidJSON` with a readable reason.

    orjson parses first (about a quarter of the stdlib's time per callback body); it refuses
    NaN, Infinity, numbers that overflow to infinity, invalid UTF-8 and lone surrogates, so what
    it accepts reelhook accepts too. Anything it refuses goes through the stdlib parser below,
    which decides, with its own readable reason; so do bodies with a 19-digit run, since orjson
    turns integers past 64 bits into floats where the stdlib keeps them exact.
    """
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # a lone surrogate: the stdlib parser says why it is refused
        return _stdlib_loads(data)
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_TO_NUL):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _stdlib_loads(data)


def _stdlib_loads(data: bytes | str) -> Any:
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidJSON("the body is not UTF-8") from None
    except RecursionError:
        raise InvalidJSON("the body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise InvalidJSON(str(exc)) from None
    lowered = data.lower()
    if ("\\ud" in lowered) if isinstance(lowered, str) else (b"\\ud" in lowered):
        # A \ud800-style escape can decode to a lone surrogate, which no UTF-8 store accepts.
        try:
            dumps(value).encode()
        except UnicodeEncodeError:
            raise InvalidJSON("the body contains an unpaired UTF-16 surrogate") from None
    return value


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)
