"""Payload filters: the language's semantics and every way a filter is refused."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from service.api.schemas import components
from service.core.errors import ValidationFailed
from service.delivery.filters import MAX_CONDITIONS, MAX_DEPTH, FilterError, parse
from service.delivery.samples import event_fields
from service.delivery.subscriptions import NEW_SUBSCRIPTION

FIELDS = event_fields()


def body(**data: Any) -> dict[str, Any]:
    return {"type": "job.succeeded", "timestamp": "2026-12-05T06:00:00Z", "data": data}


def matches(spec: Any, event: dict[str, Any]) -> bool:
    return parse(spec, FIELDS).matches(event)


def test_equality_on_a_metadata_field() -> None:
    spec = {"path": "data.metadata.channel", "eq": "bots"}
    assert matches(spec, body(metadata={"channel": "bots"}))
    assert not matches(spec, body(metadata={"channel": "humans"}))
    assert not matches(spec, body(metadata={}))  # missing: eq is false
    assert matches({"path": "data.metadata.channel", "ne": "bots"}, body(metadata={}))


def test_json_equality_does_not_confuse_true_and_one() -> None:
    assert matches({"path": "data.metadata.n", "eq": 1}, body(metadata={"n": 1.0}))
    assert not matches({"path": "data.metadata.n", "eq": 1}, body(metadata={"n": True}))
    assert not matches({"path": "data.metadata.n", "eq": "1"}, body(metadata={"n": 1}))
    assert matches({"path": "data.metadata.n", "eq": None}, body(metadata={"n": None}))


def test_membership() -> None:
    spec = {"path": "data.status", "in": ["succeeded", "failed"]}
    assert matches(spec, body(status="failed"))
    assert not matches(spec, body(status="expired"))
    assert not matches(spec, body())


def test_existence() -> None:
    assert matches({"path": "data.error", "exists": False}, body(error=None))
    assert matches({"path": "data.error", "exists": False}, body())
    assert matches({"path": "data.error", "exists": True}, body(error={"kind": "timeout"}))
    assert matches({"path": "data.error.kind", "exists": True}, body(error={"kind": "timeout"}))


def test_numeric_comparison_only_on_numbers() -> None:
    longer = {"path": "data.input.duration", "gt": 5}
    assert matches(longer, body(input={"duration": 10}))
    assert not matches(longer, body(input={"duration": 5}))
    assert matches({"path": "data.input.duration", "gte": 5}, body(input={"duration": 5}))
    assert matches({"path": "data.input.duration", "lt": 5.5}, body(input={"duration": 5}))
    assert matches({"path": "data.input.duration", "lte": 5}, body(input={"duration": 5}))
    # A string or a boolean is not a number, whatever it looks like.
    assert not matches(longer, body(input={"duration": "10"}))
    assert not matches(longer, body(input={"duration": True}))
    assert not matches(longer, body(input={}))


def test_list_items_by_index() -> None:
    spec = {"path": "data.outputs.0.type", "eq": "video"}
    assert matches(spec, body(outputs=[{"type": "video"}]))
    assert not matches(spec, body(outputs=[]))


def test_all_any_not() -> None:
    automation = {
        "all": [
            {"path": "type", "eq": "job.succeeded"},
            {"path": "data.input.duration", "gt": 5},
        ]
    }
    assert matches(automation, body(input={"duration": 10}))
    assert not matches(automation, {**body(input={"duration": 10}), "type": "job.failed"})
    either = {
        "any": [
            {"path": "data.metadata.channel", "eq": "bots"},
            {"not": {"path": "data.model", "in": ["trinetra/kling-v3"]}},
        ]
    }
    assert matches(either, body(metadata={"channel": "bots"}, model="trinetra/kling-v3"))
    assert matches(either, body(metadata={}, model="segmind/kling-v2"))
    assert not matches(either, body(metadata={}, model="trinetra/kling-v3"))


def test_the_spec_is_kept_as_given() -> None:
    spec = {"path": "data.status", "eq": "succeeded"}
    assert parse(spec, FIELDS).spec == spec


@pytest.mark.parametrize(
    ("spec", "where", "words"),
    [
        # A field no event can have, at the top, inside data, and inside a known object.
        ({"path": "data.colour", "eq": "red"}, "filter.path", "'data.colour'"),
        ({"path": "payload.status", "eq": "x"}, "filter.path", "'payload'"),
        ({"path": "data.error.reason", "exists": True}, "filter.path", "'data.error.reason'"),
        ({"path": "data.cost.amount.cents", "gt": 1}, "filter.path", "'data.cost.amount.cents'"),
        (
            {"all": [{"path": "data.status", "eq": "x"}, {"path": "data.stauts", "eq": "x"}]},
            "filter.all[1].path",
            "'data.stauts'",
        ),
        ({"path": "data..status", "eq": "x"}, "filter.path", "empty segment"),
        ({"path": "", "eq": "x"}, "filter.path", "dot-separated"),
        ({"path": 3, "eq": "x"}, "filter.path", "dot-separated"),
        # Operators.
        ({"path": "data.status", "like": "succ%"}, "filter.like", "unknown operator"),
        ({"path": "data.status"}, "filter", "exactly one operator"),
        ({"path": "data.status", "eq": "a", "ne": "b"}, "filter", "exactly one operator"),
        ({"path": "data.input.duration", "gt": "5"}, "filter.gt", "must be a number"),
        ({"path": "data.input.duration", "gt": True}, "filter.gt", "must be a number"),
        ({"path": "data.error", "exists": "yes"}, "filter.exists", "true or false"),
        ({"path": "data.status", "in": []}, "filter.in", "list of 1 to"),
        ({"path": "data.status", "in": "succeeded"}, "filter.in", "list of 1 to"),
        ({"path": "data.status", "in": ["a", {"b": 1}]}, "filter.in[1]", "string, number"),
        ({"path": "data.status", "eq": ["a"]}, "filter.eq", "string, number"),
        ({"path": "data.status", "eq": "x" * 1001}, "filter.eq", "longer than"),
        # Shape.
        ([{"path": "data.status", "eq": "x"}], "filter", "must be an object"),
        ({}, "filter", "needs a 'path'"),
        ({"all": []}, "filter.all", "non-empty list"),
        ({"any": {"path": "data.status", "eq": "x"}}, "filter.any", "non-empty list"),
        ({"all": [{"path": "data.status", "eq": "x"}], "path": "x"}, "filter", "only key"),
        ({"not": "data.status"}, "filter.not", "must be an object"),
    ],
)
def test_bad_filters_are_refused_naming_the_bad_part(spec: Any, where: str, words: str) -> None:
    with pytest.raises(FilterError) as refused:
        parse(spec, FIELDS)
    assert refused.value.where == where
    assert words in refused.value.problem


def test_an_unknown_field_error_lists_the_fields_there() -> None:
    with pytest.raises(FilterError) as refused:
        parse({"path": "data.error.reason", "exists": True}, FIELDS)
    assert "kind" in refused.value.problem and "message" in refused.value.problem


def test_size_limits() -> None:
    deep: dict[str, Any] = {"path": "data.status", "eq": "x"}
    for _ in range(MAX_DEPTH):
        deep = {"not": deep}
    with pytest.raises(FilterError, match="deeper"):
        parse(deep, FIELDS)
    wide = {"any": [{"path": "data.status", "eq": str(i)} for i in range(MAX_CONDITIONS + 1)]}
    with pytest.raises(FilterError, match="more than"):
        parse(wide, FIELDS)


# The create body's published schema, with the document's components, against the validator:
# they agree on the shape of a filter (that a path exists is beyond JSON Schema).
SHAPES: list[Any] = [
    {"path": "data.status", "eq": "succeeded"},
    {"path": "data.input.duration", "gt": 5},
    {"all": [{"path": "data.status", "in": ["a", "b"]}, {"not": {"path": "type", "eq": "x"}}]},
    {"any": [{"path": "data.error", "exists": False}]},
    None,
    {"path": "data.status"},
    {"path": "data.status", "eq": "a", "ne": "b"},
    {"path": "data.input.duration", "gt": "5"},
    {"path": "data.error", "exists": "yes"},
    {"all": []},
    {"all": [{"path": "data.status", "eq": "x"}], "any": []},
    {"path": "data.status", "like": "x"},
    {"path": "data.status", "eq": ["a"]},
    {"path": "data.status", "eq": "x" * 1001},
    {"path": "", "eq": "x"},
    {"path": "data.status", "in": [{"a": 1}]},
    {"not": {"path": "type", "eq": "x"}, "all": []},
    "data.status == 'x'",
]


@pytest.mark.parametrize("spec", SHAPES)
def test_the_published_filter_schema_agrees_with_the_validator(spec: Any) -> None:
    body = {"url": "https://hooks.example.test/x", "filter": spec}
    document = {**NEW_SUBSCRIPTION.schema(), "components": {"schemas": components()}}
    published = jsonschema.Draft202012Validator(document).is_valid(body)
    try:
        NEW_SUBSCRIPTION.validate(body)
    except ValidationFailed:
        accepted = False
    else:
        accepted = True
    assert published == accepted
