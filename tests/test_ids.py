"""Ids: Crockford base32 of (ms time << 80 | 80 random bits), so they sort by creation."""

from __future__ import annotations

import time

import pytest

from service.core.ids import new_id, timestamp_of

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def _digits(encoded: str) -> int:
    """The reference decoding: one base-32 digit at a time."""
    value = 0
    for char in encoded:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_an_id_is_26_crockford_digits_of_its_millisecond_and_80_random_bits() -> None:
    before = int(time.time() * 1000)
    made = [new_id("dlv") for _ in range(500)]
    after = int(time.time() * 1000)
    for identifier in made:
        prefix, _, encoded = identifier.partition("_")
        assert prefix == "dlv"
        assert len(encoded) == 26 and set(encoded) <= set(CROCKFORD)
        value = _digits(encoded)
        assert before <= value >> 80 <= after
        assert timestamp_of(identifier) == (value >> 80) / 1000
    assert len(set(made)) == len(made)
    # Ids minted later sort after (the random part only orders ids of the same millisecond).
    assert [i[:14] for i in made] == sorted(i[:14] for i in made)


@pytest.mark.parametrize(
    "bad",
    ["dlv_" + "0" * 25, "dlv_" + "u" * 26, "dlv_" + "I" * 26, "x", "dlv_" + " " * 26, ""],
)
def test_timestamp_of_refuses_what_is_not_an_id(bad: str) -> None:
    with pytest.raises(ValueError, match="not a reelhook id"):
        timestamp_of(bad)
