"""A throwaway PostgreSQL 15 cluster for the tests: initdb + pg_ctl in a temporary directory,
listening on a free loopback port, fsync off (the data dies with the session anyway).

Debian's ``postgresql-15`` package provides the binaries (``.ci/run`` installs it). Without it
the PostgreSQL tests are skipped on a developer's machine and fail under ``CI=true``. initdb
refuses to run as root, so as root the cluster belongs to the ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import loopback_socket

BINDIR = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "reelhook"


def missing(reason: str) -> None:
    """Skip, or fail under CI: a missing PostgreSQL must never pass silently there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Cluster:
    """A running cluster; every database on it is reachable as :data:`SUPERUSER` without a
    password (trust authentication, loopback only)."""

    port: int
    # Where its files are and how its tools are run (as root: as the ``postgres`` user), for
    # :meth:`restart`.
    data: Path | None = None
    prefix: list[str] = field(default_factory=list)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back on the same
        port with the same options (a test of reconnecting clients)."""
        assert self.data is not None
        # The new server logs to the cluster's file: with the output captured instead, it would
        # hold the pipe open and this call would wait for ever.
        subprocess.run(
            [
                *self.prefix,
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
        # FORCE: a node a failed test left running must not keep the database alive.
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_cluster_owner() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL's tools, and the user owning the data directory."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing("running as root without a 'postgres' user to own the test cluster")
    return ["runuser", "-u", "postgres", "--"], "postgres"


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster; stop it (immediately) and delete its files on exit."""
    if not (BINDIR / "initdb").exists():
        missing(f"PostgreSQL 15 is not installed ({BINDIR}; Debian package postgresql-15)")
    prefix, owner = _as_cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="reelhook-pg-"))
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
        with loopback_socket() as sock:
            port = sock.getsockname()[1]
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
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
            yield Cluster(port, data, prefix)
        finally:
            subprocess.run(
                [*prefix, str(BINDIR / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
