"""Recognising "out of space": a full disk or database is transient, never a permanent failure.

SQLite reports a full disk (or a database at its ``max_page_count``) as ``SQLITE_FULL``; file
writes raise ``OSError`` with ``ENOSPC`` (or ``EDQUOT`` over a quota). Callers answer such errors
with 503 + ``Retry-After`` and retry the work later, with nothing acknowledged lost
(docs/architecture.md, "Overload and a full disk").
"""

from __future__ import annotations

import errno
import sqlite3

RETRY_AFTER = 5
"""Seconds a client is asked to wait before trying again while the disk is full."""

_SQLITE_FULL = 13


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the disk or the database is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == _SQLITE_FULL:
                return True
            if "database or disk is full" in str(current):
                return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False
