"""``/v1/subscriptions``: subscriber URLs with event-type and model filters (the operations
are :class:`service.delivery.subscriptions.Subscriptions`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.scopes import Scope
from service.api.context import MAX_REQUEST_BYTES, authenticate, read_body, read_json
from service.api.operation import (
    OPTIONAL_TIME,
    TIME,
    Param,
    Reply,
    id_cursor,
    limit_query,
    operation,
)
from service.api.schemas import page_of, ref
from service.app.services import services
from service.core import params
from service.core.clock import isoformat
from service.core.errors import BadRequest
from service.core.jsonutil import InvalidJSON, loads
from service.core.models import EVENT_TYPES
from service.delivery.subscriptions import (
    NEW_SUBSCRIPTION,
    PREVIEW_BODY,
    SUBSCRIPTION_CHANGES,
    TEST_BODY,
)
from service.delivery.transform import CONTENT_TYPES


@operation(
    summary="Subscribe a URL",
    tag="subscriptions",
    body=NEW_SUBSCRIPTION.schema(),
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
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    sub = await services(request).subscriptions.create(caller, await read_json(request))
    return JSONResponse(
        sub.to_public(include_secret=True),
        status_code=201,
        headers={"Location": f"/v1/subscriptions/{sub.id}"},
    )


@operation(
    summary="List subscriptions",
    tag="subscriptions",
    params=(id_cursor("sub"), limit_query(50, 200)),
    replies={200: Reply("Subscriptions, oldest first.", page_of(ref("Subscription")))},
    errors=(422,),
)
async def list_subscriptions(request: Request) -> Response:
    """Your subscriptions (an admin key sees everyone's); header values are masked."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_READ)
    query = request.query_params
    page = await services(request).subscriptions.page(
        caller, cursor=params.cursor(query, "sub"), limit=params.limit(query)
    )
    return JSONResponse(
        {"data": [s.to_public() for s in page.items], "next_cursor": page.next_cursor}
    )


@operation(
    summary="Get a subscription",
    tag="subscriptions",
    replies={200: Reply("The subscription.", ref("Subscription"))},
    errors=(404,),
)
async def get_subscription(request: Request) -> Response:
    """One subscription; its secret is never shown again."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_READ)
    sub = await services(request).subscriptions.owned(
        caller, request.path_params["subscription_id"]
    )
    return JSONResponse(sub.to_public())


@operation(
    summary="Change a subscription",
    tag="subscriptions",
    body=SUBSCRIPTION_CHANGES.schema(),
    replies={200: Reply("The subscription as changed.", ref("Subscription"))},
    errors=(404,),
)
async def update_subscription(request: Request) -> Response:
    """Change any field; null clears a filter. `{"status": "disabled"}` pauses deliveries."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    updated = await services(request).subscriptions.update(
        caller, request.path_params["subscription_id"], await read_json(request)
    )
    return JSONResponse(updated.to_public())


@operation(
    summary="Unsubscribe",
    tag="subscriptions",
    replies={204: Reply("Deleted; its pending deliveries are canceled.")},
    errors=(404,),
)
async def delete_subscription(request: Request) -> Response:
    """The Zapier REST Hooks unsubscribe call. A subscriber answering a delivery with 410 Gone
    is deleted the same way."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    await services(request).subscriptions.delete(caller, request.path_params["subscription_id"])
    return Response(status_code=204)


@operation(
    summary="Send a test event",
    tag="subscriptions",
    body=TEST_BODY.schema(),
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
    realistic sample of that type instead (what `reelhook trigger` sends), whatever the
    subscription's filters. Signed, retried and logged like any delivery."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    state = services(request)
    sub_id = request.path_params["subscription_id"]
    await state.subscriptions.owned(caller, sub_id)  # 404 before any complaint about the body
    raw = await read_body(request, MAX_REQUEST_BYTES)
    event_type = "ping"
    if raw.strip():
        try:
            body = loads(raw)
        except InvalidJSON as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        event_type = TEST_BODY.validate(body).get("type", "ping")
    event_id = await state.subscriptions.ping(caller, sub_id, event_type=event_type)
    return JSONResponse({"event_id": event_id, "type": event_type}, status_code=202)


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
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    rotated = await services(request).subscriptions.rotate(
        caller, request.path_params["subscription_id"]
    )
    return JSONResponse(rotated.to_public(include_secret=True))


@operation(
    summary="Resend failed deliveries",
    tag="subscriptions",
    params=(
        Param(
            "since",
            "query",
            TIME,
            "Deliveries created at or after this time: ISO 8601 (UTC without a zone) or Unix "
            "seconds; not in the future.",
            required=True,
        ),
        Param("until", "query", OPTIONAL_TIME, "And before this time (later than `since`)."),
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
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    recovered = await services(request).subscriptions.recover(
        caller,
        request.path_params["subscription_id"],
        since=request.query_params.get("since", ""),
        until=request.query_params.get("until", ""),
    )
    return JSONResponse(
        {
            "subscription_id": request.path_params["subscription_id"],
            "recovered": recovered.count,
            "since": isoformat(recovered.since),
            "until": isoformat(recovered.until),
        },
        status_code=202,
    )


@operation(
    summary="Preview a template and a filter",
    tag="subscriptions",
    body=PREVIEW_BODY.schema(),
    replies={
        200: Reply(
            "The sample event, whether the filter lets it through, and the body the template "
            "renders from it.",
            {
                "type": "object",
                "required": ["event", "filter_matches", "content_type", "body"],
                "properties": {
                    "event": ref("Event"),
                    "filter_matches": {
                        "type": ["boolean", "null"],
                        "description": "null when no filter was given.",
                    },
                    "content_type": {"enum": list(CONTENT_TYPES)},
                    "body": {
                        "type": "string",
                        "description": "Exactly what would be sent (the event itself without a "
                        "template).",
                    },
                },
            },
        )
    },
)
async def preview_subscription(request: Request) -> Response:
    """Render a sample event (as `GET /v1/events/sample` builds it) through `template`, and test
    it against `filter`, without saving anything: the errors are those a subscription with these
    fields would get."""
    await authenticate(request, Scope.SUBSCRIPTIONS_READ)
    found = services(request).subscriptions.preview(await read_json(request))
    return JSONResponse(
        {
            "event": found.event,
            "filter_matches": found.filter_matches,
            "content_type": found.content_type,
            "body": found.body,
        }
    )
