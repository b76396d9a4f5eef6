"""``/v1/deliveries``: the delivery log with every attempt, and resending one delivery."""

from __future__ import annotations

import base64
import codecs
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import (
    Caller,
    authenticate,
    choice_param,
    cursor_param,
    limit_param,
    services,
)
from service.api.operation import Param, Reply, cursor_query, limit_query, operation
from service.api.schemas import page_of, ref
from service.core.clock import isoformat
from service.core.errors import Conflict, NotFound, ValidationFailed
from service.storage import deliveries, subscriptions
from service.storage.deliveries import Attempt, Delivery

# Each filter, and the shorter name the design spells it with.
_FILTERS = {"subscription_id": "subscription", "event_id": "event", "job_id": "job"}
_ID = {"type": "string"}


def delivery_public(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "delivery",
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id,
        "subscription_id": delivery.subscription_id,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "next_attempt_at": isoformat(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": isoformat(delivery.created_at),
        "updated_at": isoformat(delivery.updated_at),
    }


def attempt_public(attempt: Attempt) -> dict[str, Any]:
    body, encoding = response_text(attempt.response_body)
    return {
        "attempted_at": isoformat(attempt.attempted_at),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "response_body": body,
        "response_body_encoding": encoding,
    }


def response_text(body: bytes | None) -> tuple[str | None, str | None]:
    """The stored response prefix as text when it is UTF-8 (a character cut by the 20 kB limit
    is dropped), otherwise as base64; and which of the two it is."""
    if body is None:
        return None, None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=False), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), "base64"


def _filter(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    alias = request.query_params.get(_FILTERS[name])
    if value is not None and alias is not None and value != alias:
        raise ValidationFailed.field(name, f"differs from {_FILTERS[name]}; send one of them")
    return value if value is not None else alias


@operation(
    summary="List deliveries",
    tag="deliveries",
    params=(
        Param("subscription_id", "query", _ID, "Only deliveries to this subscription."),
        Param("subscription", "query", _ID, "The same as `subscription_id`."),
        Param("status", "query", {"enum": list(deliveries.STATUSES)}, "Only those in this state."),
        Param("event_id", "query", _ID, "Only deliveries of this event."),
        Param("event", "query", _ID, "The same as `event_id`."),
        Param("job_id", "query", _ID, "Only deliveries of this job's events."),
        Param("job", "query", _ID, "The same as `job_id`."),
        cursor_query("The `next_cursor` of the previous page."),
        limit_query(50, 200),
    ),
    replies={200: Reply("Deliveries, newest first.", page_of(ref("Delivery")))},
    errors=(422,),
)
async def list_deliveries(request: Request) -> Response:
    """Deliveries to your subscriptions (an admin key sees everyone's), newest first. Filter by
    ``subscription_id``, ``status``, ``event_id`` and ``job_id`` (or their short spellings
    ``subscription``, ``event`` and ``job``; a filter given both ways must agree)."""
    caller = await authenticate(request, "subscriptions:read")
    page, next_cursor = await delivery_page(request, caller)
    return JSONResponse({"data": [delivery_public(d) for d in page], "next_cursor": next_cursor})


async def delivery_page(request: Request, caller: Caller) -> tuple[list[Delivery], str | None]:
    """One page of the deliveries ``caller`` may see, newest first, filtered by the query
    parameters (``subscription_id``, ``status``, ``event_id``, ``job_id`` or their short
    spellings, ``cursor``, ``limit``); with the cursor of the next page, if any."""
    limit = limit_param(request)
    page = await deliveries.list_page(
        services(request).db.reader,
        owner_key_id=caller.owner_filter,
        subscription_id=_filter(request, "subscription_id"),
        status=choice_param(request, "status", deliveries.STATUSES),
        event_id=_filter(request, "event_id"),
        job_id=_filter(request, "job_id"),
        before_id=cursor_param(request, "dlv"),
        limit=limit + 1,
    )
    more = len(page) > limit
    page = page[:limit]
    return page, page[-1].id if more else None


async def find_delivery(request: Request, caller: Caller, delivery_id: str) -> Delivery:
    """The delivery, if ``caller`` may see it; :class:`NotFound` otherwise."""
    found = await deliveries.get(
        services(request).db.reader, delivery_id, owner_key_id=caller.owner_filter
    )
    if found is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    return found


@operation(
    summary="Get a delivery",
    tag="deliveries",
    replies={200: Reply("The delivery, its payload and its attempts.", ref("DeliveryDetail"))},
    errors=(404,),
)
async def get_delivery(request: Request) -> Response:
    """One delivery with the event body its subscriber receives (`payload`) and every attempt,
    oldest first, with the start of each answer."""
    caller = await authenticate(request, "subscriptions:read")
    delivery = await find_delivery(request, caller, request.path_params["delivery_id"])
    payload, attempts = await delivery_details(request, delivery)
    return JSONResponse(
        {
            **delivery_public(delivery),
            "payload": payload,
            "attempts": [attempt_public(a) for a in attempts],
        }
    )


async def delivery_details(request: Request, delivery: Delivery) -> tuple[Any, list[Attempt]]:
    """The delivery's event payload (None once pruned) and its attempts, oldest first."""
    reader = services(request).db.reader
    payload = await deliveries.payload_of(reader, delivery.event_id)
    attempts = await deliveries.attempts_of(reader, delivery.id)
    return (json.loads(payload) if payload is not None else None), attempts


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
    caller = await authenticate(request, "subscriptions:write")
    updated = await resend(request, caller, request.path_params["delivery_id"])
    return JSONResponse(delivery_public(updated), status_code=202)


async def resend(request: Request, caller: Caller, delivery_id: str) -> Delivery:
    """Queue one more attempt of the delivery now (see :func:`retry_delivery`); return it."""
    delivery = await find_delivery(request, caller, delivery_id)
    state = services(request)
    sub = await subscriptions.get(state.db.reader, delivery.subscription_id)
    if sub is None or delivery.status == "canceled":
        raise Conflict("the delivery's subscription has been deleted")
    if sub.status != "active":
        raise Conflict("the subscription is disabled; enable it to resend")
    async with state.db.transaction() as conn:
        resent = await deliveries.resend(conn, delivery.id, state.clock())
        updated = await deliveries.get(conn, delivery.id, owner_key_id=None)
    if not resent or updated is None:
        raise Conflict("an attempt of this delivery is in flight; try again when it has ended")
    state.dispatcher.wake()
    return updated
