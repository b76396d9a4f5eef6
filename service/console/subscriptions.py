"""The subscriptions pages: list with health, create, edit, disable/enable, ping, delete."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from service.console.reveal import OneTimeSecrets
from service.console.view import Form, View
from service.core import params
from service.core.errors import ValidationFailed
from service.core.models import EVENT_TYPES, Subscription, SubscriptionStatus
from service.delivery.transform import CONTENT_TYPES
from service.jobs.catalog import MODELS
from service.storage.health import Health

# The success rate covers the last day of attempts: long enough to mean something, short enough
# that a subscriber that has recovered stops looking sick.
HEALTH_WINDOW = 24 * 3600


def headers_from_text(text: str) -> dict[str, str]:
    """``Name: value`` lines (blank lines ignored) as a headers object to validate as JSON's."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValidationFailed.field("headers", f"line {number} is not 'Name: value'")
        if name.strip() in headers:
            raise ValidationFailed.field("headers", f"{name.strip()!r} is given twice")
        headers[name.strip()] = value.strip()
    return headers


def body_from_form(form: Form, *, editing: bool) -> dict[str, Any]:
    """The JSON body the create or edit form stands for, validated as the API's would be."""
    body: dict[str, Any] = {
        "url": form.get("url"),
        "description": form.get("description"),
        "event_types": form.getlist("event_types"),
        "models": form.getlist("models"),
    }
    filter_text = form.get("filter").strip()
    if filter_text or editing:
        try:
            body["filter"] = json.loads(filter_text) if filter_text else None
        except ValueError as exc:
            raise ValidationFailed.field("filter", f"is not JSON: {exc}") from None
    template = form.get("template")
    if template.strip() or editing:
        body["template"] = template if template.strip() else None
    for name in ("content_type", "signature_scheme", "ordering"):
        if form.get(name):
            body[name] = form.get(name)
    if editing and form.get("clear_headers"):
        body["headers"] = {}
    elif form.get("headers"):
        # Header values are masked in answers, so an edit that names none keeps the ones stored.
        body["headers"] = headers_from_text(form.get("headers"))
    return body


def _choices() -> dict[str, Any]:
    return {"event_types": EVENT_TYPES, "models": tuple(MODELS), "content_types": CONTENT_TYPES}


async def _health(view: View, sub: Subscription) -> Health:
    return await view.state.subscriptions.health(sub, since=view.state.clock() - HEALTH_WINDOW)


async def list_page(view: View, *, status_code: int = 200, **extra: Any) -> Response:
    query = view.request.query_params
    page = await view.state.subscriptions.page(
        view.signed_in_caller, cursor=query.get("cursor"), limit=params.limit(query)
    )
    rows = [(sub.to_public(), await _health(view, sub)) for sub in page.items]
    return view.render(
        "subscriptions.html",
        status_code=status_code,
        section="subscriptions",
        rows=rows,
        next_cursor=page.next_cursor,
        draft=extra.pop("draft", {}),
        **_choices(),
        **extra,
    )


async def subscriptions_page(view: View) -> Response:
    return await list_page(view)


async def create(view: View, shown_once: OneTimeSecrets) -> Response:
    caller = view.signed_in_caller
    try:
        sub = await view.state.subscriptions.create(
            caller, body_from_form(view.form, editing=False)
        )
    except ValidationFailed as error:
        return await list_page(view, status_code=422, problem=error.message, draft=_draft(view))
    # Redirected, so a reload shows the page again instead of subscribing a second time.
    secret = _shown_secret(sub)
    handle = shown_once.put(caller.key_id, sub.id, secret) if secret else ""
    return view.redirect(f"/console/subscriptions/{sub.id}", "created", reveal=handle)


async def subscription_page(view: View, shown_once: OneTimeSecrets) -> Response:
    caller = view.signed_in_caller
    sub = await view.state.subscriptions.owned(caller, view.request.path_params["subscription_id"])
    handle = view.request.query_params.get("reveal")
    if handle is None:
        return await detail(view, sub)
    secret = shown_once.take(handle, caller.key_id, sub.id)
    if secret is None:
        return await detail(view, sub, secret_gone=True)
    return await detail(view, sub, new_secret=secret)


