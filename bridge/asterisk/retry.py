"""How a source keeps trying while Asterisk cannot be reached (one loop for AMI and ARI).

A source is a series of sessions: connect, log in, resync, stream events until the connection
goes. :class:`ReconnectLoop` runs them one after another with backoff, so both sources share
one answer to "what happens when…": Asterisk is not there, refuses the login, hangs up, or our
own code raises something nobody expected. The last must never end the source quietly: it is
logged with its traceback (once; the same failure again gets one line) and the next session
starts after the backoff, with a full resync like any reconnect.

Failover. A PBX may be reachable at several endpoints (an active/standby pair): the loop tries
them in the configured order, follows the first whose session gets through, and when that one
is lost tries the next at once, each in turn; only a whole round that failed waits the backoff.
Every session resyncs, so the keys are right again after a switch. It does not go back to the
first endpoint by itself while the one it follows answers: in an HA pair the node that comes
back is usually the standby now (an idle Asterisk answers AMI too), and returning home on every
blip would make the keys flap between two views of the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from bridge.asterisk.delivery import OrderedEvents

# One connection's life to the endpoint named; True when Asterisk accepted the login, so the
# backoff starts over.
Session = Callable[[str], Coroutine[Any, Any, bool]]
# A session that got through but ended sooner than this counts as a failed try of its endpoint,
# so that two endpoints that both accept the login and drop at once are not tried in a busy loop.
STEADY = 2.0


def reconnect_delay(failures: int, low: float, high: float) -> float:
    """Seconds to wait before the next attempt: ``low`` after a lost session (0 failures) and
    after the first failure, then doubling up to ``high``, with jitter so that bridges started
    together do not reconnect in step."""
    base = min(high, low * 2.0 ** min(max(failures - 1, 0), 30))
    return min(high, base * random.uniform(1.0, 1.25))


class ProblemLog:
    """Logs a connect/login problem once at WARNING; the same problem again, until things work
    again, only at DEBUG (with several endpoints their problems take turns: each once)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: set[str] = set()

    def report(self, text: str) -> None:
        """A problem seen now."""
        level = logging.DEBUG if text in self._seen else logging.WARNING
        self._log.log(level, "%s (retrying with backoff)", text)
        self._seen.add(text)

    def clear(self) -> None:
        """Things work again: the next problem is news."""
        self._seen.clear()


class ReconnectLoop:
    """Runs a source's sessions one after another, with backoff, until :meth:`stop`, on the
    ``endpoints`` in turn (module docstring: failover).

    It also runs the task that hands the source's events over (``events``), so everything a
    session queued is delivered before :meth:`run` returns. ``endpoint`` is the endpoint
    followed (the last whose login was accepted; the first until then) and ``switches`` how
    often that changed, for the log; the status view learns both from ``ResyncStarted``.
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
        endpoints: Sequence[str] = ("",),
        steady: float = STEADY,
    ) -> None:
        if not endpoints:
            raise ValueError("a reconnect loop needs at least one endpoint")
        self.what = what  # "AMI", "ARI": for the log
        self.stopping = asyncio.Event()  # set by stop(); a session ends when it sees it
        self.problems = ProblemLog(log)  # a session reports connect/login trouble here
        self._session = session
        self._events = events
        self._log = log
        self._backoff = (backoff_min, backoff_max)
        self._attempt: asyncio.Task[bool] | None = None
        self._last_failure = ""  # the unexpected exception logged last, as text
        self.endpoints = tuple(endpoints)  # "host:port" or a URL, as the log names them
        self.endpoint = self.endpoints[0]
        self.switches = 0
        self._followed = ""  # the endpoint whose login was accepted last; "" not yet any
        self._steady = steady

    def following(self, endpoint: str) -> None:
        """The session on ``endpoint`` got through (login accepted): it is the one followed
        now; a change of endpoint is logged at WARNING and counted."""
        previous, self._followed, self.endpoint = self._followed, endpoint, endpoint
        if previous and previous != endpoint:
            self.switches += 1
            self._log.warning("%s: %s lost; following %s", self.what, previous, endpoint)
        elif not previous and endpoint != self.endpoints[0]:
            self._log.warning("%s: %s does not answer; following %s", self.what,
                              self.endpoints[0], endpoint)  # fmt: skip

    async def run(self) -> None:
        """Sessions until ``stop()`` or cancellation; returns once every event is delivered."""
        self.stopping.clear()
        deliverer = asyncio.create_task(self._events.deliver(), name=f"{self.what}-deliver")
        failures = 0  # whole rounds failed in a row
        tried = 0  # endpoints tried in this round without a steady session
        index = 0
        clock = asyncio.get_running_loop().time
        try:
            while not self.stopping.is_set():
                started = clock()
                established = await self._one_session(self.endpoints[index])
                if self.stopping.is_set():
                    break
                index = (index + 1) % len(self.endpoints)
                steady = established and clock() - started >= self._steady
                tried = 1 if steady else tried + 1
                if established:
                    failures = 0
                if len(self.endpoints) > 1 and tried < len(self.endpoints):
                    continue  # the next endpoint at once: it may be the one that answers
                if not established:
                    failures += 1
                    if len(self.endpoints) > 1:
                        self.problems.report(
                            f"{self.what}: none of {', '.join(self.endpoints)} answers"
                        )
                tried = 0
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

    async def _one_session(self, endpoint: str) -> bool:
        session = self._session(endpoint)
        self._attempt = asyncio.create_task(session, name=f"{self.what}-session")
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
