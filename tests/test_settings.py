"""Settings (docs/contract.md §10), the ``reelhook serve`` command line, and first-start
bootstrap."""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app.factory import create_app
from service.app.settings import Settings, SettingsError, load_settings
from tests.conftest import SettingsFactory
from tests.support import run_serve, stored

pytestmark = pytest.mark.anyio


DOCUMENTED_BASE_URLS = {
    "trinetra": "https://brahmand-api.bulletshorts.co",
    "apiframe": "https://api.apiframe.ai",
    "segmind": "https://api.segmind.com",
}


def test_defaults_match_the_design() -> None:
    settings = load_settings({})

    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_dir == Path("./data")
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.env == "development"
    assert settings.admin_key is None
    assert settings.secret_keys == ()
    assert settings.retry_schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.delivery_timeout == 15
    assert settings.disable_after == 432000
    assert settings.job_deadline == 3600
    assert settings.mirror_outputs is True
    assert settings.mirror_max_bytes == 524288000
    assert settings.max_callback_bytes == 1048576
    assert settings.sim_delay == 5
    assert settings.allow_private_subscribers == ()
    assert sorted(settings.simulated_providers) == ["apiframe", "segmind", "trinetra"]
    assert {name: p.base_url for name, p in settings.providers.items()} == DOCUMENTED_BASE_URLS
    assert all(p.api_key is None for p in settings.providers.values())


def test_every_documented_variable_is_read() -> None:
    settings = load_settings(
        {
            "REELHOOK_HOST": "0.0.0.0",
            "REELHOOK_PORT": "9001",
            "REELHOOK_DATA_DIR": "/var/lib/reelhook",
            "REELHOOK_ADMIN_KEY": "rh_admin_from_env",
            "REELHOOK_SECRET_KEYS": "old-key-0123456789abcdef, new-key-0123456789abcdef",
            "REELHOOK_TRINETRA_BASE_URL": "https://trinetra.example/",
            "REELHOOK_SIM_DELAY": "0.5",
            "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8, ::1/128",
            "REELHOOK_RETRY_SCHEDULE": "0,1,2.5",
            "REELHOOK_DELIVERY_TIMEOUT": "3",
            "REELHOOK_DISABLE_AFTER": "60",
            "REELHOOK_JOB_DEADLINE": "120",
            "REELHOOK_MIRROR_OUTPUTS": "false",
            "REELHOOK_MIRROR_MAX_BYTES": "1000",
            "REELHOOK_MAX_CALLBACK_BYTES": "4096",
        }
    )

    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    # A wildcard listen address is not a URL anyone can call back; the default uses loopback.
    assert settings.public_url == "http://127.0.0.1:9001"
    assert settings.data_dir == Path("/var/lib/reelhook")
    assert settings.admin_key == "rh_admin_from_env"
    assert settings.secret_keys == ("old-key-0123456789abcdef", "new-key-0123456789abcdef")
    assert settings.providers["trinetra"].base_url == "https://trinetra.example"
    assert settings.sim_delay == 0.5
    assert [str(n) for n in settings.allow_private_subscribers] == ["127.0.0.0/8", "::1/128"]
    assert settings.retry_schedule == (0, 1, 2.5)
    assert settings.delivery_timeout == 3
    assert settings.disable_after == 60
    assert settings.job_deadline == 120
    assert settings.mirror_outputs is False
    assert settings.mirror_max_bytes == 1000
    assert settings.max_callback_bytes == 4096


