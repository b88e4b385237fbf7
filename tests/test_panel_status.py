"""What the panel is told of each key, below the page: its name (snom.labels, else the
endpoint's caller id over AMI and ARI), PBX, context, groups, the do-not-disturb and unavailable
words, the times of calls and parked calls, and the findings that need attention."""

from __future__ import annotations

import pytest
from test_app import RECORDINGS, eventually, running_over_ari

from bridge.config import from_mapping, load
from bridge.core import BridgeCore
from bridge.demo.ari_server import RecordedAriServer
from bridge.events import (
    CallParked,
    ChannelSeen,
    ChannelState,
    EndpointGroups,
    ExtensionHint,
    ResyncFinished,
    ResyncStarted,
    callerid_name,
)
from bridge.findings import Finding
from bridge.hintstate import device_dialog
from bridge.model import Dialog, DialogState, Direction, EntityState
from bridge.status import BridgeStatus
from bridge.tracker import CallTracker
from bridge.web import entity_status, panel_activity


def test_a_finding_that_needs_attention_reaches_the_status() -> None:
    """BridgeStatus passes the core's warn and fail findings on, fail first; ok stays out."""
    core = BridgeCore(load(None, ["web.listen="]))
    core.findings += [Finding("ok", "manager user", "can read"),
                      Finding("warn", "endpoint 203", "no hint", "add one"),
                      Finding("fail", "SIP listener udp", "port taken", "free it")]  # fmt: skip
    status = BridgeStatus(core, lambda: 0.0)
    assert [(f.level, f.subject) for f in status.attention()] == [
        ("fail", "SIP listener udp"), ("warn", "endpoint 203")
    ]
    assert [f.fix for f in status.attention()] == ["free it", "add one"]


@pytest.mark.parametrize(
    ("callerid", "name"),
    [('"Phone 201" <201>', "Phone 201"), ("Anna <202>", "Anna"), ("<203>", ""), ("204", ""),
     ("+4930123", ""), ("Front desk", "Front desk"), ("", "")],
)  # fmt: skip
def test_the_name_of_a_caller_id(callerid: str, name: str) -> None:
    assert callerid_name(callerid) == name


def test_a_dnd_key_and_an_unavailable_key_say_so_and_a_call_says_more() -> None:
    lit = device_dialog("BUSY")  # Custom:DND201 busy: FreePBX's DND on
    assert lit is not None
    dnd = entity_status(EntityState("210", (lit,)))
    assert dnd.activity == "in-call"  # as its LED: lit
    assert panel_activity(dnd, 2, {"custom:dnd201": "BUSY"}) == "dnd"
    assert panel_activity(dnd, 1, {"custom:dnd201": "INUSE"}) == "dnd"
    # A real call on a key whose hint also has the DND device: the call is what counts.
    call = Dialog("1.1", Direction.RECIPIENT, DialogState.CONFIRMED, "203", "Phone 203")
    talking = entity_status(EntityState("211", (call, lit)))
    assert panel_activity(talking, 2, {"custom:dnd201": "BUSY"}) == "in-call"
    idle = entity_status(EntityState("201"))
    assert panel_activity(idle, 4, {}) == "unavailable"
    assert panel_activity(idle, 0, {}) == "idle"
    assert panel_activity(entity_status(EntityState("201", known=False)), 4, {}) == "unknown"


