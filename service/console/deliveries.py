"""The deliveries pages: the delivery log with each attempt, resend one, recover failed ones."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.responses import Response

from service.console.view import View
from service.core import params
from service.core.models import DeliveryStatus
from service.delivery.deliveries import attempt_document, delivery_document, delivery_filter

# The console's filter names are the API's short ones, read by the same function.
FILTERS = ("subscription", "status", "job")
# A delivery page that is waiting for an attempt reloads itself this often (seconds).
REFRESH_WHILE_UNDER_WAY = 1


async def deliveries_page(view: View) -> Response:
    query = view.request.query_params
    page = await view.state.deliveries.page(
        view.signed_in_caller,
        delivery_filter(query),
        cursor=query.get("cursor"),
        limit=params.limit(query),
    )
    next_cursor = page.next_cursor
    filters = {name: view.request.query_params.get(name, "") for name in FILTERS}
    chosen = {name: value for name, value in filters.items() if value}
    recovered = view.request.query_params.get("recovered", "")
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
    )


async def delivery_page(view: View) -> Response:
    caller = view.signed_in_caller
    delivery_id = view.request.path_params["delivery_id"]
    found = await view.state.deliveries.details(caller, delivery_id)
    payload = found.payload
    under_way = found.delivery.status.under_way
    return view.render(
        "delivery.html",
        section="deliveries",
        delivery=delivery_document(found.delivery),
        payload=None if payload is None else json.dumps(payload, indent=2, ensure_ascii=False),
        attempts=[attempt_document(attempt) for attempt in found.attempts],
        refresh=REFRESH_WHILE_UNDER_WAY if under_way else None,
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
