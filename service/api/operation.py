"""Operations: an endpoint together with its OpenAPI description, declared next to the handler.

``@operation(...)`` wraps a handler; the route table (``service.api.routes``) mounts it with
:func:`service.api.resource`, and ``service.api.openapi`` reads the same route objects to build
``/openapi.json``, so the document describes exactly the routes that run. A handler mounted
without ``@operation`` is reported by :func:`undocumented` (and fails the test suite).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.context import Endpoint
from service.core import params
from service.core.errors import ValidationFailed
from service.core.ids import id_pattern

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Param:
    """A query, header or path parameter. ``explode=False`` marks a comma-separated list.

    ``alias_of`` marks a second spelling of another parameter: accepted, but left out of the
    document, which offers the one spelling (given both ways with two values the operation
    refuses the request, and OpenAPI cannot say two parameters must agree).
    """

    name: str
    where: Literal["query", "header", "path"]
    schema: Schema
    description: str
    required: bool = False
    explode: bool | None = None
    alias_of: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: its description, body schema and media type, response headers.

    ``alternatives`` are further media types the same answer may take, chosen by the request's
    ``Accept`` header.
    """

    description: str
    schema: Schema | None = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """A handler and its contract; calling it calls the handler.

    ``errors`` are the statuses answered with reelhook's JSON error body beyond those implied:
    401/403/429 when ``authenticated``, 400/413/422 when there is a ``body``. Query parameters not
    in ``params`` are refused unless ``strict_query`` is off (URLs reelhook hands to others).
    """

    endpoint: Endpoint
    summary: str
    description: str
    tag: str
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: Schema | None = None
    body_required: bool = True
    authenticated: bool = True
    strict_query: bool = True

    @property
    def operation_id(self) -> str:
        return self.endpoint.__name__

    async def __call__(self, request: Request) -> Response:
        # The declaration is the contract: a misspelt filter (?stauts=failed) is a 422 naming it,
        # not a silently unfiltered answer.
        accepted = [p.name for p in self.params if p.where == "query"]
        unknown = sorted(set(request.query_params) - set(accepted))
        if unknown and self.strict_query:
            listed = ", ".join(accepted) or "none"
            raise ValidationFailed.fields(
                {name: f"unknown query parameter (accepted: {listed})" for name in unknown}
            )
        return await self.endpoint(request)


def operation(
    *,
    summary: str,
    tag: str,
    replies: Mapping[int, Reply],
    errors: tuple[int, ...] = (),
    params: tuple[Param, ...] = (),
    body: Schema | None = None,
    body_required: bool = True,
    authenticated: bool = True,
    strict_query: bool = True,
) -> Callable[[Endpoint], Operation]:
    """Declare a handler's contract; its docstring becomes the operation's description."""

    def declare(endpoint: Endpoint) -> Operation:
        return Operation(
            endpoint=endpoint,
            summary=summary,
            description=inspect.getdoc(endpoint) or "",
            tag=tag,
            replies=replies,
            errors=errors,
            params=params,
            body=body,
            body_required=body_required,
            authenticated=authenticated,
            strict_query=strict_query,
        )

    return declare


class Resource(Route):
    """One path with a handler per method (what :func:`service.api.resource` builds).

    ``handlers`` holds the methods as declared, without the HEAD Starlette adds for GET.
    """

    def __init__(self, path: str, handlers: Mapping[str, Endpoint]) -> None:
        self.handlers = dict(handlers)
        served = dict(handlers)
        if "get" in served:
            # Starlette answers HEAD wherever GET is allowed.
            served.setdefault("head", served["get"])

        async def dispatch(request: Request) -> Response:
            return await served[request.method.lower()](request)

        super().__init__(path, dispatch, methods=[method.upper() for method in served])


def operations(routes: list[BaseRoute]) -> list[tuple[str, str, Operation]]:
    """Every documented (path, method, operation) in ``routes``, in route order."""
    found = []
    for route in routes:
        if isinstance(route, Resource):
            for method, handler in route.handlers.items():
                if isinstance(handler, Operation):
                    found.append((route.path, method, handler))
    return found


def undocumented(routes: list[BaseRoute], exempt: tuple[str, ...] = ()) -> list[str]:
    """``"METHOD /path"`` for every route in ``routes`` without an :class:`Operation` (mounts
    whose path is in ``exempt`` aside): what ``/openapi.json`` would silently leave out."""
    missing: list[str] = []
    for route in routes:
        path = getattr(route, "path", repr(route))
        if path in exempt:
            continue
        if isinstance(route, Resource):
            missing.extend(
                f"{method.upper()} {path}"
                for method, handler in route.handlers.items()
                if not isinstance(handler, Operation)
            )
        else:
            methods = sorted(getattr(route, "methods", None) or ["*"])
            missing.append(f"{','.join(methods)} {path} (not built with resource())")
    return missing


def limit_query(default: int, maximum: int) -> Param:
    """The ``limit`` parameter as :func:`service.core.params.limit` reads it."""
    return Param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        "Page size.",
    )


_UNIX = {"type": "string", "pattern": f"^{params.UNIX_SECONDS}$"}
# Times before the Unix epoch are refused (out of range): the document asks for 1971 or later.
_ISO = {
    "type": "string",
    "format": "date-time",
    "pattern": "^(197[1-9]|19[89][0-9]|[2-9][0-9]{3})-",
}
_EXAMPLES = ["2026-11-21T10:00:00Z", "1795255200"]

TIME: Schema = {"anyOf": [_ISO, _UNIX], "examples": _EXAMPLES}
"""A point in time in the query string, as :func:`service.core.params.parse_time` reads it:
ISO 8601 (without an offset it is UTC) or Unix seconds."""

OPTIONAL_TIME: Schema = {"anyOf": [_ISO, _UNIX, {"type": "string", "maxLength": 0}]}
""":data:`TIME`, or empty for no bound (as an HTML form sends an empty field)."""


def cursor_query(description: str, schema: Schema) -> Param:
    """The ``cursor`` parameter; ``schema`` says exactly what the listing reads as one (for an
    id-ordered listing ``{"type": "string", "pattern": id_pattern(prefix)}``)."""
    return Param("cursor", "query", schema, description)


def id_cursor(prefix: str) -> Param:
    """The ``cursor`` of a listing ordered by ids with ``prefix`` (:func:`params.cursor`)."""
    return cursor_query(
        "The `next_cursor` of the previous page.", {"type": "string", "pattern": id_pattern(prefix)}
    )
