"""In-process access to a reelhook app for fast API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.settings import Settings

ADMIN_KEY = "rh_test_admin_key_0123456789abcdef"


@asynccontextmanager
async def api_client(settings: Settings, **app_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``create_app(settings)`` with its lifespan running, sending the admin key."""
    app = create_app(settings, **app_options)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://reelhook.test",
            headers={"X-API-Key": ADMIN_KEY},
        ) as http,
    ):
        yield http
