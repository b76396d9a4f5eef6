"""What every API endpoint needs: the services built by the lifespan, the caller named by the
``X-API-Key`` header, and the JSON body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.access.callers import Caller, hash_key
from service.app.services import services
from service.core.body import read_capped
from service.core.errors import BadRequest, Unauthorized
from service.core.jsonutil import InvalidJSON, loads
from service.core.tokens import ExpiredToken, InvalidToken

MAX_REQUEST_BYTES = 256 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


async def authenticate(request: Request, scope: str | None = None) -> Caller:
    """The caller named by ``X-API-Key``.

    401 without a valid key, 429 (with ``Retry-After``) when the key is over its request rate,
    403 naming ``scope`` when the key does not hold it (see :mod:`service.access.scopes`).
    """
    key = request.headers.get("x-api-key")
    if not key:
        raise Unauthorized("send your API key in the X-API-Key header")
    return await services(request).access.caller(hash_key(key), scope)


async def authenticate_stream_token(request: Request, token: str, scope: str) -> Caller:
    """The caller a stream token (``POST /v1/events/stream-token``) was minted for: 401 when the
    token is not genuine, has expired, or its key has been revoked since; 403 without ``scope``.
    Only the event stream accepts these tokens, so a leaked one can read events and nothing else,
    and only until it expires."""
    state = services(request)
    try:
        key_id = state.tokens.verify_stream(token, state.settings.stream_token_ttl)
    except ExpiredToken:
        raise Unauthorized("the stream token has expired; ask for a new one") from None
    except InvalidToken:
        raise Unauthorized("the stream token is not valid") from None
    return await state.access.caller_by_id(key_id, scope)


async def read_json(request: Request, limit: int = MAX_REQUEST_BYTES) -> Any:
    """The JSON body, read with a size cap: 413 when larger, 400 when not JSON."""
    body = await read_body(request, limit)
    if not body:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        return loads(body)
    except InvalidJSON as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 otherwise)."""
    return await read_capped(request.stream(), request.headers.get("content-length"), limit)
