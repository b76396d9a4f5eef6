"""A throwaway PostgreSQL 15 cluster for the tests, fsync off (the data dies with the session).

The starter itself is shared with the benchmark (``bench/pgcluster.py``); here a missing
PostgreSQL skips the PostgreSQL tests on a developer's machine and fails them under ``CI=true``.
Debian's ``postgresql-15`` package provides the binaries (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from bench.pgcluster import BINDIR, SUPERUSER, Cluster, Unavailable
from bench.pgcluster import throwaway_cluster as _throwaway_cluster

__all__ = ["BINDIR", "SUPERUSER", "Cluster", "missing", "throwaway_cluster"]


def missing(reason: str) -> None:
    """Skip, or fail under CI: a missing PostgreSQL must never pass silently there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Start a fresh cluster (fsync off); stop it and delete its files on exit."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(_throwaway_cluster(durable=False))
        except Unavailable as exc:
            missing(str(exc))
            raise  # (missing() has raised already)
        yield cluster
