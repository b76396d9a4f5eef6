"""Ways to reach a reelhook under test, and assertions shared by the API tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.settings import Settings
from tests.servers import run_server

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


@asynccontextmanager
async def served(settings: Settings, sock: socket.socket) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook served by a real uvicorn on ``sock``, and an admin client for it."""
    app = create_app(settings)
    async with (
        run_server(app, sock, on_shutdown=app.state.end_streams) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": ADMIN_KEY}) as http,
    ):
        yield http


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """The response is reelhook's JSON error with ``status`` and ``code``, naming ``field``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    if field is not None:
        assert field in error["details"]["fields"], error
        assert field in error["message"], error
    return error


async def send_without_key(
    http: httpx.AsyncClient, method: str, path: str, **options: Any
) -> httpx.Response:
    """Send a request through ``http`` with its X-API-Key header removed."""
    request = http.build_request(method, path, **options)
    del request.headers["X-API-Key"]
    return await http.send(request)
