"""Request bodies: read with a size cap, and declared once: each field's kind yields both its
check (with the message a client sees) and its JSON Schema (for ``/openapi.json``), so the two
cannot drift apart.

Model inputs are declared the same way by :mod:`service.jobs.modelspec`, whose parameters also
carry defaults and report every bad field at once; the bodies here (subscriptions, API keys)
report the first problem, in declaration order.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from service.core.errors import PayloadTooLarge, ValidationFailed
from service.core.jsonutil import dumps
from service.core.params import is_decimal

Schema = dict[str, Any]
Check = Callable[[Any], str | None]


async def read_capped(chunks: AsyncIterable[bytes], declared: str | None, limit: int) -> bytes:
    """A body streamed as ``chunks`` (its ``Content-Length`` was ``declared``), at most ``limit``
    bytes: :class:`PayloadTooLarge` as soon as it is known to be larger, without reading the
    rest."""
    if declared is not None and is_decimal(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"the body must be at most {limit} bytes")
    parts = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body must be at most {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class Problem(Exception):
    """Why a field's value is not acceptable (becomes the 422's message for that field)."""


class Kind(Protocol):
    """What a field holds: how its raw JSON value is checked and converted, and its schema."""

    def parse(self, value: Any) -> Any: ...

    def schema(self) -> Schema: ...


@dataclass(frozen=True, slots=True)
class Text:
    """A string, at most ``max_length`` characters; ``strip`` trims it and refuses a blank one.
    ``expected`` is the message for anything else. ``pattern`` states in the schema what a check
    of the operation's own requires of it (an URL's scheme and host, say)."""

    expected: str
    max_length: int | None = None
    min_length: int | None = None
    strip: bool = False
    pattern: str | None = None

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Problem(self.expected)
        if self.max_length is not None and len(value) > self.max_length:
            raise Problem(self.expected)
        if self.min_length is not None and len(value) < self.min_length:
            raise Problem(self.expected)
        if self.strip:
            if not value.strip():
                raise Problem(self.expected)
            return value.strip()
        return value

    def schema(self) -> Schema:
        schema: Schema = {"type": "string"}
        if self.min_length is not None:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return schema


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``values``."""

    values: tuple[str, ...]
    expected: str

    def parse(self, value: Any) -> str:
        if value not in self.values:
            raise Problem(self.expected)
        return str(value)

    def schema(self) -> Schema:
        return {"enum": list(self.values)}


@dataclass(frozen=True, slots=True)
class Choices:
    """A list of strings from ``values`` (at least ``min_items``), duplicates dropped, order kept.
    ``expected`` is the message for a value of the wrong shape; an unknown string is named with
    the accepted ones, as ``unknown {noun} 'x' (accepted: ...)``."""

    values: tuple[str, ...]
    expected: str
    noun: str = "value"
    min_items: int = 0

    def parse(self, value: Any) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or len(value) < self.min_items
            or not all(isinstance(v, str) for v in value)
        ):
            raise Problem(self.expected)
        unknown = [v for v in value if v not in self.values]
        if unknown:
            accepted = ", ".join(self.values)
            raise Problem(f"unknown {self.noun} {unknown[0]!r} (accepted: {accepted})")
        return tuple(dict.fromkeys(value))

    def schema(self) -> Schema:
        schema: Schema = {"type": "array", "items": {"enum": list(self.values)}}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


@dataclass(frozen=True, slots=True)
class JsonObject:
    """Any JSON object, at most ``max_bytes`` long as compact JSON."""

    max_bytes: int

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Problem("must be an object")
        if len(dumps(value)) > self.max_bytes:
            raise Problem(f"must be under {self.max_bytes} bytes")
        return value

    def schema(self) -> Schema:
        return {"type": "object"}


@dataclass(frozen=True, slots=True)
class Field:
    """One member of a body. ``required`` fields must be present (except in a partial body);
    a ``nullable`` field sent as null is read as ``empty`` (null clears a filter), or as absent
    when ``empty`` is None."""

    name: str
    kind: Kind
    description: str = ""
    required: bool = False
    nullable: bool = False
    empty: Any = None

    def schema(self) -> Schema:
        schema = self.kind.schema()
        if self.nullable:
            schema["type"] = [schema["type"], "null"]
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass(frozen=True, slots=True)
class Body:
    """A JSON object body with exactly these fields. ``partial`` (a PATCH) requires none.
    ``rules`` state in JSON Schema what the operation checks across fields (the schema says
    what it refuses); they document, :meth:`validate` does not apply them."""

    fields: tuple[Field, ...]
    partial: bool = False
    rules: tuple[Schema, ...] = ()

    def validate(self, raw: Any, checks: Mapping[str, Check] | None = None) -> dict[str, Any]:
        """The fields sent (and the required ones), checked and converted, in declaration order;
        :class:`ValidationFailed` naming the first bad field. ``checks`` add a check per field
        that needs run-time context (it returns the problem, or None)."""
        if not isinstance(raw, dict):
            raise ValidationFailed("the request body must be a JSON object")
        unknown = sorted(set(raw) - {field.name for field in self.fields})
        if unknown:
            raise ValidationFailed.fields({name: "unknown field" for name in unknown})
        extra = checks or {}
        clean: dict[str, Any] = {}
        for field in self.fields:
            if field.name not in raw and (self.partial or not field.required):
                continue
            value = raw.get(field.name)
            if value is None and field.nullable:
                if field.empty is None:
                    continue
                value = field.empty
            try:
                clean[field.name] = field.kind.parse(value)
            except Problem as problem:
                raise ValidationFailed.field(field.name, str(problem)) from None
            check = extra.get(field.name)
            found = check(clean[field.name]) if check else None
            if found:
                raise ValidationFailed.field(field.name, found)
        return clean

    def schema(self) -> Schema:
        """The body as JSON Schema (``/openapi.json``)."""
        schema: Schema = {"type": "object"}
        required = [f.name for f in self.fields if f.required and not self.partial]
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        schema["properties"] = {field.name: field.schema() for field in self.fields}
        if self.rules:
            schema["allOf"] = list(self.rules)
        return schema
