"""AMI event mapping, over the real Asterisk 22 recordings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.asterisk.ami_events import (
    MAPPED_EVENTS,
    events_of,
    needs_ids,
    to_events,
)
from bridge.demo.recording import parse_frames
from bridge.events import (
    AsteriskEvent,
    CallParked,
    CallUnparked,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    ContactChanged,
    DeviceStateChanged,
    DialBegan,
    DialEnded,
    ExtensionHint,
    HoldChanged,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
SCENARIOS = sorted(p.parent.name for p in FIXTURES.glob("*/ami-wire.jsonl"))


def asterisk_frames(scenario: str) -> list[dict[str, str]]:
    """Everything Asterisk said in a recording, reassembled from its reads."""
    frames: list[dict[str, str]] = []
    pending = ""
    for line in (FIXTURES / scenario / "ami-wire.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == "asterisk":
            new, pending = parse_frames(pending + record["data"])
            frames += new
    assert pending == ""
    return frames


def mapped(scenario: str) -> list[AsteriskEvent]:
    return [ev for frame in asterisk_frames(scenario) for ev in to_events(frame)]


def seen(events: list[AsteriskEvent], name: str) -> list[ChannelSeen]:
    return [e for e in events if isinstance(e, ChannelSeen) and e.name == name]


# --- to_events over the recordings -------------------------------------------------------


def test_pickup_replaces_ringing_leg() -> None:
    events = mapped("pickup-replaces")
    ringing = [e for e in seen(events, "PJSIP/202-00000008") if e.state is ChannelState.RINGING]
    assert ringing, "the leg to 202 must be seen ringing"
    for ev in ringing:
        assert ev.uniqueid == "1795325554.8"
        assert ev.dialed is True
        assert ev.linkedid == "1795325554.7"
        assert (ev.connected_num, ev.connected_name) == ("201", "Phone 201")
        assert needs_ids(ev)
    kinds = {frame.get("Event") for frame in asterisk_frames("pickup-replaces")}
    assert {"Newstate", "CoreShowChannel"} <= kinds  # ringing seen live and in the list


def test_pickup_replaces_dial_ends_on_the_picker() -> None:
    events = mapped("pickup-replaces")
    assert DialBegan("1795325554.7", "1795325554.8") in events
    picker = seen(events, "PJSIP/203-00000009")[0]
    assert DialEnded("1795325554.7", picker.uniqueid, "ANSWER") in events
    assert ChannelGone("1795325554.8", 0) in events


def test_dialed_is_decided_only_from_evidence() -> None:
    events = mapped("pickup-replaces")
    leg = seen(events, "PJSIP/202-00000008")
    assert leg[0].state is ChannelState.DOWN and leg[0].dialed is True  # Newchannel, PJSIP, Down
    assert leg[1].dialed is None  # NewConnectedLine in Down proves nothing
    caller = seen(events, "PJSIP/201-00000007")
    assert caller[0].state is ChannelState.RING and caller[0].dialed is False
    assert [e.dialed for e in caller if e.state is ChannelState.UP] == [None]
    assert seen(events, "PJSIP/203-00000009")[0].dialed is False  # the picker called in


def test_unknown_connected_line_becomes_empty() -> None:
    first = seen(mapped("ring-cancel"), "PJSIP/201-00000003")[0]
    assert (first.connected_num, first.connected_name) == ("", "")
    assert (first.caller_num, first.caller_name) == ("201", "Phone 201")


def test_dial_begin_also_reports_the_dialled_leg_first() -> None:
    frame = next(f for f in asterisk_frames("ring-cancel") if f.get("Event") == "DialBegin")
    dest, began = to_events(frame)
    assert isinstance(dest, ChannelSeen) and isinstance(began, DialBegan)
    assert (dest.name, dest.uniqueid, dest.dialed) == (
        "PJSIP/202-00000004",
        began.dest_uniqueid,
        True,
    )
    assert dest.connected_num == "201"


def test_hold_device_and_extension_states() -> None:
    events = mapped("answer-hold-resume")
    holds = [e for e in events if isinstance(e, HoldChanged)]
    assert [h.on_hold for h in holds] == [True, False]
    assert DeviceStateChanged("PJSIP/202", "ONHOLD") in events
    hints = [e for e in mapped("ring-while-busy") if isinstance(e, ExtensionHint)]
    assert ExtensionHint("202", "internal", "PJSIP/202", 9) in hints  # InUse&Ringing


def test_the_flood_maps_to_nothing() -> None:
    for scenario in SCENARIOS:
        for frame in asterisk_frames(scenario):
            if frame.get("Event", "").startswith(("VarSet", "Newexten", "Bridge", "DialState")):
                assert to_events(frame) == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_recording_maps_without_loss_of_channels(scenario: str) -> None:
    events = mapped(scenario)
    created = {e.uniqueid for e in events if isinstance(e, ChannelSeen)}
    gone = {e.uniqueid for e in events if isinstance(e, ChannelGone)}
    assert gone <= created
    # only pickup-replaces ends with its call still up
    assert (created - gone == set()) is (scenario != "pickup-replaces")


# --- malformed input ---------------------------------------------------------------------


BASE = {
    "Event": "Newstate", "Channel": "PJSIP/202-00000008", "ChannelState": "5",
    "Uniqueid": "1.8", "Linkedid": "1.7",
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"Uniqueid": ""},
        {"Channel": ""},
        {"ChannelState": "Ringing"},
        {"ChannelState": "42"},
        {"ChannelState": "-1"},
    ],
)
def test_malformed_channel_events_give_nothing(
    change: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "bridge.asterisk.ami_events")
    assert to_events({**BASE, **change}) == []
    assert "malformed" in caplog.text


def test_other_malformed_events() -> None:
    assert to_events({}) == []
    assert to_events({"Event": "Hangup"}) == []
    assert to_events({"Event": "DialEnd", "Uniqueid": "1", "DestUniqueid": "2"}) == []
    assert to_events({"Event": "ExtensionStatus", "Exten": "202", "Status": "busy"}) == []
    assert to_events({"Event": "DeviceStateChange", "Device": "PJSIP/202"}) == []
    assert to_events({"Event": "Hangup", "Uniqueid": "1.8", "Cause": "x"}) == [
        ChannelGone("1.8", 0)
    ]
    dial = {"Event": "DialBegin", "Uniqueid": "1.7", "DestUniqueid": "1.8"}
    assert to_events(dial) == [DialBegan("1.7", "1.8")]  # a bad Dest block keeps the dial
    odd: dict[str, object] = {**BASE, "Channel": ["PJSIP/1", "PJSIP/2"]}
    assert to_events(odd) == []  # type: ignore[arg-type]


def test_header_case_does_not_matter() -> None:
    (ev,) = to_events({k.upper(): v for k, v in BASE.items()})
    assert isinstance(ev, ChannelSeen) and ev.state is ChannelState.RINGING


@given(
    st.dictionaries(st.sampled_from([*BASE, "Event", "Cause", "Status", "DestUniqueid"]), st.text())
)
def test_to_events_never_raises(msg: dict[str, str]) -> None:
    for event in ("Newchannel", "Hangup", "DialBegin", "DialEnd", "ExtensionStatus", "Hold"):
        to_events({**msg, "Event": event})
    to_events(msg)


_EVENT_NAMES = st.sampled_from(
    sorted({*MAPPED_EVENTS, "Newchannel", "DialBegin", "BridgeEnter", "DialState", "VarSet"})
) | st.text(max_size=12)


@given(_EVENT_NAMES, st.dictionaries(st.sampled_from([*BASE, "DestUniqueid", "Cause"]), st.text()))
def test_only_the_mapped_events_give_events(name: str, msg: dict[str, str]) -> None:
    # What lets the AMI adapter skip every other event unread.
    if to_events({**msg, "Event": name}):
        assert name.lower() in MAPPED_EVENTS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_headers_already_in_lower_case_map_alike(scenario: str) -> None:
    for frame in asterisk_frames(scenario):
        assert events_of({k.lower(): v for k, v in frame.items()}) == to_events(frame)


def test_needs_ids_only_for_dialled_ringing_pjsip_legs() -> None:
    leg = ChannelSeen("1.8", "PJSIP/202-00000008", ChannelState.RINGING, dialed=True)
    assert needs_ids(leg)
    assert not needs_ids(ChannelSeen("1.8", "PJSIP/202-00000008", ChannelState.RINGING))
    assert not needs_ids(ChannelSeen("1.8", "PJSIP/202-00000008", ChannelState.UP, dialed=True))
    assert not needs_ids(ChannelSeen("1.8", "Local/202@x-1;1", ChannelState.RINGING, dialed=True))


def test_parked_calls_live_and_listed() -> None:
    events = [e for e in mapped("park-retrieve") if isinstance(e, CallParked | CallUnparked)]
    parked = CallParked("701", "1796290418.81", "201", "Phone 201")
    # Parked live, listed again by the second ParkedCalls, then taken by 203.
    assert events == [parked, parked, CallUnparked("701", "1796290418.81")]
    for name in ("ParkedCallTimeOut", "ParkedCallGiveUp"):
        msg = {"Event": name, "ParkingSpace": "702", "ParkeeUniqueid": "9.1"}
        assert to_events(msg) == [CallUnparked("702", "9.1")]
    assert to_events({"Event": "ParkedCall", "ParkingSpace": "701"}) == []  # whose call?


# --- contacts (LED rules) -----------------------------------------------------------------


def test_every_contact_of_a_phone_is_learnt_as_asterisk_22_lists_and_reports_it() -> None:
    contacts = [e for e in mapped("contacts") if isinstance(e, ContactChanged)]
    static = {f"sip:{n}@127.0.0.1:50{n - 130}" for n in range(201, 207)}
    # PJSIPShowAors: every AOR's contacts, static and registered; ContactList: the registered
    # one again (its AOR only in ObjectName); then ContactStatus as 204 comes and both go.
    listed = [e for e in contacts if e.listed]
    assert {e.uri for e in listed} == static | {"sip:203@127.0.0.1:5093"}
    assert all(e.reachable and e.uri.startswith(f"sip:{e.aor}@") for e in listed)
    assert listed[-1] == ContactChanged("203", "sip:203@127.0.0.1:5093", True, "203", listed=True)
    assert [e for e in contacts if not e.listed] == [
        ContactChanged("204", "sip:204@127.0.0.1:5094", True, "204"),
        ContactChanged("203", "sip:203@127.0.0.1:5093", False, "203"),
        ContactChanged("204", "sip:204@127.0.0.1:5094", False, "204"),
    ]
    # The login-time list of the registrations recording: 203 and 206 (no AOR header there).
    at_login = [e for e in mapped("registrations") if isinstance(e, ContactChanged)][:2]
    assert [(e.aor, e.uri, e.endpoint) for e in at_login] == [
        ("203", "sip:203@127.0.0.1:5083", "203"), ("206", "sip:206@127.0.0.1:5086", "206"),
    ]  # fmt: skip


def test_an_unreachable_listed_contact_and_a_contact_without_an_aor() -> None:
    item = {"event": "ContactList", "objectname": "203;@0deda0a8", "endpoint": "203",
            "uri": "sip:203@10.0.0.7", "status": "Unreachable"}  # fmt: skip
    assert events_of(item) == [ContactChanged("203", "sip:203@10.0.0.7", False, "203", True)]
    assert events_of({**item, "objectname": ";@0deda0a8"}) == []  # dropped, not a crash
    assert events_of({"event": "AorList", "objectname": "205", "contacts": ""}) == []
