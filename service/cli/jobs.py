"""``reelhook submit`` and ``reelhook jobs``."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any, TextIO

from service.cli.base import CliError, Commands, client_options, print_json, video_url
from service.cli.remote import Remote, add_paging, show_one_or_page
from service.core.models import JOB_EVENT_TYPES, JobStatus
from service.jobs.catalog import MODELS

_TERMINAL = {status.value for status in JobStatus if status.terminal}


def register(commands: Commands) -> None:
    options = client_options()
    submit_parser = commands.add_parser(
        "submit",
        parents=[options],
        help="submit a video job (optionally wait for it)",
        description="Submit a Kling video job. The model's parameters go in with --param; "
        "`GET /v1/models` (or the README) lists them. With --wait, follow the job's events "
        "until it finishes, showing its progress, and exit 0 only if it succeeded.",
        epilog="models: " + ", ".join(MODELS),
    )
    submit_parser.add_argument("model", help="e.g. trinetra/kling-v3")
    submit_parser.add_argument("prompt", help="what the video shows")
    submit_parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input parameter, e.g. -p duration=5 -p aspect_ratio=9:16 "
        "(values are read as JSON when they parse, else as text); repeatable",
    )
    submit_parser.add_argument(
        "--metadata",
        metavar="JSON",
        help='your own object, returned in every event: {"chat_id": 42}',
    )
    submit_parser.add_argument(
        "--callback-url", metavar="URL", help="also send this job's signed events to URL"
    )
    submit_parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="resubmitting with the same key returns the same job",
    )
    submit_parser.add_argument(
        "--wait", action="store_true", help="wait for the job to finish, showing its progress"
    )
    submit_parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (default 3600; the job carries on)",
    )
    submit_parser.set_defaults(handler=submit)

    jobs_parser = commands.add_parser(
        "jobs",
        parents=[options],
        help="list jobs, or show one",
        description="List your jobs, newest first, or show one job in full.",
    )
    jobs_parser.add_argument("job_id", nargs="?", help="show this job")
    jobs_parser.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs_parser.add_argument("--model", metavar="MODEL", help="only jobs of this model")
    add_paging(jobs_parser, 20)
    jobs_parser.set_defaults(handler=list_jobs)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _job_request(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": args.prompt}
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise CliError(f"--param {item!r}: expected NAME=VALUE", code=2)
        params[name] = _value(text)
    body: dict[str, Any] = {"model": args.model, "input": params}
    if args.metadata is not None:
        try:
            body["metadata"] = json.loads(args.metadata)
        except ValueError as exc:
            raise CliError(f"--metadata is not valid JSON: {exc}", code=2) from None
    if args.callback_url is not None:
        body["callback_url"] = args.callback_url
    return body


def submit(args: argparse.Namespace) -> int:
    body = _job_request(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with Remote(args.url, args.api_key) as remote:
        job: dict[str, Any] = remote.request("POST", "/v1/jobs", json=body, headers=headers)
        if not args.json:
            cost = job["cost"]
            print(
                f"{job['id']} {job['status']} · {job['model']} · "
                f"estimated {cost['estimated']:g} {cost['unit']}"
            )
            if "callback_secret" in job:
                print(f"callback secret (shown once): {job['callback_secret']}")
        if args.wait:
            job = _wait(remote, job, args.timeout, Progress(sys.stderr))
    if args.json:
        print_json(job)
    elif args.wait:
        _print_outcome(job)
    return 0 if not args.wait or job["status"] == JobStatus.SUCCEEDED else 1


def _print_outcome(job: dict[str, Any]) -> None:
    print(f"{job['id']} {job['status']}")
    video = video_url(job)
    if video:
        print(f"video: {video}")
    if job.get("error"):
        error = job["error"]
        print(f"error: {error['kind']}: {error['message']}", file=sys.stderr)


class Progress:
    """The job's state while waiting: one line redrawn in place on a terminal, otherwise one line
    per change (so logs stay readable)."""

    _SPINNER = "|/-\\"

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._start = time.monotonic()
        self._job = ""
        self._status = ""
        self._frame = 0

    def show(self, job_id: str, status: str) -> None:
        changed = status != self._status
        self._job, self._status = job_id, status
        if self._tty:
            self.tick()
        elif changed:
            self._out.write(f"{job_id} {status} after {self._elapsed()}\n")
            self._out.flush()

    def note(self, text: str) -> None:
        self._clear()
        self._out.write(f"{text}\n")
        self._out.flush()

    def tick(self) -> None:
        if not self._tty or not self._job:
            return
        self._frame += 1
        spinner = self._SPINNER[self._frame % len(self._SPINNER)]
        self._out.write(f"\r\033[K{spinner} {self._job} {self._status} · {self._elapsed()}")
        self._out.flush()

    def finish(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._tty:
            self._out.write("\r\033[K")

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self._start)
        return f"{seconds // 60}:{seconds % 60:02d}"


def _wait(
    remote: Remote, job: dict[str, Any], timeout: float, progress: Progress
) -> dict[str, Any]:
    """Follow the job's events until it is terminal; return its final document."""
    job_id = job["id"]
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    connected = threading.Event()

    def read_events() -> None:
        try:
            for message in remote.follow(
                types=list(JOB_EVENT_TYPES),
                on_connect=connected.set,
                on_drop=lambda reason: inbox.put(("drop", reason)),
            ):
                event = json.loads(message.data)
                if event.get("data", {}).get("id") == job_id:
                    inbox.put(("event", event["data"]))
        except CliError as exc:
            inbox.put(("error", exc))

    # A daemon thread: it blocks reading the stream and ends with the process.
    threading.Thread(target=read_events, name="reelhook-events", daemon=True).start()
    deadline = time.monotonic() + timeout
    progress.show(job_id, job["status"])
    checked = False
    try:
        while job["status"] not in _TERMINAL:
            if connected.is_set() and not checked:
                # Anything that happened before the stream was open is in the job itself.
                job = remote.request("GET", f"/v1/jobs/{job_id}")
                checked = True
                progress.show(job_id, job["status"])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(
                    f"gave up waiting after {timeout:g} s; {job_id} carries on "
                    f"(see `reelhook jobs {job_id}`)"
                )
            try:
                kind, value = inbox.get(timeout=min(0.2, remaining))
            except queue.Empty:
                progress.tick()
                continue
            if kind == "error":
                raise value
            if kind == "drop":
                progress.note(f"{value}; reconnecting")
            elif kind == "event":
                job = value
                progress.show(job_id, job["status"])
    finally:
        progress.finish()
    return job


