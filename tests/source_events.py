"""What a source adapter (AMI or ARI) hands the tracker, collected for the tests to await."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.events import AsteriskEvent, EndpointGroups

WAIT = 5.0  # seconds a test waits for something the source should deliver

Events = list[AsteriskEvent]


class Collector:
    """The on_event callback: records and lets a test await a condition on what arrived."""

    def __init__(self) -> None:
        self.events: Events = []
        self.groups: list[EndpointGroups] = []
        self.everything: Events = []  # both, in delivery order
        self._tick = asyncio.Event()

    def __call__(self, event: AsteriskEvent) -> None:
        # The pickup groups are read in the background after each sync; they interleave with
        # call events in no fixed order, so they are kept apart (test_pickup_groups_*).
        if isinstance(event, EndpointGroups):
            self.groups.append(event)
        else:
            self.events.append(event)
        self.everything.append(event)
        self._tick.set()
        self._tick = asyncio.Event()

    async def until(self, predicate: Callable[[Events], bool]) -> Events:
        async with asyncio.timeout(WAIT):
            while not predicate(self.events):
                await self._tick.wait()
        return self.events

    async def count(self, kind: type, n: int = 1) -> Events:
        return await self.until(lambda evs: sum(isinstance(e, kind) for e in evs) >= n)
