"""``/v1/subscriptions``: subscriber URLs with event-type and model filters."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import (
    MAX_REQUEST_BYTES,
    Caller,
    authenticate,
    cursor_param,
    limit_param,
    read_body,
    read_json,
    services,
    time_param,
)
from service.api.operation import Param, Reply, cursor_query, limit_query, operation
from service.api.schemas import page_of, ref
from service.core.clock import isoformat
from service.core.errors import BadRequest, Conflict, NotFound, ValidationFailed
from service.core.ids import new_id
from service.core.jsonutil import InvalidJSON, loads
from service.core.models import EVENT_TYPES, Subscription
from service.delivery import signing
from service.delivery.publisher import ping_data
from service.delivery.samples import sample_event
from service.jobs.catalog import MODELS
from service.net.guard import check_url
from service.storage import deliveries, subscriptions

_FIELDS = {"url", "event_types", "models", "headers", "description"}
# RFC 9110 §5.1 token characters, and visible ASCII plus space/tab in a value.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
_RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "connection",
}


_FIELD_SCHEMAS: dict[str, Any] = {
    "url": {
        "type": "string",
        "description": "Where events are POSTed (http or https; private addresses are refused "
        "unless REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS covers them).",
    },
    "event_types": {
        "type": ["array", "null"],
        "items": {"enum": list(EVENT_TYPES)},
        "description": "Event types to receive; empty or null: every job event.",
    },
    "models": {
        "type": ["array", "null"],
        "items": {"enum": list(MODELS)},
        "description": "Only events about jobs of these models; empty or null: all.",
    },
    "headers": {
        "type": ["object", "null"],
        "propertyNames": {"pattern": f"^{_TOKEN.pattern}$"},
        "additionalProperties": {
            "type": "string",
            "maxLength": 4096,
            "pattern": f"^{_FIELD_VALUE.pattern}$",
        },
        "description": "Static headers sent with every delivery (e.g. n8n Header Auth). The "
        "Standard Webhooks headers, Content-Type, Host and the like are reelhook's own.",
    },
    "description": {"type": "string", "maxLength": 500},
}
_CREATE_SCHEMA = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": _FIELD_SCHEMAS,
}
_UPDATE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **_FIELD_SCHEMAS,
        "status": {
            "enum": ["active", "disabled"],
            "description": "disabled holds its deliveries until it is active again.",
        },
    },
}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _strings(value: Any, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed.field(name, "must be a list of strings")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ValidationFailed.field(
            name, f"unknown value {unknown[0]!r} (accepted: {', '.join(allowed)})"
        )
    return tuple(dict.fromkeys(value))


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationFailed.field("headers", "must be an object of string values")
    for name, header_value in value.items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValidationFailed.field("headers", f"{name!r} is set by reelhook itself")
        if not _TOKEN.fullmatch(name):
            raise ValidationFailed.field("headers", f"{name!r} is not a valid header name")
        if not _FIELD_VALUE.fullmatch(header_value) or len(header_value) > 4096:
            raise ValidationFailed.field("headers", f"the value of {name!r} is not valid")
    return dict(value)


def _validated(request: Request, body: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    unknown = sorted(set(body) - (_FIELDS | {"status"} if partial else _FIELDS))
    if unknown:
        raise ValidationFailed.fields({name: "unknown field" for name in unknown})
    changes: dict[str, Any] = {}
    if "url" in body or not partial:
        url = body.get("url")
        if not isinstance(url, str):
            raise ValidationFailed.field("url", "is required and must be a string")
        settings = services(request).settings
        problem = check_url(
            url,
            settings.allow_private_subscribers,
            require_https=not settings.allow_http_subscribers,
        )
        if problem:
            raise ValidationFailed.field("url", problem)
        changes["url"] = url
    # null clears a filter; any other value must have the right type.
    if "event_types" in body:
        changes["event_types"] = _strings(_or(body["event_types"], []), "event_types", EVENT_TYPES)
    if "models" in body:
        changes["models"] = _strings(_or(body["models"], []), "models", tuple(MODELS))
    if "headers" in body:
        changes["headers"] = _headers(_or(body["headers"], {}))
    if "description" in body:
        if not isinstance(body["description"], str) or len(body["description"]) > 500:
            raise ValidationFailed.field(
                "description", "must be a string of at most 500 characters"
            )
        changes["description"] = body["description"]
    if "status" in body:
        if body["status"] not in ("active", "disabled"):
            raise ValidationFailed.field("status", "must be active or disabled")
        changes["status"] = body["status"]
    return changes


async def owned(request: Request, caller: Caller, sub_id: str) -> Subscription:
    """The subscription, if ``caller`` may see it; :class:`NotFound` otherwise."""
    sub = await subscriptions.get(services(request).db.reader, sub_id)
    if sub is None or sub.job_id is not None or not caller.can_see(sub.owner_key_id):
        raise NotFound(f"no subscription {sub_id!r}")
    return sub


@operation(
    summary="Subscribe a URL",
    tag="subscriptions",
    body=_CREATE_SCHEMA,
    replies={
        201: Reply(
            "Subscribed; the `secret` is shown only in this answer.",
            ref("CreatedSubscription"),
            headers={"Location": "The subscription's URL."},
        )
    },
)
async def create_subscription(request: Request) -> Response:
    """Signed events (Standard Webhooks) go to `url` from now on. This is the Zapier REST Hooks
    subscribe call: 201 with an `id` to unsubscribe with."""
    caller = await authenticate(request, "subscriptions:write")
    sub = await create(request, caller, await read_json(request))
    return JSONResponse(
        sub.to_public(include_secret=True),
        status_code=201,
        headers={"Location": f"/v1/subscriptions/{sub.id}"},
    )


async def create(request: Request, caller: Caller, body: Any) -> Subscription:
    """Validate ``body`` (the API's JSON shape) and store a new subscription owned by ``caller``."""
    changes = _validated(request, body, partial=False)
    now = services(request).clock()
    sub = Subscription(
        id=new_id("sub"),
        owner_key_id=caller.key_id,
        url=changes["url"],
        secret=signing.new_secret(),
        event_types=changes.get("event_types", ()),
        models=changes.get("models", ()),
        headers=changes.get("headers", {}),
        description=changes.get("description", ""),
        status="active",
        created_at=now,
        updated_at=now,
    )
    async with services(request).db.transaction() as conn:
        await subscriptions.insert(conn, sub)
    return sub


@operation(
    summary="List subscriptions",
    tag="subscriptions",
    params=(cursor_query("The `next_cursor` of the previous page."), limit_query(50, 200)),
    replies={200: Reply("Subscriptions, oldest first.", page_of(ref("Subscription")))},
    errors=(422,),
)
async def list_subscriptions(request: Request) -> Response:
    """Your subscriptions (an admin key sees everyone's); header values are masked."""
    caller = await authenticate(request, "subscriptions:read")
    page, next_cursor = await subscription_page(request, caller)
    return JSONResponse({"data": [s.to_public() for s in page], "next_cursor": next_cursor})


async def subscription_page(
    request: Request, caller: Caller
) -> tuple[list[Subscription], str | None]:
    """One page of the subscriptions ``caller`` may see (query parameters ``cursor`` and
    ``limit``), with the cursor of the next page, if any."""
    limit = limit_param(request)
    page = await subscriptions.list_page(
        services(request).db.reader,
        owner_key_id=caller.owner_filter,
        after_id=cursor_param(request, "sub"),
        limit=limit + 1,
    )
    more = len(page) > limit
    page = page[:limit]
    return page, page[-1].id if more else None


@operation(
    summary="Get a subscription",
    tag="subscriptions",
    replies={200: Reply("The subscription.", ref("Subscription"))},
    errors=(404,),
)
async def get_subscription(request: Request) -> Response:
    """One subscription; its secret is never shown again."""
    caller = await authenticate(request, "subscriptions:read")
    sub = await owned(request, caller, request.path_params["subscription_id"])
    return JSONResponse(sub.to_public())


@operation(
    summary="Change a subscription",
    tag="subscriptions",
    body=_UPDATE_SCHEMA,
    replies={200: Reply("The subscription as changed.", ref("Subscription"))},
    errors=(404,),
)
async def update_subscription(request: Request) -> Response:
    """Change any field; null clears a filter. `{"status": "disabled"}` pauses deliveries."""
    caller = await authenticate(request, "subscriptions:write")
    sub_id = request.path_params["subscription_id"]
    await owned(request, caller, sub_id)
    updated = await update(request, caller, sub_id, await read_json(request))
    return JSONResponse(updated.to_public())


async def update(request: Request, caller: Caller, sub_id: str, body: Any) -> Subscription:
    """Apply ``body`` (the API's PATCH shape) to the subscription; return it as stored."""
    sub = await owned(request, caller, sub_id)
    changes = _validated(request, body, partial=True)
    now = services(request).clock()
    updated = dataclasses.replace(sub, **changes, updated_at=now)
    async with services(request).db.transaction() as conn:
        await subscriptions.save(conn, updated)
        if changes.get("status", sub.status) != sub.status:
            # Either way the failure window starts afresh: a re-enabled subscription gets the
            # whole window again before it can be disabled for failing.
            await subscriptions.set_status(
                conn, sub.id, changes["status"], reason="disabled through the API", now=now
            )
        updated = await subscriptions.get(conn, sub.id) or updated
    # Re-enabling releases deliveries held while the subscription was disabled.
    services(request).dispatcher.wake()
    return updated


@operation(
    summary="Unsubscribe",
    tag="subscriptions",
    replies={204: Reply("Deleted; its pending deliveries are canceled.")},
    errors=(404,),
)
async def delete_subscription(request: Request) -> Response:
    """The Zapier REST Hooks unsubscribe call. A subscriber answering a delivery with 410 Gone
    is deleted the same way."""
    caller = await authenticate(request, "subscriptions:write")
    await delete(request, caller, request.path_params["subscription_id"])
    return Response(status_code=204)


async def delete(request: Request, caller: Caller, sub_id: str) -> None:
    """Delete the subscription and cancel its open deliveries."""
    sub = await owned(request, caller, sub_id)
    async with services(request).db.transaction() as conn:
        await subscriptions.delete(conn, sub.id)


_TEST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {
            "enum": list(EVENT_TYPES),
            "description": "Send a realistic sample of this event type instead of a `ping` "
            "(the same shape as `GET /v1/events/sample`; its job is not a real one).",
        }
    },
}


