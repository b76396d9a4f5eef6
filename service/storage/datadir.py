"""The data directory's lock: one reelhook process per data directory.

A running reelhook holds an exclusive ``flock`` on ``reelhook.lock`` in its data directory (the
kernel releases it when the process ends, however it ends). A second reelhook on the same data
would deliver every event twice, and a restore under a running one would corrupt it, so both
check this lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "reelhook.lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory's lock."""


@contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s lock while the block runs; raise :class:`DataDirInUse` if held."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    # Read-only and world-readable: flock needs no write access, so the file works for the
    # service user whoever created it (an operator's restore run as root, say).
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(
                f"{data_dir} is in use by another reelhook process (it holds {path})"
            ) from None
        yield
    finally:
        os.close(descriptor)
