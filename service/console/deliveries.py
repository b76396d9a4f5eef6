"""The deliveries pages: the delivery log with each attempt, resend one, recover failed ones."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.responses import Response

from service.api import deliveries as api
from service.api import subscriptions as subscriptions_api
from service.api.context import parse_time
from service.console.view import View
from service.storage import deliveries

# The console's filter names are the API's short ones; the API reads the same query parameters.
FILTERS = ("subscription", "status", "job")
# A delivery page that is waiting for an attempt reloads itself this often (seconds).
REFRESH_WHILE_UNDER_WAY = 1


async def deliveries_page(view: View) -> Response:
    page, next_cursor = await api.delivery_page(view.request, view.signed_in_caller)
    filters = {name: view.request.query_params.get(name, "") for name in FILTERS}
    chosen = {name: value for name, value in filters.items() if value}
    recovered = view.request.query_params.get("recovered", "")
    return view.render(
        "deliveries.html",
        section="deliveries",
        deliveries=[api.delivery_public(delivery) for delivery in page],
        filters=filters,
        statuses=deliveries.STATUSES,
        next_link="?" + urlencode({**chosen, "cursor": next_cursor}) if next_cursor else None,
        first_page=view.request.query_params.get("cursor") is None,
        first_link="?" + urlencode(chosen) if chosen else "",
        recovered=int(recovered) if recovered.isascii() and recovered.isdigit() else None,
    )


async def delivery_page(view: View) -> Response:
    caller = view.signed_in_caller
    delivery_id = view.request.path_params["delivery_id"]
    delivery = await api.find_delivery(view.request, caller, delivery_id)
    payload, attempts = await api.delivery_details(view.request, delivery)
    document = api.delivery_public(delivery)
    under_way = delivery.status in ("queued", "pending", "inflight")
    return view.render(
        "delivery.html",
        section="deliveries",
        delivery=document,
        payload=None if payload is None else json.dumps(payload, indent=2, ensure_ascii=False),
        attempts=[api.attempt_public(attempt) for attempt in attempts],
        refresh=REFRESH_WHILE_UNDER_WAY if under_way else None,
    )


async def resend(view: View) -> Response:
    delivery_id = view.request.path_params["delivery_id"]
    await api.resend(view.request, view.signed_in_caller, delivery_id)
    return view.redirect(f"/console/deliveries/{delivery_id}", "resent")


async def recover(view: View) -> Response:
    sub_id = view.request.path_params["subscription_id"]
    since = parse_time(view.form.get("since"), "since", required=True)
    assert since is not None  # required
    count = await subscriptions_api.recover(
        view.request, view.signed_in_caller, sub_id, since=since, until=None
    )
    return view.redirect("/console/deliveries", subscription=sub_id, recovered=str(count))
