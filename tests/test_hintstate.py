"""Keys that follow device states and parking spaces: bridge.hintstate and the CallTracker with
it, by hand and by replaying the device-states and park-retrieve recordings of Asterisk 22.10.1
(compared with what Asterisk's own BLF sent, tests/own_blf.py)."""

from __future__ import annotations

import json

import pytest
from own_blf import RECORDINGS, ami_recording_end, collapsed, lit, own_blf

from bridge.asterisk import ami_events
from bridge.demo import recording
from bridge.events import (
    AsteriskEvent,
    CallParked,
    CallUnparked,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    DeviceStateChanged,
    ExtensionHint,
    LegIds,
    ResyncFinished,
    ResyncStarted,
)
from bridge.hintstate import aggregate, device_dialog
from bridge.model import DialogState, EntityState
from bridge.tracker import CallTracker


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["NOT_INUSE"], "NOT_INUSE"),
        (["UNAVAILABLE"], "UNAVAILABLE"),
        (["NOT_INUSE", "UNAVAILABLE"], "NOT_INUSE"),  # 211 in the recording: Idle
        (["RINGING", "INUSE"], "RINGINUSE"),
        (["INUSE", "RINGING", "NOT_INUSE"], "RINGINUSE"),
        (["ONHOLD", "RINGING"], "RINGINUSE"),
        (["BUSY", "INUSE"], "BUSY"),
        (["ONHOLD", "NOT_INUSE"], "ONHOLD"),
        (["RINGING", "NOT_INUSE"], "RINGING"),
        (["no such state"], "UNKNOWN"),
    ],
)
def test_aggregate_follows_asterisks_precedence(states: list[str], expected: str) -> None:
    assert aggregate(states) == expected


@pytest.mark.parametrize(
    ("state", "shown"),
    [("INUSE", "confirmed"), ("BUSY", "confirmed"), ("ONHOLD", "confirmed"),
     ("RINGINUSE", "confirmed"), ("RINGING", "early"), ("NOT_INUSE", None),
     ("UNAVAILABLE", None), ("UNKNOWN", None), ("INVALID", None)],
)  # fmt: skip
def test_device_state_lights_like_asterisks_own_blf(state: str, shown: str | None) -> None:
    dialog = device_dialog(state)
    assert (dialog.state.value if dialog else None) == shown
    assert dialog is None or dialog.pickup is None
    assert dialog is None or dialog.local_held == (state == "ONHOLD")


# -- the tracker -------------------------------------------------------------------------------


def hinted(*pairs: tuple[str, str]) -> CallTracker:
    t = CallTracker()
    for exten, hint in pairs:
        t.apply(ExtensionHint(exten, "internal", hint, 0), 0.0)
    return t


def shown(state: EntityState) -> list[tuple[str, str, str]]:
    return [(d.id, d.state.value, d.remote_num) for d in state.dialogs]


def test_a_custom_device_lights_its_key_and_every_composite_hint_naming_it() -> None:
    t = hinted(("210", "Custom:DND201"), ("211", "PJSIP/201&Custom:DND201"), ("201", "PJSIP/201"))
    assert t.apply(DeviceStateChanged("Custom:DND201", "BUSY"), 1.0) == {"210", "211"}
    assert shown(t.state("210")) == shown(t.state("211")) == [("devstate", "confirmed", "")]
    assert t.state("201").dialogs == ()
    assert t.apply(DeviceStateChanged("Custom:DND201", "BUSY"), 1.1) == set()  # no news
    assert t.apply(DeviceStateChanged("Custom:DND201", "NOT_INUSE"), 1.2) == {"210", "211"}
    assert t.state("210").dialogs == t.state("211").dialogs == ()


def test_a_channel_device_keeps_its_calls_and_its_device_state_adds_nothing() -> None:
    t = hinted(("211", "PJSIP/201&Custom:DND201"))
    t.apply(DeviceStateChanged("Custom:DND201", "BUSY"), 0.0)
    assert t.apply(DeviceStateChanged("PJSIP/201", "RINGING"), 0.1) == set()
    t.apply(ChannelSeen("9.2", "PJSIP/201-00000002", ChannelState.RINGING, "201", "Phone 201",
                        "203", "Phone 203", linkedid="9.1", dialed=True), 0.2)  # fmt: skip
    t.apply(LegIds("9.2", "call-1", "asterisk-tag", "phone-tag"), 0.3)
    ringing, busy = t.state("211").dialogs
    assert (ringing.id, ringing.state, ringing.remote_num) == ("9.2", DialogState.EARLY, "203")
    assert ringing.pickup is not None and ringing.pickup.call_id == "call-1"
    assert (busy.id, busy.state, busy.pickup) == ("devstate", DialogState.CONFIRMED, None)


