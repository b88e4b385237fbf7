"""The whole path of one state change through the bridge's real core: Asterisk event → tracker
→ one render → every watcher's NOTIFY.

``bridge.core.BridgeCore`` is what the running bridge feeds (``Bridge._on_event`` hands it each
event with the loop's time, then sends what ``outgoing()`` holds), so the figure is what a ringing
phone costs the running bridge before the first byte reaches a socket.
"""

from __future__ import annotations

import gc
import time

from benchmarks.notifier import answer_all, subscribe_all, subscribe_request
from benchmarks.timing import REPEAT, Row, median
from bridge.config import load
from bridge.core import BridgeCore
from bridge.events import (
    ChannelGone,
    ChannelSeen,
    ChannelState,
    ExtensionHint,
    ResyncFinished,
    ResyncStarted,
)

EXTEN = "202"


def new_core() -> BridgeCore:
    """A core as the service builds it, in sync with an Asterisk that has one hint (202).

    Everyone may pick up: one variant per change, as with a pickup group shared by all. The
    watchers come from one documentation address, so its limits are lifted.
    """
    config = load(None, [
        "sip.domain=pbx.example", "store.path=", "web.listen=", "security.pickup=everyone",
        'security.allow=["0.0.0.0/0"]', "security.requests_per_second=0",
        "security.max_subscriptions_per_source=0", "security.max_subscriptions=0",
    ])  # fmt: skip
    core = BridgeCore(config)
    for event in (ResyncStarted(), ExtensionHint(EXTEN, "internal", f"PJSIP/{EXTEN}", 0),
                  ResyncFinished()):  # fmt: skip
        core.asterisk_event(event, 0.0)
    core.outgoing()
    return core


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
    change: idle → ringing, a fresh render, and one NOTIFY per watcher. Subscribing and the
    phones' 200s go straight to the core's notifier (untimed).
    """
    core = new_core()
    requests = [subscribe_request(i, EXTEN) for i in range(watchers)]
    answer_all(core.notifier, subscribe_all(core.notifier, requests, 0.0), 0.0)
    runs: list[float] = []
    for call in range(changes + 1):
        now = 1.0 + call
        event = ringing(call)
        gc.collect()
        start = time.perf_counter()
        core.asterisk_event(event, now)
        sent = core.outgoing()
        elapsed = time.perf_counter() - start
        if len(sent) != watchers:
            raise RuntimeError(f"{watchers} watchers but {len(sent)} NOTIFYs")
        answer_all(core.notifier, sent, now)
        core.asterisk_event(ChannelGone(event.uniqueid, 16), now + 0.5)
        answer_all(core.notifier, core.outgoing(), now + 0.5)
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


if __name__ == "__main__":  # python -m benchmarks.chain
    from benchmarks.__main__ import table

    print(table(run(quick=False)))