@operation(
    summary="Send a test event",
    tag="subscriptions",
    body=_TEST_SCHEMA,
    body_required=False,
    replies={
        202: Reply(
            "The event is queued for delivery.",
            {
                "type": "object",
                "required": ["event_id", "type"],
                "properties": {
                    "event_id": {"type": "string", "pattern": "^evt_"},
                    "type": {"enum": list(EVENT_TYPES)},
                },
            },
        )
    },
    errors=(404, 409, 422),
)
async def test_subscription(request: Request) -> Response:
    """Send a `ping` event to this one subscription now; with `{"type": "job.succeeded"}` a
    sample of that type instead (what `reelhook trigger` sends), whatever the subscription's
    filters. Signed and retried like any delivery."""
    caller = await authenticate(request, "subscriptions:write")
    sub_id = request.path_params["subscription_id"]
    await owned(request, caller, sub_id)  # 404 before any complaint about the body
    event_type = "ping"
    raw = await read_body(request, MAX_REQUEST_BYTES)
    if raw.strip():
        try:
            body = loads(raw)
        except InvalidJSON as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValidationFailed("the request body must be a JSON object")
        unknown = sorted(set(body) - {"type"})
        if unknown:
            raise ValidationFailed.fields({name: "unknown field" for name in unknown})
        event_type = body.get("type", "ping")
        if event_type not in EVENT_TYPES:
            raise ValidationFailed.field(
                "type", f"unknown event type {event_type!r} (accepted: {', '.join(EVENT_TYPES)})"
            )
    event_id = await ping(request, caller, sub_id, event_type=event_type)
    return JSONResponse({"event_id": event_id, "type": event_type}, status_code=202)


