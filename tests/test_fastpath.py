"""The lean callback path answers exactly as the routed handler does.

Requests sent with a root path go through the framework's router to the routed handler (the lean
path leaves them alone); the same requests without one are answered by the lean path. Every answer
(status, body, content type) must be the same, and a callback the route would not match must
still reach the framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.api import fastpath
from service.app.factory import create_app
from service.core.tokens import Tokens
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.anyio

SECRET_KEY = "test-secret-key-0123456789"  # REELHOOK_SECRET_KEYS in settings_factory
TOKENS = Tokens([SECRET_KEY])


@asynccontextmanager
async def two_ways(
    settings_factory: SettingsFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(client answered by the lean path, client answered by the routed handler), one app."""
    app = create_app(settings_factory(MAX_CALLBACK_BYTES="1024"))
    async with LifespanManager(app) as manager:
        lean = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://reelhook.test"
        )
        routed = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app, root_path="/mounted"),
            base_url="http://reelhook.test",
        )
        async with lean, routed:
            yield lean, routed


CASES = {
    "unknown provider": ("/v1/callbacks/nobody/abc", b"{}", {}),
    "held-request provider": ("/v1/callbacks/segmind/abc", b"{}", {}),
    "bad token": ("/v1/callbacks/trinetra/not-a-token", b"{}", {}),
    "token for another provider": (
        f"/v1/callbacks/trinetra/{TOKENS.callback('job_x', 'apiframe')}",
        b"{}",
        {},
    ),
    "too large": (
        f"/v1/callbacks/trinetra/{TOKENS.callback('job_x', 'trinetra')}",
        b"x" * 2048,
        {},
    ),
    "bad body": (f"/v1/callbacks/trinetra/{TOKENS.callback('job_x', 'trinetra')}", b"[", {}),
    "forged signature": (
        f"/v1/callbacks/apiframe/{TOKENS.callback('job_x', 'apiframe')}",
        b"{}",
        {"x-signature": "nope"},
    ),
    "unknown job": (
        f"/v1/callbacks/trinetra/{TOKENS.callback('job_x', 'trinetra')}",
        b'{"id": "tri_1", "status": "succeeded", "external_task_id": "job_x",'
        b' "output": {"outputs": [{"url": "https://example.com/v.mp4"}]}}',
        {},
    ),
    "query string": (
        f"/v1/callbacks/trinetra/{TOKENS.callback('job_x', 'trinetra')}?decorated=1",
        b"[",
        {},
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
async def test_the_lean_path_answers_as_the_routed_handler(
    settings_factory: SettingsFactory, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, body, headers = CASES[case]
    answered_lean = []
    # The name the lean path calls (the routed handler calls its own module's).
    through = vars(fastpath)["answer_callback"]

    async def counted(*args: Any) -> Any:
        answered_lean.append(args[1])
        return await through(*args)

    monkeypatch.setattr(fastpath, "answer_callback", counted)  # counts, changes nothing
    async with two_ways(settings_factory) as (lean, routed):
        fast = await lean.post(path, content=body, headers=headers)
        assert len(answered_lean) == 1
        slow = await routed.post(path, content=body, headers=headers)
        assert len(answered_lean) == 1  # the routed handler answered this one
    assert fast.status_code == slow.status_code
    assert fast.status_code >= 400, fast.text
    assert fast.json() == slow.json()
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/callbacks/trinetra", 404),
        ("POST", "/v1/callbacks/trinetra/abc/extra", 404),
        ("GET", "/v1/callbacks/trinetra/abc", 405),
    ],
)
async def test_what_the_route_does_not_match_reaches_the_framework(
    settings_factory: SettingsFactory, method: str, path: str, status: int
) -> None:
    async with two_ways(settings_factory) as (lean, _):
        response = await lean.request(method, path, content=b"{}")
    assert response.status_code == status
    assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")
