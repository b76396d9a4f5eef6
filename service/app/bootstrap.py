"""First-start set-up: the itsdangerous secret keys and the first admin API key."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import anyio

from service.access.callers import generate_api_key, hash_key
from service.access.scopes import Scope
from service.app.settings import Settings
from service.core.clock import Clock
from service.core.ids import new_id
from service.storage import keys
from service.storage.database import Database

log = logging.getLogger(__name__)


async def secret_keys(settings: Settings) -> list[str]:
    """The configured keys (oldest first), or the ones generated into the data dir."""
    if settings.secret_keys:
        return list(settings.secret_keys)
    return await anyio.to_thread.run_sync(_load_or_create, settings.data_dir / "secret_keys")


def _load_or_create(path: Path) -> list[str]:
    if path.exists():
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if found:
            return found
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(key + "\n")
    return [key]


async def admin_key(db: Database, settings: Settings, clock: Clock) -> str | None:
    """Make sure an admin key exists; return it only when it was just generated (to print once).

    ``REELHOOK_ADMIN_KEY`` is registered (by digest) if it is not yet; without it, a key is
    generated on the first start, when the database holds no admin key.
    """
    async with db.transaction() as conn:
        await keys.lock_bootstrap(conn)
        if settings.admin_key:
            digest = hash_key(settings.admin_key)
            known = await keys.find_by_hash(conn, digest)
            if known is not None and known.revoked_at is not None:
                # Revoked through the API: the environment must not bring it back to life.
                log.warning(
                    "REELHOOK_ADMIN_KEY names revoked key %s; it stays revoked "
                    "(set a new value to register a new admin key)",
                    known.id,
                )
            elif known is None:
                await keys.insert(
                    conn,
                    key_id=new_id("key"),
                    name="admin (REELHOOK_ADMIN_KEY)",
                    key_hash=digest,
                    scopes=[Scope.ADMIN],
                    created_at=clock(),
                )
            return None
        if await keys.count_holding(conn, Scope.ADMIN) > 0:
            return None
        generated = generate_api_key()
        await keys.insert(
            conn,
            key_id=new_id("key"),
            name="admin (generated at first start)",
            key_hash=hash_key(generated),
            scopes=[Scope.ADMIN],
            created_at=clock(),
        )
        return generated
