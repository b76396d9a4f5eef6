"""One console request: its session and caller, its checked form, and the page it renders.

Every console endpoint is a handler of a :class:`View` wrapped by :func:`endpoint`, which signs the
visitor in from the session cookie (through the same key lookup and scope check as ``X-API-Key``),
refuses a POST whose CSRF token was not made for this session, and renders reelhook's errors as
pages instead of JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from service.access.callers import Caller
from service.app.services import Services, services
from service.console.session import (
    COOKIE,
    COOKIE_PATH,
    SESSION_TTL,
    Session,
    SessionCodec,
)
from service.core.body import read_capped
from service.core.errors import BadRequest, Forbidden, ReelhookError, Unauthorized

MAX_FORM_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]

# What a redirect after a successful action says; a code, so a URL cannot put words on the page.
NOTICES = {
    "signed-out": "You are signed out.",
    "session-ended": "Your API key is no longer valid; sign in again.",
    "saved": "Saved.",
    "key-created": "API key created.",
    "key-revoked": "The API key is revoked; it stops working at once.",
    "submitted": "Submitted; this page follows the job live.",
    "created": "Subscribed.",
    "rotated": "The signing secret is rotated; the previous one keeps signing for the grace "
    "period.",
    "enabled": "The subscription is active again; held deliveries are being sent.",
    "disabled": "The subscription is disabled; its deliveries are held until you enable it.",
    "ping-sent": "A ping event is on its way.",
    "deleted": "The subscription is deleted.",
    "resent": "The delivery is queued to be sent again.",
}

# Pages are built from the service's own origin only; media may come from a provider's host.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' https: http:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages show secrets once (a new whsec_) and data of one key: never keep them in a cache.
    "Cache-Control": "no-store",
}


class Form:
    """The fields of a submitted ``application/x-www-form-urlencoded`` form."""

    def __init__(self, fields: dict[str, list[str]] | None = None) -> None:
        self._fields = fields or {}

    def get(self, name: str) -> str:
        """The first value of ``name``, stripped; empty when absent."""
        values = self._fields.get(name)
        return values[0].strip() if values else ""

    def getlist(self, name: str) -> list[str]:
        return [value.strip() for value in self._fields.get(name, []) if value.strip()]

    def names(self) -> list[str]:
        return list(self._fields)

    def __contains__(self, name: str) -> bool:
        return name in self._fields


async def read_form(request: Request) -> Form:
    """The request's urlencoded form, read with a size cap (the console uploads no files)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadRequest("the console accepts application/x-www-form-urlencoded forms only")
    body = await read_capped(
        request.stream(), request.headers.get("content-length"), MAX_FORM_BYTES
    )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=500))


@dataclass
class View:
    """What a console handler works with."""

    request: Request
    templates: Jinja2Templates
    codec: SessionCodec
    session: Session
    caller: Caller | None = None
    form: Form = field(default_factory=Form)
    session_changed: bool = False
    key_name: str = ""

    @property
    def state(self) -> Services:
        return services(self.request)

    @property
    def signed_in_caller(self) -> Caller:
        assert self.caller is not None, "only endpoints that require sign-in use this"
        return self.caller

    def may(self, scope: str) -> bool:
        """Whether the signed-in key holds ``scope`` (the same rule as the API's scope check)."""
        return self.caller is not None and self.caller.may(scope)

    def start_session(self, key_hash: str | None) -> None:
        """Replace the session (a new nonce, so no token from before survives it)."""
        self.session = self.codec.new(key_hash)
        self.session_changed = True

    def render(self, template: str, status_code: int = 200, **context: Any) -> Response:
        notice = NOTICES.get(self.request.query_params.get("notice", ""))
        return self.templates.TemplateResponse(
            self.request,
            template,
            {
                "caller": self.caller,
                "key_name": self.key_name,
                "may": self.may,
                "csrf": self.codec.csrf_token(self.session),
                "notice": notice,
                **context,
            },
            status_code=status_code,
        )

    def redirect(self, path: str, notice: str | None = None, **params: str) -> Response:
        """A 303 to ``path`` (a GET after a POST), showing ``notice`` there."""
        if notice is not None:
            assert notice in NOTICES, notice
            params["notice"] = notice
        query = urlencode({k: v for k, v in params.items() if v})
        return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)

    def finish(self, response: Response) -> Response:
        if self.session_changed:
            response.set_cookie(
                COOKIE,
                self.codec.dumps(self.session),
                max_age=SESSION_TTL,
                path=COOKIE_PATH,
                secure=self._secure(),
                httponly=True,
                samesite="strict",
            )
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _secure(self) -> bool:
        # Behind a TLS proxy the request itself may be plain http; the public URL tells.
        return self.request.url.scheme == "https" or self.state.settings.public_url.startswith(
            "https:"
        )


Handler = Callable[[View], Awaitable[Response]]


def endpoint(
    templates: Jinja2Templates, handler: Handler, scope: str | None, *, public: bool = False
) -> Endpoint:
    """Wrap ``handler`` as a console endpoint.

    Unless ``public``, the visitor must be signed in with a key that holds ``scope`` (None: any
    valid key). A POST must carry the session's CSRF token in its ``csrf`` field.
    """

    async def run(request: Request) -> Response:
        codec = SessionCodec(services(request).tokens.secret_keys)
        found = codec.loads(request.cookies.get(COOKIE))
        if found is not None and await services(request).sign_outs.revoked(found.nonce):
            found = None  # signed out: the cookie is no session any more, on any node
        view = View(request, templates, codec, found or codec.new())
        view.session_changed = found is None
        try:
            response = await _handle(view, handler, scope, public=public)
        except ReelhookError as error:
            response = view.render("error.html", status_code=error.status_code, error=error)
        return view.finish(response)

    return run


async def _handle(view: View, handler: Handler, scope: str | None, *, public: bool) -> Response:
    request = view.request
    if not public:
        if view.session.key_hash is None:
            return view.redirect("/console/sign-in", next=_here(request))
        try:
            view.caller = await view.state.access.caller(view.session.key_hash, scope)
            # The header names the key as people named it, not by its id.
            view.key_name = (await view.state.keys.get(view.caller.key_id)).name
        except Unauthorized:
            view.start_session(None)
            return view.redirect("/console/sign-in", "session-ended")
    if request.method == "POST":
        view.form = await read_form(request)
        if not view.codec.csrf_valid(view.session, view.form.get("csrf")):
            raise Forbidden(
                "this form was not issued to your current session (it may be from before you "
                "signed in again); reload the page and submit it again"
            )
    return await handler(view)


def _here(request: Request) -> str:
    """Where to come back to after signing in: this page, if it is a GET."""
    if request.method != "GET":
        return ""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def safe_next(target: str) -> str:
    """``target`` if it is a console page on this origin, else the jobs page."""
    if target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/jobs"
