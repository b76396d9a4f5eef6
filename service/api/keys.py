"""``/v1/keys``: API keys, managed by admin keys. A key's secret is shown once, at creation."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.context import (
    authenticate,
    cursor_param,
    generate_api_key,
    hash_key,
    limit_param,
    read_json,
    services,
)
from service.api.operation import Reply, cursor_query, limit_query, operation
from service.api.schemas import page_of, ref
from service.core import scopes
from service.core.clock import isoformat
from service.core.errors import Conflict, NotFound, ValidationFailed
from service.core.ids import new_id
from service.storage import keys
from service.storage.keys import StoredKey

log = logging.getLogger(__name__)

_FIELDS = {"name", "scopes"}
_MAX_NAME = 100
_CREATE_SCHEMA = {
    "type": "object",
    "required": ["name", "scopes"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_NAME,
            "description": "What the key is for; surrounding whitespace is trimmed, and it must "
            "not be blank.",
        },
        "scopes": {
            "type": "array",
            "minItems": 1,
            "items": {"enum": list(scopes.SCOPES)},
            "description": "What the key may do: "
            + "; ".join(f"`{name}`: {text}" for name, text in scopes.SCOPES.items())
            + ".",
        },
    },
}


def _public(key: StoredKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": isoformat(key.created_at),
        "revoked_at": isoformat(key.revoked_at),
    }


def _validated(body: Any) -> tuple[str, list[str]]:
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    unknown_fields = sorted(set(body) - _FIELDS)
    if unknown_fields:
        raise ValidationFailed.fields({name: "unknown field" for name in unknown_fields})
    name = body.get("name")
    if not isinstance(name, str) or len(name) > _MAX_NAME or not name.strip():
        raise ValidationFailed.field(
            "name", f"is required: a string of 1 to {_MAX_NAME} characters"
        )
    requested = body.get("scopes")
    if (
        not isinstance(requested, list)
        or not requested
        or not all(isinstance(s, str) for s in requested)
    ):
        raise ValidationFailed.field(
            "scopes", f"is required: a non-empty list from {', '.join(scopes.SCOPES)}"
        )
    unknown_scopes = scopes.unknown(requested)
    if unknown_scopes:
        raise ValidationFailed.field(
            "scopes",
            f"unknown scope {unknown_scopes[0]!r} (accepted: {', '.join(scopes.SCOPES)})",
        )
    return name.strip(), list(dict.fromkeys(requested))


@operation(
    summary="Create an API key",
    tag="keys",
    body=_CREATE_SCHEMA,
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
    caller = await authenticate(request, scopes.ADMIN)
    name, granted = _validated(await read_json(request))
    state = services(request)
    secret = generate_api_key()
    key_id = new_id("key")
    async with state.db.transaction() as conn:
        await keys.insert(
            conn,
            key_id=key_id,
            name=name,
            key_hash=hash_key(secret),
            scopes=granted,
            created_at=state.clock(),
        )
        created = await keys.get(conn, key_id)
    assert created is not None
    log.info("API key %s created by %s with scopes %s", key_id, caller.key_id, ",".join(granted))
    # The only time the secret leaves reelhook: only its digest is stored.
    return JSONResponse(
        {**_public(created), "key": secret},
        status_code=201,
        headers={"Location": f"/v1/keys/{key_id}", "Cache-Control": "no-store"},
    )


@operation(
    summary="List API keys",
    tag="keys",
    params=(cursor_query("The `next_cursor` of the previous page."), limit_query(50, 200)),
    replies={200: Reply("API keys, revoked ones included, oldest first.", page_of(ref("ApiKey")))},
    errors=(422,),
)
async def list_keys(request: Request) -> Response:
    """Every API key, without its secret. Needs an admin key."""
    await authenticate(request, scopes.ADMIN)
    limit = limit_param(request)
    page = await keys.list_page(
        services(request).db.reader,
        after_id=cursor_param(request, "key"),
        limit=limit + 1,
    )
    more = len(page) > limit
    page = page[:limit]
    return JSONResponse(
        {"data": [_public(k) for k in page], "next_cursor": page[-1].id if more else None}
    )


async def _found(request: Request) -> StoredKey:
    key_id = request.path_params["key_id"]
    found = await keys.get(services(request).db.reader, key_id)
    if found is None:
        raise NotFound(f"no API key {key_id!r}")
    return found


@operation(
    summary="Get an API key",
    tag="keys",
    replies={200: Reply("The key, without its secret.", ref("ApiKey"))},
    errors=(404,),
)
async def get_key(request: Request) -> Response:
    """One API key, revoked or not; its secret is never shown again. Needs an admin key."""
    await authenticate(request, scopes.ADMIN)
    return JSONResponse(_public(await _found(request)))


@operation(
    summary="Revoke an API key",
    tag="keys",
    replies={204: Reply("Revoked (or already revoked).")},
    errors=(404, 409),
)
async def revoke_key(request: Request) -> Response:
    """Revoke a key: it stops authenticating at once. Its jobs and subscriptions stay (an admin
    still sees them). The last active admin key cannot be revoked."""
    caller = await authenticate(request, scopes.ADMIN)
    target = await _found(request)
    state = services(request)
    async with state.db.transaction() as conn:
        if target.is_admin and await keys.count_admins(conn, excluding=target.id) == 0:
            raise Conflict("this is the last active admin key; create another admin key first")
        await keys.revoke(conn, target.id, state.clock())
    state.limiter.forget(target.id)
    if target.revoked_at is None:
        log.info("API key %s revoked by %s", target.id, caller.key_id)
    return Response(status_code=204)
