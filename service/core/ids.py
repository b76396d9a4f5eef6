"""Identifiers: a type prefix and a time-ordered random part, so ids sort by creation."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """Return ``{prefix}_`` + 26 Crockford base32 characters (48-bit ms time, 80 random bits)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return f"{prefix}_{''.join(reversed(chars))}"


def timestamp_of(identifier: str) -> float:
    """The creation time (epoch seconds, millisecond precision) encoded in an id from
    :func:`new_id`; raises ValueError for anything else."""
    _, _, encoded = identifier.rpartition("_")
    if len(encoded) != 26:
        raise ValueError(f"not a reelhook id: {identifier!r}")
    value = 0
    for char in encoded:
        index = _ALPHABET.find(char)
        if index < 0:
            raise ValueError(f"not a reelhook id: {identifier!r}")
        value = value * 32 + index
    return (value >> 80) / 1000
