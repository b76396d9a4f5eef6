"""Folding the store's write-ahead log back into the database, in the background.

SQLite folds its WAL (a checkpoint) inside whichever commit crosses 1,000 pages unless told
otherwise, and every callback of that ingest batch, and those queued behind it, waited for it:
the slowest acknowledgements (docs/performance.md §4, "WAL checkpoints"). This worker folds it
from a connection of its own while the writes go on (:meth:`Database.fold_log`). PostgreSQL
folds its own log; there the worker's first step finds nothing to do and it sleeps for good.
"""

from __future__ import annotations

from service.core.worker import Wakeup, run_worker
from service.storage.database import Database


class LogFolder:
    """Run :meth:`run` in the lifespan task group."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Nothing wakes it early: it folds on its own schedule, or never (PostgreSQL).
        self._wakeup = Wakeup()

    async def run(self) -> None:
        await run_worker("log folding", self._db.fold_log, self._wakeup)
