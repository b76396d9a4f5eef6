"""Identifiers: a type prefix and a time-ordered random part, so ids sort by creation."""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# RFC 4648 base32 and Crockford's use the same 5-bit groups, only other symbols: the stdlib codec
# does the arithmetic and one translation swaps the symbols (the digit loop cost ~10 µs per id).
# The codec is Python code in 3.11 (~3 µs per id), so ids minted many at once (one per delivery
# row at ingest) come from new_ids.
_RFC_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_CROCKFORD = bytes.maketrans(_RFC_ALPHABET, _ALPHABET.encode())
_LOW_FIVE_BITS = bytes(_ALPHABET.encode()[b & 31] for b in range(256))
_FROM_CROCKFORD = str.maketrans(_ALPHABET, "0123456789abcdefghijklmnopqrstuv")


def id_pattern(prefix: str) -> str:
    """The JSON Schema ``pattern`` of an id :func:`new_id` makes with ``prefix`` (what
    :func:`timestamp_of` reads)."""
    return f"^{prefix}_[{_ALPHABET}]{{26}}$"


def new_id(prefix: str) -> str:
    """Return ``{prefix}_`` + 26 Crockford base32 characters (48-bit ms time, 80 random bits)."""
    raw = int(time.time() * 1000).to_bytes(10, "big") + os.urandom(10)
    # 20 bytes are 32 groups of 5 bits; the 128-bit value sits in the last 26 (the first 30 bits
    # are zero), exactly the 26 digits of the value.
    return f"{prefix}_{base64.b32encode(raw)[6:].translate(_TO_CROCKFORD).decode()}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids as :func:`new_id` makes them, at a tenth of the cost each: one clock read,
    one call for the random bytes and one encoding for all (ingest mints one per delivery row,
    up to one per subscriber per event; docs/performance.md §4)."""
    if count <= 0:
        return []
    stamp = int(time.time() * 1000).to_bytes(10, "big")
    head = f"{prefix}_{base64.b32encode(stamp)[6:].translate(_TO_CROCKFORD).decode()}"
    # 16 random symbols per id (80 bits, as new_id's): each random byte's low 5 bits pick a
    # symbol (256 is a multiple of 32, so every symbol is equally likely), in one C call.
    text = os.urandom(16 * count).translate(_LOW_FIVE_BITS).decode()
    return [head + text[i : i + 16] for i in range(0, 16 * count, 16)]


def timestamp_of(identifier: str) -> float:
    """The creation time (epoch seconds, millisecond precision) encoded in an id from
    :func:`new_id`; raises ValueError for anything else."""
    _, _, encoded = identifier.rpartition("_")
    if len(encoded) != 26 or encoded.strip(_ALPHABET):
        raise ValueError(f"not a reelhook id: {identifier!r}")
    # Python's own base-32 digits are 0-9a-v: translate, then let int() do the arithmetic. The
    # first 10 digits are the top 50 bits: 2 zero bits and the 48-bit time.
    return int(encoded[:10].translate(_FROM_CROCKFORD), 32) / 1000
