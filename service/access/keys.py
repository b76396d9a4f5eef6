"""Managing API keys (an admin's job): create one (its secret shown once), list, read, revoke."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from service.access.callers import Caller, generate_api_key, hash_key
from service.access.scopes import SCOPES, Scope
from service.core.body import Body, Choices, Field, Text
from service.core.clock import Clock, isoformat
from service.core.errors import Conflict, NotFound
from service.core.ids import new_id
from service.core.paging import Page, page_of
from service.ops.ratelimit import Limiter
from service.storage import keys
from service.storage.database import Database
from service.storage.keys import StoredKey

log = logging.getLogger(__name__)

MAX_NAME = 100

NEW_KEY = Body(
    (
        Field(
            "name",
            Text(
                f"is required: a string of 1 to {MAX_NAME} characters",
                max_length=MAX_NAME,
                min_length=1,
                strip=True,
            ),
            "What the key is for; surrounding whitespace is trimmed, and it must not be blank.",
            required=True,
        ),
        Field(
            "scopes",
            Choices(
                tuple(SCOPES),
                f"is required: a non-empty list from {', '.join(SCOPES)}",
                noun="scope",
                min_items=1,
            ),
            "What the key may do: "
            + "; ".join(f"`{name}`: {text}" for name, text in SCOPES.items())
            + ".",
            required=True,
        ),
    )
)


def key_document(key: StoredKey) -> dict[str, Any]:
    """A key as the API shows it: never its secret, nor its digest."""
    return {
        "id": key.id,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": isoformat(key.created_at),
        "revoked_at": isoformat(key.revoked_at),
    }


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: StoredKey
    secret: str
    """The key itself: the only time it leaves reelhook (only its digest is stored)."""


class ApiKeys:
    """API key management. The caller's admin scope is checked by the edge that authenticates."""

    def __init__(self, db: Database, clock: Clock, limiter: Limiter) -> None:
        self._db = db
        self._clock = clock
        self._limiter = limiter

    async def create(self, caller: Caller, body: Any) -> CreatedKey:
        """Validate ``body`` (see :data:`NEW_KEY`) and store a new key."""
        fields = NEW_KEY.validate(body)
        granted = list(fields["scopes"])
        secret = generate_api_key()
        key_id = new_id("key")
        async with self._db.transaction() as conn:
            await keys.insert(
                conn,
                key_id=key_id,
                name=fields["name"],
                key_hash=hash_key(secret),
                scopes=granted,
                created_at=self._clock(),
            )
            created = await keys.get(conn, key_id)
        assert created is not None  # read back inside the transaction that inserted it
        log.info(
            "API key %s created by %s with scopes %s", key_id, caller.key_id, ",".join(granted)
        )
        return CreatedKey(created, secret)

    async def page(self, *, cursor: str | None, limit: int) -> Page[StoredKey]:
        """Keys, revoked ones included, oldest first."""
        rows = await keys.list_page(self._db.reader, after_id=cursor, limit=limit + 1)
        return page_of(rows, limit, lambda key: key.id)

    async def get(self, key_id: str) -> StoredKey:
        found = await keys.get(self._db.reader, key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}")
        return found

    async def revoke(self, caller: Caller, key_id: str) -> None:
        """Revoke the key (it stops authenticating at once); revoking it again changes nothing.
        :class:`Conflict` for the last active admin key."""
        async with self._db.transaction() as conn:
            target = await keys.get(conn, key_id)
            if target is None:
                raise NotFound(f"no API key {key_id!r}")
            last_admin = (
                Scope.ADMIN in target.scopes
                and await keys.count_holding(conn, Scope.ADMIN, excluding=target.id) == 0
            )
            if last_admin:
                raise Conflict("this is the last active admin key; create another admin key first")
            await keys.revoke(conn, target.id, self._clock())
        self._limiter.forget(target.id)
        if target.revoked_at is None:
            log.info("API key %s revoked by %s", target.id, caller.key_id)
