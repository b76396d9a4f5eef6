"""What every endpoint needs: the services built by the lifespan, the caller, and input parsing."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from service.app.settings import Settings
from service.core import scopes
from service.core.clock import Clock
from service.core.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from service.core.ids import timestamp_of
from service.core.jsonutil import InvalidJSON, loads
from service.core.tokens import ExpiredToken, InvalidToken, Tokens
from service.delivery.dispatcher import Dispatcher
from service.delivery.eventfeed import EventFeed
from service.delivery.publisher import Publisher
from service.jobs.callback_outcomes import CallbackObserver
from service.jobs.deadlines import DeadlineTimer
from service.jobs.held_requests import HeldRequests
from service.jobs.ingest import Ingest
from service.jobs.mirroring import Mirrors
from service.jobs.submission import ProviderEndpoint, Submitter
from service.ops.metrics import Metrics
from service.ops.ratelimit import RateLimiter
from service.storage import keys
from service.storage.blobs import BlobStore
from service.storage.database import Database

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
    ingest: Ingest
    deadlines: DeadlineTimer
    mirrors: Mirrors
    limiter: RateLimiter
    metrics: Metrics
    feed: EventFeed
    callback_observers: list[CallbackObserver] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return scopes.ADMIN in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict listings to: None (everything) for admins."""
        return None if self.is_admin else self.key_id

    def can_see(self, owner_key_id: str) -> bool:
        """Whether a resource owned by ``owner_key_id`` is visible to this caller (answer 404
        otherwise, so another key's ids are not even confirmed to exist)."""
        return self.is_admin or owner_key_id == self.key_id


def services(request: Request) -> Services:
    return cast(Services, request.state.services)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new API key: ``rh_`` and 256 random bits. Only its :func:`hash_key` digest is stored."""
    return "rh_" + secrets.token_urlsafe(32)


async def authenticate(request: Request, scope: str | None = None) -> Caller:
    """The caller named by ``X-API-Key``.

    401 without a valid key, 429 (with ``Retry-After``) when the key is over its request rate,
    403 naming ``scope`` when the key does not hold it (see :mod:`service.scopes`).
    """
    key = request.headers.get("x-api-key")
    if not key:
        raise Unauthorized("send your API key in the X-API-Key header")
    return await authenticate_digest(request, hash_key(key), scope)


async def authenticate_digest(request: Request, key_hash: str, scope: str | None = None) -> Caller:
    """The caller whose active key has digest ``key_hash`` (the console's session carries only the
    digest): 401 when there is none, 429 over its request rate, 403 without ``scope``."""
    state = services(request)
    # Only digests are stored, so the lookup compares digests, never the secret itself; the
    # final comparison is constant-time all the same.
    found = await keys.find_active(state.db.reader, key_hash)
    if found is None or not hmac.compare_digest(found.key_hash, key_hash):
        raise Unauthorized("the API key is not valid")
    wait = state.limiter.take(found.id)
    if wait > 0:
        state.metrics.rate_limited.inc()
        raise TooManyRequests(
            "this API key is over its request rate; retry after the given delay",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    caller = Caller(found.id, found.scopes)
    if scope is not None and not scopes.grants(caller.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope", details={"missing_scope": scope})
    return caller


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
    found = await keys.get(state.db.reader, key_id)
    if found is None or found.revoked_at is not None:
        raise Unauthorized("the stream token's API key has been revoked")
    caller = Caller(found.id, found.scopes)
    if not scopes.grants(caller.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope", details={"missing_scope": scope})
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


def cursor_param(request: Request, prefix: str) -> str | None:
    """The ``cursor`` query parameter: the id ``next_cursor`` named (``{prefix}_`` and 26 base32
    characters). Anything else is a 422, the same rule for every list, rather than an empty or
    a first page that would look like an answer."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    head, _, _ = raw.partition("_")
    try:
        timestamp_of(raw)
    except ValueError:
        head = ""
    if head != prefix:
        raise ValidationFailed.field("cursor", "is not a cursor this API returned")
    return raw


def is_decimal(text: str) -> bool:
    """A non-negative integer SQLite can hold: ASCII digits only (``str.isdigit`` also accepts
    superscripts), at most 18 of them."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise ValidationFailed.field(name, f"must be one of {', '.join(choices)}")
    return value


_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_TIME_HINT = "an ISO 8601 time such as 2026-11-21T10:00:00Z, or Unix seconds"


def time_param(request: Request, name: str, *, required: bool = False) -> float | None:
    """A point in time from the query string, as epoch seconds (see :func:`parse_time`)."""
    return parse_time(request.query_params.get(name, ""), name, required=required)


def parse_time(text: str, name: str, *, required: bool = False) -> float | None:
    """A point in time as epoch seconds: ISO 8601 (without a zone it is UTC) or Unix seconds.
    422 naming ``name`` when missing (if ``required``) or unreadable; None when empty."""
    raw = text.strip()
    if not raw:
        if required:
            raise ValidationFailed.field(name, f"is required: {_TIME_HINT}")
        return None
    if _UNIX_SECONDS.fullmatch(raw):
        return float(raw)
    # An unencoded "+02:00" in a query string arrives as " 02:00", hence the second spelling.
    head, _, tail = raw.rpartition(" ")
    for spelling in (raw, f"{head}+{tail}" if head else raw):
        try:
            moment = datetime.fromisoformat(spelling)
            break
        except ValueError:
            continue
    else:
        raise ValidationFailed.field(name, f"{raw!r} is not {_TIME_HINT}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        value = moment.timestamp()
    except (OverflowError, OSError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValidationFailed.field(name, f"{raw!r} is out of range")
    return value
