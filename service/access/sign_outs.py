"""Console sessions ended by signing out, refused everywhere until they would have expired.

A console session is a signed cookie (``service.console.session``): valid by its signature and
age alone, so signing out must also be recorded on the server, or a copied cookie (and the CSRF
tokens made for it) would keep working for the rest of its lifetime. The record is in the store,
so it survives a restart and holds on every node sharing a PostgreSQL database. It is kept by
the SHA-256 of the session's nonce: a leaked table names no session.
"""

from __future__ import annotations

import hashlib

from service.core.clock import Clock
from service.storage import sign_outs
from service.storage.database import Database


class SignOuts:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def revoke(self, nonce: str, *, lifetime: float) -> None:
        """End the session with ``nonce``; remembered for ``lifetime`` seconds (the session's
        own, after which its cookie is refused by age anyway)."""
        now = self._clock()
        async with self._db.transaction() as conn:
            await sign_outs.add(conn, _digest(nonce), expires_at=now + lifetime, now=now)

    async def revoked(self, nonce: str) -> bool:
        """Whether the session with ``nonce`` was signed out."""
        return await sign_outs.contains(self._db.reader, _digest(nonce))


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()
