"""The ``reelhook`` command line, run as a user runs it: the installed console script, in its own
process, against ``reelhook serve`` running in another process on loopback."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from service.cli import main
from tests.servers import free_port, run_service
from tests.support import ADMIN_KEY, REPO

pytestmark = pytest.mark.e2e

REELHOOK = str(Path(sys.executable).parent / "reelhook")
SAMPLE_JOB = "job_klingv3_5a1e2c3d4b6f"  # the provider job id of every sample event
COMMANDS = (
    "serve",
    "submit",
    "jobs",
    "cancel",
    "models",
    "subscribe",
    "unsubscribe",
    "subscriptions",
    "test",
    "rotate-secret",
    "pause",
    "resume",
    "recover",
    "deliveries",
    "retry",
    "events",
    "tail",
    "keys",
    "create-key",
    "revoke-key",
    "listen",
    "trigger",
    "providers",
)


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
    # A second job of its own, so a page of one has a next page whichever
    # tests ran before this one on the module's shared service.
    second = cli("submit", "apiframe/kling-2.5-turbo-pro", "a dog", service=service)
    assert second.returncode == 0, second.stderr
    second_id = second.stdout.split()[0]
    page = json.loads(cli("jobs", "--limit", "1", "--json", service=service).stdout)
    assert len(page["data"]) == 1 and page["next_cursor"]
    following = cli("jobs", "--limit", "1", "--cursor", page["next_cursor"], service=service)
    assert following.returncode == 0, following.stderr
    newest_two = {page["data"][0]["id"], following.stdout.split()[0]}
    assert newest_two == {job_id, second_id}
    # For people, a full page says how to ask for the next one, on stderr so pipes see only rows.
    first = cli("jobs", "--limit", "1", service=service)
    assert first.stdout.split()[0] == page["data"][0]["id"]
    assert f"more: add --cursor {page['next_cursor']}" in first.stderr
    assert "--cursor" not in first.stdout
    bad = cli("jobs", "--cursor", "not-a-job-id", service=service)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "answered 422: validation_failed: cursor: is not a cursor" in bad.stderr
    finished(service, job_id)  # so its events do not land in a later test's tail
    finished(service, second_id)


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
    # The service is shared by the module: leave no subscription for `trigger` to find later.
    assert cli("unsubscribe", sub["id"], service=service).returncode == 0
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


def from_now(service: Service) -> list[str]:
    """``tail`` options that start after the newest event (from the start if there is none)."""
    with service.api() as api:
        page = api.get("/v1/events", params={"limit": "1000"}).json()
    assert page["next_cursor"] is None
    return ["--after", page["data"][-1]["id"]] if page["data"] else ["--from-start"]


def submit_and_finish(service: Service, prompt: str) -> str:
    done = reelhook("submit", "trinetra/kling-v3", prompt, "--wait", "--json", service=service)
    assert done.returncode == 0, done.stderr
    job_id: str = json.loads(done.stdout)["id"]
    return job_id


def read_ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_tail_prints_new_events(service: Service) -> None:
    """Only events of the asked type, from after the given event, one line each. The module's
    service is shared: a job another test submitted may finish while this one runs, so the
    lines are read up to this test's job rather than counted."""
    tail = subprocess.Popen(
        [REELHOOK, "tail", *from_now(service), "--type", "job.succeeded"],
        env=cli_env(REELHOOK_URL=service.url, REELHOOK_API_KEY=ADMIN_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = submit_and_finish(service, "tail me")
        assert tail.stdout is not None
        printed: queue.Queue[str] = queue.Queue()
        stdout = tail.stdout

        def read() -> None:
            for line in stdout:
                printed.put(line)

        threading.Thread(target=read, daemon=True).start()
        lines: list[list[str]] = []
        deadline = time.monotonic() + 20
        while not any(parts[2:3] == [job_id] for parts in lines):
            lines.append(printed.get(timeout=max(0.01, deadline - time.monotonic())).split())
    finally:
        tail.terminate()
        tail.communicate(timeout=10)
    assert all(parts[1] == "job.succeeded" for parts in lines), lines
    [mine] = [parts for parts in lines if parts[2] == job_id]
    assert mine[-1].startswith("http")


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


def caused(got: list[dict[str, Any]], job_id: str) -> bool:
    """Both events the listen test causes arrived: the triggered sample and its own job's."""
    return any(e["data"].get("provider_job_id") == SAMPLE_JOB for e in got) and any(
        e["data"].get("id") == job_id for e in got
    )


def settled(service: Service) -> None:
    """Wait (20 s at most) until every job of the shared service has finished."""
    deadline = time.monotonic() + 20
    with service.api() as api:
        while any(
            job["completed_at"] is None
            for job in api.get("/v1/jobs", params={"limit": "200"}).json()["data"]
        ):
            assert time.monotonic() < deadline, "a job of an earlier test did not finish"
            time.sleep(0.05)


def test_providers_shows_the_account_webhook_url(service: Service, cli: Callable[..., Ran]) -> None:
    shown = cli("providers", service=service)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["trinetra", "simulated", "results:", "per_job"]
    label, url = lines[1].split(": ", 1)
    assert label.strip() == "account webhook URL"
    assert "/v1/callbacks/trinetra/account/" in url
    assert [line.split()[0] for line in lines[2:]] == ["apiframe", "segmind"]
    page = json.loads(cli("providers", "--json", service=service).stdout)
    assert [p["account_webhook_url"] for p in page["data"]] == [url, None, None]
    # The URL takes Trinetra's terminal document for a job of this service.
    with service.api() as api:
        created = api.post(
            "/v1/jobs", json={"model": "trinetra/kling-v3", "input": {"prompt": "A fox"}}
        ).json()
        document = {
            "id": created["provider_job_id"],
            "status": "succeeded",
            # The simulator's own file, so the mirror copies it at once and job.succeeded is
            # published now, not after download retries, in the middle of a later test.
            "output": {
                "outputs": [{"url": f"{service.url}/sim/trinetra/files/a.mp4", "type": "video"}]
            },
        }
        answer = api.post(url, json=document)
        assert answer.status_code == 200, answer.text
        assert answer.json()["job_id"] == created["id"]
    finished(service, created["id"])
    # job.succeeded is published once the output is mirrored: wait for it, so that no later
    # test following the event stream sees this job's event.
    deadline = time.monotonic() + 10
    with service.api() as api:
        while not [
            e
            for e in api.get(
                "/v1/events", params={"type": "job.succeeded", "limit": "1000"}
            ).json()["data"]
            if e["data"]["id"] == created["id"]
        ]:
            assert time.monotonic() < deadline, "job.succeeded was not published"
            time.sleep(0.05)


class Receiver:
    """A loopback webhook endpoint in a thread that verifies every request with the
    ``standardwebhooks`` library (the secret is set once it is known) and records what it got."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.verified: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                problem: str | None = None
                try:
                    assert receiver.secret is not None
                    payload = standardwebhooks.Webhook(receiver.secret).verify(body, headers)
                except Exception as exc:  # any failure is a rejection to report
                    problem, status = repr(exc), 400
                else:
                    status = 204
                with receiver.arrived:
                    if problem is None:
                        receiver.verified.append(payload)
                        receiver.headers.append(headers)
                    else:
                        receiver.rejected.append(problem)
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, within: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        with self.arrived:
            while len(self.verified) < count:
                assert not self.rejected, self.rejected
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.verified)} of {count} requests arrived"
                self.arrived.wait(left)
        assert not self.rejected, self.rejected
        return list(self.verified)

    def wait_until(
        self, done: Callable[[list[dict[str, Any]]], bool], within: float = 20.0
    ) -> list[dict[str, Any]]:
        """The verified requests once ``done`` says they are complete (other tests' events may
        arrive in between)."""
        deadline = time.monotonic() + within
        with self.arrived:
            while not done(self.verified):
                assert not self.rejected, self.rejected
                left = deadline - time.monotonic()
                assert left > 0, self.verified
                self.arrived.wait(left)
        assert not self.rejected, self.rejected
        return list(self.verified)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver()
    yield received
    received.close()


def test_listen_forwards_signed_events_and_trigger_sends_samples(
    service: Service, cli: Callable[..., Ran], receiver: Receiver
) -> None:
    settled(service)  # so no earlier test's job finishes while listen counts its events
    subscriber = Receiver()
    try:
        subscribed = cli(
            "subscribe", subscriber.url, "-e", "job.succeeded", "--json", service=service
        )
        assert subscribed.returncode == 0, subscribed.stderr
        sub = json.loads(subscribed.stdout)
        subscriber.secret = sub["secret"]
        listen = subprocess.Popen(
            [
                *(REELHOOK, "listen", "--forward-to", receiver.url, "-e", "job.succeeded"),
                *("--json", "-H", "X-Local: yes"),
            ],
            env=cli_env(REELHOOK_URL=service.url, REELHOOK_API_KEY=ADMIN_KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listen.stdout is not None and listen.stderr is not None
            started = json.loads(listen.stdout.readline())
            assert started["forward_to"] == receiver.url
            receiver.secret = started["secret"]
            assert receiver.secret.startswith("whsec_") and receiver.secret != sub["secret"]
            assert listen.stderr.readline().startswith("Ready! Forwarding job.succeeded events")
            # trigger: to every active subscription listening to the type, then to one by id.
            triggered = cli("trigger", "job.succeeded", service=service)
            assert triggered.returncode == 0, triggered.stderr
            assert f"queued for {sub['id']}" in triggered.stdout
            job_id = submit_and_finish(service, "listen to me")
            # Another test's job may finish meanwhile: wait for the two this test caused.
            forwarded = receiver.wait_until(lambda got: caused(got, job_id))
            samples = [e for e in forwarded if e["data"]["provider_job_id"] == SAMPLE_JOB]
            ours = [e for e in forwarded if e["data"]["id"] == job_id]
            # listen prints each outcome once the local URL has answered.
            outcomes = [json.loads(listen.stdout.readline()) for _ in forwarded]
        finally:
            listen.send_signal(signal.SIGINT)
            _, err = listen.communicate(timeout=30)
        assert listen.returncode == 130, err  # stopped with Ctrl-C, as a person does
        # One sample per subscription the trigger reached (an earlier test's may still listen).
        assert len(ours) == 1 and samples
        assert {e["type"] for e in samples + ours} == {"job.succeeded"}
        assert samples[0]["data"]["model"] == "trinetra/kling-v3"
        assert {o["status_code"] for o in outcomes} == {204}
        assert {o["event_id"] for o in outcomes} >= {h["webhook-id"] for h in receiver.headers[:1]}
        assert all(h["x-local"] == "yes" for h in receiver.headers)
        # The subscription got the same sample (and the real event), signed with its own secret.
        got = subscriber.wait_until(lambda got: caused(got, job_id))
        assert {e["type"] for e in got} == {"job.succeeded"}
        assert sum(e["data"]["provider_job_id"] == SAMPLE_JOB for e in got) == 1
        one = cli("trigger", "ping", "--subscription", sub["id"], "--json", service=service)
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["data"][0]["type"] == "ping"
        subscriber.wait_until(lambda got: any(e["type"] == "ping" for e in got))
    finally:
        subscriber.close()
        cli("unsubscribe", sub["id"], service=service)
    user_error(cli("trigger", "job.expired", service=service), 1, "no active subscription")
    user_error(
        cli("listen", "--forward-to", "ftp://x", service=service), 2, "expected an http(s) URL"
    )
    user_error(
        cli("listen", "-f", receiver.url, "--secret", "whsec_!!", service=service), 2, "--secret"
    )


def test_listen_reports_a_local_handler_that_is_down(service: Service) -> None:
    port = free_port()
    listen = subprocess.Popen(
        [
            REELHOOK,
            "listen",
            "-f",
            f"http://127.0.0.1:{port}/hook",
            "-e",
            "job.succeeded",
            "-n",
            "1",
        ],
        env=cli_env(REELHOOK_URL=service.url, REELHOOK_API_KEY=ADMIN_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert listen.stderr is not None
    assert listen.stderr.readline().startswith("Ready!")
    submit_and_finish(service, "nobody home")
    out, err = listen.communicate(timeout=30)
    assert listen.returncode == 0, err
    first, line = out.splitlines()
    assert first.startswith("Your webhook signing secret is whsec_")
    assert "--> job.succeeded" in line and "[failed: ConnectError" in line


def test_models_subscriptions_deliveries_events_as_tables_and_json(
    service: Service, cli: Callable[..., Ran], receiver: Receiver
) -> None:
    models = cli("models", service=service)
    assert models.returncode == 0, models.stderr
    header, *rows = models.stdout.splitlines()
    assert header.split()[:3] == ["MODEL", "PROVIDER", "AVAILABLE"]
    assert any(row.startswith("trinetra/kling-v3 ") for row in rows)
    one = cli("models", "trinetra/kling-v3", "--api-key", "", REELHOOK_URL=service.url)
    assert one.returncode == 0, one.stderr  # the catalog needs no key
    assert "duration" in one.stdout and "PARAMETER" in one.stdout
    assert json.loads(cli("models", "--json", service=service).stdout)["data"]
    user_error(cli("models", "nope/x", service=service), 1, "no model 'nope/x'")

    subscribed = json.loads(
        cli("subscribe", receiver.url, "-e", "ping", "--json", service=service).stdout
    )
    sub_id = subscribed["id"]
    receiver.secret = subscribed["secret"]
    listed = cli("subscriptions", service=service)
    assert listed.returncode == 0 and sub_id in listed.stdout and "URL" in listed.stdout
    shown = cli("subscriptions", sub_id, service=service)
    assert "url:" in shown.stdout and receiver.url in shown.stdout
    assert (
        json.loads(cli("subscriptions", sub_id, "--json", service=service).stdout)["id"] == sub_id
    )

    tested = cli("test", sub_id, service=service)
    assert tested.returncode == 0 and tested.stdout.startswith("ping evt_")
    receiver.wait_for(1)
    deadline = time.monotonic() + 10
    while True:  # received; its outcome is recorded a moment later
        deliveries = json.loads(
            cli("deliveries", "--subscription", sub_id, "--json", service=service).stdout
        )["data"]
        if deliveries and deliveries[0]["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.05)
    delivery_id = deliveries[0]["id"]
    table = cli("deliveries", "--subscription", sub_id, "--status", "succeeded", service=service)
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "EVENT"]
    assert delivery_id in table.stdout
    detail = cli("deliveries", delivery_id, service=service)
    assert "ATTEMPTED" in detail.stdout and "204" in detail.stdout
    retried = cli("retry", delivery_id, service=service)
    assert retried.returncode == 0 and retried.stdout.startswith(f"{delivery_id} queued")
    receiver.wait_for(2)

    rotated = cli("rotate-secret", sub_id, service=service)
    new_secret = rotated.stdout.split("shown once): ")[1].split()[0]
    assert new_secret.startswith("whsec_") and new_secret != subscribed["secret"]
    # Within the grace period both secrets sign, so the old one still verifies.
    cli("test", sub_id, service=service)
    receiver.wait_for(3)
    receiver.secret = new_secret
    cli("test", sub_id, service=service)
    receiver.wait_for(4)

    # Three pings went out (the retry resent the first): two pages of two, by --cursor.
    by_sub = ("deliveries", "--subscription", sub_id, "--limit", "2")
    front = json.loads(cli(*by_sub, "--json", service=service).stdout)
    assert len(front["data"]) == 2 and front["next_cursor"]
    back = cli(*by_sub, "--cursor", front["next_cursor"], service=service)
    assert back.returncode == 0, back.stderr
    rest = [line.split()[0] for line in back.stdout.splitlines()[1:]]
    assert len(rest) == 1 and rest[0] not in {row["id"] for row in front["data"]}
    assert "--cursor" not in back.stderr  # the last page says nothing more follows

    paused = cli("pause", sub_id, service=service)
    assert paused.stdout.strip() == f"{sub_id} disabled"
    user_error(cli("test", sub_id, service=service), 1, "disabled")
    assert cli("resume", sub_id, service=service).stdout.strip() == f"{sub_id} active"
    recovered = cli("recover", sub_id, "--since", "2020-01-01T00:00:00Z", service=service)
    assert recovered.returncode == 0 and recovered.stdout.startswith("0 failed deliveries")

    events = cli("events", "--type", "ping", "--limit", "2", service=service)
    assert events.stdout.splitlines()[0].split() == ["ID", "TYPE", "TIME", "ABOUT"]
    assert sub_id in events.stdout
    assert (
        len(json.loads(cli("events", "--json", "--limit", "2", service=service).stdout)["data"])
        == 2
    )

    cli("unsubscribe", sub_id, service=service)
    user_error(cli("retry", delivery_id, service=service), 1, "deleted")
    user_error(cli("subscriptions", sub_id, service=service), 1, "404")


def test_keys_create_list_revoke(service: Service, cli: Callable[..., Ran]) -> None:
    created = cli("create-key", "ci bot", "-s", "jobs:read", service=service)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[0]
    secret = created.stdout.split("shown once): ")[1].strip()
    assert secret.startswith("rh_")
    listed = cli("keys", service=service)
    assert key_id in listed.stdout and "ci bot" in listed.stdout
    assert cli("jobs", "--api-key", secret, REELHOOK_URL=service.url).returncode == 0
    user_error(cli("keys", "--api-key", secret, REELHOOK_URL=service.url), 1, "403")
    shown = json.loads(cli("keys", key_id, "--json", service=service).stdout)
    assert shown["scopes"] == ["jobs:read"] and shown["revoked_at"] is None
    assert cli("revoke-key", key_id, service=service).stdout.strip() == f"{key_id} revoked"
    user_error(cli("jobs", "--api-key", secret, REELHOOK_URL=service.url), 1, "401")
    usage = cli("create-key", "x", "-s", "root", service=service)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_cancel_a_job_and_its_late_result_changes_nothing(
    service: Service, cli: Callable[..., Ran]
) -> None:
    with httpx.Client(trust_env=False, headers={"X-API-Key": ADMIN_KEY}) as http:
        rule = {"match": "cancel-me", "delay": 1.0}
        assert http.post(f"{service.url}/sim/_sim/scenario", json=rule).status_code == 201
        submitted = cli("submit", "trinetra/kling-v3", "cancel-me", service=service)
        job_id = submitted.stdout.split()[0]
        canceled = cli("cancel", job_id, service=service)
        assert canceled.returncode == 0, canceled.stderr
        assert canceled.stdout.strip() == f"{job_id} canceled"
        # The simulator still finishes the job and calls back: stored, nothing changes.
        deadline = time.monotonic() + 15
        while True:
            rules = http.get(f"{service.url}/sim/_sim/scenario").json()["rules"]
            if any(r["match"] == "cancel-me" and r["callbacks"] for r in rules):
                break
            assert time.monotonic() < deadline, "the simulator never called back"
            time.sleep(0.05)
        time.sleep(0.3)  # the callback's answer is applied before the simulator records it
    job = json.loads(cli("jobs", job_id, "--json", service=service).stdout)
    assert job["status"] == "canceled" and job["outputs"] == []
    assert job["error"]["kind"] == "canceled"
    with service.api() as api:
        types = [
            e["type"]
            for e in api.get("/v1/events", params={"limit": "1000"}).json()["data"]
            if e["data"].get("id") == job_id
        ]
    assert types.count("job.canceled") == 1 and "job.succeeded" not in types
    user_error(cli("cancel", job_id, service=service), 1, "already finished")
