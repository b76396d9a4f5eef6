"""Processes of a benchmark run: reelhook, the bare baselines, the sink and the load generator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class LoadTimedOut(RuntimeError):
    """The load generator did not finish in time (the server could not keep up)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process serving HTTP on a loopback port; stopped with SIGTERM on exit.

    With ``listener`` (:func:`start_served`) the child inherits that listening socket and is
    ready once it answers ``GET probe``; without, once its port takes connections."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str],
        log: Path,
        *,
        listener: socket.socket | None = None,
        probe: str = "/",
    ):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("ab")
        inherited = () if listener is None else (listener.fileno(),)
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=inherited
        )
        try:
            if listener is None:
                self._wait_listening()
            else:
                self._wait_answering(probe)
        except BaseException:
            self.stop()  # not listening in time: no one else holds it to stop it
            raise

    def _wait_listening(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {within} s")

    def _wait_answering(self, probe: str, within: float = 30.0) -> None:
        # The inherited socket takes connections from the start; what is queued on it is
        # answered once the child serves. Any answer will do.
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self._check_running()
            try:
                httpx.get(self.url + probe, timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within {within} s")

    def _check_running(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see the log")

    def cpu(self) -> CpuTimes:
        """CPU seconds used so far, read from /proc (see :func:`cpu_times`)."""
        return cpu_times(self.popen.pid)

    def rss_mb(self) -> float:
        """Resident set size of the process, in MiB."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (``/proc/<pid>/stat``)."""
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        # Fields after the command name (which may hold spaces) start after its closing ")".
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds (user + system) of a process: all its threads, and its main thread (the
    event loop's, for reelhook and the sink); the rest is aiosqlite's and other threads'."""

    total: float
    main: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.total - other.total, self.main - other.main)


def _stat_seconds(path: Path, first: int = 14) -> float:
    """Fields ``first`` and ``first + 1`` of a ``stat`` file, in seconds: utime and stime at 14,
    the waited-for children's cutime and cstime at 16."""
    # Counted after the command name, which may contain spaces: field 3 is the first.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[first - 3]) + int(fields[first - 2])) / _TICK


def reaped_children_seconds(pid: int) -> float:
    """CPU seconds of the children ``pid`` has waited for (``cutime`` + ``cstime``, fields 16
    and 17): what its children took with them when they exited."""
    return _stat_seconds(Path(f"/proc/{pid}/stat"), first=16)


def cpu_times(pid: int) -> CpuTimes:
    """Per /proc: the whole thread group (finished threads included) and the main thread."""
    return CpuTimes(
        total=_stat_seconds(Path(f"/proc/{pid}/stat")),
        main=_stat_seconds(Path(f"/proc/{pid}/task/{pid}/stat")),
    )


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def start_served(name: str, module: str, *args: str, log: Path, probe: str = "/") -> Process:
    """``python -m module FD args…``: one of the bench's own servers (:func:`bench.bare.serve`),
    serving the loopback socket it inherits as file descriptor ``FD``. The socket is bound and
    listening before the child starts, so no other process can take its port in between (a
    port found free and then bound by the child could be, by a test running beside it, and the
    child's requests went to that test's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        argv = python("-m", module, str(listener.fileno()), *args)
        port = listener.getsockname()[1]
        return Process(name, argv, port, dict(os.environ), log, listener=listener, probe=probe)


def start_sink(log: Path) -> Process:
    return start_served("sink", "bench.sink", log=log, probe="/_records")


def start_bare(log: Path) -> Process:
    return start_served("bare", "bench.bare", log=log)


def start_floor(log: Path, database: Path, jobs: int) -> Process:
    """:mod:`bench.floor` on a loopback port, its database at ``database`` with ``jobs``
    waiting."""
    return start_served("floor", "bench.floor", str(database), str(jobs), log=log)


def start_service(env: dict[str, str], log: Path) -> Process:
    service = Process(
        "reelhook", python("-m", "service", "serve"), int(env["REELHOOK_PORT"]), env, log
    )
    with httpx.Client(base_url=service.url, timeout=10) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("reelhook is not healthy")
            time.sleep(0.05)
    return service


def run_load(spec: dict[str, Any], *, timeout: float = 300) -> dict[str, Any]:
    """Run the load generator as its own process and return its JSON result (which includes
    the CPU seconds the generator used, ``cpu_s``).

    The result comes back through a file, not a pipe: a large result written to a pipe under
    ``PYTHONUNBUFFERED=1`` was cut at 131,072 bytes.
    """
    with tempfile.TemporaryDirectory(prefix="reelhook-load-") as folder:
        out = Path(folder) / "result.json"
        with subprocess.Popen(
            python("-m", "bench.load", json.dumps({**spec, "result_path": str(out)})),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as child:
            try:
                _, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise LoadTimedOut(f"the load did not finish within {timeout:.0f} s") from None
        if child.returncode != 0:
            raise RuntimeError(f"load generator failed: {stderr.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
    return result


class RssSampler:
    """The peak resident set size of a process, sampled every ``interval`` seconds in a thread
    while the block runs."""

    def __init__(self, process: Process, *, interval: float) -> None:
        self.process = process
        self.peak = 0.0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak = max(self.peak, self.process.rss_mb())
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


ADMIN_KEY = "rh_bench_admin_key_not_secret"
SECRET_KEY = "bench-secret-key-0123456789abcdef"


def service_environment(data: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked ``reelhook serve``: its own data directory and loopback
    port, the bench's keys, private subscribers on loopback allowed, no mirroring, no rate limit;
    ``settings`` (names without the ``REELHOOK_`` prefix) on top."""
    return {
        **os.environ,
        "REELHOOK_DATA_DIR": str(data),
        "REELHOOK_HOST": "127.0.0.1",
        "REELHOOK_PORT": str(port),
        "REELHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SECRET_KEYS": SECRET_KEY,
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
        "REELHOOK_MIRROR_OUTPUTS": "false",
        "REELHOOK_LOG_LEVEL": "WARNING",
        "REELHOOK_RATE_LIMIT": "0",
        **{f"REELHOOK_{name.upper()}": value for name, value in settings.items()},
    }
