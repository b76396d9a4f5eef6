"""The deliveries pages: the delivery log with each attempt, resend one, recover failed ones."""

from __future__ import annotations

import json
import math
from urllib.parse import urlencode

from starlette.responses import Response

from service.console.view import View
from service.core import params
from service.core.errors import NotFound
from service.core.models import EVENT_TYPES, DeliveryStatus
from service.delivery.deliveries import attempt_document, delivery_document, delivery_filter
from service.net.client import USER_AGENT
from service.storage.deliveries import Attempt

# The console's filter names are the API's short ones, read by the same function.
FILTERS = ("subscription", "status", "job", "event_type", "since", "until")
# A delivery page reloads itself only while something is about to change: an attempt running, or
# the next one due within this many seconds. A wait of minutes or hours (the retry schedule) is
# shown as a time instead, so open sections and the scroll position stay put.
REFRESH_HORIZON = 10.0


def refresh_after(status: DeliveryStatus, next_attempt_at: float | None, now: float) -> int | None:
    """Seconds until the delivery page should reload itself, or None (it waits for the reader)."""
    if status is DeliveryStatus.INFLIGHT:
        return 1
    if status is not DeliveryStatus.PENDING or next_attempt_at is None:
        return None
    due_in = next_attempt_at - now
    if due_in > REFRESH_HORIZON:
        return None
    # Just after the attempt is due, so the reload shows its outcome.
    return max(1, math.ceil(due_in) + 1)


async def deliveries_page(view: View) -> Response:
    query = view.request.query_params
    # A filter form sends its empty fields too; empty means "any", not "equal to nothing".
    given = {name: value for name, value in query.items() if value}
    page = await view.state.deliveries.page(
        view.signed_in_caller,
        delivery_filter(given),
        cursor=query.get("cursor"),
        limit=params.limit(query),
    )
    next_cursor = page.next_cursor
    filters = {name: view.request.query_params.get(name, "") for name in FILTERS}
    chosen = {name: value for name, value in filters.items() if value}
    recovered = view.request.query_params.get("recovered", "")
    bulk = {name: view.request.query_params.get(name, "") for name in ("resent", "skipped")}
    return view.render(
        "deliveries.html",
        section="deliveries",
        deliveries=[delivery_document(delivery) for delivery in page.items],
        filters=filters,
        statuses=tuple(DeliveryStatus),
        next_link="?" + urlencode({**chosen, "cursor": next_cursor}) if next_cursor else None,
        first_page=view.request.query_params.get("cursor") is None,
        first_link="?" + urlencode(chosen) if chosen else "",
        recovered=int(recovered) if recovered.isascii() and recovered.isdigit() else None,
        event_types=EVENT_TYPES,
        bulk=(
            {name: int(value) for name, value in bulk.items()}
            if all(v.isascii() and v.isdigit() for v in bulk.values())
            else None
        ),
    )


async def retry_matching(view: View) -> Response:
    """Bulk retry of the filtered set; redirected back to the same filter with the counts."""
    chosen = {name: view.form.get(name) for name in FILTERS if view.form.get(name)}
    resent, skipped = await view.state.deliveries.resend_matching(
        view.signed_in_caller, delivery_filter(chosen)
    )
    return view.redirect("/console/deliveries", **chosen, resent=str(resent), skipped=str(skipped))


MASK = "********"


def request_headers(
    event_id: str, attempt: Attempt, static_headers: list[str]
) -> list[tuple[str, str]]:
    """The headers an attempt was sent with, rebuilt from what is stored (the request itself is
    not kept): the subscription's static headers and the signature masked, the timestamp the
    attempt's start to the second."""
    started = int(attempt.attempted_at - attempt.latency_ms / 1000)
    return [
        *[(name, MASK) for name in static_headers],
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
        ("webhook-id", event_id),
        ("webhook-timestamp", str(started)),
        ("webhook-signature", f"v1,{MASK} (one per signing secret)"),
    ]


async def delivery_page(view: View) -> Response:
    caller = view.signed_in_caller
    delivery_id = view.request.path_params["delivery_id"]
    found = await view.state.deliveries.details(caller, delivery_id)
    payload = found.payload
    delivery = found.delivery
    try:
        sub = await view.state.subscriptions.owned(caller, delivery.subscription_id)
        subscription_gone, static_headers = False, list(sub.headers)
    except NotFound:
        subscription_gone, static_headers = True, []
    return view.render(
        "delivery.html",
        section="deliveries",
        delivery=delivery_document(delivery),
        payload=None if payload is None else json.dumps(payload, indent=2, ensure_ascii=False),
        attempts=[
            {
                **attempt_document(attempt),
                "request_headers": request_headers(delivery.event_id, attempt, static_headers),
            }
            for attempt in found.attempts
        ],
        refresh=refresh_after(delivery.status, delivery.next_attempt_at, view.state.clock()),
        subscription_gone=subscription_gone,
    )


async def resend(view: View) -> Response:
    delivery_id = view.request.path_params["delivery_id"]
    await view.state.deliveries.resend(view.signed_in_caller, delivery_id)
    return view.redirect(f"/console/deliveries/{delivery_id}", "resent")


async def recover(view: View) -> Response:
    sub_id = view.request.path_params["subscription_id"]
    recovered = await view.state.subscriptions.recover(
        view.signed_in_caller, sub_id, since=view.form.get("since"), until=""
    )
    return view.redirect("/console/deliveries", subscription=sub_id, recovered=str(recovered.count))
