from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings, load_settings
from tests.servers import loopback_socket, url_of
from tests.support import ADMIN_KEY, api_client

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback only; a proxy from the environment must not intercept them."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)


def make_settings(data_dir: Path, **overrides: str) -> Settings:
    """Settings for a reelhook under test, as the environment would give them."""
    environ = {
        "REELHOOK_DATA_DIR": str(data_dir),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SECRET_KEYS": "test-secret-key-0123456789",
        "REELHOOK_SIM_DELAY": "0.2",
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8,::1/128",
        "REELHOOK_RETRY_SCHEDULE": "0,0.2,0.2",
    }
    environ.update({f"REELHOOK_{key}": value for key, value in overrides.items()})
    return load_settings(environ)


@pytest.fixture
def settings_factory(tmp_path: Path) -> SettingsFactory:
    """Settings as the environment would give them: ``settings_factory(SIM_DELAY="0.2", ...)``."""

    def build(**overrides: str) -> Settings:
        return make_settings(tmp_path / "data", **overrides)

    return build


@pytest.fixture
async def client(settings_factory: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for a fresh reelhook (lifespan running), authenticated as admin."""
    async with api_client(settings_factory()) as http:
        yield http


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback URL where nothing listens (bound, never listening): connections are refused."""
    with loopback_socket() as sock:
        yield url_of(sock)


@pytest.fixture
async def api(settings_factory: SettingsFactory, dead_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """reelhook in-process; its simulated providers sit at an unreachable PUBLIC_URL."""
    async with api_client(settings_factory(PUBLIC_URL=dead_url)) as http:
        yield http
