"""The web console at ``/console``: server-rendered pages over the same functions as the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.console import deliveries, jobs, live, signin, subscriptions
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
                resource("/jobs", get=page(jobs.jobs_page, "jobs:read")),
                resource("/jobs/{job_id}", get=page(jobs.job_page_view, "jobs:read")),
                resource(
                    "/subscriptions",
                    get=page(subscriptions.subscriptions_page, "subscriptions:read"),
                    post=page(subscriptions.create, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}",
                    get=page(subscriptions.subscription_page, "subscriptions:read"),
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
                    post=page(subscriptions.rotate, "subscriptions:write"),
                ),
                resource(
                    "/subscriptions/{subscription_id}/recover",
                    post=page(deliveries.recover, "subscriptions:write"),
                ),
                resource("/deliveries", get=page(deliveries.deliveries_page, "subscriptions:read")),
                resource(
                    "/deliveries/{delivery_id}",
                    get=page(deliveries.delivery_page, "subscriptions:read"),
                ),
                resource(
                    "/deliveries/{delivery_id}/retry",
                    post=page(deliveries.resend, "subscriptions:write"),
                ),
                resource("/live", get=page(live.live_page, "jobs:read")),
                resource("/stream", get=page(live.stream, "jobs:read")),
                Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="console-static"),
            ],
        )
    ]
