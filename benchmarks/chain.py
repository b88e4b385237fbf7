"""The whole path of one state change: Asterisk event → tracker → one render → every watcher.

Wired as ``bridge.app.Bridge._on_event`` wires it, with the app's own ``Documents`` as the
notifier's document source, so the figure is what a ringing phone costs the running bridge
before the first byte reaches a socket.
"""

from __future__ import annotations

import gc
import time

from benchmarks.notifier import answer_all, subscribe_all, subscribe_request
from benchmarks.render import SETTINGS
from benchmarks.timing import REPEAT, Row, median
from bridge.app import Documents
from bridge.events import AsteriskEvent, ChannelGone, ChannelSeen, ChannelState, ExtensionHint
from bridge.pickup import PickupPolicy
from bridge.sip.notifier import Notifier
from bridge.tracker import CallTracker

EXTEN = "202"


class Chain:
    """Tracker, renderings and notifier, connected like the running bridge connects them."""

    def __init__(self) -> None:
        self.tracker = CallTracker()
        self.tracker.apply(ExtensionHint(EXTEN, "internal", f"PJSIP/{EXTEN}", 0), 0.0)
        # Everyone may pick up: one variant per change, as with a pickup group shared by all.
        self.documents = Documents(self.tracker, SETTINGS, PickupPolicy("everyone"))
        self.notifier = Notifier(self.documents)

    def deliver(self, event: AsteriskEvent, now: float) -> None:
        """One event, handled as ``Bridge._on_event`` handles it."""
        for exten in sorted(self.tracker.apply(event, now)):
            if self.documents.changed(exten):
                self.notifier.resource_changed(exten, now)


def ringing(call: int) -> ChannelSeen:
    """Asterisk's leg to 202 starts ringing (Newstate 5): the change every BLF key blinks for."""
    return ChannelSeen(
        uniqueid=f"1795400000.{2 * call + 1}",
        name=f"PJSIP/{EXTEN}-{2 * call + 1:08x}",
        state=ChannelState.RINGING,
        connected_num="201",
        connected_name="Phone 201",
        linkedid=f"1795400000.{2 * call}",
        dialed=True,
    )


def change_cost(watchers: int, changes: int) -> float:
    """Seconds from a ringing event to the NOTIFYs for every watcher, ready to send.

    Each call is hung up (untimed) before the next one rings, so every timed event is a real
    change: idle → ringing, a fresh render, and one NOTIFY per watcher.
    """
    chain = Chain()
    requests = [subscribe_request(i, EXTEN) for i in range(watchers)]
    answer_all(chain.notifier, subscribe_all(chain.notifier, requests, 0.0), 0.0)
    runs: list[float] = []
    for call in range(changes + 1):
        now = 1.0 + call
        event = ringing(call)
        gc.collect()
        start = time.perf_counter()
        chain.deliver(event, now)
        sent = chain.notifier.outgoing()
        elapsed = time.perf_counter() - start
        if len(sent) != watchers:
            raise RuntimeError(f"{watchers} watchers but {len(sent)} NOTIFYs")
        answer_all(chain.notifier, sent, now)
        chain.deliver(ChannelGone(event.uniqueid, 16), now + 0.5)
        answer_all(chain.notifier, chain.notifier.outgoing(), now + 0.5)
        if call:  # call 0 warms up
            runs.append(elapsed)
    return median(runs)


def run(quick: bool) -> list[Row]:
    """Every whole-chain figure."""
    watchers = 100
    per_change = change_cost(watchers, changes=REPEAT if quick else 60)
    return [
        (f"chain: ringing event → render → {watchers} NOTIFYs", per_change * 1e6, "µs/change"),
        ("chain: state changes per second at that fan-out", 1 / per_change, "changes/s"),
    ]
