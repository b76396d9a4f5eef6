"""API keys under test: member keys registered before start-up, and keys made through the API."""

from __future__ import annotations

import time

import httpx

from service.access.callers import hash_key
from service.app.settings import Settings
from service.core.ids import new_id
from service.storage import keys
from service.storage.database import Database

KEY_B = "rh_test_key_b_0123456789abcdef0123"


KEY_C = "rh_test_key_c_0123456789abcdef0123"


async def add_member_keys(settings: Settings, *raw_keys: str) -> None:
    """Register non-admin API keys straight in the database, before the service starts."""
    async with Database.open(settings.database_url) as db, db.transaction() as conn:
        for number, raw_key in enumerate(raw_keys):
            await keys.insert(
                conn,
                key_id=new_id("key"),
                name=f"member {number}",
                key_hash=hash_key(raw_key),
                scopes=MEMBER_SCOPES,
                created_at=time.time(),
            )


def as_key(raw_key: str) -> dict[str, str]:
    return {"X-API-Key": raw_key}


async def new_key(api: httpx.AsyncClient, *scopes: str) -> str:
    created = await api.post("/v1/keys", json={"name": "console test", "scopes": list(scopes)})
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


MEMBER_SCOPES = ["jobs:write", "jobs:read", "subscriptions:write", "subscriptions:read"]