def list_jobs(args: argparse.Namespace) -> int:
    return show_one_or_page(
        args,
        "/v1/jobs",
        args.job_id,
        print_one=_print_job,
        print_page=_print_jobs,
        params={"status": args.status, "model": args.model},
    )


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs", file=sys.stderr)
    for job in jobs:
        print(
            f"{job['id']}  {job['status']:<9}  {job['model']:<28}  {job['created_at']}  "
            f"{video_url(job) or ''}".rstrip()
        )


def _print_job(job: dict[str, Any]) -> None:
    cost = job["cost"]
    charged = "" if cost["charged"] is None else f", charged {cost['charged']:g}"
    lines = [
        ("id", job["id"]),
        ("status", job["status"]),
        ("model", job["model"]),
        ("provider job", job["provider_job_id"] or "-"),
        ("created", job["created_at"]),
        ("completed", job["completed_at"] or "-"),
        ("cost", f"estimated {cost['estimated']:g} {cost['unit']}{charged}"),
        ("input", json.dumps(job["input"], ensure_ascii=False)),
        ("metadata", json.dumps(job["metadata"], ensure_ascii=False)),
        ("video", video_url(job) or "-"),
    ]
    if job.get("error"):
        lines.append(("error", f"{job['error']['kind']}: {job['error']['message']}"))
    for name, value in lines:
        print(f"{name + ':':<14}{value}")
