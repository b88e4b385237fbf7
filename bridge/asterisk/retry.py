"""How a source waits and complains while Asterisk cannot be reached (shared by AMI and ARI)."""

from __future__ import annotations

import logging
import random


def reconnect_delay(failures: int, low: float, high: float) -> float:
    """Seconds to wait before the next attempt: ``low`` after a lost session (0 failures) and
    after the first failure, then doubling up to ``high``, with jitter so that bridges started
    together do not reconnect in step."""
    base = min(high, low * 2.0 ** min(max(failures - 1, 0), 30))
    return min(high, base * random.uniform(1.0, 1.25))


class ProblemLog:
    """Logs a connect/login problem once at WARNING; the same problem again only at DEBUG."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last = ""

    def report(self, text: str) -> None:
        """A problem seen now."""
        level = logging.DEBUG if text == self._last else logging.WARNING
        self._log.log(level, "%s (retrying with backoff)", text)
        self._last = text

    def clear(self) -> None:
        """Things work again: the next problem is news."""
        self._last = ""
