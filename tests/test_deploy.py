"""The files in ``deploy/``: checked by the tools that will run them.

``systemd-analyze`` and ``caddy`` come from Debian's packages (``.ci/run`` installs them). Without
them these tests are skipped on a developer's machine, and fail under CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import httpx
import pytest

from service.app.settings import load_settings
from tests.conftest import SettingsFactory
from tests.servers import loopback_socket, url_of
from tests.support import REPO, served

DEPLOY = REPO / "deploy"
INSTALLED_COMMAND = "/opt/reelhook/.venv/bin/reelhook"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Debian package: .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


# --- systemd ------------------------------------------------------------------------------------


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit as installed, but starting this checkout's reelhook: ``verify`` checks that the
    command exists, and the walkthrough's /opt/reelhook is not on a test machine."""
    text = (DEPLOY / "reelhook.service").read_text()
    assert f"ExecStart={INSTALLED_COMMAND} serve" in text
    here = Path(sys.executable).parent / "reelhook"
    assert here.exists(), here
    path = tmp_path / "reelhook.service"
    path.write_text(text.replace(INSTALLED_COMMAND, str(here)))
    return path


def test_the_systemd_unit_passes_systemd_analyze_verify(unit: Path) -> None:
    done = run(tool("systemd-analyze"), "verify", str(unit))
    assert done.returncode == 0, done.stderr
    # verify only warns about unknown or misspelt directives: any word from it is a defect.
    assert done.stderr.strip() == "", done.stderr


def test_the_systemd_unit_is_hardened(unit: Path) -> None:
    text = unit.read_text()
    for directive in (
        "User=reelhook",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/reelhook",
        "CapabilityBoundingSet=\n",
    ):
        assert directive in text, directive
    # systemd's own score: 0 is the most locked down, 10 the least; 2.0 or better passes.
    done = run(tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(unit))
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert exposure is not None, done.stdout + done.stderr
    assert done.returncode == 0, f"exposure {exposure.group(1)}:\n{done.stdout}"


# --- Caddy --------------------------------------------------------------------------------------


def caddy_environ(tmp_path: Path) -> dict[str, str]:
    # Caddy keeps certificates and state under HOME; validate provisions, so keep it in tmp.
    return {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}


