"""The one place a source hands its events to the tracker: in the order Asterisk said them.

Both sources read Asterisk on an ordered stream. A ringing leg's event needs that leg's SIP ids,
which are looked up while the stream goes on; the event waits at its place for them (its
``LegIds`` goes out just before it) and everything read after it waits behind it.

Events read one after another join the batch queued last, so a read of hundreds of AMI events
costs one hand-over to the delivering task rather than one per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bridge.events import AsteriskEvent, LegIds

log = logging.getLogger(__name__)

IdsTask = asyncio.Task[LegIds | None]


def ids_result(task: IdsTask) -> LegIds | None:
    """A finished id lookup's outcome; cancelled or failed means no ids."""
    if task.cancelled():
        return None
    if task.exception() is not None:
        log.error("reading leg ids failed", exc_info=task.exception())
        return None
    return task.result()


@dataclass(slots=True)
class Batch:
    """One delivery in stream order: events, maybe first waiting for a leg's ids, and what to
    do once they are delivered."""

    events: list[AsteriskEvent]
    ids: IdsTask | None = None
    then: Callable[[], None] | None = None


class OrderedEvents:
    """A queue of batches and the task that delivers them, the only caller of ``on_event``."""

    def __init__(self, on_event: Callable[[AsteriskEvent], None]) -> None:
        self._on_event = on_event
        self._batches: deque[Batch | None] = deque()
        self._queued = asyncio.Event()

    def put_nowait(self, batch: Batch | None) -> None:
        """Queue a batch; None ends ``deliver()`` once everything before it is delivered."""
        self._batches.append(batch)
        self._queued.set()

    def add(self, event: AsteriskEvent, ids: IdsTask | None = None) -> None:
        """Queue one event read from the stream; with ``ids``, it waits for that lookup."""
        batches = self._batches
        if ids is None and batches:
            last = batches[-1]
            # Not delivered yet, so it can take more; a batch with ``then`` must end with its
            # own events (``then`` says they are through, e.g. a finished resync).
            if last is not None and last.then is None:
                last.events.append(event)
                return
        batches.append(Batch([event], ids))
        self._queued.set()

    async def deliver(self) -> None:
        """Deliver batches strictly in order until the None that ends the stream."""
        batches = self._batches
        while True:
            while not batches:
                self._queued.clear()
                await self._queued.wait()
            batch = batches.popleft()
            if batch is None:
                return
            events = batch.events
            if batch.ids is not None:
                await asyncio.wait([batch.ids])
                ids = ids_result(batch.ids)
                if ids is not None:
                    events = [ids, *events]
            for event in events:
                try:
                    self._on_event(event)
                except Exception:  # a bug downstream must not stop the stream
                    log.exception("event handler failed on %r", event)
            if batch.then is not None:
                try:
                    batch.then()
                except Exception:  # as above: the stream goes on
                    log.exception("after delivering %r", events)
