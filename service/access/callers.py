"""The caller of an operation, and finding it from an API key's digest.

Edges read the key (the API's ``X-API-Key`` header, the console's session cookie) and hand its
SHA-256 digest to :meth:`Authenticator.caller`; every operation below them takes the
:class:`Caller` it returns.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

from service.access import scopes
from service.access.scopes import Scope
from service.core.errors import Forbidden, TooManyRequests, Unauthorized
from service.ops.metrics import Metrics
from service.ops.ratelimit import RateLimiter
from service.storage import keys
from service.storage.database import Database


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str
    scopes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict listings to: None (everything) for admins."""
        return None if self.is_admin else self.key_id

    def can_see(self, owner_key_id: str) -> bool:
        """Whether a resource owned by ``owner_key_id`` is visible to this caller (answer 404
        otherwise, so another key's ids are not even confirmed to exist)."""
        return self.is_admin or owner_key_id == self.key_id

    def may(self, scope: str) -> bool:
        """Whether this caller holds ``scope`` (directly, through a broader scope, or admin)."""
        return scopes.grants(self.scopes, scope)


def hash_key(key: str) -> str:
    """The digest under which an API key is stored and looked up (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new API key: ``rh_`` and 256 random bits. Only its :func:`hash_key` digest is stored."""
    return "rh_" + secrets.token_urlsafe(32)


class Authenticator:
    """Turns a key digest into a :class:`Caller`, applying the per-key request rate."""

    def __init__(self, db: Database, limiter: RateLimiter, metrics: Metrics) -> None:
        self._db = db
        self._limiter = limiter
        self._metrics = metrics

    async def caller(self, key_hash: str, scope: str | None = None) -> Caller:
        """The caller whose active key has digest ``key_hash``.

        :class:`Unauthorized` when there is none, :class:`TooManyRequests` (with
        ``Retry-After``) when the key is over its request rate, :class:`Forbidden` naming
        ``scope`` when the key does not hold it (see :mod:`service.access.scopes`).
        """
        # Only digests are stored, so the lookup compares digests, never the secret itself; the
        # final comparison is constant-time all the same.
        found = await keys.find_active(self._db.reader, key_hash)
        if found is None or not hmac.compare_digest(found.key_hash, key_hash):
            raise Unauthorized("the API key is not valid")
        return self._admit(found, scope)

    async def caller_by_id(self, key_id: str, scope: str) -> Caller:
        """The caller a signed stream token names (its signature already checked): as
        :meth:`caller`, and :class:`Unauthorized` once that key has been revoked."""
        found = await keys.get(self._db.reader, key_id)
        if found is None or found.revoked_at is not None:
            raise Unauthorized("the stream token's API key has been revoked")
        return self._admit(found, scope)

    def _admit(self, found: keys.StoredKey, scope: str | None) -> Caller:
        wait = self._limiter.take(found.id)
        if wait > 0:
            self._metrics.rate_limited.inc()
            raise TooManyRequests(
                "this API key is over its request rate; retry after the given delay",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        caller = Caller(found.id, found.scopes)
        if scope is not None and not caller.may(scope):
            raise Forbidden(
                f"this API key lacks the {scope!r} scope", details={"missing_scope": scope}
            )
        return caller
