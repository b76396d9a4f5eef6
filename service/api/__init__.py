"""The HTTP API: the route table."""

from __future__ import annotations

from starlette.routing import BaseRoute

from service.api import (
    callbacks,
    deliveries,
    events,
    files,
    jobs,
    keys,
    meta,
    openapi,
    operations,
    providers,
    stream,
    subscriptions,
)
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
        resource("/readyz", get=operations.readyz),
        resource("/metrics", get=operations.metrics),
        resource("/v1/keys", get=keys.list_keys, post=keys.create_key),
        resource("/v1/keys/{key_id}", get=keys.get_key, delete=keys.revoke_key),
        resource("/openapi.json", get=openapi.openapi_json),
        resource("/docs", get=openapi.docs),
        resource("/v1/models", get=meta.list_models),
        resource("/v1/jobs", get=jobs.list_jobs, post=jobs.create_job),
        resource("/v1/jobs/{job_id}", get=jobs.get_job),
        resource("/v1/jobs/{job_id}/cancel", post=jobs.cancel_job),
        resource(
            "/v1/subscriptions",
            get=subscriptions.list_subscriptions,
            post=subscriptions.create_subscription,
        ),
        resource("/v1/subscriptions/preview", post=subscriptions.preview_subscription),
        resource(
            "/v1/subscriptions/{subscription_id}",
            get=subscriptions.get_subscription,
            patch=subscriptions.update_subscription,
            delete=subscriptions.delete_subscription,
        ),
        resource("/v1/subscriptions/{subscription_id}/test", post=subscriptions.test_subscription),
        resource(
            "/v1/subscriptions/{subscription_id}/rotate-secret", post=subscriptions.rotate_secret
        ),
        resource(
            "/v1/subscriptions/{subscription_id}/recover",
            post=subscriptions.recover_subscription,
        ),
        resource("/v1/deliveries", get=deliveries.list_deliveries),
        resource("/v1/deliveries/{delivery_id}", get=deliveries.get_delivery),
        resource("/v1/deliveries/{delivery_id}/retry", post=deliveries.retry_delivery),
        resource("/v1/events", get=events.list_events),
        resource("/v1/events/stream", get=stream.stream_events),
        resource("/v1/events/stream-token", post=stream.create_stream_token),
        resource("/v1/events/sample", get=events.sample_events),
        resource("/v1/callbacks/{provider}/{token}", post=callbacks.receive_callback),
        resource(
            "/v1/callbacks/{provider}/account/{token}", post=callbacks.receive_account_callback
        ),
        resource("/v1/providers", get=providers.list_providers),
        resource("/v1/files/{token}", get=files.get_file),
    ]
