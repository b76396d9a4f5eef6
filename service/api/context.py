"""What every endpoint needs: the services built by the lifespan, the caller, and input parsing."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from service.blobs import BlobStore
from service.clock import Clock
from service.delivery.dispatcher import Dispatcher
from service.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized, ValidationFailed
from service.eventfeed import EventFeed
from service.events import Publisher
from service.held_requests import HeldRequests
from service.jsonutil import InvalidJSON, loads
from service.settings import Settings
from service.storage import keys
from service.storage.database import Database
from service.submission import ProviderEndpoint, Submitter
from service.tokens import Tokens

MAX_REQUEST_BYTES = 256 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class Services:
    """Everything the lifespan opened, shared by the endpoints (``request.state.services``)."""

    settings: Settings
    db: Database
    tokens: Tokens
    publisher: Publisher
    clock: Clock
    blobs: BlobStore
    endpoints: dict[str, ProviderEndpoint]
    submitter: Submitter
    dispatcher: Dispatcher
    held: HeldRequests
    feed: EventFeed


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict listings to: None (everything) for admins."""
        return None if self.is_admin else self.key_id


def services(request: Request) -> Services:
    return cast(Services, request.state.services)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def authenticate(request: Request, scope: str | None = None) -> Caller:
    """The caller named by ``X-API-Key``; 401 without a valid key, 403 without ``scope``."""
    key = request.headers.get("x-api-key")
    if not key:
        raise Unauthorized("send your API key in the X-API-Key header")
    # Only digests are stored, so the lookup compares digests, never the secret itself.
    found = await keys.find_active(services(request).db.reader, hash_key(key))
    if found is None:
        raise Unauthorized("the API key is not valid")
    caller = Caller(found[0], tuple(found[1]))
    if scope is not None and not caller.is_admin and scope not in caller.scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    return caller


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
    declared = request.headers.get("content-length")
    if declared is not None and is_decimal(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"the body must be at most {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body must be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def limit_param(request: Request, default: int = 50, maximum: int = 200) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not is_decimal(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationFailed.field("limit", f"must be an integer from 1 to {maximum}")
    return int(raw)


def is_decimal(text: str) -> bool:
    """A non-negative integer SQLite can hold: ASCII digits only (``str.isdigit`` also accepts
    superscripts), at most 18 of them."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise ValidationFailed.field(name, f"must be one of {', '.join(choices)}")
    return value
