"""Folding the store's write-ahead log back into the database, in the background.

SQLite folds its WAL (a checkpoint) inside whichever commit crosses 1,000 pages unless told
otherwise, and every callback of that ingest batch, and those queued behind it, waited for it:
the slowest acknowledgements (docs/performance.md §4, "WAL checkpoints"). This worker folds it
from a connection of its own while the writes go on (:meth:`Database.fold_log`), and sleeps
while nothing is written. PostgreSQL folds its own log; there the worker sleeps for good.
"""

from __future__ import annotations

import anyio

from service.core.worker import run_worker
from service.storage.database import Database


class LogFolder:
    """Run :meth:`run` in the lifespan task group."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def run(self) -> None:
        # Asleep while nothing is written (the store sets ``written`` after each commit; on
        # PostgreSQL never), at most one fold per ``fold_log``'s interval while writes come.
        await run_worker("log folding", self._step, self._db.written)

    async def _step(self) -> float | None:
        wait = await self._db.fold_log()
        if wait is None:
            return None
        # Slept here, not by the worker's wake-up, which every commit sets.
        await anyio.sleep(wait)
        return 0
