"""``/v1/deliveries``: the delivery log with every attempt, and resending one delivery."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.scopes import Scope
from service.api.context import authenticate
from service.api.operation import OPTIONAL_TIME, Param, Reply, id_cursor, limit_query, operation
from service.api.schemas import page_of, ref
from service.app.services import services
from service.core import params
from service.core.models import EVENT_TYPES, DeliveryStatus
from service.delivery.deliveries import attempt_document, delivery_document, delivery_filter

_ID = {"type": "string"}


@operation(
    summary="List deliveries",
    tag="deliveries",
    params=(
        Param(
            "subscription_id",
            "query",
            _ID,
            "Only deliveries to this subscription (also accepted as `subscription`).",
        ),
        Param("subscription", "query", _ID, "", alias_of="subscription_id"),
        Param("status", "query", {"enum": list(DeliveryStatus)}, "Only those in this state."),
        Param("event_id", "query", _ID, "Only deliveries of this event (also `event`)."),
        Param("event", "query", _ID, "", alias_of="event_id"),
        Param("job_id", "query", _ID, "Only deliveries of this job's events (also `job`)."),
        Param("job", "query", _ID, "", alias_of="job_id"),
        Param("event_type", "query", {"enum": list(EVENT_TYPES)}, "Only deliveries of this type."),
        Param(
            "since",
            "query",
            OPTIONAL_TIME,
            "Only deliveries created at or after this time: ISO 8601 or Unix seconds.",
        ),
        Param("until", "query", OPTIONAL_TIME, "Only deliveries created before this time."),
        id_cursor("dlv"),
        limit_query(50, 200),
    ),
    replies={200: Reply("Deliveries, newest first.", page_of(ref("Delivery")))},
    errors=(422,),
)
async def list_deliveries(request: Request) -> Response:
    """Deliveries to your subscriptions (an admin key sees everyone's), newest first. Filter by
    ``subscription_id``, ``status``, ``event_id`` and ``job_id`` (or their short spellings
    ``subscription``, ``event`` and ``job``; a filter given both ways must agree), by
    ``event_type``, and by creation time (``since``, ``until``)."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_READ)
    query = request.query_params
    page = await services(request).deliveries.page(
        caller,
        delivery_filter(query),
        cursor=params.cursor(query, "dlv"),
        limit=params.limit(query),
    )
    return JSONResponse(
        {"data": [delivery_document(d) for d in page.items], "next_cursor": page.next_cursor}
    )


@operation(
    summary="Get a delivery",
    tag="deliveries",
    replies={200: Reply("The delivery, its payload and its attempts.", ref("DeliveryDetail"))},
    errors=(404,),
)
async def get_delivery(request: Request) -> Response:
    """One delivery with the event body its subscriber receives (`payload`) and every attempt,
    oldest first, with the start of each answer."""
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_READ)
    found = await services(request).deliveries.details(caller, request.path_params["delivery_id"])
    return JSONResponse(
        {
            **delivery_document(found.delivery),
            "payload": found.payload,
            "attempts": [attempt_document(a) for a in found.attempts],
        }
    )


@operation(
    summary="Resend a delivery",
    tag="deliveries",
    replies={202: Reply("Queued for an attempt now.", ref("Delivery"))},
    errors=(404, 409),
)
async def retry_delivery(request: Request) -> Response:
    """Send one delivery again now, whatever its state; 409 while an attempt is under way, or
    when its subscription is disabled or deleted.

    A delivery still waiting for a retry keeps its schedule, brought forward to now; a finished
    one (succeeded or failed, retries exhausted or not) gets one more attempt, not rescheduled if
    it fails.
    """
    caller = await authenticate(request, Scope.SUBSCRIPTIONS_WRITE)
    updated = await services(request).deliveries.resend(caller, request.path_params["delivery_id"])
    return JSONResponse(delivery_document(updated), status_code=202)
