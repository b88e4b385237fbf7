"""The demo PBX replays forever: every round of its loop renames the calls' identifiers
(bridge.demo.rounds), so a bridge shows each round's calls, not only the first round's."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
from sipp import SippWatcher
from test_app import (
    IDLE_MS,
    RECORDINGS,
    SPEED,
    check_notify_sequence,
    collapsed,
    dialogs,
    eventually,
    key_state,
    running_bridge,
    running_over_ari,
)

from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.demo.rounds import RoundIds


def test_round_zero_is_the_recording_and_later_rounds_rename_consistently() -> None:
    zero, two = RoundIds(0), RoundIds(2)
    event = {"Event": "DialBegin", "Channel": "PJSIP/201-0000004e", "Uniqueid": "1796290392.78",
             "Linkedid": "1796290392.78", "DestChannel": "PJSIP/202-0000004f",
             "DestUniqueid": "1796290392.79", "BridgeUniqueid": "b-1", "Exten": "202"}  # fmt: skip
    assert zero.ami(event) == event
    assert two.ami(event) == {**event, "Channel": "PJSIP/201-0020004e", "Uniqueid": "1796490392.78",
                              "Linkedid": "1796490392.78", "DestChannel": "PJSIP/202-0020004f",
                              "DestUniqueid": "1796490392.79"}  # fmt: skip
    assert two.recorded_channel(two.channel("Local/7@x-0000000a;2")) == "Local/7@x-0000000a;2"
    assert two.variable("CHANNEL(pjsip,call-id)", "abc@h") == "abc@h-r2"
    assert two.variable("CONNECTEDLINE(pres)", "allowed") == "allowed"
    ari = {"type": "ChannelEnteredBridge",
           "channel": {"id": "1796290418.81", "name": "PJSIP/201-00000051", "state": "Up",
                       "protocol_id": "1-6043@127.0.0.1", "caller": {"number": "201"}},
           "bridge": {"id": "f2b5", "channels": ["1796290418.81"]}}  # fmt: skip
    renamed = two.ari(ari)
    assert renamed["channel"] == {"id": "1796490418.81", "name": "PJSIP/201-00200051",
                                  "state": "Up", "protocol_id": "1-6043@127.0.0.1-r2",
                                  "caller": {"number": "201"}}  # fmt: skip
    assert renamed["bridge"] == {"id": "f2b5", "channels": ["1796490418.81"]}
    assert zero.ari(ari) == ari


@pytest.mark.parametrize("source", ["ami", "ari"])
async def test_the_demo_loop_rings_again_in_every_round(source: str) -> None:
    async with AsyncExitStack() as stack:
        if source == "ami":
            ami = await stack.enter_async_context(RecordedAmiServer(RECORDINGS, speed=SPEED))
            bridge = await stack.enter_async_context(running_bridge(ami))
            loop = ami.loop_forever(["ring-cancel"], pause=0.5, rounds=3)
        else:
            ari = await stack.enter_async_context(RecordedAriServer(RECORDINGS, speed=SPEED))
            bridge = await stack.enter_async_context(running_over_ari(ari))
            loop = ari.loop_forever(pause=0.5, rounds=3, scenarios=["ring-cancel"])
        watcher = await stack.enter_async_context(
            SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS)
        )
        await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
        await asyncio.wait_for(loop, 30)
        result = await watcher.finish()
    notifies = check_notify_sequence(result)
    assert collapsed([key_state(n) for n in notifies]) == ["idle", "early/recipient"] * 3 + [
        "idle"
    ]
    # Each round's ringing leg has its own SIP ids: a pickup aims at the call ringing now.
    call_ids = {d.get("call-id") for n in notifies for d in dialogs(n) if d.get("call-id")}
    assert len(call_ids) == 3
