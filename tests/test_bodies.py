"""Request bodies, query parameters and paging as pure functions: no app, no store.

The subscription and key bodies are each declared once (``service.core.body``); these tests pin
the messages a client sees and check that the JSON Schema published in ``/openapi.json`` accepts
exactly what the validator accepts, wherever JSON Schema can say it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from service.access.keys import NEW_KEY
from service.access.scopes import SCOPES
from service.core import params
from service.core.body import Body, Choices, Field, Text, read_capped
from service.core.errors import PayloadTooLarge, ValidationFailed
from service.core.models import EVENT_TYPES
from service.core.paging import page_of
from service.delivery.subscriptions import NEW_SUBSCRIPTION, SUBSCRIPTION_CHANGES
from service.jobs.submission import JOB_EXTRAS

HOOK = "https://hooks.example.test/x"


def problem(body: Body, raw: Any) -> dict[str, Any]:
    with pytest.raises(ValidationFailed) as caught:
        body.validate(raw)
    fields: dict[str, Any] = caught.value.details.get("fields", {"": caught.value.message})
    return fields


def schema_accepts(body: Body, raw: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(body.schema()).is_valid(raw))


def validator_accepts(body: Body, raw: Any) -> bool:
    try:
        body.validate(raw)
    except ValidationFailed:
        return False
    return True


# Bodies both ways of reading must agree on.
SUBSCRIPTION_BODIES: list[Any] = [
    {"url": HOOK},
    {"url": HOOK, "event_types": ["job.succeeded", "ping"], "models": None},
    {"url": HOOK, "event_types": None, "headers": None, "description": ""},
    {"url": HOOK, "headers": {"Authorization": "Bearer x"}},
    {"url": HOOK, "description": "x" * 500},
    {"url": HOOK, "description": "x" * 501},
    {"url": HOOK, "event_types": ["job.exploded"]},
    {"url": HOOK, "event_types": "job.succeeded"},
    {"url": HOOK, "event_types": [1]},
    {"url": HOOK, "models": ["nobody/nothing"]},
    {"url": HOOK, "headers": {"Bad Name": "x"}},
    {"url": HOOK, "headers": {"X-Ok": "line\nbreak"}},
    {"url": HOOK, "headers": {"X-Ok": 3}},
    {"url": HOOK, "headers": ["X-Ok"]},
    {"url": 3},
    {"url": HOOK, "secret": "whsec_x"},
    {"description": "no url"},
    [HOOK],
    "https://hooks.example.test/x",
]


@pytest.mark.parametrize("raw", SUBSCRIPTION_BODIES)
def test_the_subscription_schema_accepts_what_the_validator_accepts(raw: Any) -> None:
    assert schema_accepts(NEW_SUBSCRIPTION, raw) == validator_accepts(NEW_SUBSCRIPTION, raw)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"status": "disabled"},
        {"status": "paused"},
        {"status": None},
        {"url": None},
        *SUBSCRIPTION_BODIES,
    ],
)
def test_the_patch_schema_accepts_what_the_validator_accepts(raw: Any) -> None:
    assert schema_accepts(SUBSCRIPTION_CHANGES, raw) == validator_accepts(SUBSCRIPTION_CHANGES, raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "ci", "scopes": ["read"]},
        {"name": "x" * 100, "scopes": list(SCOPES)},
        {"name": "x" * 101, "scopes": ["read"]},
        {"name": "", "scopes": ["read"]},
        {"name": "ci", "scopes": []},
        {"name": "ci", "scopes": ["jobs:delete"]},
        {"name": "ci", "scopes": "read"},
        {"name": 3, "scopes": ["read"]},
        {"name": "ci"},
        {"scopes": ["read"]},
        {"name": "ci", "scopes": ["read"], "expires": 3},
        None,
    ],
)
def test_the_key_schema_accepts_what_the_validator_accepts(raw: Any) -> None:
    assert schema_accepts(NEW_KEY, raw) == validator_accepts(NEW_KEY, raw)


def test_what_json_schema_cannot_say_is_still_refused() -> None:
    # Reserved header names and a blank key name pass the schema, not the checks behind it.
    reserved = {"url": HOOK, "headers": {"Webhook-Signature": "v1,forged"}}
    assert schema_accepts(NEW_SUBSCRIPTION, reserved)
    assert problem(NEW_SUBSCRIPTION, reserved) == {
        "headers": "'Webhook-Signature' is set by reelhook itself"
    }
    blank = {"name": "   ", "scopes": ["read"]}
    assert schema_accepts(NEW_KEY, blank)
    assert problem(NEW_KEY, blank) == {"name": "is required: a string of 1 to 100 characters"}


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        ({"url": 3}, {"url": "is required and must be a string"}),
        ({}, {"url": "is required and must be a string"}),
        ({"url": HOOK, "event_types": "ping"}, {"event_types": "must be a list of strings"}),
        (
            {"url": HOOK, "event_types": ["ping", "nope"]},
            {"event_types": f"unknown value 'nope' (accepted: {', '.join(EVENT_TYPES)})"},
        ),
        ({"url": HOOK, "headers": []}, {"headers": "must be an object of string values"}),
        ({"url": HOOK, "headers": {"Host": "x"}}, {"headers": "'Host' is set by reelhook itself"}),
        ({"url": HOOK, "headers": {"a b": "x"}}, {"headers": "'a b' is not a valid header name"}),
        ({"url": HOOK, "headers": {"X": "\x00"}}, {"headers": "the value of 'X' is not valid"}),
        (
            {"url": HOOK, "description": 5},
            {"description": "must be a string of at most 500 characters"},
        ),
        ({"url": HOOK, "b": 1, "a": 2}, {"a": "unknown field", "b": "unknown field"}),
        ([], {"": "the request body must be a JSON object"}),
    ],
)
def test_a_bad_subscription_body_names_its_first_problem(raw: Any, fields: dict[str, str]) -> None:
    assert problem(NEW_SUBSCRIPTION, raw) == fields


def test_status_is_only_for_a_patch() -> None:
    assert problem(NEW_SUBSCRIPTION, {"url": HOOK, "status": "active"}) == {
        "status": "unknown field"
    }
    assert problem(SUBSCRIPTION_CHANGES, {"status": "paused"}) == {
        "status": "must be active or disabled"
    }
    assert SUBSCRIPTION_CHANGES.validate({"status": "disabled"}) == {"status": "disabled"}


def test_null_clears_a_filter_and_duplicates_collapse() -> None:
    assert NEW_SUBSCRIPTION.validate(
        {"url": HOOK, "event_types": None, "models": None, "headers": None}
    ) == {"url": HOOK, "event_types": (), "models": (), "headers": {}}
    assert NEW_SUBSCRIPTION.validate({"url": HOOK, "event_types": ["ping", "ping"]})[
        "event_types"
    ] == ("ping",)


def test_a_key_body_is_trimmed_and_its_scopes_named() -> None:
    assert NEW_KEY.validate({"name": "  ci  ", "scopes": ["read", "read"]}) == {
        "name": "ci",
        "scopes": ("read",),
    }
    fields = problem(NEW_KEY, {"name": "ci", "scopes": ["read", "jobs:delete"]})
    assert fields == {"scopes": f"unknown scope 'jobs:delete' (accepted: {', '.join(SCOPES)})"}
    assert problem(NEW_KEY, {"name": "ci", "scopes": []}) == {
        "scopes": f"is required: a non-empty list from {', '.join(SCOPES)}"
    }


def test_a_run_time_check_runs_after_the_kind_and_names_the_field() -> None:
    body = Body((Field("a", Text("must be text")), Field("b", Choices(("x",), "must be x"))))
    seen: list[str] = []

    def check(value: str) -> str | None:
        seen.append(value)
        return "is not allowed here" if value == "no" else None

    assert body.validate({"a": "ok"}, {"a": check}) == {"a": "ok"}
    with pytest.raises(ValidationFailed) as caught:
        body.validate({"a": "no", "b": ["y"]}, {"a": check})
    # Declaration order: the first field's check is reported before the second field's kind.
    assert caught.value.details == {"fields": {"a": "is not allowed here"}}
    assert seen == ["ok", "no"]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
async def test_a_body_is_read_up_to_its_cap() -> None:
    assert await read_capped(chunks(b"ab", b"cd"), "4", 4) == b"abcd"
    assert await read_capped(chunks(b"ab", b"cd"), None, 4) == b"abcd"
    with pytest.raises(PayloadTooLarge):
        await read_capped(chunks(b"abc", b"de"), None, 4)


@pytest.mark.anyio
async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    read: list[bytes] = []

    async def watched() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"x"

    with pytest.raises(PayloadTooLarge):
        await read_capped(watched(), "5", 4)
    assert read == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [({}, 50), ({"limit": "1"}, 1), ({"limit": "200"}, 200)],
)
def test_a_limit_within_range_is_read(query: dict[str, str], expected: int) -> None:
    assert params.limit(query) == expected


@pytest.mark.parametrize("raw", ["0", "201", "-1", "1.5", "²", "x", "9" * 19])
def test_a_limit_out_of_range_names_the_parameter(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        params.limit({"limit": raw})
    assert caught.value.details == {"fields": {"limit": "must be an integer from 1 to 200"}}


def test_a_filter_spelt_two_ways_must_agree() -> None:
    assert params.one_of_two({"job": "job_1"}, "job_id", "job") == "job_1"
    assert params.one_of_two({"job_id": "job_1", "job": "job_1"}, "job_id", "job") == "job_1"
    with pytest.raises(ValidationFailed) as caught:
        params.one_of_two({"job_id": "job_1", "job": "job_2"}, "job_id", "job")
    assert caught.value.details == {"fields": {"job_id": "differs from job; send one of them"}}


def test_choices_are_checked_one_by_one() -> None:
    assert params.choice({}, "status", ("a", "b")) is None
    assert params.choices_list({"type": "a,,b"}, "type", ("a", "b"), "kind") == ["a", "b"]
    with pytest.raises(ValidationFailed) as caught:
        params.choices_list({"type": "a,c"}, "type", ("a", "b"), "kind")
    assert caught.value.details == {"fields": {"type": "unknown kind 'c' (accepted: a, b)"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1795255200", 1795255200.0),
        ("2026-11-21T10:00:00Z", 1795255200.0),
        ("2026-11-21T10:00:00", 1795255200.0),
        ("2026-11-21T12:00:00 02:00", 1795255200.0),  # "+" unencoded in a query string
    ],
)
def test_times_are_read_as_iso_8601_or_unix_seconds(text: str, expected: float) -> None:
    assert params.parse_time(text, "since") == expected


@pytest.mark.parametrize("text", ["yesterday", "9999999999999", "0001-01-01T00:00:00+01:00"])
def test_an_unreadable_time_names_the_parameter(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        params.parse_time(text, "since")
    assert "since" in caught.value.details["fields"]


def test_a_required_time_must_be_given() -> None:
    assert params.parse_time("  ", "until") is None
    with pytest.raises(ValidationFailed):
        params.parse_time("", "since", required=True)


def test_a_page_has_a_cursor_only_when_more_rows_follow() -> None:
    assert page_of([1, 2, 3], 2, str).items == [1, 2]
    assert page_of([1, 2, 3], 2, str).next_cursor == "2"
    assert page_of([1, 2], 2, str).next_cursor is None
    assert page_of([], 2, str).items == []


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"metadata": {"order": 7}},
        {"metadata": None},
        {"metadata": ["x"]},
        {"metadata": {"x": "y" * 9000}},
        {"callback_url": None},
        {"callback_url": HOOK},
        {"callback_url": 3},
    ],
)
def test_the_job_extras_schema_accepts_what_the_validator_accepts(raw: Any) -> None:
    # Only the size limit of metadata is beyond JSON Schema.
    expected = validator_accepts(JOB_EXTRAS, raw) or raw == {"metadata": {"x": "y" * 9000}}
    assert schema_accepts(JOB_EXTRAS, raw) == expected


def test_job_extras_messages_and_a_null_callback_url() -> None:
    assert JOB_EXTRAS.validate({"callback_url": None}) == {}
    assert problem(JOB_EXTRAS, {"metadata": []}) == {"metadata": "must be an object"}
    assert problem(JOB_EXTRAS, {"metadata": {"x": "y" * 9000}}) == {
        "metadata": "must be under 8192 bytes"
    }
    assert problem(JOB_EXTRAS, {"callback_url": 3}) == {"callback_url": "must be a string"}
