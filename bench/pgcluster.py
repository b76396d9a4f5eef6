"""A throwaway PostgreSQL 15 cluster: initdb + pg_ctl in a temporary directory, listening on a
free loopback port. Shared by the tests (``tests/postgres.py``, fsync off: the data dies with the
session) and the benchmark (``bench/stores.py``, durable like production: fsync and synchronous
commit on, so it compares fairly with SQLite's ``synchronous=FULL``).

It lives under ``bench/`` because it is a development tool, not part of the service: the tests
import it from here (a test helper may use a bench helper; the bench never imports the tests).

Debian's ``postgresql-15`` package provides the binaries. initdb refuses to run as root, so as
root the cluster belongs to the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procs import free_port

BINDIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "reelhook"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here (not installed, or no user to own the cluster)."""


@dataclass(frozen=True)
class Cluster:
    """A running cluster; every database on it is reachable as :data:`SUPERUSER` without a
    password (trust authentication, loopback only)."""

    port: int
    data: Path

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql (outside any event loop); return its unaligned output."""
        done = subprocess.run(
            [
                str(BINDIR / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE: a node a failed run left running must not keep the database alive.
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut and the server comes back on the
        same port with the same options (tests/test_multinode.py restarts one under load). The
        new server logs to the cluster's file: with its output captured it would hold the pipe
        open and this call would never return."""
        prefix, _ = _as_cluster_owner()
        subprocess.run(
            [
                *prefix,
                str(BINDIR / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.data.parent / "log"),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])


def _as_cluster_owner() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL's tools, and the user owning the data directory."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root without a 'postgres' user to own the cluster") from None
    return ["runuser", "-u", "postgres", "--"], "postgres"


@contextmanager
def throwaway_cluster(*, durable: bool = False, port: int | None = None) -> Iterator[Cluster]:
    """Start a fresh cluster; stop it (immediately) and delete its files on exit.

    ``durable``: fsync, full-page writes and synchronous commit on (the server's defaults), for
    measurements; otherwise all off, for tests. ``port``: where it listens, by default a port
    free now (the tests pass one of tests/servers.py's, which no other server can take before
    the cluster binds it). Raises :class:`Unavailable`.
    """
    if not (BINDIR / "initdb").exists():
        raise Unavailable(
            f"PostgreSQL 15 is not installed ({BINDIR}; Debian package postgresql-15)"
        )
    prefix, owner = _as_cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="reelhook-pg-", dir=os.environ.get("BENCH_DIR")))
    try:
        if owner is not None:
            shutil.chown(root, user=owner)
        data = root / "data"
        subprocess.run(
            [
                *prefix,
                str(BINDIR / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
        )
        port = free_port() if port is None else port
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            [
                *prefix,
                str(BINDIR / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            yield Cluster(port, data)
        finally:
            subprocess.run(
                [*prefix, str(BINDIR / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
