"""The ``reelhook`` command line, run as a user runs it: the installed console script, in its own
process, against ``reelhook serve`` running in another process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main
from tests.servers import free_port, run_service
from tests.support import ADMIN_KEY, REPO

pytestmark = pytest.mark.e2e

REELHOOK = str(Path(sys.executable).parent / "reelhook")
COMMANDS = ("serve", "submit", "jobs", "subscribe", "unsubscribe", "tail")


@dataclass(frozen=True)
class Service:
    url: str
    environ: dict[str, str]

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, trust_env=False)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    environ = {
        "REELHOOK_PORT": str(free_port()),
        "REELHOOK_DATA_DIR": str(tmp_path_factory.mktemp("cli") / "data"),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SIM_DELAY": "0.3",
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
    }
    with run_service(environ) as url:
        yield Service(url, environ)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELHOOK_")}
    env.update(extra)
    return env


def reelhook(
    *args: str, service: Service | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the console script; with ``service``, REELHOOK_URL and REELHOOK_API_KEY point at it."""
    if service is not None:
        env = {"REELHOOK_URL": service.url, "REELHOOK_API_KEY": ADMIN_KEY, **env}
    return subprocess.run(
        [REELHOOK, *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """Run ``main(argv)`` in this process (quicker than a new one for each command); with
    ``service``, REELHOOK_URL and REELHOOK_API_KEY point at it."""

    def run(*args: str, service: Service | None = None, **env: str) -> Ran:
        for name in list(os.environ):
            if name.startswith("REELHOOK_"):
                monkeypatch.delenv(name)
        if service is not None:
            env = {"REELHOOK_URL": service.url, "REELHOOK_API_KEY": ADMIN_KEY, **env}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exit:  # argparse's own usage errors
            status = int(exit.code or 0)
        out, err = capsys.readouterr()
        return Ran(status, out, err)

    return run


def user_error(done: Ran | subprocess.CompletedProcess[str], status: int, text: str) -> None:
    """Exit ``status`` with one ``reelhook: ...`` line naming the problem; no traceback."""
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reelhook: "), done.stderr
    assert text in lines[0], done.stderr


def test_help_explains_every_command(cli: Callable[..., Ran]) -> None:
    overview = reelhook("--help")  # the installed console script
    assert overview.returncode == 0
    for command in COMMANDS:
        assert command in overview.stdout
        detail = cli(command, "--help")
        assert detail.returncode == 0, detail.stderr
        assert detail.stdout.startswith(f"usage: reelhook {command}")
        if command != "serve":
            assert "--api-key" in detail.stdout and "REELHOOK_URL" in detail.stdout
    bare = cli()
    assert bare.returncode == 2 and "usage: reelhook" in bare.stderr


def test_submit_wait_shows_progress_and_the_finished_video(service: Service) -> None:
    done = reelhook(
        "submit",
        "segmind/kling-2.5-turbo",
        "A drone shot over misty mountains",
        "-p",
        "duration=5",
        "--metadata",
        '{"chat_id": 42}',
        "--wait",
        service=service,
    )
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    job_id = first.split()[0]
    assert first == f"{job_id} pending · segmind/kling-2.5-turbo · estimated 0.44 usd"
    assert rest[0] == f"{job_id} succeeded"
    # Segmind's video is stored by reelhook: the CLI shows the mirror, reelhook's own link.
    assert rest[1].startswith(f"video: {service.url}/v1/files/")
    progress = [line.rsplit(" after ", 1)[0] for line in done.stderr.splitlines()]
    assert progress[-1] == f"{job_id} succeeded"
    assert f"{job_id} submitted" in progress
    with service.api() as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["input"]["duration"] == 5 and job["metadata"] == {"chat_id": 42}
    video = httpx.get(rest[1].removeprefix("video: "), trust_env=False)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


def test_submit_wait_json_prints_the_final_job_and_a_failure_exits_1(service: Service) -> None:
    done = reelhook("submit", "trinetra/kling-v3", "ok", "--wait", "--json", service=service)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["outputs"][0]["url"].startswith("http")

    with httpx.Client(trust_env=False, headers={"X-API-Key": ADMIN_KEY}) as http:
        scenario = f"{service.url}/sim/_sim/scenario"
        assert http.put(scenario, json={"outcome": "fail"}).status_code == 200
        try:
            failed = reelhook("submit", "trinetra/kling-v3", "nope", "--wait", service=service)
        finally:
            http.put(scenario, json={"outcome": "succeed"})
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines()[-1].endswith(" failed")
    assert "error: content_policy: " in failed.stderr


def test_jobs_lists_and_shows_jobs(service: Service, cli: Callable[..., Ran]) -> None:
    submitted = cli("submit", "apiframe/kling-2.5-turbo-pro", "a cat", service=service)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    listed = cli("jobs", "--model", "apiframe/kling-2.5-turbo-pro", service=service)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith(f"{job_id}  ")
    shown = cli("jobs", job_id, service=service)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert fields["id"].strip() == job_id
    assert fields["model"].strip() == "apiframe/kling-2.5-turbo-pro"
    as_json = cli("jobs", job_id, "--json", service=service)
    assert json.loads(as_json.stdout)["id"] == job_id
    page = json.loads(cli("jobs", "--limit", "1", "--json", service=service).stdout)
    assert len(page["data"]) == 1 and page["next_cursor"]
    finished(service, job_id)  # so its events do not land in a later test's tail


def finished(service: Service, job_id: str) -> None:
    """Wait (10 s at most) until the job is terminal."""
    deadline = time.monotonic() + 10
    with service.api() as api:
        while api.get(f"/v1/jobs/{job_id}").json()["completed_at"] is None:
            assert time.monotonic() < deadline, f"{job_id} did not finish"
            time.sleep(0.05)


def test_subscribe_and_unsubscribe(service: Service, cli: Callable[..., Ran]) -> None:
    done = cli(
        "subscribe",
        "http://127.0.0.1:9/hook",
        "-e",
        "job.succeeded",
        "-e",
        "job.failed",
        "-H",
        "X-N8N-Auth: s3cret",
        "--description",
        "from the CLI",
        service=service,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    sub_id = lines[0].split()[0]
    assert lines[1] == "events: job.succeeded, job.failed"
    assert lines[2].split(": ")[-1].startswith("whsec_")
    with service.api() as api:
        sub = api.get(f"/v1/subscriptions/{sub_id}").json()
        assert sub["headers"] == {"X-N8N-Auth": "********"}
        assert sub["description"] == "from the CLI"
        gone = cli("unsubscribe", sub_id, service=service)
        assert gone.returncode == 0 and gone.stdout.strip() == f"{sub_id} deleted"
        assert api.get(f"/v1/subscriptions/{sub_id}").status_code == 404
    user_error(cli("unsubscribe", sub_id, service=service), 1, "404")


def test_subscribe_with_a_filter_a_template_v1a_and_fifo(
    service: Service, cli: Callable[..., Ran]
) -> None:
    done = cli(
        "subscribe",
        "http://127.0.0.1:9/slack",
        "-e",
        "job.succeeded",
        "--filter",
        '{"path": "data.metadata.channel", "eq": "bots"}',
        "--template",
        str(REPO / "examples" / "templates" / "slack.json.j2"),
        "--v1a",
        "--fifo",
        service=service,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].split(": ")[-1].startswith("whpk_")
    with service.api() as api:
        sub = api.get(f"/v1/subscriptions/{lines[0].split()[0]}").json()
    assert sub["filter"] == {"path": "data.metadata.channel", "eq": "bots"}
    assert sub["template"].startswith("{#- Slack incoming webhook")
    assert (sub["signature_scheme"], sub["ordering"]) == ("v1a", "fifo")
    user_error(cli("subscribe", "u", "--filter", "{", service=service), 2, "--filter")
    user_error(
        cli(
            "subscribe",
            "http://127.0.0.1:9/x",
            "--filter",
            '{"path": "data.nope", "eq": 1}',
            service=service,
        ),
        1,
        "filter.path",
    )


def last_event_id(service: Service) -> str:
    with service.api() as api:
        page = api.get("/v1/events", params={"limit": "1000"}).json()
    assert page["next_cursor"] is None
    event_id: str = page["data"][-1]["id"]
    return event_id


def submit_and_finish(service: Service, prompt: str) -> str:
    done = reelhook("submit", "trinetra/kling-v3", prompt, "--wait", "--json", service=service)
    assert done.returncode == 0, done.stderr
    job_id: str = json.loads(done.stdout)["id"]
    return job_id


def read_ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_tail_prints_new_events(service: Service) -> None:
    start = last_event_id(service)
    tail = subprocess.Popen(
        [REELHOOK, "tail", "--after", start, "--type", "job.succeeded", "-n", "1"],
        env=cli_env(REELHOOK_URL=service.url, REELHOOK_API_KEY=ADMIN_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = submit_and_finish(service, "tail me")
    out, err = tail.communicate(timeout=20)
    assert tail.returncode == 0, err
    [line] = out.splitlines()
    parts = line.split()
    assert parts[1] == "job.succeeded" and parts[2] == job_id
    assert parts[-1].startswith("http")


@pytest.mark.slow
def test_tail_resumes_across_a_restart_without_missing_or_repeating(
    tmp_path: Path,
) -> None:
    """The service stops and starts again while ``tail`` runs: tail reconnects with
    Last-Event-ID and prints each event once, including those committed while it was away."""
    environ = {
        "REELHOOK_PORT": str(free_port()),
        "REELHOOK_DATA_DIR": str(tmp_path / "data"),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SIM_DELAY": "0.1",
    }
    with run_service(environ) as url:
        service = Service(url, environ)
        first = submit_and_finish(service, "before")
        tail = subprocess.Popen(
            [REELHOOK, "tail", "--from-start", "--json", "-n", "6"],
            env=cli_env(REELHOOK_URL=url, REELHOOK_API_KEY=ADMIN_KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        second = submit_and_finish(service, "during")
    # Stopped; tail keeps trying. The service comes back and the log moves on.
    time.sleep(0.3)
    with run_service(environ):
        third = submit_and_finish(service, "after")
        out, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    assert "reconnecting" in err
    events = read_ndjson(out)
    assert [(e["type"], e["data"]["id"]) for e in events] == [
        (kind, job) for job in (first, second, third) for kind in ("job.submitted", "job.succeeded")
    ]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(set(seqs))


def test_user_errors_are_one_clear_line(service: Service, cli: Callable[..., Ran]) -> None:
    # As the console script prints it, and in-process for the rest.
    user_error(reelhook("jobs", REELHOOK_URL=service.url), 2, "no API key")
    user_error(
        cli("jobs", "--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k"),
        1,
        "cannot reach reelhook",
    )
    user_error(cli("jobs", "--api-key", "rh_wrong", service=service), 1, "401")
    user_error(
        cli("submit", "trinetra/kling-v3", "p", "-p", "duration=99", service=service),
        1,
        "input.duration: must be at most 10",
    )
    user_error(cli("submit", "m", "p", "-p", "oops", service=service), 2, "NAME=VALUE")
    user_error(cli("submit", "m", "p", "--metadata", "{", service=service), 2, "--metadata")
    user_error(cli("tail", "--last-event-id", "x", service=service), 1, "Last-Event-ID")
    user_error(cli("tail", "--count", "0", service=service), 2, "--count")
    user_error(cli("subscribe", "u", "-H", "novalue", service=service), 2, "NAME: VALUE")
    usage = cli("tail", "--type", "job.done", service=service)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