async def ping(request: Request, caller: Caller, sub_id: str, *, event_type: str = "ping") -> str:
    """Queue a ``ping`` (or a sample of ``event_type``) to this one subscription; return the
    event's id."""
    sub = await owned(request, caller, sub_id)
    if sub.status != "active":
        raise Conflict("the subscription is disabled; enable it to send a test event")
    state = services(request)
    now = state.clock()
    if event_type == "ping":
        data = ping_data(sub.id)
    else:
        data = sample_event(event_type, now=now, file_url=state.publisher.file_url)["data"]
    async with state.db.transaction() as conn:
        event_id = await state.publisher.publish(
            conn, event_type, now, data=data, to_subscription=sub.id
        )
    state.dispatcher.wake()
    return event_id


@operation(
    summary="Rotate the signing secret",
    tag="subscriptions",
    replies={
        200: Reply(
            "The subscription with its new `secret`, shown only in this answer.",
            ref("CreatedSubscription"),
        )
    },
    errors=(404,),
)
async def rotate_secret(request: Request) -> Response:
    caller = await authenticate(request, "subscriptions:write")
    rotated = await rotate(request, caller, request.path_params["subscription_id"])
    return JSONResponse(rotated.to_public(include_secret=True))


async def rotate(request: Request, caller: Caller, sub_id: str) -> Subscription:
    """Give the subscription a new secret (returned, to be shown once). For the rotation grace
    period every message carries a second signature made with the secret it replaced."""
    sub = await owned(request, caller, sub_id)
    state = services(request)
    now = state.clock()
    async with state.db.transaction() as conn:
        await subscriptions.rotate_secret(
            conn,
            sub.id,
            signing.new_secret(),
            previous_until=now + state.settings.secret_rotation_grace,
            now=now,
        )
        rotated = await subscriptions.get(conn, sub.id)
    assert rotated is not None  # read back inside the transaction that updated it
    return rotated


