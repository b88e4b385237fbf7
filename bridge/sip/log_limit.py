"""A log that strangers cannot flood: what a peer does is logged once per source and interval,
and only a few lines a second in all. Sans-I/O apart from the logger it writes to: time comes in.
The SIP side shares one limiter (``SourceGate.logs``): requests over UDP, TCP and TLS and the
connections themselves draw on the same few lines a second.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

__all__ = ["LogLimiter"]

_MAX_KEYS = 4096  # (source, kind) pairs remembered; the least recently logged forgotten first


class LogLimiter:
    """Lets a line through at most once per ``interval`` for each (source, kind) key, and at
    most ``per_second`` lines a second over all lines (``burst`` at once, twice the rate unless
    given). A line without a key is held only by the rate. What it holds back is counted and
    said with the next line that gets through."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        per_second: float = 5.0,
        burst: float | None = None,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.per_second = per_second
        self.burst = 2 * per_second if burst is None else burst
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._tokens = self.burst
        self._stamp: float | None = None
        self.suppressed = 0  # lines held back since the last one written

    def log(
        self,
        level: int,
        key: tuple[str, str] | None,
        now: float,
        message: str,
        *args: object,
        exc_info: bool = False,
    ) -> bool:
        """Write ``message % args`` unless this key was logged less than ``interval`` ago or
        the overall rate is spent; returns whether it was written."""
        if not self.logger.isEnabledFor(level):
            return False
        last = None if key is None else self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        if key is not None:
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > _MAX_KEYS:
                self._last.popitem(last=False)
        if self.suppressed:  # said on the same line: the rate counts lines
            message += " (%d log lines about peers were left out before this one)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
