"""``/v1/keys``: API keys, managed by admin keys. A key's secret is shown once, at creation."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.access.keys import NEW_KEY, key_document
from service.access.scopes import Scope
from service.api.context import authenticate, read_json
from service.api.operation import Reply, id_cursor, limit_query, operation
from service.api.schemas import page_of, ref
from service.app.services import services
from service.core import params


@operation(
    summary="Create an API key",
    tag="keys",
    body=NEW_KEY.schema(),
    replies={
        201: Reply(
            "Created; the `key` is shown only in this answer.",
            ref("CreatedApiKey"),
            headers={"Location": "The key's URL."},
        )
    },
)
async def create_key(request: Request) -> Response:
    """A new API key with the given scopes. Only its digest is stored: the `key` itself is in
    this answer and nowhere else. Needs an admin key."""
    caller = await authenticate(request, Scope.ADMIN)
    created = await services(request).keys.create(caller, await read_json(request))
    # The only time the secret leaves reelhook: only its digest is stored.
    return JSONResponse(
        {**key_document(created.key), "key": created.secret},
        status_code=201,
        headers={"Location": f"/v1/keys/{created.key.id}", "Cache-Control": "no-store"},
    )


@operation(
    summary="List API keys",
    tag="keys",
    params=(id_cursor("key"), limit_query(50, 200)),
    replies={200: Reply("API keys, revoked ones included, oldest first.", page_of(ref("ApiKey")))},
    errors=(422,),
)
async def list_keys(request: Request) -> Response:
    """Every API key, without its secret. Needs an admin key."""
    await authenticate(request, Scope.ADMIN)
    query = request.query_params
    page = await services(request).keys.page(
        cursor=params.cursor(query, "key"), limit=params.limit(query)
    )
    return JSONResponse(
        {"data": [key_document(k) for k in page.items], "next_cursor": page.next_cursor}
    )


@operation(
    summary="Get an API key",
    tag="keys",
    replies={200: Reply("The key, without its secret.", ref("ApiKey"))},
    errors=(404,),
)
async def get_key(request: Request) -> Response:
    """One API key, revoked or not; its secret is never shown again. Needs an admin key."""
    await authenticate(request, Scope.ADMIN)
    return JSONResponse(
        key_document(await services(request).keys.get(request.path_params["key_id"]))
    )


@operation(
    summary="Revoke an API key",
    tag="keys",
    replies={204: Reply("Revoked (or already revoked).")},
    errors=(404, 409),
)
async def revoke_key(request: Request) -> Response:
    """Revoke a key: it stops authenticating at once. Its jobs and subscriptions stay (an admin
    still sees them). The last active admin key cannot be revoked."""
    caller = await authenticate(request, Scope.ADMIN)
    await services(request).keys.revoke(caller, request.path_params["key_id"])
    return Response(status_code=204)
