"""Signing in to the console with an API key, and signing out."""

from __future__ import annotations

from starlette.responses import Response

from service.access.callers import hash_key
from service.console.session import SESSION_TTL
from service.console.view import View, safe_next
from service.core.errors import Unauthorized


async def sign_in_page(view: View) -> Response:
    return view.render("sign_in.html", next=safe_next(view.request.query_params.get("next", "")))


async def sign_in(view: View) -> Response:
    key = view.form.get("api_key")
    target = safe_next(view.form.get("next"))
    if not key:
        return view.render(
            "sign_in.html", status_code=422, problem="Paste your API key.", next=target
        )
    try:
        # The same lookup as an X-API-Key header; any valid key may open the console, and each
        # page then asks for the scope its API endpoint asks for.
        await view.state.access.caller(hash_key(key))
    except Unauthorized:
        return view.render(
            "sign_in.html", status_code=401, problem="That API key is not valid.", next=target
        )
    view.start_session(hash_key(key))
    return view.redirect(target)


async def sign_out(view: View) -> Response:
    # Ended on the server too, in the store: the old cookie (and its CSRF tokens) no longer
    # work anywhere, after a restart and on every node.
    await view.state.sign_outs.revoke(view.session.nonce, lifetime=SESSION_TTL)
    view.start_session(None)
    return view.redirect("/console/sign-in", "signed-out")