async def detail(
    view: View, sub: Subscription, *, status_code: int = 200, **extra: Any
) -> Response:
    return view.render(
        "subscription.html",
        status_code=status_code,
        section="subscriptions",
        sub=sub.to_public(),
        health=await _health(view, sub),
        health_hours=HEALTH_WINDOW // 3600,
        recover_since=_form_time(view.state.clock() - HEALTH_WINDOW),
        draft=extra.pop("draft", None) or _stored_draft(sub),
        queue=(await view.state.subscriptions.queue(sub) if sub.ordering == "fifo" else None),
        **_choices(),
        **extra,
    )


async def edit(view: View) -> Response:
    sub_id = view.request.path_params["subscription_id"]
    caller = view.signed_in_caller
    operations = view.state.subscriptions
    try:
        await operations.update(caller, sub_id, body_from_form(view.form, editing=True))
    except ValidationFailed as error:
        sub = await operations.owned(caller, sub_id)
        return await detail(view, sub, status_code=422, problem=error.message, draft=_draft(view))
    return view.redirect(f"/console/subscriptions/{sub_id}", "saved")


async def set_status(view: View) -> Response:
    sub_id = view.request.path_params["subscription_id"]
    wanted = view.form.get("status")
    await view.state.subscriptions.update(view.signed_in_caller, sub_id, {"status": wanted})
    notice = "enabled" if wanted == SubscriptionStatus.ACTIVE else "disabled"
    return view.redirect(f"/console/subscriptions/{sub_id}", notice)


async def rotate(view: View, shown_once: OneTimeSecrets) -> Response:
    caller = view.signed_in_caller
    rotated = await view.state.subscriptions.rotate(
        caller, view.request.path_params["subscription_id"]
    )
    # Redirected: a reload must not rotate again (a second rotation inside the grace period
    # retires the secret the subscriber still verifies with).
    secret = _shown_secret(rotated)
    handle = shown_once.put(caller.key_id, rotated.id, secret) if secret else ""
    return view.redirect(f"/console/subscriptions/{rotated.id}", "rotated", reveal=handle)


async def ping(view: View) -> Response:
    sub_id = view.request.path_params["subscription_id"]
    await view.state.subscriptions.ping(view.signed_in_caller, sub_id)
    return view.redirect(f"/console/subscriptions/{sub_id}", "ping-sent")


async def delete(view: View) -> Response:
    await view.state.subscriptions.delete(
        view.signed_in_caller, view.request.path_params["subscription_id"]
    )
    return view.redirect("/console/subscriptions", "deleted")


def _shown_secret(sub: Subscription) -> str | None:
    """The secret to show once: a v1 secret is the subscriber's; a v1a signing key never leaves
    reelhook (its public key is on the page)."""
    return sub.secret if sub.signature_scheme == "v1" else None


def _form_time(moment: float) -> str:
    """``moment`` as a datetime-local input's value (UTC, to the second)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _draft(view: View) -> dict[str, Any]:
    """What was typed into a form that failed, to show it again."""
    form = view.form
    return {
        "url": form.get("url"),
        "description": form.get("description"),
        "event_types": form.getlist("event_types"),
        "models": form.getlist("models"),
        "headers": form.get("headers"),
        "filter": form.get("filter"),
        "template": form.get("template"),
        "content_type": form.get("content_type"),
        "signature_scheme": form.get("signature_scheme"),
        "ordering": form.get("ordering"),
    }


def _stored_draft(sub: Subscription) -> dict[str, Any]:
    return {
        "url": sub.url,
        "description": sub.description,
        "event_types": list(sub.event_types),
        "models": list(sub.models),
        "headers": "",
        "filter": json.dumps(sub.filter, indent=2) if sub.filter is not None else "",
        "template": sub.template or "",
        "content_type": sub.content_type,
        "signature_scheme": sub.signature_scheme,
        "ordering": sub.ordering,
    }
