"""Logging that a flood cannot turn into a flood of log lines.

Thread-safety: a Sparse may be called from any thread; under a race two
threads may both log, or a count may be off by one, never worse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_INTERVAL = 10.0  # seconds between two summary lines about the same trouble


class Sparse:
    """Logs a recurring event at most once per interval, with a count of the rest."""

    def __init__(self, logger: logging.Logger, message: str, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, level: int = logging.WARNING):
        self._log = logger
        self._level = level
        self._message = message
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._count = 0

    def __call__(self, exc_info: bool = False) -> None:
        self._count += 1
        now = self._clock()
        if now >= self._next:
            self._log.log(self._level, "%s (%d in the last %.0f s)", self._message, self._count, self._interval,
                          exc_info=exc_info)
            self._count = 0
            self._next = now + self._interval
