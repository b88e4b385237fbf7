"""TimerQueue: one deadline per object, earliest first, stale entries never fire."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sip.timers import NO_TIMER, TimerQueue


@dataclass(eq=False)
class Job:
    name: str
    timer_seq: int = NO_TIMER


def due(q: TimerQueue[Job], now: float) -> list[str]:
    out = []
    while (job := q.pop_due(now)) is not None:
        out.append(job.name)
    return out


def test_deadlines_fire_in_order_and_only_when_due() -> None:
    q: TimerQueue[Job] = TimerQueue()
    a, b, c = Job("a"), Job("b"), Job("c")
    q.schedule(b, 2.0)
    q.schedule(a, 1.0)
    q.schedule(c, 2.0)  # same deadline as b: scheduled later, fires later
    assert len(q) == 3 and q.next_deadline() == 1.0
    assert due(q, 0.9) == []
    assert due(q, 2.0) == ["a", "b", "c"]
    assert len(q) == 0 and q.next_deadline() is None
    assert a.timer_seq == NO_TIMER  # popped: it may be scheduled again


def test_rescheduling_moves_the_deadline_and_cancel_forgets_it() -> None:
    q: TimerQueue[Job] = TimerQueue()
    a, b = Job("a"), Job("b")
    q.schedule(a, 1.0)
    q.schedule(b, 3.0)
    q.schedule(a, 5.0)  # moved later: the entry at 1.0 is stale
    assert len(q) == 2 and q.next_deadline() == 3.0
    q.cancel(b)
    q.cancel(b)  # twice is harmless
    assert len(q) == 1 and q.next_deadline() == 5.0
    assert due(q, 4.9) == [] and due(q, 5.0) == ["a"]
    assert len(q) == 0


def test_stale_entries_are_swept_when_they_outnumber_live_ones() -> None:
    q: TimerQueue[Job] = TimerQueue()
    jobs = [Job(str(i)) for i in range(100)]
    for round_ in range(50):
        for job in jobs:
            q.schedule(job, 1000.0 + round_)
    assert len(q) == 100
    assert q.heap_size <= 2 * 100 + 64 + 1  # not 5,000 entries
    assert sorted(due(q, 1049.0), key=int) == [j.name for j in jobs]
    assert q.heap_size == 0
