"""``GET /openapi.json``: the OpenAPI 3.1 document, built from the routes that serve the API.

Paths and methods come from the app's route table, each operation's parameters, bodies and
answers from its ``@operation`` declaration, the schemas from ``service.api.schemas`` (the job
request from the model specs), error descriptions from the exception tree. Nothing is written
twice: change a route or a model spec and the document follows.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from service.api.docs import render
from service.api.operation import Operation, Reply, Schema, operation, operations
from service.api.schemas import components, event_body, event_data, ref
from service.app.services import services
from service.core.errors import ReelhookError
from service.core.models import EVENT_TYPES

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")

INTRO = """\
Kling video jobs in, verified and signed webhook events out, with no polling of any provider.

**Authentication.** Send your API key in the `X-API-Key` header.

**Errors** are JSON: `{"error": {"code", "message", "details"}}`; a 422 names each bad field in
`details.fields`.

**Lists** answer `{"data": [...], "next_cursor": "..." | null}`; pass `cursor=` for the next page.

**Events** (see Webhooks) are POSTed to each subscription, signed per Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once and unordered:
deduplicate on `webhook-id`. Answer 2xx to acknowledge; 410 Gone deletes the subscription.
"""

_TAGS = [
    ("jobs", "Submit Kling video jobs and read them."),
    ("models", "The model catalog."),
    ("subscriptions", "Subscriber URLs that receive signed events (Zapier REST Hooks, n8n)."),
    ("events", "The event log: list, sample, follow live."),
    ("providers", "Inbound provider webhooks."),
    ("deliveries", "The delivery log: every attempt to each subscriber, and resending."),
    ("files", "Stored videos."),
    ("keys", "API keys and their scopes (admin keys only)."),
    ("operations", "Health, readiness, metrics and this document."),
]


def _error_descriptions() -> dict[int, str]:
    found: dict[int, str] = {}
    pending: list[type[ReelhookError]] = [ReelhookError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.status_code, (cls.__doc__ or cls.code).strip())
        pending.extend(cls.__subclasses__())
    return found


def build_document(routes: list[BaseRoute], *, server_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the operations among ``routes``."""
    errors = _error_descriptions()
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in operations(routes):
        paths.setdefault(path, {})[method] = _operation(path, op, errors)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "reelhook",
            "version": metadata.version("reelhook"),
            "description": INTRO,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": server_url}],
        "tags": [{"name": name, "description": text} for name, text in _TAGS],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "webhooks": {event_type: _webhook(event_type) for event_type in EVENT_TYPES},
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _operation(path: str, op: Operation, errors: dict[int, str]) -> dict[str, Any]:
    declared = {(p.where, p.name): p for p in op.params}
    parameters = []
    for name in _PATH_PARAM.findall(path):
        param = declared.pop(("path", name), None)
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": param.schema if param else {"type": "string"},
                **({"description": param.description} if param else {}),
            }
        )
    for param in declared.values():
        if param.alias_of is not None:
            continue
        entry: dict[str, Any] = {
            "name": param.name,
            "in": param.where,
            "required": param.required,
            "description": param.description,
            "schema": param.schema,
        }
        if param.explode is not None:
            entry.update(style="form", explode=param.explode)
        parameters.append(entry)

    statuses = set(op.errors)
    if op.authenticated:
        # authenticate() also enforces the key's request rate.
        statuses |= {401, 403, 429}
    if op.body is not None:
        statuses |= {400, 413, 422}
    responses: dict[str, Any] = {str(code): _reply(reply) for code, reply in op.replies.items()}
    for code in sorted(statuses):
        answer = {
            "description": errors.get(code, "Error."),
            "content": {"application/json": {"schema": ref("Error")}},
        }
        if code == 429:
            answer["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before the next request.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            }
        responses.setdefault(str(code), answer)

    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
    }
    if parameters:
        document["parameters"] = parameters
    if op.body is not None:
        document["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": op.body}},
        }
    document["responses"] = dict(sorted(responses.items()))
    if not op.authenticated:
        document["security"] = []
    return document


def _reply(reply: Reply) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        answer["content"] = {
            media_type: {"schema": reply.schema}
            for media_type in (reply.media_type, *reply.alternatives)
        }
    if reply.headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in reply.headers.items()
        }
    return answer


def _webhook(event_type: str) -> dict[str, Any]:
    signed: list[tuple[str, str]] = [
        ("webhook-id", "The event id: the same on every retry; deduplicate on it."),
        ("webhook-timestamp", "Unix seconds when this attempt was signed."),
        ("webhook-signature", "`v1,<base64 HMAC-SHA256>`, space-separated during rotation."),
    ]
    return {
        "post": {
            "summary": f"{event_type} event",
            "description": "Sent to each matching subscription (and to a job's callback_url).",
            "parameters": [
                {
                    "name": name,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": text,
                }
                for name, text in signed
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": event_body(event_type, event_data(event_type))}
                },
            },
            "responses": {
                "2XX": {"description": "Delivered."},
                "410": {"description": "Gone: reelhook deletes the subscription."},
                "default": {"description": "Retried on REELHOOK_RETRY_SCHEDULE."},
            },
        }
    }


def document(request: Request) -> dict[str, Any]:
    """The document for the app serving ``request``, built once per app."""
    built: dict[str, Any] | None = getattr(request.app.state, "openapi_document", None)
    if built is None:
        built = build_document(request.app.routes, server_url=services(request).settings.public_url)
        request.app.state.openapi_document = built
    return built


_OBJECT: Schema = {"type": "object"}


@operation(
    summary="This API as OpenAPI 3.1",
    tag="operations",
    replies={200: Reply("The OpenAPI document.", _OBJECT)},
    authenticated=False,
)
async def openapi_json(request: Request) -> Response:
    """Generated from the routes and model specs that run this server."""
    return JSONResponse(document(request))


@operation(
    summary="This API, readable",
    tag="operations",
    replies={200: Reply("An HTML page.", {"type": "string"}, media_type="text/html")},
    authenticated=False,
)
async def docs(request: Request) -> Response:
    """The OpenAPI document rendered as one self-contained page (no scripts, no external fetch)."""
    return HTMLResponse(render(document(request)))
