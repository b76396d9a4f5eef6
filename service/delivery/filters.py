"""Payload filters: a small JSON language a subscription uses to pick the events it receives.

A filter is checked against the delivered body (``{"type", "timestamp", "data"}``) after the
event-type and model filters. It is JSON, so it travels in the API unchanged:

    {"path": "data.metadata.channel", "eq": "bots"}
    {"all": [{"path": "data.status", "in": ["succeeded"]},
             {"path": "data.input.duration", "gt": 5}]}
    {"any": [...]}    {"not": {...}}    {"path": "data.error", "exists": false}

A condition names one ``path`` (dot-separated keys from the body's root; a number selects a list
item) and exactly one operator: ``eq``/``ne`` (JSON equality; ``1`` equals ``1.0`` but not
``true``), ``in`` (equal to one of a list), ``exists`` (present and not null), ``gt``/``gte``/
``lt``/``lte`` (the field is a number, compared with a number). A missing field makes every
operator false except ``ne`` and ``exists: false``. The language is documented in
docs/filters-and-templates.md.

Why not a library: JSON Logic's Python ports are unmaintained (json-logic 0.6.3 dates from 2015),
and JMESPath, though well kept, is a query language whose expressions are strings to parse and
whose errors name a character offset, not the field that cannot exist; neither knows reelhook's
event shape. :func:`parse` validates against that shape (:class:`FieldTree`) so a typo is refused
when the subscription is saved, with an error naming the bad part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OPERATORS = ("eq", "ne", "in", "exists", "gt", "gte", "lt", "lte")
"""Every condition operator."""

MAX_DEPTH = 8
MAX_CONDITIONS = 50
MAX_IN_VALUES = 100
MAX_PATH_LENGTH = 200
MAX_STRING = 1000

_NUMERIC = {"gt", "gte", "lt", "lte"}


class FilterError(ValueError):
    """A filter that cannot be accepted; ``where`` locates the bad part, e.g.
    ``filter.all[1].path``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class FieldTree:
    """The fields an event body can have. ``children`` maps a key to its subtree (a list item is
    the key ``"[]"``); ``open`` marks a free-form object (a job's ``metadata`` or ``input``) whose
    keys cannot be known in advance."""

    children: Mapping[str, FieldTree]
    open: bool = False

    def child(self, segment: str) -> FieldTree | None:
        if self.open:
            return self
        if segment.isdigit() and "[]" in self.children:
            return self.children["[]"]
        return self.children.get(segment)

    def merged(self, other: FieldTree) -> FieldTree:
        keys = dict.fromkeys([*self.children, *other.children])
        children = {
            key: self.children[key].merged(other.children[key])
            if key in self.children and key in other.children
            else self.children.get(key) or other.children[key]
            for key in keys
        }
        return FieldTree(children, open=self.open or other.open)


def field_tree(samples: Sequence[Any], open_paths: Sequence[str] = ()) -> FieldTree:
    """The fields of ``samples`` (example bodies of every event type), with ``open_paths``
    (dot-separated) marked free-form."""
    tree = FieldTree({})
    for sample in samples:
        tree = tree.merged(_tree_of(sample, "", frozenset(open_paths)))
    return tree


