"""Structured logs: one JSON object per line, carrying the ids a line is about, never a secret.

The end-to-end test runs every kind of traffic with every kind of secret reelhook handles (provider
API keys, signing keys, API keys, subscription and callback secrets, a subscription's static
header, callback-URL and file-link tokens), captures every log line at DEBUG, including the HTTP
access log, and greps the capture for each secret.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.app.logs import JsonFormatter, Scrubber, TextFormatter, logging_to
from service.app.settings import Settings, load_settings
from service.core.tokens import Tokens
from service.sim import Scenario, Simulator, create_sim_app
from tests.conftest import SettingsFactory
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import ADMIN_KEY, REPO, served, served_with_sink, wait_for_job

pytestmark = pytest.mark.anyio

SECRET_KEY = "test-secret-key-0123456789"  # as conftest's settings_factory sets it
PROVIDER_KEYS = {
    "trinetra": "trinetra-live-key-7c1f0e9a",
    "apiframe": "apiframe-live-key-52b3d8aa",
    "segmind": "segmind-live-key-0d9e6f21",
}
HEADER_SECRET = "n8n-header-secret-4f2a9c"
PROMPTS = {
    "trinetra/kling-v3": "A lantern festival on a river",
    "apiframe/kling-2.5-turbo-pro": "A heron taking off from a lake",
    "segmind/kling-2.5-turbo": "A windmill at dusk",
}


def record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"failed near {args[0] if args else message}")
        except RuntimeError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("reelhook.test", logging.INFO, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    return made


# --- the formatters -----------------------------------------------------------------------------


def test_a_json_line_carries_the_ids_its_message_names() -> None:
    line = JsonFormatter(Scrubber()).format(
        record(
            "delivery %s of %s to %s for %s: %s",
            "dlv_01jd0m3q6f7w8x9y0z1a2b3c4d",
            "evt_01jd0m3q6f7w8x9y0z1a2b3c4e",
            "sub_01jd0m3q6f7w8x9y0z1a2b3c4f",
            "job_01jd0m3q6f7w8x9y0z1a2b3c4g",
            "succeeded",
            attempt=2,
        )
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["delivery_id"] == "dlv_01jd0m3q6f7w8x9y0z1a2b3c4d"
    assert parsed["event_id"] == "evt_01jd0m3q6f7w8x9y0z1a2b3c4e"
    assert parsed["subscription_id"] == "sub_01jd0m3q6f7w8x9y0z1a2b3c4f"
    assert parsed["job_id"] == "job_01jd0m3q6f7w8x9y0z1a2b3c4g"
    assert parsed["attempt"] == 2
    assert parsed["level"] == "INFO" and parsed["logger"] == "reelhook.test"
    assert parsed["time"].endswith("Z")


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_secrets_are_scrubbed_from_message_arguments_extras_and_tracebacks(
    formatter: type[JsonFormatter] | type[TextFormatter],
) -> None:
    configured = 'provider-key-"quoted"-0123'
    scrub = Scrubber([configured, "short"])
    secrets = [
        configured,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "rh_4kq0cJHn1m3PZ7pSxUe0aQ2VYv9ZuYb8oR5tQw1nK3s",
        "eyJqb2IiOiJqb2JfMDEifQ.c2lnbmF0dXJl",  # a callback token, after /v1/callbacks/x/
        "WyJhYmMiXQ.ZmlsZS10b2tlbg",  # a file-link token
    ]
    rendered = formatter(scrub).format(
        record(
            "key %s posted to http://h/v1/callbacks/trinetra/%s and got %s",
            secrets[2],
            secrets[3],
            f'"http://h/v1/files/{secrets[4]}?download=1"',
            exc=True,
            detail={"secret": secrets[1], "api_key": configured},
        )
    )
    for secret in secrets:
        assert secret not in rendered, secret
    assert "[redacted]" in rendered
    if formatter is JsonFormatter:
        parsed = json.loads(rendered)
        assert "/v1/callbacks/trinetra/[redacted]" in parsed["message"]
        assert "RuntimeError" in parsed["exception"]


def test_text_lines_keep_the_familiar_shape() -> None:
    rendered = TextFormatter(Scrubber()).format(record("reelhook serving at %s", "http://x"))
    assert rendered.endswith("INFO reelhook.test: reelhook serving at http://x")


# --- a whole run, captured ----------------------------------------------------------------------


async def test_a_whole_run_logs_json_lines_with_ids_and_no_secret(
    settings_factory: SettingsFactory,
) -> None:
    sink = Sink(script={"/gone": lambda count: (410, {})})
    simulator = Simulator(Scenario(delay=0.2))
    service_sock = loopback_socket()
    capture = io.StringIO()
    async with (
        run_server(create_sim_app(simulator)) as sim_url,
        run_server(sink.app()) as sink_url,
    ):
        settings = settings_factory(
            PUBLIC_URL=url_of(service_sock),
            LOG_FORMAT="json",
            LOG_LEVEL="DEBUG",
            **{f"{name.upper()}_API_KEY": key for name, key in PROVIDER_KEYS.items()},
            **{f"{name.upper()}_BASE_URL": f"{sim_url}/{name}" for name in PROVIDER_KEYS},
        )
        access = logging.getLogger("uvicorn.access")
        level = access.level
        with logging_to(capture, settings) as handler:
            try:
                secrets, ids = await _run_everything(
                    settings, service_sock, sink, sink_url, handler
                )
            finally:
                access.removeHandler(handler)
                access.setLevel(level)

    text = capture.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) > 10
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line

    for secret in secrets:
        assert secret not in text, f"a secret reached the logs: {secret[:12]}…"

    fields = {
        name: {line[name] for line in lines if name in line}
        for name in ("job_id", "key_id", "event_id", "delivery_id", "subscription_id")
    }
    for name, wanted in ids.items():
        assert wanted <= fields[name], (name, wanted - fields[name])
    # Deliveries are logged with their own, event and subscription ids.
    assert fields["delivery_id"] and fields["event_id"] and fields["subscription_id"]
    # The access log shows callback paths, with their tokens cut out.
    assert any("/v1/callbacks/trinetra/[redacted]" in line["message"] for line in lines)


async def _run_everything(
    settings: Settings,
    service_sock: socket.socket,
    sink: Sink,
    sink_url: str,
    handler: logging.Handler,
) -> tuple[list[str], dict[str, set[str]]]:
    secrets = [ADMIN_KEY, SECRET_KEY, HEADER_SECRET, *PROVIDER_KEYS.values()]
    ids: dict[str, set[str]] = {"job_id": set(), "key_id": set()}
    async with served(settings, service_sock) as http:
        # The test server's uvicorn configures its access log for itself (its own handler, level
        # WARNING, not propagated) as it starts: listen in once it has.
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        made = await http.post(
            "/v1/keys", json={"name": "bot", "scopes": ["jobs:write", "subscriptions:write"]}
        )
        assert made.status_code == 201, made.text
        key = made.json()
        secrets.append(key["key"])
        ids["key_id"].add(key["id"])
        as_bot = {"X-API-Key": key["key"]}

        sub = await http.post(
            "/v1/subscriptions",
            json={"url": f"{sink_url}/hook", "headers": {"X-N8N-Auth": HEADER_SECRET}},
            headers=as_bot,
        )
        gone = await http.post(
            "/v1/subscriptions", json={"url": f"{sink_url}/gone"}, headers=as_bot
        )
        assert sub.status_code == 201 and gone.status_code == 201, (sub.text, gone.text)
        secrets += [sub.json()["secret"], gone.json()["secret"]]

        tokens = Tokens([SECRET_KEY])
        for model, prompt in PROMPTS.items():
            body: dict[str, Any] = {"model": model, "input": {"prompt": prompt}}
            if model.startswith("trinetra"):
                body["callback_url"] = f"{sink_url}/callback"
            response = await http.post("/v1/jobs", json=body, headers=as_bot)
            assert response.status_code == 202, response.text
            job = response.json()
            provider = model.split("/")[0]
            if provider != "segmind":
                ids["job_id"].add(job["id"])
                secrets.append(tokens.callback(job["id"], provider))
            if "callback_secret" in job:
                secrets.append(job["callback_secret"])

        forged = await http.post("/v1/callbacks/apiframe/forged-token", json={})
        assert forged.status_code == 401, forged.text

        def finished(s: Sink) -> bool:
            types = [r.json()["type"] for r in s.on("/hook")]
            return types.count("job.succeeded") == 3 and len(s.on("/callback")) >= 2

        await sink.wait_for(finished, within=20)
        jobs = (await http.get("/v1/jobs", headers=as_bot)).json()["data"]
        for job in jobs:
            for output in job["outputs"]:
                if "/v1/files/" in output["url"]:
                    secrets.append(output["url"].rsplit("/", 1)[1])
                    fetched = await http.get(output["url"])
                    assert fetched.status_code == 200
    return secrets, ids


# --- the command line wires it ------------------------------------------------------------------


def test_serve_writes_json_lines_to_stderr_and_warns_once(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REELHOOK_")}
    environ.update(
        REELHOOK_DATA_DIR=str(tmp_path / "data"),
        REELHOOK_PORT="0",
        REELHOOK_LOG_FORMAT="json",
        REELHOOK_TRINETRA_API_KEY=PROVIDER_KEYS["trinetra"],
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines: list[dict[str, Any]] = []
        for raw in process.stderr:
            lines.append(json.loads(raw))
            if "Uvicorn running" in raw or "Application startup complete" in raw:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, rest = process.communicate(timeout=20)
    lines += [json.loads(raw) for raw in rest.splitlines() if raw.strip()]

    assert not any("color_message" in line for line in lines), "no terminal colour codes"
    warnings = [line for line in lines if "REELHOOK_PUBLIC_URL" in line["message"]]
    assert len(warnings) == 1, lines
    # The banner says where a newcomer goes next.
    [banner] = [line for line in lines if line["message"].startswith("console: ")]
    assert "/console · API docs: " in banner["message"] and "/docs · data: " in banner["message"]
    assert str((tmp_path / "data").resolve()) in banner["message"]
    assert warnings[0]["level"] == "WARNING"
    assert "trinetra" in warnings[0]["message"]
    assert PROVIDER_KEYS["trinetra"] not in stdout + json.dumps(lines)
    # The generated admin key is printed once on stdout, never logged.
    assert "rh_" in stdout
    assert not any(
        "rh_" in line["message"] and "[redacted]" not in line["message"] for line in lines
    )
    load_settings(environ)  # the environment used is a valid one


@pytest.mark.anyio
async def test_job_lifecycle_and_failing_deliveries_are_logged_at_info(
    settings_factory: SettingsFactory, dead_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with served_with_sink(settings_factory, SIM_DELAY="0.1", RETRY_SCHEDULE="0,60") as (
        http,
        _sink,
        _sink_url,
    ):
        sub = await http.post("/v1/subscriptions", json={"url": dead_url + "/hook"})
        assert sub.status_code == 201, sub.text
        created = await http.post(
            "/v1/jobs", json={"model": "trinetra/kling-v3", "input": {"prompt": "log me"}}
        )
        job_id = created.json()["id"]
        await wait_for_job(http, job_id)
        with anyio.fail_after(10):
            while True:
                logged = [r.getMessage() for r in caplog.records]
                if any(m.startswith("delivery ") for m in logged):
                    break
                await anyio.sleep(0.05)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith(f"job.submitted {job_id} (trinetra/kling-v3)") for m in info), info
    assert any(m.startswith(f"job.succeeded {job_id} (trinetra/kling-v3)") for m in info), info
    failing = [m for m in info if m.startswith("delivery ") and sub.json()["id"] in m]
    assert failing and "could not connect" in failing[0] and "next attempt due" in failing[0]
