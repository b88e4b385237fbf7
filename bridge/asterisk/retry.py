"""How a source keeps trying while Asterisk cannot be reached (one loop for AMI and ARI).

A source is a series of sessions: connect, log in, resync, stream events until the connection
goes. :class:`ReconnectLoop` runs them one after another with backoff, so both sources share
one answer to "what happens when…": Asterisk is not there, refuses the login, hangs up, or our
own code raises something nobody expected. The last must never end the source quietly: it is
logged with its traceback (once; the same failure again gets one line) and the next session
starts after the backoff, with a full resync like any reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from bridge.asterisk.delivery import OrderedEvents

# One connection's life; True when Asterisk accepted the login, so the backoff starts over.
Session = Callable[[], Coroutine[Any, Any, bool]]


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


class ReconnectLoop:
    """Runs a source's sessions one after another, with backoff, until :meth:`stop`.

    It also runs the task that hands the source's events over (``events``), so everything a
    session queued is delivered before :meth:`run` returns.
    """

    def __init__(
        self,
        what: str,
        session: Session,
        events: OrderedEvents,
        log: logging.Logger,
        *,
        backoff_min: float,
        backoff_max: float,
    ) -> None:
        self.what = what  # "AMI", "ARI": for the log
        self.stopping = asyncio.Event()  # set by stop(); a session ends when it sees it
        self.problems = ProblemLog(log)  # a session reports connect/login trouble here
        self._session = session
        self._events = events
        self._log = log
        self._backoff = (backoff_min, backoff_max)
        self._attempt: asyncio.Task[bool] | None = None
        self._last_failure = ""  # the unexpected exception logged last, as text

    async def run(self) -> None:
        """Sessions until ``stop()`` or cancellation; returns once every event is delivered."""
        self.stopping.clear()
        deliverer = asyncio.create_task(self._events.deliver(), name=f"{self.what}-deliver")
        failures = 0
        try:
            while not self.stopping.is_set():
                established = await self._one_session()
                failures = 0 if established else failures + 1
                if self.stopping.is_set():
                    break
                delay = reconnect_delay(failures, *self._backoff)
                self._log.debug("reconnecting to %s in %.2f s", self.what, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
            self._events.put_nowait(None)
            await deliverer
        finally:
            if self._attempt is not None and not self._attempt.done():
                self._attempt.cancel()
            deliverer.cancel()

    def stop(self, *, cut_attempt: bool) -> None:
        """Make ``run()`` return. ``cut_attempt``: the session has not got through yet (still
        connecting or logging in), so cancel it rather than sit out its timeout; otherwise the
        session sees ``stopping`` and ends itself (logging off on the way)."""
        self.stopping.set()
        if cut_attempt and self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()

    async def _one_session(self) -> bool:
        self._attempt = asyncio.create_task(self._session(), name=f"{self.what}-session")
        try:
            established = await self._attempt
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # run() itself is being cancelled
            return False  # stop() cut a connect or login attempt short
        except Exception as exc:  # a bug or a surprise from a library: log it, never die of it
            self._failed(exc)
            return False
        if established:
            self._last_failure = ""
        return established

    def _failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text == self._last_failure:
            self._log.warning("%s session failed again: %s (retrying with backoff)", self.what,
                              text)  # fmt: skip
        else:
            self._log.error("%s session failed unexpectedly (retrying with backoff)", self.what,
                            exc_info=exc)  # fmt: skip
        self._last_failure = text