def test_the_tracker_times_calls_from_the_answer_and_parked_calls_from_the_park() -> None:
    tracker = CallTracker()
    tracker.apply(ExtensionHint("202", "internal", "PJSIP/202", 0), 1.0)
    tracker.apply(ExtensionHint("701", "internal", "park:701@parkedcalls", 0), 1.0)
    tracker.apply(ChannelSeen("9.1", "PJSIP/202-00000001", ChannelState.RINGING, "201"), 10.0)
    (ringing,) = tracker.state("202").dialogs
    assert ringing.since == 10.0
    tracker.apply(ChannelSeen("9.1", "PJSIP/202-00000001", ChannelState.UP, "201"), 14.0)
    tracker.apply(ChannelSeen("9.1", "PJSIP/202-00000001", ChannelState.UP, "201"), 20.0)
    (answered,) = tracker.state("202").dialogs
    assert answered.since == 14.0
    tracker.apply(CallParked("701", "9.2", "205", "Phone 205"), 30.0)
    tracker.apply(CallParked("701", "9.2", "205", "Phone 205"), 35.0)  # a resync lists it again
    (parked,) = tracker.state("701").dialogs
    assert (parked.parked, parked.since, parked.remote_name) == (True, 30.0, "Phone 205")
    status = entity_status(tracker.state("701"), now=42.5)
    assert status.activity == "parked"
    assert status.dialogs[0]["seconds"] == 12.5


def test_each_key_knows_its_pbx_context_name_groups_and_availability() -> None:
    """Two PBXs, one with two tenants: what BridgeStatus tells the panel of each key."""
    ami = {"host": "10.0.0.1", "username": "bridge", "secret": "s"}
    config = from_mapping({
        "asterisk": [{"name": "berlin", "domain": "berlin.example", "ami": ami},
                     {"name": "hamburg", "domain": "hamburg.example", "ami": ami}],
        "web": {"listen": "", "groups": {"Front desk": ["berlin:201", "hamburg:202@tenant-b"]}},
        "snom": {"labels": {"berlin:201": "Anna"}},
        "store": {"path": ""},
    })  # fmt: skip
    core = BridgeCore(config)
    groups = frozenset({1}), frozenset({1})
    for pbx, events in {
        "berlin": [ExtensionHint("201", "internal", "PJSIP/201", 0),
                   ExtensionHint("202", "internal", "PJSIP/202", 4)],
        "hamburg": [ExtensionHint("203", "tenant-a", "PJSIP/a-203", 0),
                    ExtensionHint("202", "tenant-b", "PJSIP/b-202", 0)],
    }.items():  # fmt: skip
        for event in [ResyncStarted(), *events, ResyncFinished()]:
            core.asterisk_event(event, 1.0, pbx)
    core.asterisk_event(EndpointGroups("202", *groups, callerid='"Ben" <202>'), 1.0, "berlin")
    carla = EndpointGroups("b-202", *groups, "tenant-b", callerid="Carla <202>")
    core.asterisk_event(carla, 1.0, "hamburg")
    assert core.take_status_change()  # the names came: the panel hears of it
    shown = {
        e.exten: (e.label, e.number, e.pbx, e.context, e.groups, e.activity)
        for e in BridgeStatus(core, lambda: 2.0).entities()
    }
    assert shown == {
        "berlin:201": ("Anna", "201", "berlin", "internal", ("Front desk",), "idle"),
        "berlin:202": ("Ben", "202", "berlin", "internal", (), "unavailable"),
        "hamburg:203": ("", "203", "hamburg", "tenant-a", (), "idle"),
        "hamburg:202@tenant-b": ("Carla", "202", "hamburg", "tenant-b", ("Front desk",), "idle"),
    }
    # 202 comes back: only the panel sees a change (no dialog either way).
    core.asterisk_event(ExtensionHint("202", "internal", "PJSIP/202", 0), 3.0, "berlin")
    assert core.take_status_change()
    assert BridgeStatus(core, lambda: 3.0).entities()[1].activity == "idle"


async def test_over_ari_the_keys_are_named_by_the_endpoints_caller_id() -> None:
    async with (
        RecordedAriServer(RECORDINGS, speed=0) as ari,
        running_over_ari(ari) as bridge,
    ):
        def label(exten: str) -> str:
            return next(e.label for e in bridge.status.entities() if e.exten == exten)

        await eventually(lambda: label("201") == "Phone 201")
        assert label("203") == "Phone 203"
