"""The HTTP API: the route table."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api import callbacks, events, files, jobs, meta, stream, subscriptions
from service.api.context import Endpoint


def resource(path: str, **handlers: Endpoint) -> Route:
    """One route for ``path`` with a handler per method, so a 405 lists every allowed method."""

    if "get" in handlers:
        # Starlette answers HEAD wherever GET is allowed.
        handlers.setdefault("head", handlers["get"])

    async def dispatch(request: Request) -> Response:
        return await handlers[request.method.lower()](request)

    methods = [method.upper() for method in handlers]
    return Route(path, dispatch, methods=methods)


def routes() -> list[BaseRoute]:
    return [
        resource("/healthz", get=meta.healthz),
        resource("/v1/models", get=meta.list_models),
        resource("/v1/jobs", get=jobs.list_jobs, post=jobs.create_job),
        resource("/v1/jobs/{job_id}", get=jobs.get_job),
        resource(
            "/v1/subscriptions",
            get=subscriptions.list_subscriptions,
            post=subscriptions.create_subscription,
        ),
        resource(
            "/v1/subscriptions/{subscription_id}",
            get=subscriptions.get_subscription,
            patch=subscriptions.update_subscription,
            delete=subscriptions.delete_subscription,
        ),
        resource("/v1/subscriptions/{subscription_id}/test", post=subscriptions.test_subscription),
        resource("/v1/events", get=events.list_events),
        resource("/v1/events/stream", get=stream.stream_events),
        resource("/v1/events/sample", get=events.sample_events),
        resource("/v1/callbacks/{provider}/{token}", post=callbacks.receive_callback),
        resource("/v1/files/{token}", get=files.get_file),
    ]
