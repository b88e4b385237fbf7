"""A log that strangers cannot flood: what a peer does is logged once per source and interval,
and only a few lines a second in all. Sans-I/O apart from the logger it writes to: time comes in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

__all__ = ["LogLimiter"]

_MAX_KEYS = 4096  # (source, kind) pairs remembered; the least recently logged forgotten first


class LogLimiter:
    """Lets a line through at most once per ``interval`` for each (source, kind) key, and at
    most ``per_second`` lines a second over all keys (a burst of twice that). What it holds
    back is counted and said with the next line that gets through."""

    def __init__(
        self, logger: logging.Logger, *, interval: float = 60.0, per_second: float = 5.0
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.per_second = per_second
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tokens = 2 * per_second
        self._stamp: float | None = None
        self.suppressed = 0  # lines held back since the last one written

    def log(
        self,
        level: int,
        key: tuple[str, str],
        now: float,
        message: str,
        *args: object,
        exc_info: bool = False,
    ) -> bool:
        """Write ``message % args`` unless this key was logged less than ``interval`` ago or
        the overall rate is spent; returns whether it was written."""
        if not self.logger.isEnabledFor(level):
            return False
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        if self._stamp is not None:
            self._tokens = min(
                2 * self.per_second, self._tokens + (now - self._stamp) * self.per_second
            )
        self._stamp = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > _MAX_KEYS:
            self._last.popitem(last=False)
        if self.suppressed:
            message += " (%d similar lines held back before this one)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
