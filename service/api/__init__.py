"""The HTTP API: the route table."""

from __future__ import annotations

from starlette.routing import BaseRoute

from service.api import callbacks, events, files, jobs, meta, openapi, stream, subscriptions
from service.api.context import Endpoint
from service.api.operation import Resource


def resource(path: str, **handlers: Endpoint) -> Resource:
    """One route for ``path`` with a handler per method, so a 405 lists every allowed method.

    Each handler should be declared with ``@operation`` (service.api.operation), which is how it
    appears in ``/openapi.json``; the test suite fails for one that is not.
    """
    return Resource(path, handlers)


def routes() -> list[BaseRoute]:
    return [
        resource("/healthz", get=meta.healthz),
        resource("/openapi.json", get=openapi.openapi_json),
        resource("/docs", get=openapi.docs),
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