def test_a_parked_call_shows_its_caller_on_the_space_until_it_leaves() -> None:
    t = hinted(("701", "park:701@parkedcalls"), ("702", "park:702@parkedcalls"))
    assert t.apply(CallParked("701", "5.1", "201", "Phone 201"), 0.0) == {"701"}
    t.apply(DeviceStateChanged("park:701@parkedcalls", "INUSE"), 0.1)
    assert shown(t.state("701")) == [("5.1", "confirmed", "201")]  # no bare device dialog
    assert t.state("701").dialogs[0].pickup is None  # the key dials the space instead
    assert t.state("702").dialogs == ()
    assert t.apply(CallUnparked("701", "5.1"), 0.2) == {"701"}
    # The space is free: 20.20.1 sends UnParkedCall before the space's NOT_INUSE (22.10.1 after
    # it), and res_parking's space is in use exactly while a call is parked there.
    assert t.state("701").dialogs == ()
    assert t.apply(DeviceStateChanged("park:701@parkedcalls", "NOT_INUSE"), 0.3) == set()
    t.apply(DeviceStateChanged("park:701@parkedcalls", "INUSE"), 0.4)  # parked again, unnamed
    assert shown(t.state("701")) == [("devstate", "confirmed", "")]


def test_a_parked_call_that_hangs_up_or_is_not_listed_again_leaves_its_space() -> None:
    t = hinted(("701", "park:701@parkedcalls"))
    t.apply(CallParked("701", "5.1", "201", "Phone 201"), 0.0)
    assert t.apply(ChannelGone("5.1"), 0.1) == {"701"}
    assert t.state("701").dialogs == ()
    assert t.apply(CallParked("701", "5.1", "201", "Phone 201"), 0.2) == set()  # a late word
    t.apply(CallParked("701", "5.2", "202", ""), 0.3)
    t.apply(ResyncStarted(), 0.4)
    assert t.apply(ResyncFinished(), 0.5) == {"701"}  # not listed by ParkedCalls any more
    assert t.state("701").dialogs == ()


# -- the recordings ----------------------------------------------------------------------------


def recorded(scenario: str) -> list[AsteriskEvent]:
    """A recording's AMI stream as the AMI source hands it over: each group of list answers
    (from the first one to ParkedCalls, the last) between ResyncStarted and ResyncFinished,
    live events among and between them, in stream order."""
    buffers = {"client": "", "asterisk": ""}
    events: list[AsteriskEvent] = []
    resyncing = False
    for line in (RECORDINGS / scenario / "ami-wire.jsonl").read_text().splitlines():
        record = json.loads(line)
        frames, buffers[record["dir"]] = recording.parse_frames(
            buffers[record["dir"]] + record["data"]
        )
        for frame in frames:
            if record["dir"] == "client":
                continue
            if frame.get("Message", "").endswith("will follow") and not resyncing:
                events.append(ResyncStarted())
                resyncing = True
            elif frame.get("Event") == "ParkedCallsComplete":
                events.append(ResyncFinished())
                resyncing = False
            else:
                events += ami_events.to_events(frame)
    return events


def key_states(scenario: str, exten: str) -> list[str]:
    t = CallTracker()
    states = ["idle"]
    for event in recorded(scenario):
        if exten in t.apply(event, 0.0):
            live = {d.state.value for d in t.state(exten).dialogs}
            states.append("+".join(sorted(live)) or "idle")
    return states


@pytest.mark.parametrize(
    ("scenario", "exten"), [("device-states", "210"), ("park-retrieve", "701")]
)
def test_replayed_keys_without_channels_show_what_asterisks_own_blf_showed(
    scenario: str, exten: str
) -> None:
    expected = own_blf(scenario, exten, until=ami_recording_end(scenario))
    assert collapsed(key_states(scenario, exten)) == collapsed(expected)


def test_replayed_composite_hint_is_lit_exactly_when_asterisks_own_blf_was() -> None:
    expected = own_blf("device-states", "211", until=ami_recording_end("device-states"))
    got = key_states("device-states", "211")
    assert collapsed(map(lit, got)) == collapsed(map(lit, expected))
    assert "confirmed+early" in got  # 201 rings (its own dialog) while DND201 is busy


def test_replayed_park_shows_the_parked_caller() -> None:
    t = CallTracker()
    callers = set()
    for event in recorded("park-retrieve"):
        if "701" in t.apply(event, 0.0):
            callers |= {(d.remote_num, d.remote_name) for d in t.state("701").dialogs}
    assert callers == {("201", "Phone 201")}
    assert t.state("701").dialogs == ()