def _tree_of(value: Any, path: str, open_paths: frozenset[str]) -> FieldTree:
    if path in open_paths:
        return FieldTree({}, open=True)
    if isinstance(value, dict):
        return FieldTree(
            {
                key: _tree_of(item, f"{path}.{key}" if path else key, open_paths)
                for key, item in value.items()
            }
        )
    if isinstance(value, list):
        tree = FieldTree({})
        for item in value:
            tree = tree.merged(_tree_of(item, f"{path}.[]", open_paths))
        return FieldTree({"[]": tree})
    return FieldTree({})


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: call :meth:`matches` with a delivered body. ``spec`` is the JSON it was
    parsed from, stored and shown as given."""

    spec: dict[str, Any]
    _test: _Node

    def matches(self, body: Mapping[str, Any]) -> bool:
        return self._test.test(body)


class _Node:
    def test(self, body: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _All(_Node):
    parts: tuple[_Node, ...]

    def test(self, body: Any) -> bool:
        return all(part.test(body) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Any(_Node):
    parts: tuple[_Node, ...]

    def test(self, body: Any) -> bool:
        return any(part.test(body) for part in self.parts)


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    part: _Node

    def test(self, body: Any) -> bool:
        return not self.part.test(body)


_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Condition(_Node):
    path: tuple[str, ...]
    op: str
    operand: Any

    def test(self, body: Any) -> bool:
        value = _lookup(body, self.path)
        op = self.op
        if op == "exists":
            return (value is not _MISSING and value is not None) is bool(self.operand)
        if value is _MISSING:
            return op == "ne"
        if op == "eq":
            return _equal(value, self.operand)
        if op == "ne":
            return not _equal(value, self.operand)
        if op == "in":
            return any(_equal(value, item) for item in self.operand)
        if not _is_number(value):
            return False
        if op == "gt":
            return bool(value > self.operand)
        if op == "gte":
            return bool(value >= self.operand)
        if op == "lt":
            return bool(value < self.operand)
        return bool(value <= self.operand)


def _lookup(body: Any, path: tuple[str, ...]) -> Any:
    value = body
    for segment in path:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return _MISSING
        if value is _MISSING:
            return value
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def parse(spec: Any, fields: FieldTree, *, where: str = "filter") -> Filter:
    """Validate ``spec`` against the event shape ``fields``; raise :class:`FilterError` naming
    the first bad part."""
    counter = [0]
    node = _parse(spec, fields, where, 0, counter)
    assert isinstance(spec, dict)  # _parse accepts objects only
    return Filter(spec, node)


def _parse(spec: Any, fields: FieldTree, where: str, depth: int, counter: list[int]) -> _Node:
    if not isinstance(spec, dict):
        raise FilterError(where, "must be an object")
    if depth >= MAX_DEPTH:
        raise FilterError(where, f"nested deeper than {MAX_DEPTH} levels")
    combinators = [key for key in ("all", "any", "not") if key in spec]
    if combinators:
        if len(spec) != 1:
            raise FilterError(where, f"{combinators[0]!r} must be the object's only key")
        key = combinators[0]
        inner = spec[key]
        if key == "not":
            return _Not(_parse(inner, fields, f"{where}.not", depth + 1, counter))
        if not isinstance(inner, list) or not inner:
            raise FilterError(f"{where}.{key}", "must be a non-empty list of filters")
        parts = tuple(
            _parse(part, fields, f"{where}.{key}[{i}]", depth + 1, counter)
            for i, part in enumerate(inner)
        )
        return _All(parts) if key == "all" else _Any(parts)
    if "path" not in spec:
        raise FilterError(where, "needs a 'path' and an operator, or one of all, any, not")
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise FilterError(where, f"more than {MAX_CONDITIONS} conditions")
    path = _path(spec["path"], fields, f"{where}.path")
    ops = [key for key in spec if key != "path"]
    unknown = [key for key in ops if key not in OPERATORS]
    if unknown:
        raise FilterError(
            f"{where}.{unknown[0]}", f"unknown operator (accepted: {', '.join(OPERATORS)})"
        )
    if len(ops) != 1:
        raise FilterError(where, f"needs exactly one operator ({', '.join(OPERATORS)})")
    op = ops[0]
    return _Condition(path, op, _operand(op, spec[op], f"{where}.{op}"))


def _path(value: Any, fields: FieldTree, where: str) -> tuple[str, ...]:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_LENGTH:
        raise FilterError(where, f"must be a dot-separated path of at most {MAX_PATH_LENGTH} chars")
    segments = tuple(value.split("."))
    node: FieldTree | None = fields
    for i, segment in enumerate(segments):
        if not segment:
            raise FilterError(where, f"{value!r} has an empty segment")
        node = node.child(segment) if node is not None else None
        if node is None:
            known = ", ".join(
                sorted(k for k in _parent(fields, segments[:i]).children if k != "[]")
            )
            raise FilterError(
                where,
                f"{value!r}: no event has a field {'.'.join(segments[: i + 1])!r}"
                + (f" (fields there: {known})" if known else ""),
            )
    return segments


def _parent(fields: FieldTree, segments: Sequence[str]) -> FieldTree:
    node = fields
    for segment in segments:
        node = node.child(segment) or FieldTree({})
    return node


def _operand(op: str, value: Any, where: str) -> Any:
    if op == "exists":
        if not isinstance(value, bool):
            raise FilterError(where, "must be true or false")
        return value
    if op in _NUMERIC:
        if not _is_number(value) or not math.isfinite(value):
            raise FilterError(where, "must be a number")
        return value
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise FilterError(where, f"must be a list of 1 to {MAX_IN_VALUES} values")
        for i, item in enumerate(value):
            _scalar(item, f"{where}[{i}]")
        return list(value)
    _scalar(value, where)
    return value


def _scalar(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool) or _is_number(value):
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise FilterError(where, f"longer than {MAX_STRING} characters")
        return
    raise FilterError(where, "must be a string, number, boolean or null")
