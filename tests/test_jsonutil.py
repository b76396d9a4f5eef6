"""Strict JSON parsing: the fast parser and the stdlib one agree on what reelhook accepts."""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest

from service.core import jsonutil
from service.core.jsonutil import InvalidJSON, dumps, dumps_bytes, loads


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "tri_1", "status": "succeeded", "credits": 50, "ratio": 0.5, "ok": true}',
        b'  [1, -0, 1.5e3, "\\u00e9", "\\ud83d\\ude00", null, {"a": 1, "a": 2}]  ',
        b'{"big": 123456789012345678901234567890}',
        b'{"neg": -98765432109876543210}',
        b"[" * 500 + b"]" * 500,
    ],
    ids=["callback", "mixed", "big-int", "big-negative", "deep-but-allowed"],
)
def test_what_is_accepted_parses_exactly_as_the_stdlib_does(body: bytes) -> None:
    parsed = loads(body)
    assert parsed == json.loads(body)
    assert type(parsed) is type(json.loads(body))


@pytest.mark.parametrize(
    "value",
    [
        {"prompt": "un chat é 😀", "n": 5, "ratio": 0.1, "none": None, "ok": False},
        [{"url": "https://x.test/a.mp4", "big": 123456789012345678901234567890}],
        {"estimated": 1e-07, "charged": 1e16, "unit": "credits"},
    ],
)
def test_a_stored_column_parses_from_its_text_as_the_stdlib_does(value: object) -> None:
    """Job rows come back from the store as text, written by :func:`dumps`; they are read
    through the same fast parser (service/storage/jobs.py), with the same answers."""
    text = dumps(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert loads(text) == json.loads(text) == value
    assert loads(text.encode()) == value


def test_dumps_refuses_non_finite_numbers() -> None:
    for number in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not JSON compliant"):
            dumps({"cost": number})


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 1234567890123456789}',
        b'{"n": 18446744073709551616, "m": 123456789012345678}',
        b'{"s": "1234567890123456789012", "n": 99999999999999999999}',
        b"[123456789012345678, 0.1234567890123456789]",
    ],
)
def test_runs_of_nineteen_digits_or_more_parse_exactly(body: bytes) -> None:
    """Such a run may be an integer past 64 bits, which only the stdlib parser keeps exact;
    shorter runs go through the fast parser. Either way the answer is the stdlib's."""
    assert loads(body) == json.loads(body)
    assert loads(body.decode()) == json.loads(body)


def test_integers_past_64_bits_stay_exact() -> None:
    assert loads(b'{"n": 123456789012345678901234567890}')["n"] == 123456789012345678901234567890


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"n": NaN}', "NaN is not valid JSON"),
        (b"[Infinity]", "Infinity is not valid JSON"),
        (b'{"n": -Infinity}', "-Infinity is not valid JSON"),
        (b'"\\ud800"', "unpaired UTF-16 surrogate"),
        (b'"\xff"', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": 1', "Expecting"),
        (b'{"n": 1234567890123456789\x00}', "Expecting"),
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "lone-surrogate",
        "bad-utf8",
        "too-deep",
        "cut",
        "nul-after-digits",
    ],
)
def test_what_is_refused_is_refused_with_a_readable_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidJSON, match=reason):
        loads(body)


_STDLIB = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def test_dumps_writes_what_the_stdlib_encoder_writes() -> None:
    """dumps goes through orjson where its bytes are the stdlib's and to the stdlib elsewhere
    (docs/performance.md §4): either way the text is the stdlib's, byte for byte."""
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    rnd = random.Random(16)
    floats = [struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0] for _ in range(20_000)]
    floats += [rnd.random() * 10.0 ** rnd.randint(-12, 20) for _ in range(20_000)]
    values: list[Any] = [
        everything,
        [f for f in floats if math.isfinite(f)],
        [1e-4, 9.99e-5, 1e-5, 1.5e-7, 1e-300, 5e-324, 1e16, 1e22, -0.0, 0.0, 2**64 - 1, -(2**63)],
        {"prompt": "a single-shot e-mail at 0.00001", "n": 2**70, "ok": True, "none": None},
        {"outputs": (1, 2), "nested": [[{"a": {}}]]},  # a tuple writes as a list
        {1: "a", 2.5: "b", None: "c"},  # keys that are not strings: written as strings
    ]
    for value in values:
        assert dumps(value) == _STDLIB.encode(value)
        assert dumps_bytes(value) == _STDLIB.encode(value).encode()


def test_a_job_event_payload_takes_the_fast_encoder() -> None:
    """What reelhook encodes on every callback (a job document, its stored columns) is plain
    JSON data orjson writes as the stdlib does: the fast encoder takes it."""
    document = {
        "type": "job.succeeded",
        "timestamp": "2026-12-05T17:00:00.123Z",
        "data": {
            "id": "job_01JTESTSUBMITRETRY00000001",
            "input": {"prompt": "A cat on a beach", "duration": 5, "cfg_scale": 0.5},
            "outputs": [{"url": "https://cdn.trinetra.ai/out/a1.mp4", "type": "video"}],
            "error": None,
            "cost": {"estimated": 50.0, "charged": 10, "unit": "credits"},
            "notices": [{"kind": "unknown_status", "message": "m", "at": 1764950000.123456}],
        },
    }
    assert jsonutil._orjson_dumps(document) == _STDLIB.encode(document).encode()


class _Plain(Enum):
    A = "a"


@dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {"deep": [{"cost": float("nan")}]},
        [1.0, float("inf")],
        {"kind": _Plain.A},
        {"at": datetime.now(UTC)},
        {"point": _Point(1)},
    ],
    ids=["nan", "infinity", "enum", "datetime", "dataclass"],
)
def test_what_the_stdlib_refuses_dumps_refuses(value: Any) -> None:
    """orjson writes these (NaN as null, the others as values); reelhook's dumps refuses them as
    the stdlib encoder does."""
    with pytest.raises((ValueError, TypeError)):
        _STDLIB.encode(value)
    with pytest.raises((ValueError, TypeError)):
        dumps(value)
    with pytest.raises((ValueError, TypeError)):
        dumps_bytes(value)
