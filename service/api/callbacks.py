"""``POST /v1/callbacks/{provider}/{token}``: inbound provider webhooks, verified and applied by
:class:`service.jobs.callbacks.Callbacks`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.operation import Param, Reply, operation
from service.app.services import services
from service.jobs.lifecycle import Outcome
from service.providers import CALLBACK_ADAPTERS


@operation(
    summary="Receive a provider webhook",
    tag="providers",
    params=(
        Param(
            "provider",
            "path",
            {"enum": list(CALLBACK_ADAPTERS)},
            "The provider calling back.",
        ),
    ),
    body={"type": "object", "description": "The provider's own callback body."},
    replies={
        200: Reply(
            "Verified and stored (duplicates and late callbacks too, for audit).",
            {
                "type": "object",
                "required": ["received", "job_id", "outcome"],
                "properties": {
                    "received": {"const": True},
                    "job_id": {"type": "string"},
                    "outcome": {"enum": [outcome.value for outcome in Outcome]},
                },
            },
        )
    },
    errors=(400, 401, 404, 413),
    authenticated=False,
    # A provider that decorates the URL it was given must not have its webhook refused.
    strict_query=False,
)
async def receive_callback(request: Request) -> Response:
    """Where providers deliver job updates; reelhook puts this URL in each submit. The token in
    the path is the credential: it is verified, then the provider's signature, then that the
    body names the stored job, before anything is stored."""
    job, outcome = await services(request).callbacks.receive(
        request.path_params["provider"],
        request.path_params["token"],
        request.headers,
        request.stream(),
        request.headers.get("content-length"),
    )
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})