_TIME_QUERY = {"type": "string", "examples": ["2026-11-21T10:00:00Z", "1795255200"]}


@operation(
    summary="Resend failed deliveries",
    tag="subscriptions",
    params=(
        Param(
            "since",
            "query",
            _TIME_QUERY,
            "Deliveries created at or after this time: ISO 8601 (UTC without a zone) or Unix "
            "seconds; not in the future.",
            required=True,
        ),
        Param("until", "query", _TIME_QUERY, "And before this time (later than `since`)."),
    ),
    replies={
        202: Reply(
            "The failed deliveries are queued for an attempt now.",
            {
                "type": "object",
                "required": ["subscription_id", "recovered", "since", "until"],
                "properties": {
                    "subscription_id": {"type": "string", "pattern": "^sub_"},
                    "recovered": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "How many failed deliveries are sent again.",
                    },
                    "since": {"type": "string", "format": "date-time"},
                    "until": {"type": ["string", "null"], "format": "date-time"},
                },
            },
        )
    },
    errors=(404, 409, 422),
)
async def recover_subscription(request: Request) -> Response:
    """Resend every failed delivery (retries exhausted) of this subscription created since
    ``since`` (and before ``until``, if given): each gets one attempt now, and is not rescheduled
    if it fails. 409 while the subscription is disabled."""
    caller = await authenticate(request, "subscriptions:write")
    sub_id = request.path_params["subscription_id"]
    await owned(request, caller, sub_id)
    since = time_param(request, "since", required=True)
    until = time_param(request, "until")
    assert since is not None  # required
    count = await recover(request, caller, sub_id, since=since, until=until)
    return JSONResponse(
        {
            "subscription_id": sub_id,
            "recovered": count,
            "since": isoformat(since),
            "until": isoformat(until),
        },
        status_code=202,
    )


async def recover(
    request: Request, caller: Caller, sub_id: str, *, since: float, until: float | None
) -> int:
    """Queue one attempt now for every delivery of the subscription that failed for good and was
    created in [since, until); return how many."""
    sub = await owned(request, caller, sub_id)
    state = services(request)
    now = state.clock()
    if since > now:
        raise ValidationFailed.field("since", "is in the future")
    if until is not None and until <= since:
        raise ValidationFailed.field("until", "must be later than since")
    if sub.status != "active":
        raise Conflict("the subscription is disabled; enable it to recover its deliveries")
    async with state.db.transaction() as conn:
        count = await deliveries.recover(conn, sub.id, since=since, until=until, now=now)
    state.dispatcher.wake()
    return count
