"""``POST /v1/callbacks/{provider}/{token}`` and ``POST /v1/callbacks/{provider}/account/{token}``:
inbound provider webhooks, verified and applied by :class:`service.jobs.callbacks.Callbacks`."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.operation import Param, Reply, operation
from service.app.services import Services, services
from service.jobs.callbacks import account_adapter
from service.jobs.lifecycle import Outcome
from service.providers import CALLBACK_ADAPTERS


def _stored(description: str) -> Reply:
    """The 200 answer of both callback routes: the callback was stored, and how it ended."""
    return Reply(
        description,
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
    replies={200: _stored("Verified and stored (duplicates and late callbacks too, for audit).")},
    errors=(400, 401, 404, 413),
    authenticated=False,
    # A provider that decorates the URL it was given must not have its webhook refused.
    strict_query=False,
)
async def receive_callback(request: Request) -> Response:
    """Where providers deliver job updates; reelhook puts this URL in each submit. The token in
    the path is the credential: it is verified, then the provider's signature, then that the
    body names the stored job, before anything is stored."""
    body = await answer_callback(
        services(request),
        request.path_params["provider"],
        request.path_params["token"],
        request.headers,
        request.stream(),
    )
    return Response(body, media_type="application/json")


async def answer_callback(
    state: Services,
    provider: str,
    token: str,
    headers: Mapping[str, str],
    chunks: AsyncIterable[bytes],
) -> bytes:
    """The body of the callback route's 200 answer (``application/json``), for the routed
    handler above and for the lean ASGI path in front of the framework
    (:mod:`service.api.fastpath`); raises the :class:`ReelhookError` to answer with when the
    callback is rejected."""
    job, outcome = await state.callbacks.receive(
        provider, token, headers, chunks, headers.get("content-length")
    )
    # The same bytes JSONResponse renders for this ASCII-only object, encoded by orjson instead
    # of a stdlib encoder built per response (docs/performance.md §4).
    return orjson.dumps({"received": True, "job_id": job.id, "outcome": outcome.value})


@operation(
    summary="Receive a provider account webhook",
    tag="providers",
    params=(
        Param(
            "provider",
            "path",
            {"enum": [name for name in CALLBACK_ADAPTERS if account_adapter(name) is not None]},
            "The provider calling back.",
        ),
    ),
    body={"type": "object", "description": "The provider's terminal job document."},
    replies={
        200: _stored(
            "Verified, matched to its job and stored (duplicates and late ones too, for audit)."
        ),
        202: Reply(
            "Verified but naming no job reelhook knows yet: kept, and applied when the "
            "provider's job id is recorded.",
            {
                "type": "object",
                "required": ["received", "job_id", "outcome"],
                "properties": {
                    "received": {"const": True},
                    "job_id": {"type": "null"},
                    "outcome": {"const": "unmatched"},
                },
            },
        ),
    },
    errors=(400, 401, 404, 413),
    authenticated=False,
    strict_query=False,
)
async def receive_account_callback(request: Request) -> Response:
    """The webhook URL to set on a provider API key (Trinetra: "set a webhook_url on your API
    key"); see `GET /v1/providers` for it. The token in the path is bound to that account. The
    document is matched to its job by `external_task_id` (reelhook's job id, which it sends)
    and the provider's job id, with the same checks, audit and dedupe as per-job callbacks: a
    result that arrives on both routes moves the job once."""
    job, outcome = await services(request).callbacks.receive_account(
        request.path_params["provider"],
        request.path_params["token"],
        request.headers,
        request.stream(),
        request.headers.get("content-length"),
    )
    if job is None or outcome is None:
        return JSONResponse(
            {"received": True, "job_id": None, "outcome": "unmatched"}, status_code=202
        )
    return JSONResponse({"received": True, "job_id": job.id, "outcome": outcome.value})
