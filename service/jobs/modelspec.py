"""Declarative model specs: parameters, rules and prices drive validation and the catalog."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import ValidationFailed

Input = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rule:
    """A cross-field rule: ``check`` is given the input with defaults applied and returns
    ``(field, problem)`` or None; ``description`` is how the catalog states it."""

    description: str
    check: Callable[[Input], tuple[str, str] | None]
    #: The rule in JSON Schema, for the OpenAPI document (so it refuses what ``check`` refuses).
    schema: dict[str, Any] | None = None

    def __call__(self, data: Input) -> tuple[str, str] | None:
        return self.check(data)


_TYPE_NAMES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "object": dict,
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    check: Callable[[Any], str | None] | None = None
    #: What ``check`` accepts, in JSON Schema (merged into :meth:`json_schema`), so the document
    #: refuses what the check refuses.
    check_schema: dict[str, Any] | None = None
    #: Also accept the number written as a string ("10"), where the provider's own example sends
    #: it so (Segmind's duration); it is stored and sent as the number.
    numeric_strings: bool = False

    def normalize(self, raw: object) -> object:
        """``raw`` as stored: a numeric string becomes its number where that is accepted."""
        if self.numeric_strings and isinstance(raw, str):
            text = raw.strip()
            if self.type == "integer" and text.isascii() and text.isdigit() and len(text) <= 9:
                return int(text)
            if self.type == "number":
                try:
                    number = float(text)
                except ValueError:
                    return raw
                return int(number) if number.is_integer() else number
        return raw

    def problem(self, raw: object) -> str | None:
        """Why ``raw`` is not acceptable for this parameter, or None."""
        raw = self.normalize(raw)
        if isinstance(raw, bool) or not isinstance(raw, _TYPE_NAMES[self.type]):
            return f"must be {'an' if self.type[0] in 'aeio' else 'a'} {self.type}"
        value: Any = raw
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(str(c) for c in self.choices)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if self.type == "string" and self.required and not value.strip():
            return "must not be empty"
        return self.check(value) if self.check else None

    def json_schema(self) -> dict[str, Any]:
        """This parameter as JSON Schema (for OpenAPI): what :meth:`problem` accepts, as far as
        JSON Schema can say it (``check`` functions stay prose in the description)."""
        types = [self.type, *(["string"] if self.numeric_strings else [])]
        schema: dict[str, Any] = {
            # An optional parameter sent as null counts as absent (see ModelSpec.validate).
            "type": (types[0] if len(types) == 1 else types) if self.required else [*types, "null"],
            "description": self.description,
        }
        if self.default is not None:
            schema["default"] = self.default
        if self.choices:
            written = [str(c) for c in self.choices] if self.numeric_strings else []
            schema["enum"] = [*self.choices, *written, *([] if self.required else [None])]
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.type == "string" and self.required:
            schema["pattern"] = r"\S"  # not empty or only whitespace
        if self.check_schema is not None:
            schema.update(self.check_schema)
        return schema

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "required": self.required}
        data["description"] = self.description
        if self.default is not None:
            data["default"] = self.default
        if self.choices:
            data["enum"] = list(self.choices)
        if self.minimum is not None:
            data["minimum"] = self.minimum
        if self.maximum is not None:
            data["maximum"] = self.maximum
        if self.max_length is not None:
            data["max_length"] = self.max_length
        return data


def _nothing_assumed(data: Input) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Price:
    """How a job of this model is charged: ``estimate(input)`` in ``unit``.

    ``assumes(input)`` names what the estimate had to assume because the input leaves it to the
    provider (Trinetra prices by a resolution nobody need send); the job's cost states it.
    """

    unit: str
    description: str
    table: Mapping[str, float]
    estimate: Callable[[Input], float]
    assumes: Callable[[Input], dict[str, Any]] = _nothing_assumed


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    provider: str
    description: str
    params: tuple[Param, ...]
    price: Price
    rules: tuple[Rule, ...] = ()
    defaults_from: Callable[[Input], Input] | None = None
    notes: tuple[str, ...] = field(default=())
    reserved: Mapping[str, str] = field(default_factory=dict)
    """Provider parameters reelhook sets itself, with what to use instead."""

    def validate(self, raw: Any) -> Input:
        """Return ``raw`` with defaults applied, or raise a 422 naming every bad field."""
        if not isinstance(raw, dict):
            raise ValidationFailed.field("input", "must be an object")
        known = {p.name: p for p in self.params}
        problems: dict[str, str] = {}
        for name in raw:
            if name in self.reserved:
                problems[f"input.{name}"] = f"is set by reelhook; {self.reserved[name]}"
            elif name not in known:
                accepted = ", ".join(known)
                problems[f"input.{name}"] = (
                    f"unknown parameter for {self.id} (accepted: {accepted})"
                )
        clean: Input = {}
        for param in self.params:
            if param.name in raw and raw[param.name] is not None:
                problem = param.problem(raw[param.name])
                if problem:
                    problems[f"input.{param.name}"] = problem
                else:
                    clean[param.name] = param.normalize(raw[param.name])
            elif param.required:
                problems[f"input.{param.name}"] = "is required"
            elif param.default is not None:
                clean[param.name] = param.default
        if problems:
            raise ValidationFailed.fields(problems)
        if self.defaults_from:
            clean = {**self.defaults_from(clean), **clean}
        for rule in self.rules:
            found = rule(clean)
            if found:
                problems[f"input.{found[0]}"] = found[1]
        if problems:
            raise ValidationFailed.fields(problems)
        return clean

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of ``input`` for this model: its parameters, no others. Cross-field rules
        are listed in the description; they are checked by :meth:`validate`."""
        notes = " ".join(self.notes)
        return {
            "type": "object",
            "title": f"{self.id} input",
            "description": f"{self.description} {notes}".strip(),
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.required],
            "additionalProperties": False,
            **self._rules_schema(),
        }

    def _rules_schema(self) -> dict[str, Any]:
        stated = [rule.schema for rule in self.rules if rule.schema is not None]
        return {"allOf": stated} if stated else {}

    def describe(self) -> dict[str, Any]:
        """The catalog entry served by ``GET /v1/models``."""
        return {
            "id": self.id,
            "object": "model",
            "provider": self.provider,
            "description": self.description,
            "parameters": {p.name: p.describe() for p in self.params},
            "pricing": {
                "unit": self.price.unit,
                "description": self.price.description,
                "table": dict(self.price.table),
            },
            "rules": [rule.description for rule in self.rules],
            "notes": list(self.notes),
        }
