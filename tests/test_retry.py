"""The reconnect loop both sources run (bridge.asterisk.retry), with scripted sessions.

The sources' own tests (test_ami_source, test_ari_source) show it against replayed Asterisks
over real sockets; here each rule of the loop is pinned down on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from source_events import WAIT, Collector

from bridge.asterisk.delivery import Batch, OrderedEvents
from bridge.asterisk.retry import ReconnectLoop, reconnect_delay
from bridge.events import ResyncFinished, ResyncStarted, SourceLost

Step = Callable[["Script"], Awaitable[bool]]
log = logging.getLogger("tests.retry")


class Script:
    """Sessions played in turn (the last one again and again), each counted and timed."""

    def __init__(
        self, *steps: Step, endpoints: tuple[str, ...] = ("",), steady: float = 0.0
    ) -> None:
        self.steps = steps
        self.started: list[float] = []
        self.on: list[str] = []  # the endpoint of each session
        self.collector = Collector()
        self.events = OrderedEvents(self.collector)
        self.loop = ReconnectLoop(
            "test", self.session, self.events, log, backoff_min=0.02, backoff_max=0.16,
            endpoints=endpoints, steady=steady,
        )  # fmt: skip
        self.ran = asyncio.Event()

    async def session(self, endpoint: str) -> bool:
        self.on.append(endpoint)
        self.started.append(asyncio.get_running_loop().time())
        self.ran.set()
        step = self.steps[min(len(self.started), len(self.steps)) - 1]
        return await step(self)

    async def sessions(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.started) < n:
                self.ran.clear()
                await self.ran.wait()


async def refused(script: Script) -> bool:
    script.loop.problems.report("cannot connect to test: refused")
    return False


async def synced_then_lost(script: Script) -> bool:
    script.events.put_nowait(Batch([ResyncStarted(), ResyncFinished()]))
    await asyncio.sleep(0)
    script.events.put_nowait(Batch([SourceLost()]))
    return True


async def followed_then_lost(script: Script) -> bool:
    script.loop.following(script.on[-1])  # the login was accepted
    return await synced_then_lost(script)


async def unreachable(script: Script) -> bool:
    script.loop.problems.report(f"cannot connect to test at {script.on[-1]}: refused")
    return False


async def broken(script: Script) -> bool:
    raise KeyError("a bug")


async def until_stopped(script: Script) -> bool:
    script.events.put_nowait(Batch([ResyncStarted(), ResyncFinished()]))
    await script.loop.stopping.wait()
    return True


async def hanging(script: Script) -> bool:
    await asyncio.Event().wait()  # a connect that would only end at its timeout
    return False


async def run_until(script: Script, sessions: int) -> asyncio.Task[None]:
    task = asyncio.create_task(script.loop.run())
    await script.sessions(sessions)
    return task


async def stopped(script: Script, task: asyncio.Task[None], *, cut_attempt: bool) -> None:
    script.loop.stop(cut_attempt=cut_attempt)
    await asyncio.wait_for(task, 1.0)


def test_delay_starts_low_doubles_per_failure_and_stops_at_high() -> None:
    for failures, low in ((0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0)):
        assert low <= reconnect_delay(failures, 0.5, 30.0) <= low * 1.25
    assert reconnect_delay(40, 0.5, 30.0) == 30.0


async def test_every_session_after_a_lost_one_starts_again_and_resyncs() -> None:
    script = Script(synced_then_lost)
    task = await run_until(script, 3)
    await stopped(script, task, cut_attempt=False)
    # Each session's resync and loss reach on_event in order, none skipped.
    assert script.collector.events[:6] == [ResyncStarted(), ResyncFinished(), SourceLost()] * 2


async def test_failures_back_off_longer_and_a_working_session_starts_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, log.name)
    script = Script(refused, refused, refused, refused, synced_then_lost)
    task = await run_until(script, 6)
    await stopped(script, task, cut_attempt=True)
    gaps = [b - a for a, b in zip(script.started, script.started[1:], strict=False)]
    assert gaps[0] < gaps[2]  # 20 ms, 40 ms, 80 ms, 160 ms: doubling up to the cap
    assert gaps[4] < gaps[3]  # after a session that got through: back to 20 ms
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "refused" in warnings[0].getMessage()  # the same, once


async def test_an_unexpected_exception_is_logged_once_with_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(broken, broken, until_stopped)
    task = await run_until(script, 3)
    await script.collector.count(ResyncFinished)  # the source lives on and resyncs
    assert not task.done()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "test session failed unexpectedly" in errors[0].getMessage()
    again = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(again) == 1 and "KeyError: 'a bug'" in again[0].getMessage()
    assert again[0].exc_info is None
    await stopped(script, task, cut_attempt=False)


async def test_stop_cuts_an_attempt_short_instead_of_sitting_out_its_timeout() -> None:
    script = Script(hanging)
    task = await run_until(script, 1)
    await stopped(script, task, cut_attempt=True)
    assert len(script.started) == 1


async def test_stop_lets_an_established_session_end_itself() -> None:
    ended = []

    async def logs_off(script: Script) -> bool:
        await script.loop.stopping.wait()
        ended.append("logged off")
        return True

    script = Script(logs_off)
    task = await run_until(script, 1)
    await stopped(script, task, cut_attempt=False)
    assert ended == ["logged off"] and len(script.started) == 1


async def test_events_queued_before_stop_are_delivered_before_run_returns() -> None:
    script = Script(until_stopped)
    task = await run_until(script, 1)
    script.events.put_nowait(Batch([SourceLost()]))
    await stopped(script, task, cut_attempt=False)
    assert script.collector.events == [ResyncStarted(), ResyncFinished(), SourceLost()]


async def test_cancelling_run_cancels_the_session_and_propagates() -> None:
    cancelled = asyncio.Event()

    async def notices(script: Script) -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    script = Script(notices)
    task = await run_until(script, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert cancelled.is_set()


def backoffs(caplog: pytest.LogCaptureFixture) -> int:
    return sum("reconnecting to test in" in r.getMessage() for r in caplog.records)


async def test_a_lost_endpoint_hands_over_to_the_next_at_once_and_a_failed_round_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, log.name)
    script = Script(followed_then_lost, unreachable, endpoints=("A", "B"))
    task = await run_until(script, 2)
    assert backoffs(caplog) == 0  # A lost: B is tried without a wait
    await script.sessions(5)
    await stopped(script, task, cut_attempt=True)
    assert script.on[:5] == ["A", "B", "A", "B", "A"]
    # A, B both refused: one wait per whole round, none between the two endpoints of a round.
    assert backoffs(caplog) in (2, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "cannot connect to test at B: refused (retrying with backoff)",
        "test: none of A, B answers (retrying with backoff)",
        "cannot connect to test at A: refused (retrying with backoff)",
    ]  # each problem once, however many rounds


async def test_a_switch_is_logged_and_counted_and_the_new_endpoint_followed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(followed_then_lost, followed_then_lost, until_stopped, endpoints=("A", "B"))
    assert (script.loop.endpoint, script.loop.switches) == ("A", 0)
    task = await run_until(script, 3)
    await stopped(script, task, cut_attempt=False)
    assert script.on == ["A", "B", "A"]
    assert (script.loop.endpoint, script.loop.switches) == ("B", 1)  # A's session: not followed
    switches = [r for r in caplog.records if "lost; following" in r.getMessage()]
    assert [r.getMessage() for r in switches] == ["test: A lost; following B"]
    assert switches[0].levelno == logging.WARNING
    # Each session resynced: the keys are right after the switch.
    assert script.collector.events[:6] == [ResyncStarted(), ResyncFinished(), SourceLost()] * 2


async def test_a_standby_that_drops_every_session_at_once_still_waits_between_rounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, log.name)
    # No session lasts 60 s: each counts as a failed try of its endpoint.
    script = Script(synced_then_lost, endpoints=("A", "B"), steady=60.0)
    task = await run_until(script, 5)
    await stopped(script, task, cut_attempt=False)
    assert backoffs(caplog) >= 2  # not a busy loop between A and B
