"""The web console at ``/console``: server-rendered pages over the same functions as the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.console import deliveries, jobs, keys, live, signin, subscriptions
from service.console.reveal import OneTimeSecrets
from service.console.view import Endpoint, Handler, endpoint

STATIC_DIR = Path(__file__).parent / "static"


def templates() -> Jinja2Templates:
    """The console's templates, autoescaped, with its formatting filters."""
    env = Environment(
        loader=PackageLoader("service.console", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["pretty"] = pretty
    env.tests["web_url"] = web_url
    env.filters["amount"] = amount
    return Jinja2Templates(env=env)


def web_url(value: Any) -> bool:
    """Whether ``value`` is an http(s) URL: the only kind the console renders as a link or a
    video source (a provider's ``javascript:`` URL stays text; the page's CSP is not relied on)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def when(value: float | str | None) -> str:
    """A time as ``2026-11-21 10:00:05 UTC``, from epoch seconds or an ISO-8601 string."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        moment = datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def amount(value: float | None) -> str:
    """A cost as people write it: ``95``, ``0.44`` (never ``95.0``)."""
    return "—" if value is None else f"{value:g}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def resource(path: str, **handlers: Endpoint) -> Route:
    """One console route for ``path`` with a handler per method (HEAD wherever GET is).

    Pages are HTML for people, not part of the JSON API, so they stay out of its route table.
    """
    if "get" in handlers:
        handlers.setdefault("head", handlers["get"])

    async def dispatch(request: Request) -> Response:
        return await handlers[request.method.lower()](request)

    return Route(path, dispatch, methods=[method.upper() for method in handlers])


async def _home(request: Request) -> Response:
    return RedirectResponse("/console/jobs", status_code=303)


def routes() -> list[BaseRoute]:
    """The ``/console`` mount."""
    pages = templates()
    # Per app: the secrets a POST made, waiting for the GET it redirects to (see reveal.py).
    shown_once = OneTimeSecrets()

    def page(handler: Handler, scope: str | None, *, public: bool = False) -> Any:
        return endpoint(pages, handler, scope, public=public)

    return [
        Mount(
            "/console",
            routes=[
                resource("/", get=_home),
                resource(
                    "/sign-in",
                    get=page(signin.sign_in_page, None, public=True),
                    post=page(signin.sign_in, None, public=True),
                ),
                resource("/sign-out", post=page(signin.sign_out, None)),
                resource(
                    "/jobs",
                    get=page(jobs.jobs_page, "jobs:read"),
                    post=page(jobs.submit_job, "jobs:write"),
                ),
                resource("/jobs/new", get=page(jobs.new_job_page, "jobs:write")),
                resource("/jobs/{job_id}", get=page(jobs.job_page_view, "jobs:read")),
                resource(
                    "/subscriptions",
                    get=page(subscriptions.subscriptions_page, "subscriptions:read"),
                    post=page(
                        partial(subscriptions.create, shown_once=shown_once),
                        "subscriptions:write",
                    ),
                ),
                resource(
                    "/subscriptions/{subscription_id}",
                    get=page(
                        partial(subscriptions.subscription_page, shown_once=shown_once),
                        "subscriptions:read",
                    ),
                    post=page(subscriptions.edit, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}/status",
                    post=page(subscriptions.set_status, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}/test",
                    post=page(subscriptions.ping, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}/delete",
                    post=page(subscriptions.delete, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}/rotate-secret",
                    post=page(
                        partial(subscriptions.rotate, shown_once=shown_once),
                        "subscriptions:write",
                    ),
                ),
                resource(
                    "/subscriptions/{subscription_id}/recover",
                    post=page(deliveries.recover, "subscriptions:write"),
                ),
                resource("/deliveries", get=page(deliveries.deliveries_page, "subscriptions:read")),
                resource(
                    "/deliveries/retry",
                    post=page(deliveries.retry_matching, "subscriptions:write"),
                ),
                resource(
                    "/deliveries/{delivery_id}",
                    get=page(deliveries.delivery_page, "subscriptions:read"),
                ),
                resource(
                    "/deliveries/{delivery_id}/retry",
                    post=page(deliveries.resend, "subscriptions:write"),
                ),
                resource(
                    "/keys",
                    get=page(partial(keys.keys_page, shown_once=shown_once), "admin"),
                    post=page(partial(keys.create, shown_once=shown_once), "admin"),
                ),
                resource("/keys/{key_id}/revoke", post=page(keys.revoke, "admin")),
                resource("/live", get=page(live.live_page, "jobs:read")),
                resource("/stream", get=page(live.stream, "jobs:read")),
                Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="console-static"),
            ],
        )
    ]
