"""The HTTP API: the route table."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from service.api import callbacks, events, files, jobs, meta, subscriptions


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", meta.healthz, methods=["GET"]),
        Route("/v1/models", meta.list_models, methods=["GET"]),
        Route("/v1/jobs", jobs.create_job, methods=["POST"]),
        Route("/v1/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", jobs.get_job, methods=["GET"]),
        Route("/v1/subscriptions", subscriptions.create_subscription, methods=["POST"]),
        Route("/v1/subscriptions", subscriptions.list_subscriptions, methods=["GET"]),
        Route(
            "/v1/subscriptions/{subscription_id}", subscriptions.get_subscription, methods=["GET"]
        ),
        Route(
            "/v1/subscriptions/{subscription_id}",
            subscriptions.update_subscription,
            methods=["PATCH"],
        ),
        Route(
            "/v1/subscriptions/{subscription_id}",
            subscriptions.delete_subscription,
            methods=["DELETE"],
        ),
        Route(
            "/v1/subscriptions/{subscription_id}/test",
            subscriptions.test_subscription,
            methods=["POST"],
        ),
        Route("/v1/events", events.list_events, methods=["GET"]),
        Route("/v1/callbacks/{provider}/{token}", callbacks.receive_callback, methods=["POST"]),
        Route("/v1/files/{token}", files.get_file, methods=["GET", "HEAD"]),
    ]
