"""The API keys page, for admins: list, create (the key shown once), revoke."""

from __future__ import annotations

from starlette.responses import Response

from service.access.scopes import SCOPES
from service.console.reveal import OneTimeSecrets
from service.console.view import View
from service.core import params
from service.core.errors import Conflict, ValidationFailed

_SUBJECT = "new-api-key"


async def keys_page(view: View, shown_once: OneTimeSecrets) -> Response:
    new_key = None
    handle = view.request.query_params.get("reveal")
    if handle is not None:
        new_key = shown_once.take(handle, view.signed_in_caller.key_id, _SUBJECT)
    return await _render(view, new_key=new_key, key_gone=handle is not None and new_key is None)


async def _render(view: View, *, status_code: int = 200, **extra: object) -> Response:
    query = view.request.query_params
    page = await view.state.keys.page(cursor=params.cursor(query, "key"), limit=200)
    return view.render(
        "keys.html",
        status_code=status_code,
        section="keys",
        keys=page.items,
        next_cursor=page.next_cursor,
        scopes=SCOPES,
        **extra,
    )


async def create(view: View, shown_once: OneTimeSecrets) -> Response:
    caller = view.signed_in_caller
    body = {"name": view.form.get("name"), "scopes": view.form.getlist("scopes")}
    try:
        created = await view.state.keys.create(caller, body)
    except ValidationFailed as error:
        return await _render(view, status_code=422, problem=error.message, draft=body)
    # Redirected, so a reload does not make a second key; the key itself waits server-side.
    handle = shown_once.put(caller.key_id, _SUBJECT, created.secret)
    return view.redirect("/console/keys", "key-created", reveal=handle)


async def revoke(view: View) -> Response:
    try:
        await view.state.keys.revoke(view.signed_in_caller, view.request.path_params["key_id"])
    except Conflict as error:
        return await _render(view, status_code=409, problem=error.message, draft={})
    return view.redirect("/console/keys", "key-revoked")
