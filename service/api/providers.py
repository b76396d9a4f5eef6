"""``GET /v1/providers``: each provider's setup, including the account webhook URL to paste into
the provider's dashboard (it carries a secret bound to that account, so only admins see it)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.scopes import Scope
from service.api.context import authenticate
from service.api.operation import Reply, operation
from service.api.schemas import page_of
from service.app.services import services
from service.jobs.catalog import MODELS
from service.providers import ADAPTERS, CALLBACK_ADAPTERS

_PROVIDER = {
    "type": "object",
    "required": ["name", "configured", "simulated", "models", "callbacks", "account_webhook_url"],
    "properties": {
        "name": {"type": "string"},
        "configured": {"type": "boolean", "description": "An API key (or the simulator) is set."},
        "simulated": {"type": "boolean"},
        "models": {"type": "array", "items": {"type": "string"}},
        "callbacks": {
            "enum": ["per_job", "held_request"],
            "description": "How results come back: a callback URL reelhook sends with each "
            "job, or the answer to a request reelhook holds open (Segmind).",
        },
        "account_webhook_url": {
            "type": ["string", "null"],
            "description": "Where the provider account may also post results (set it on the "
            "provider's API key); null when the provider has no account webhook or no key.",
        },
    },
}


def account_webhook_url(request: Request, provider: str) -> str | None:
    """The account webhook URL of ``provider``'s configured account, if it has one."""
    state = services(request)
    adapter = CALLBACK_ADAPTERS.get(provider)
    endpoint = state.endpoints.get(provider)
    if adapter is None or not adapter.account_webhook or endpoint is None:
        return None
    token = state.tokens.account_webhook(provider, endpoint.api_key)
    return f"{state.settings.public_url}/v1/callbacks/{provider}/account/{token}"


@operation(
    summary="List the providers and their webhook setup",
    tag="providers",
    replies={200: Reply("Every provider reelhook knows.", page_of(_PROVIDER))},
)
async def list_providers(request: Request) -> Response:
    """Each provider: whether it is configured or simulated, its models, how its results come
    back, and the account webhook URL to paste into the provider's dashboard (Trinetra: "set a
    webhook_url on your API key"). The URL carries a secret bound to the configured API key: a
    new key gets a new URL. Needs an admin key."""
    await authenticate(request, Scope.ADMIN)
    endpoints = services(request).endpoints
    data: list[dict[str, Any]] = []
    for name, adapter in ADAPTERS.items():
        endpoint = endpoints.get(name)
        data.append(
            {
                "name": name,
                "configured": endpoint is not None,
                "simulated": endpoint is not None and endpoint.simulated,
                "models": [spec.id for spec in MODELS.values() if spec.provider == name],
                "callbacks": "held_request" if adapter.holds_request else "per_job",
                "account_webhook_url": account_webhook_url(request, name),
            }
        )
    return JSONResponse({"data": data, "next_cursor": None}, headers={"Cache-Control": "no-store"})
