"""Start-up checks: production refuses to start without what it needs, one line per problem;
development warns once when providers could not call its public URL back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.app.startup_checks import is_public_host
from tests.conftest import SettingsFactory
from tests.servers import free_port, run_service
from tests.support import ADMIN_KEY, api_client, run_serve

pytestmark = pytest.mark.anyio


def test_production_without_https_or_secret_keys_names_both_one_line_each(
    tmp_path: Path,
) -> None:
    done = run_serve(tmp_path, ENV="production", PUBLIC_URL="http://reelhook.example.org")

    assert done.returncode == 2, (done.stdout, done.stderr)
    first, second = done.stderr.splitlines()
    assert first.startswith("reelhook: cannot start: REELHOOK_PUBLIC_URL: ")
    assert "https" in first and "http://reelhook.example.org" in first
    assert second.startswith("reelhook: cannot start: REELHOOK_SECRET_KEYS: ")
    assert done.stdout == ""
    assert not (tmp_path / "data").exists()


def warnings_about_the_url(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "REELHOOK_PUBLIC_URL" in r.getMessage()
    ]


async def test_development_on_a_private_url_warns_once_naming_the_real_providers(
    settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_factory(APIFRAME_API_KEY="apiframe-key-0123456789")
    async with api_client(settings) as http:
        for _ in range(3):
            assert (await http.get("/healthz")).status_code == 200
    (warning,) = warnings_about_the_url(caplog)
    assert "http://127.0.0.1:8000" in warning
    assert "apiframe" in warning and "never arrive" in warning
    assert "apiframe-key-0123456789" not in caplog.text


async def test_development_with_only_the_simulator_still_says_why(
    settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with api_client(settings_factory(PUBLIC_URL="http://localhost:8000")):
        pass
    (warning,) = warnings_about_the_url(caplog)
    assert "simulator" in warning and "real providers cannot call back" in warning


@pytest.mark.parametrize(
    "overrides",
    [
        {"PUBLIC_URL": "https://hooks.example.org"},
        {"PUBLIC_URL": "https://203.0.113.9.nip.io"},
        {"ENV": "production", "PUBLIC_URL": "https://reelhook.internal", "TRINETRA_API_KEY": "k"},
    ],
)
async def test_no_warning_for_a_public_url_or_in_production(
    settings_factory: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, str],
) -> None:
    caplog.set_level(logging.INFO)
    async with api_client(settings_factory(**overrides)):
        pass
    assert warnings_about_the_url(caplog) == []


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("127.0.0.1", False),
        ("[::1]", False),
        ("10.1.2.3", False),
        ("192.168.1.20", False),
        ("169.254.169.254", False),
        ("localhost", False),
        ("api.localhost", False),
        ("nas.local", False),
        ("reelhook.internal", False),
        ("devbox", False),
        ("router.home.arpa", False),
        ("x.test", False),
        ("8.8.8.8", True),
        ("[2606:4700::1111]", True),
        ("reelhook.example.org", True),
        ("abc.ngrok-free.app", True),
    ],
)
def test_which_hosts_count_as_reachable_from_the_internet(host: str, public: bool) -> None:
    assert is_public_host(host) is public


def test_a_second_serve_on_the_same_data_directory_says_so_in_one_line(tmp_path: Path) -> None:
    environ = {
        "REELHOOK_PORT": str(free_port()),
        "REELHOOK_DATA_DIR": str(tmp_path / "data"),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
    }
    with run_service(environ):
        second = run_serve(tmp_path, PORT=str(free_port()), ADMIN_KEY=ADMIN_KEY)
    assert second.returncode == 2
    assert "Traceback" not in second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("reelhook: cannot start: the data directory ")
    assert str((tmp_path / "data").resolve()) in line and "REELHOOK_DATA_DIR" in line


def test_a_short_admin_key_is_refused_naming_the_setting(tmp_path: Path) -> None:
    done = run_serve(tmp_path, ADMIN_KEY="short")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("reelhook: cannot start: REELHOOK_ADMIN_KEY: must be at least 16")
    assert "'short'" not in line  # the value itself is a secret: not echoed
