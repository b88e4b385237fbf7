"""OrderedEvents: events read together are handed over together, never out of stream order."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.asterisk.delivery import Batch, OrderedEvents
from bridge.events import AsteriskEvent, ChannelGone, LegIds, ResyncFinished

IDS = LegIds("1.3", "call@x", "as1", "ph1")


def gone(n: int) -> ChannelGone:
    return ChannelGone(f"1.{n}")


class Seen:
    """on_event: what arrived, and a way to wait for it."""

    def __init__(self) -> None:
        self.events: list[AsteriskEvent | str] = []
        self.tick = asyncio.Event()

    def __call__(self, event: AsteriskEvent) -> None:
        self.events.append(event)
        self.tick.set()

    async def until(self, count: int) -> list[AsteriskEvent | str]:
        async with asyncio.timeout(2):
            while len(self.events) < count:
                self.tick.clear()
                await self.tick.wait()
        return self.events


async def test_events_read_together_are_one_batch_in_order() -> None:
    seen = Seen()
    queue = OrderedEvents(seen)
    for n in range(5):
        queue.add(gone(n))
    assert len(queue._batches) == 1
    queue.put_nowait(None)
    await asyncio.wait_for(queue.deliver(), 2)
    assert seen.events == [gone(n) for n in range(5)]


async def test_an_event_waiting_for_ids_holds_back_everything_after_it() -> None:
    seen = Seen()
    queue = OrderedEvents(seen)
    lookup: asyncio.Future[LegIds | None] = asyncio.get_running_loop().create_future()
    ids = asyncio.ensure_future(lookup)
    queue.add(gone(1))
    queue.add(gone(2))
    queue.add(gone(3), ids)  # the leg whose ids are being read
    queue.add(gone(4))
    deliverer = asyncio.create_task(queue.deliver())
    await seen.until(2)
    await asyncio.sleep(0.01)
    assert seen.events == [gone(1), gone(2)]
    queue.add(gone(5))
    lookup.set_result(IDS)
    await seen.until(6)
    assert seen.events == [gone(1), gone(2), IDS, gone(3), gone(4), gone(5)]
    queue.put_nowait(None)
    await asyncio.wait_for(deliverer, 2)


async def test_a_failed_lookup_delivers_the_event_without_ids() -> None:
    seen = Seen()
    queue = OrderedEvents(seen)
    ids = asyncio.ensure_future(asyncio.sleep(0, None))
    queue.add(gone(3), ids)
    queue.add(gone(4))
    queue.put_nowait(None)
    await asyncio.wait_for(queue.deliver(), 2)
    assert seen.events == [gone(3), gone(4)]


async def test_nothing_joins_a_batch_that_says_when_it_is_through() -> None:
    seen = Seen()
    queue = OrderedEvents(seen)
    queue.put_nowait(Batch([ResyncFinished()], then=lambda: seen.events.append("synced")))
    queue.add(gone(1))
    queue.put_nowait(None)
    await asyncio.wait_for(queue.deliver(), 2)
    assert seen.events == [ResyncFinished(), "synced", gone(1)]


async def test_a_failing_handler_does_not_stop_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[AsteriskEvent] = []

    def handler(event: AsteriskEvent) -> None:
        if event == gone(2):
            raise RuntimeError("bug downstream")
        delivered.append(event)

    queue = OrderedEvents(handler)
    for n in range(4):
        queue.add(gone(n))
    queue.put_nowait(None)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(queue.deliver(), 2)
    assert delivered == [gone(0), gone(1), gone(3)]
    assert "event handler failed" in caplog.text