def test_the_caddyfile_passes_caddy_validate(tmp_path: Path) -> None:
    caddy = tool("caddy")
    done = run(
        caddy,
        "validate",
        "--config",
        str(DEPLOY / "Caddyfile"),
        "--adapter",
        "caddyfile",
        env={**caddy_environ(tmp_path), "REELHOOK_DOMAIN": "reelhook.example.org"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid configuration" in done.stdout + done.stderr
    formatted = run(caddy, "fmt", str(DEPLOY / "Caddyfile"))
    assert formatted.stdout == (DEPLOY / "Caddyfile").read_text(), "run caddy fmt --overwrite"


def _log_block(caddyfile: str) -> str:
    """The site's ``log { ... }`` block, as written in deploy/Caddyfile."""
    start = caddyfile.index("\tlog {")
    depth = 0
    for index in range(start, len(caddyfile)):
        depth += {"{": 1, "}": -1}.get(caddyfile[index], 0)
        if caddyfile[index] == "}" and depth == 0:
            return caddyfile[start : index + 1]
    raise AssertionError("unbalanced log block")


@pytest.fixture
def caddy_with_the_deploy_log(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Caddy on loopback (plain HTTP) with deploy/Caddyfile's access-log block, answering ok."""
    caddy = tool("caddy")
    with loopback_socket() as sock:
        base_url = url_of(sock)
    config = tmp_path / "Caddyfile"
    block = _log_block((DEPLOY / "Caddyfile").read_text())
    block = block.replace("output stderr", f"output file {tmp_path / 'access.log'}")
    config.write_text(f'{{\n\tadmin off\n}}\n\n{base_url} {{\n\trespond "ok"\n{block}\n}}\n')
    process = subprocess.Popen(
        [caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
        env=caddy_environ(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(base_url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "caddy did not start"
                time.sleep(0.05)
        yield base_url, tmp_path / "access.log"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_caddys_access_log_keeps_tokens_and_keys_out(
    caddy_with_the_deploy_log: tuple[str, Path],
) -> None:
    base_url, log = caddy_with_the_deploy_log
    secrets = ["eyJjYWxsYmFjayI6InRva2VuIn0.c2ln", "WyJmaWxlIl0.bGluaw", "rh_live_key_0123456789"]
    with httpx.Client(base_url=base_url) as http:
        http.post(f"/v1/callbacks/trinetra/{secrets[0]}", content=b"{}")
        http.get(f"/v1/files/{secrets[1]}", params={"download": "1"})
        http.get("/v1/jobs/job_1", headers={"X-API-Key": secrets[2]})
    deadline = time.monotonic() + 10
    while (log.read_text() if log.exists() else "").count("/v1/") < 3:
        assert time.monotonic() < deadline, "caddy did not log the requests"
        time.sleep(0.05)
    text = log.read_text()
    for secret in secrets:
        assert secret not in text
    uris = [json.loads(line)["request"]["uri"] for line in text.splitlines()]
    assert [uri for uri in uris if uri != "/"] == [  # "/": the fixture's is-it-up probe
        "/v1/callbacks/trinetra/[redacted]",
        "/v1/files/[redacted]",
        "/v1/jobs/job_1",
    ]


# --- the environment file and the README ---------------------------------------------------------


class Recording(Mapping[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.asked.append(key)
        raise KeyError(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.append(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_read() -> list[str]:
    environ = Recording()
    load_settings(environ)
    assert len(environ.asked) > 20
    return sorted(set(environ.asked))


def test_the_environment_file_lists_every_setting_with_a_comment() -> None:
    lines = (DEPLOY / "reelhook.env.example").read_text().splitlines()
    for name in settings_read():
        (index,) = [i for i, line in enumerate(lines) if re.match(rf"#?{name}=", line)]
        above = lines[:index]
        while above and re.match(r"#?REELHOOK_\w+=", above[-1]):
            above.pop()  # a group of settings shares its comment
        assert above and above[-1].startswith("# "), f"{name} has no comment"


def test_the_environment_file_is_a_valid_production_configuration() -> None:
    environ = {}
    for line in (DEPLOY / "reelhook.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    settings = load_settings(environ)
    assert settings.env == "production" and settings.public_url.startswith("https://")


def test_the_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Settings") :].split("\n## ", 1)[0]
    documented: set[str] = set()
    for token in re.findall(r"`(REELHOOK_[A-Z0-9_{},]+)`", table):
        group = re.search(r"\{([A-Z,]+)\}", token)
        if group is None:
            documented.add(token)
        else:  # REELHOOK_{TRINETRA,APIFRAME}_API_KEY
            for name in group.group(1).split(","):
                documented.add(token.replace(group.group(0), name))
    missing = [name for name in settings_read() if name not in documented]
    assert missing == []


# --- the Dockerfile -----------------------------------------------------------------------------


def test_the_dockerfile_runs_a_non_root_reelhook_with_a_data_volume() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line[:1].isupper()]
    keywords = {keyword: rest for keyword, rest in instructions}
    assert keywords["FROM"] == "python:3.11-slim"
    assert keywords["USER"] not in ("root", "0")
    assert json.loads(keywords["VOLUME"]) == ["/var/lib/reelhook"]
    assert json.loads(keywords["CMD"]) == ["reelhook", "serve"]
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in source.split():
            assert (REPO / part).exists(), part
    assert "/healthz" in text


@pytest.mark.anyio
async def test_the_dockerfile_healthcheck_passes_against_a_running_reelhook(
    settings_factory: SettingsFactory,
) -> None:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (check,) = re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M)
    command = json.loads(check)
    assert command[0] == "python"
    command[0] = sys.executable

    async def probe(port: int) -> int:
        environ = {**os.environ, "REELHOOK_PORT": str(port)}
        done = await anyio.run_process(command, env=environ, check=False)
        return int(done.returncode)

    sock = loopback_socket()
    port = sock.getsockname()[1]
    async with served(settings_factory(PORT=str(port)), sock):
        assert await probe(port) == 0
    assert await probe(port) != 0  # stopped: the check fails


# --- several nodes: the template unit and the load balancer ---------------------------------------


def test_the_node_template_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """reelhook@.service, as instance 2: its own port and data directory, migrate before serve,
    hardened like the single unit."""
    text = (DEPLOY / "reelhook@.service").read_text()
    here = str(Path(sys.executable).parent / "reelhook")
    path = tmp_path / "reelhook@2.service"
    path.write_text(text.replace(INSTALLED_COMMAND, here))
    done = run(tool("systemd-analyze"), "verify", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    assert f"ExecStartPre={INSTALLED_COMMAND} migrate" in text
    assert "Environment=REELHOOK_PORT=800%i REELHOOK_DATA_DIR=/var/lib/reelhook/%i" in text
    single = (DEPLOY / "reelhook.service").read_text()
    hardening = [line for line in single.splitlines() if line.startswith(("Protect", "Restrict"))]
    assert all(line in text for line in hardening)


def test_the_cluster_caddyfile_balances_healthy_nodes_and_passes_caddy_validate(
    tmp_path: Path,
) -> None:
    caddy = tool("caddy")
    config = DEPLOY / "Caddyfile.cluster"
    done = run(
        caddy,
        "validate",
        "--config",
        str(config),
        "--adapter",
        "caddyfile",
        env={**caddy_environ(tmp_path), "REELHOOK_DOMAIN": "reelhook.example.org"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    formatted = run(caddy, "fmt", str(config))
    assert formatted.stdout == config.read_text(), "run caddy fmt --overwrite"
    text = config.read_text()
    assert "health_uri /readyz" in text and "lb_policy" in text
    # The same redaction of credentials in paths as the single-node Caddyfile.
    single = (DEPLOY / "Caddyfile").read_text()
    assert single[single.index("\tlog {") :] in text