def test_the_default_public_url_brackets_an_ipv6_host() -> None:
    settings = load_settings({"REELHOOK_HOST": "::1", "REELHOOK_PORT": "8443"})
    assert settings.public_url == "http://[::1]:8443"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("SIM_DELAY", "-1"),
        ("SIM_DELAY", "soon"),
        ("SIM_DELAY", "nan"),
        ("DELIVERY_TIMEOUT", "nan"),
        ("JOB_DEADLINE", "0"),
        ("PUBLIC_URL", "ftp://x"),
        ("PUBLIC_URL", "http://"),
        ("PUBLIC_URL", "https://example.org/?next=1"),
        ("SEGMIND_BASE_URL", "api.segmind.com"),
        ("ALLOW_PRIVATE_SUBSCRIBERS", "notacidr"),
        ("ALLOW_PRIVATE_SUBSCRIBERS", "127.0.0.0/8,10.0.0.0/33"),
        ("RETRY_SCHEDULE", "1,x"),
        ("RETRY_SCHEDULE", "0,-5"),
        ("RETRY_SCHEDULE", "0,nan"),
        ("MIRROR_OUTPUTS", "maybe"),
        ("MIRROR_MAX_BYTES", "0"),
        ("MAX_CALLBACK_BYTES", "lots"),
        ("ENV", "staging"),
        ("SECRET_KEYS", "short"),
        ("SECRET_KEYS", "long-enough-key-0123456789,short"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({f"REELHOOK_{name}": value})
    message = str(raised.value)
    assert f"REELHOOK_{name}" in message
    assert "\n" not in message


def test_the_first_bad_variable_is_named_not_a_later_one() -> None:
    with pytest.raises(SettingsError, match="REELHOOK_PORT") as raised:
        load_settings({"REELHOOK_PORT": "abc", "REELHOOK_SIM_DELAY": "-1"})
    assert "REELHOOK_SIM_DELAY" not in str(raised.value)


def test_blank_values_fall_back_to_the_defaults() -> None:
    settings = load_settings({"REELHOOK_PORT": "  ", "REELHOOK_SEGMIND_API_KEY": ""})
    assert settings.port == 8000
    assert "segmind" in settings.simulated_providers


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"REELHOOK_SECRET_KEYS": "a-configured-secret-key-0123"}, "REELHOOK_PUBLIC_URL"),
        (
            {
                "REELHOOK_PUBLIC_URL": "http://reelhook.example.org",
                "REELHOOK_SECRET_KEYS": "a-configured-secret-key-0123",
            },
            "REELHOOK_PUBLIC_URL",
        ),
        ({"REELHOOK_PUBLIC_URL": "https://reelhook.example.org"}, "REELHOOK_SECRET_KEYS"),
    ],
)
def test_production_demands_https_and_configured_secret_keys(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings({"REELHOOK_ENV": "production", **environ})


def test_production_starts_with_https_and_secret_keys() -> None:
    settings = load_settings(
        {
            "REELHOOK_ENV": "production",
            "REELHOOK_PUBLIC_URL": "https://reelhook.example.org/",
            "REELHOOK_SECRET_KEYS": "a-configured-secret-key-0123",
        }
    )
    assert settings.env == "production"
    assert settings.public_url == "https://reelhook.example.org"


@pytest.mark.parametrize("provider", ["trinetra", "apiframe", "segmind"])
def test_a_provider_with_a_key_is_not_simulated(provider: str) -> None:
    settings = load_settings({f"REELHOOK_{provider.upper()}_API_KEY": f"key-{provider}"})

    assert provider not in settings.simulated_providers
    assert sorted(settings.simulated_providers) == sorted(
        {"trinetra", "apiframe", "segmind"} - {provider}
    )
    assert settings.providers[provider].api_key == f"key-{provider}"
    assert settings.providers[provider].base_url == DOCUMENTED_BASE_URLS[provider]


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"PORT": "abc"}, "REELHOOK_PORT"),
        (
            {
                "ENV": "production",
                "PUBLIC_URL": "http://x.example",
                "SECRET_KEYS": "a-configured-secret-key-0123",
            },
            "REELHOOK_PUBLIC_URL",
        ),
    ],
)
def test_serve_with_a_bad_setting_prints_one_line_and_exits_2(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    done = run_serve(tmp_path, **variables)

    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing may be created before settings are valid"


# --- first-start bootstrap ----------------------------------------------------------------------

_ANNOUNCED_KEY = re.compile(r"\b(rh_[A-Za-z0-9_\-]{20,})\b")


@asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app for ``settings`` with its lifespan running, and a client sending no key."""
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://reelhook.test"
        ) as http,
    ):
        yield http


async def _authenticates(http: httpx.AsyncClient, key: str) -> bool:
    response = await http.get("/v1/jobs", headers={"X-API-Key": key})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def test_an_admin_key_is_generated_once_printed_once_and_stored_hashed(
    settings_factory: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_factory(ADMIN_KEY="")
    assert settings.admin_key is None
    capsys.readouterr()

    async with _started(settings) as http:
        printed = capsys.readouterr().out
        found = _ANNOUNCED_KEY.findall(printed)
        assert len(found) == 1, printed
        key = found[0]
        assert await _authenticates(http, key)
        assert not await _authenticates(http, key + "x")
        assert (await http.get("/v1/jobs")).status_code == 401

    async with _started(settings) as http:
        assert capsys.readouterr().out == "", "the key is printed on the first start only"
        assert await _authenticates(http, key)

    rows = stored(settings, "SELECT * FROM api_keys")
    assert len(rows) == 1, "a second start must not generate another admin key"
    everything = repr(rows)
    assert key not in everything
    assert hashlib.sha256(key.encode()).hexdigest() in everything


async def test_a_configured_admin_key_is_never_printed(
    settings_factory: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_factory(ADMIN_KEY="rh_configured_admin_key_0123456789")
    capsys.readouterr()
    async with _started(settings) as http:
        assert await _authenticates(http, "rh_configured_admin_key_0123456789")
    assert "rh_" not in capsys.readouterr().out


@pytest.mark.sqlite_only("nodes on PostgreSQL must be given shared keys: tests/test_store.py")
async def test_secret_keys_are_generated_private_and_kept_across_restarts(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(SECRET_KEYS="")
    assert settings.secret_keys == ()
    keys_file = settings.data_dir / "secret_keys"

    async with _started(settings):
        pass
    assert keys_file.is_file()
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    first = keys_file.read_text()
    assert len(first.strip()) >= 32

    async with _started(settings):
        pass
    assert keys_file.read_text() == first
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600


async def test_configured_secret_keys_write_no_keys_file(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    async with _started(settings):
        pass
    assert not (settings.data_dir / "secret_keys").exists()
