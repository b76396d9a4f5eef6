"""Ids: Crockford base32 of (ms time << 80 | 80 random bits), so they sort by creation."""

from __future__ import annotations

import time

import pytest

from service.core.ids import new_id, new_ids, timestamp_of

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


def test_ids_minted_in_a_batch_are_ids_of_the_same_shape_and_distinct() -> None:
    before = int(time.time() * 1000)
    made = new_ids("dlv", 5_000)
    after = int(time.time() * 1000)
    assert len(made) == 5_000 and len(set(made)) == 5_000
    for identifier in made:
        prefix, _, encoded = identifier.partition("_")
        assert prefix == "dlv"
        assert len(encoded) == 26 and set(encoded) <= set(CROCKFORD)
        assert before <= _digits(encoded) >> 80 <= after
    # Every symbol of the random parts turns up about equally often (5,000 x 16 draws of 32).
    counts = [sum(i[-16:].count(char) for i in made) for char in CROCKFORD]
    assert min(counts) > 0.8 * 2_500 and max(counts) < 1.2 * 2_500
    assert new_ids("dlv", 0) == []


@pytest.mark.parametrize(
    "bad",
    ["dlv_" + "0" * 25, "dlv_" + "u" * 26, "dlv_" + "I" * 26, "x", "dlv_" + " " * 26, ""],
)
def test_timestamp_of_refuses_what_is_not_an_id(bad: str) -> None:
    with pytest.raises(ValueError, match="not a reelhook id"):
        timestamp_of(bad)
