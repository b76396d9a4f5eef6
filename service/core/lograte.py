"""A recurring warning logged at most once per interval, with how often it recurred meanwhile.

A full disk makes every callback batch and every write request fail the same way; one line each
was about 5,900 lines a minute at 50 callbacks/s (bench/results/latest.md, isolation scenario d),
which buries everything else in the log and fills the disk the log is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Occasional:
    """Logs through ``logger`` at most once per ``every`` seconds; the next line that gets
    through says how many were left out since the last one. One per place that logs."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every = every
        self._clock = clock
        self._last: float | None = None
        self.left_out = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log ``message % args`` at ``level`` unless one was logged less than ``every``
        seconds ago (then only count it); True when it was logged."""
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            self.left_out += 1
            return False
        if self.left_out:
            message += " (and %d more like it since the last such line)"
            args = (*args, self.left_out)
        self._logger.log(level, message, *args)
        self._last = now
        self.left_out = 0
        return True

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)
