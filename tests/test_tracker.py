"""CallTracker: hand-built event sequences and replays of the real Asterisk 22.10.1 recordings."""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from bridge.asterisk import ami_events
from bridge.demo import recording
from bridge.events import (
    AsteriskEvent,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    DeviceStateChanged,
    DialBegan,
    DialEnded,
    ExtensionHint,
    HoldChanged,
    LegIds,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds
from bridge.tracker import CallTracker, TrackerSettings

RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
EARLY, CONFIRMED = DialogState.EARLY, DialogState.CONFIRMED
DOWN, RING = ChannelState.DOWN, ChannelState.RING
RINGING, UP = ChannelState.RINGING, ChannelState.UP
P201, P202 = ("201", "Phone 201"), ("202", "Phone 202")
LEG_201, LEG_202 = "PJSIP/201-00000001", "PJSIP/202-00000002"


# -- hand-built events ---------------------------------------------------------------------


def hints(*extens: str) -> list[ExtensionHint]:
    return [ExtensionHint(e, "internal", f"PJSIP/{e}", 0) for e in extens]


def tracker(*extens: str, **settings: object) -> CallTracker:
    t = CallTracker(TrackerSettings(**settings))  # type: ignore[arg-type]
    for event in hints(*(extens or ("201", "202", "203", "205"))):
        t.apply(event, 0.0)
    return t


def seen(
    uid: str,
    name: str,
    state: ChannelState,
    linkedid: str,
    connected: tuple[str, str] = ("", ""),
    *,
    caller: tuple[str, str] = ("", ""),
    dialed: bool | None = None,
) -> ChannelSeen:
    return ChannelSeen(
        uid, name, state, caller[0], caller[1], connected[0], connected[1], linkedid, dialed
    )


def call_201_to_202(t: CallTracker) -> None:
    """201 dials 202 up to the point where 202's leg rings (uniqueids 100.1 and 100.2)."""
    t.apply(seen("100.1", LEG_201, RING, "100.1", caller=P201), 1)
    t.apply(seen("100.2", LEG_202, DOWN, "100.1", dialed=True), 1)
    t.apply(seen("100.2", LEG_202, DOWN, "100.1", P201), 1)
    t.apply(DialBegan("100.1", "100.2"), 1)
    t.apply(seen("100.1", LEG_201, RING, "100.1", P202), 1)
    t.apply(seen("100.2", LEG_202, RINGING, "100.1", P201), 2)


def only(state: EntityState) -> Dialog:
    assert len(state.dialogs) == 1, state
    return state.dialogs[0]


def test_ringing_leg_is_early_with_caller_then_confirmed_then_gone() -> None:
    t = tracker()
    t.apply(seen("100.1", LEG_201, RING, "100.1", caller=P201), 1)
    assert t.apply(seen("100.2", LEG_202, DOWN, "100.1", dialed=True), 1) == set()
    assert t.state("202").dialogs == ()  # dialled but not ringing: nothing to show yet
    changed = t.apply(seen("100.2", LEG_202, RINGING, "100.1", P201), 2)
    assert changed == {"202"}
    d = only(t.state("202"))
    assert (d.id, d.direction, d.state) == ("100.2", Direction.RECIPIENT, EARLY)
    assert (d.remote_num, d.remote_name, d.pickup) == ("201", "Phone 201", None)
    assert t.channels_needing_ids() == {"100.2"}
    assert t.apply(LegIds("100.2", "call-1", "asterisk-tag", "phone-tag"), 2) == {"202"}
    assert only(t.state("202")).pickup == PickupIds("call-1", "phone-tag", "asterisk-tag", "202")
    assert t.channels_needing_ids() == set()
    assert t.apply(seen("100.2", LEG_202, UP, "100.1"), 3) == {"202"}
    d = only(t.state("202"))
    assert (d.state, d.pickup, d.remote_num) == (CONFIRMED, None, "201")
    assert t.apply(ChannelGone("100.2"), 4) == {"202"}
    assert t.state("202") == EntityState("202")


def test_direction_from_dial_began_alone_and_from_linkedid() -> None:
    t = tracker()
    t.apply(DialBegan("100.1", "100.2"), 1)
    t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 1)
    assert only(t.state("202")).direction is Direction.RECIPIENT
    # A channel first met Up (after a reconnect) with nothing else said: linkedid decides.
    t.apply(seen("200.5", "PJSIP/203-00000005", UP, "200.5"), 1)
    t.apply(seen("200.6", "PJSIP/205-00000006", UP, "200.5"), 1)
    assert only(t.state("203")).direction is Direction.INITIATOR
    assert only(t.state("205")).direction is Direction.RECIPIENT


def test_unknown_connected_line_and_fallback_to_dial_peer() -> None:
    t = tracker()
    t.apply(seen("100.1", "PJSIP/202-00000001", RING, "100.1", ("<unknown>", "<unknown>")), 1)
    assert (only(t.state("202")).remote_num, only(t.state("202")).remote_name) == ("", "")
    t.apply(seen("100.2", "PJSIP/205-00000002", DOWN, "100.1", caller=("205", "Phone 205")), 1)
    assert t.apply(DialBegan("100.1", "100.2"), 1) == {"202"}
    assert only(t.state("202")).remote_num == "205"  # the dialled party, until connected line
    t.apply(seen("100.1", "PJSIP/202-00000001", RING, "100.1", ("2050", "Reception")), 1)
    assert only(t.state("202")).remote_name == "Reception"
    # A later event without a connected line must not erase it.
    assert (
        t.apply(seen("100.1", "PJSIP/202-00000001", RING, "100.1", ("<unknown>", "")), 1) == set()
    )


def test_pickup_ids_only_for_pjsip_legs() -> None:
    t = CallTracker()
    t.apply(ExtensionHint("300", "internal", "IAX2/300", 0), 0)
    t.apply(DialBegan("1.1", "1.2"), 1)
    t.apply(seen("1.2", "IAX2/300-00000002", RINGING, "1.1", ("201", "")), 1)
    t.apply(LegIds("1.2", "c", "l", "r"), 1)
    d = only(t.state("300"))
    assert (d.state, d.pickup) == (EARLY, None)
    assert t.channels_needing_ids() == set()


def test_pickup_ids_need_the_phones_tag() -> None:
    t = tracker()
    call_201_to_202(t)
    t.apply(LegIds("100.2", "call-1", "asterisk-tag", ""), 2)  # no tagged 18x yet
    assert only(t.state("202")).pickup is None
    assert t.channels_needing_ids() == {"100.2"}


def test_own_outgoing_call_is_confirmed_by_default() -> None:
    t = tracker()
    states = record(t, "202", outgoing_call_202_to_205())
    assert shape(states) == [("confirmed",), ()]
    assert states[0].dialogs[0].direction is Direction.INITIATOR


def test_own_outgoing_call_blinks_per_rfc_when_asked() -> None:
    t = tracker(outgoing_blinks=True)
    states = record(t, "202", outgoing_call_202_to_205())
    assert shape(states) == [("trying",), ("early",), ("confirmed",), ()]
    assert all(d.pickup is None for s in states for d in s.dialogs)


def outgoing_call_202_to_205() -> list[AsteriskEvent]:
    return [
        seen("100.1", "PJSIP/202-00000001", RING, "100.1", dialed=False),
        seen("100.2", "PJSIP/205-00000002", DOWN, "100.1", caller=("205", "Phone 205")),
        DialBegan("100.1", "100.2"),
        seen("100.1", "PJSIP/202-00000001", RING, "100.1", ("205", "Phone 205")),
        seen("100.2", "PJSIP/205-00000002", RINGING, "100.1", P202),
        seen("100.2", "PJSIP/205-00000002", UP, "100.1"),
        DialEnded("100.1", "100.2", "ANSWER"),
        seen("100.1", "PJSIP/202-00000001", UP, "100.1"),
        ChannelGone("100.2"),
        ChannelGone("100.1"),
    ]


def record(t: CallTracker, exten: str, events: Iterable[AsteriskEvent]) -> list[EntityState]:
    """Apply events; collect the entity's state each time apply() says it changed."""
    states = []
    for i, event in enumerate(events):
        if exten in t.apply(event, float(i)):
            states.append(t.state(exten))
    return states


def shape(states: list[EntityState]) -> list[tuple[str, ...]]:
    """Dialog states per change, consecutive repeats merged (identity updates etc.)."""
    out: list[tuple[str, ...]] = []
    for s in states:
        item = tuple(d.state.value for d in s.dialogs)
        if not out or out[-1] != item:
            out.append(item)
    return out


def test_hold_marks_holder_local_and_peer_remote() -> None:
    t = tracker()
    call_201_to_202(t)
    t.apply(seen("100.2", LEG_202, UP, "100.1"), 3)
    t.apply(seen("100.1", LEG_201, UP, "100.1"), 3)
    assert t.apply(HoldChanged("100.1", True), 4) == {"201", "202"}
    assert (only(t.state("201")).local_held, only(t.state("201")).remote_held) == (True, False)
    assert (only(t.state("202")).local_held, only(t.state("202")).remote_held) == (False, True)
    assert t.apply(HoldChanged("100.1", True), 4) == set()
    assert t.apply(HoldChanged("100.1", False), 5) == {"201", "202"}
    dialogs = t.state("201").dialogs + t.state("202").dialogs
    assert not any(d.local_held or d.remote_held for d in dialogs)
    t.apply(HoldChanged("100.2", True), 6)
    assert only(t.state("202")).local_held and only(t.state("201")).remote_held
    assert t.apply(ChannelGone("100.2"), 7) == {"201", "202"}
    assert not only(t.state("201")).remote_held


def test_dial_end_without_answer_stops_the_blinking_at_once() -> None:
    t = tracker()
    call_201_to_202(t)
    assert t.apply(DialEnded("100.1", "100.2", "CANCEL"), 3) == {"202"}
    assert t.state("202").dialogs == ()


def test_two_calls_are_two_dialogs_in_creation_order() -> None:
    t = tracker()
    events: list[AsteriskEvent] = [
        seen("100.1", "PJSIP/202-00000001", UP, "100.1", ("205", "Phone 205"), dialed=False),
        seen("100.2", "PJSIP/205-00000002", UP, "100.1", P202, dialed=True),
        seen("105.3", "PJSIP/201-00000003", RING, "105.3"),
        DialBegan("105.3", "105.4"),
        seen("105.4", "PJSIP/202-00000004", RINGING, "105.3", P201),
    ]
    for order in (events, list(reversed(events))):
        t = tracker()
        for event in order:
            t.apply(event, 1)
        t.apply(LegIds("105.4", "c", "ast", "ph"), 1)
        dialogs = t.state("202").dialogs
        assert [(d.id, d.state, d.remote_num) for d in dialogs] == [
            ("100.1", CONFIRMED, "205"),
            ("105.4", EARLY, "201"),
        ]
        assert dialogs[0].pickup is None and dialogs[1].pickup == PickupIds("c", "ph", "ast", "202")


def test_resync_removes_channels_not_seen_again() -> None:
    t = tracker()
    call_201_to_202(t)
    t.apply(seen("200.1", "PJSIP/203-00000009", UP, "200.1"), 3)
    assert t.apply(ResyncStarted(), 4) == set()
    t.apply(seen("200.1", "PJSIP/203-00000009", UP, "200.1"), 4)
    assert t.apply(ResyncFinished(), 4) == {"201", "202"}
    assert t.state("202").dialogs == () and t.state("201").dialogs == ()
    assert len(t.state("203").dialogs) == 1
    # The removed channels are dead for good: a late event does not bring them back.
    assert t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 5) == set()


def test_source_lost_makes_every_entity_unknown_until_resync() -> None:
    t = tracker()
    call_201_to_202(t)
    assert t.apply(SourceLost(), 3) == {"201", "202", "203", "205"}
    assert not t.state("202").known and not t.state("205").known
    assert only(t.state("202")).state is EARLY  # kept: the app decides how to show it
    assert t.apply(SourceLost(), 3) == set()
    t.apply(ResyncStarted(), 4)
    t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 4)
    assert t.apply(ResyncFinished(), 4) == {"201", "202", "203", "205"}
    assert t.state("202").known and t.state("201") == EntityState("201")
    assert only(t.state("202")).state is EARLY


def test_rings_expire_while_asterisk_is_away_but_answered_calls_stay() -> None:
    t = tracker()
    call_201_to_202(t)  # 202 rings
    t.apply(seen("200.1", "PJSIP/205-00000009", UP, "200.1", caller=("206", "")), 2)  # 205 talks
    assert t.expire_rings() == set()  # Asterisk is there: its word stands
    t.apply(SourceLost(), 3)
    assert t.expire_rings() == {"201", "202"}
    assert t.state("202").dialogs == () and not t.state("202").known
    assert only(t.state("205")).state is CONFIRMED
    assert t.expire_rings() == set()
    # Back: the resync shows the leg still ringing (only AMI was away), so it blinks again.
    t.apply(ResyncStarted(), 4)
    t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 4)
    t.apply(ResyncFinished(), 4)
    assert only(t.state("202")).state is EARLY


def test_events_about_unknown_channels_are_ignored() -> None:
    t = tracker()
    for event in (
        ChannelGone("9.9"),
        LegIds("9.8", "c", "l", "r"),
        DialEnded("9.7", "9.6", "CANCEL"),
        DeviceStateChanged("PJSIP/202", "RINGING"),
        ResyncFinished(),
    ):
        assert t.apply(event, 1) == set()
    assert t.state("202") == EntityState("202")


def test_ids_delivered_before_the_first_word_of_their_channel_are_kept() -> None:
    # A resync on a fresh tracker (restart, or a call that began while AMI was down): the AMI
    # source hands over a ringing leg's LegIds just before its CoreShowChannel.
    t = tracker()
    t.apply(ResyncStarted(), 1)
    assert t.apply(LegIds("100.2", "call-1", "asterisk-tag", "phone-tag"), 1) == set()
    t.apply(seen("100.2", LEG_202, RINGING, "100.1", dialed=True), 1)
    t.apply(ResyncFinished(), 1)
    pickup = only(t.state("202")).pickup
    assert pickup is not None and pickup.call_id == "call-1"


def test_a_hangup_seen_first_leaves_a_bounded_tombstone() -> None:
    t = tracker(max_tombstones=3)
    assert t.apply(ChannelGone("100.2"), 1) == set()
    assert t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 2) == set()
    for i in range(3):
        t.apply(ChannelGone(f"200.{i}"), 3)
    # Evicted from the bounded memory: the id would be accepted again.
    assert t.apply(seen("100.2", LEG_202, RINGING, "100.1"), 4) == {"202"}


def test_nothing_is_left_behind_after_calls() -> None:
    t = tracker()
    for _ in range(3):
        call_201_to_202(t)
        t.apply(HoldChanged("100.1", True), 3)
        t.apply(ChannelGone("100.2"), 4)
        t.apply(ChannelGone("100.1"), 4)
        t.apply(ResyncStarted(), 5)
        t.apply(ResyncFinished(), 5)
    internals = (t._channels, t._device_channels, t._linked, t._states, t._needing_ids)
    assert all(len(x) == 0 for x in internals) and t._held == 0


def test_repeated_events_report_no_change() -> None:
    t = tracker()
    call_201_to_202(t)
    assert t.apply(seen("100.2", LEG_202, RINGING, "100.1", P201), 2) == set()
    assert t.apply(hints("202")[0], 2) == set()
    assert t.apply(DialBegan("100.1", "100.2"), 2) == set()


def test_hints_map_devices_to_every_extension_that_names_them() -> None:
    t = CallTracker()
    t.apply(ExtensionHint("202", "internal", "PJSIP/202&Custom:DND202", 0), 0)
    t.apply(ExtensionHint("299", "internal", "pjsip/202&PJSIP/204,CustomPresence:299", 0), 0)
    assert t.extensions() == {"202", "299"}
    changed = t.apply(seen("1.2", LEG_202, RINGING, "1.1", dialed=True), 1)
    assert changed == {"202", "299"}
    # The hint of 299 changes: its dialog goes with the device.
    assert t.apply(ExtensionHint("299", "internal", "PJSIP/204", 8), 2) == {"299"}
    assert t.state("299").dialogs == () and len(t.state("202").dialogs) == 1


def test_watch_limits_extensions_and_falls_back_to_endpoint_names() -> None:
    t = CallTracker(TrackerSettings(watch=frozenset({"202"})))
    assert t.extensions() == {"202"}
    assert t.apply(seen("1.2", LEG_202, RINGING, "1.1", dialed=True), 1) == {"202"}
    assert t.apply(seen("1.3", "PJSIP/203-00000003", RINGING, "1.1", dialed=True), 1) == set()
    assert t.apply(ExtensionHint("203", "internal", "PJSIP/203", 0), 1) == set()
    # A hint for 202 replaces the fallback: now only the hint's devices count.
    assert t.apply(ExtensionHint("202", "internal", "PJSIP/2020", 0), 2) == {"202"}
    assert t.state("202").dialogs == ()


# -- the recordings ------------------------------------------------------------------------


def recorded_events(scenario: str) -> list[tuple[float, AsteriskEvent]]:
    """The scenario's AMI stream as normalized events, with the resync markers an adapter adds."""
    buffer = ""
    out: list[tuple[float, AsteriskEvent]] = []
    for line in (RECORDINGS / scenario / "ami-wire.jsonl").read_text().splitlines():
        record_ = json.loads(line)
        if record_["dir"] != "asterisk":
            continue
        frames, buffer = recording.parse_frames(buffer + record_["data"])
        for frame in frames:
            if frame.get("Message") == "Channels will follow":
                out.append((record_["t"], ResyncStarted()))
            elif frame.get("Event") == "CoreShowChannelsComplete":
                out.append((record_["t"], ResyncFinished()))
            else:
                out.extend((record_["t"], e) for e in ami_events.to_events(frame))
    return out


def replaces_ids(scenario: str, uniqueid: str) -> LegIds:
    """replaces.csv (call-id;local_tag;remote_tag, read with Getvar) as LegIds."""
    rows = list(csv.reader((RECORDINGS / scenario / "replaces.csv").open(), delimiter=";"))
    call_id, local_tag, remote_tag = rows[-1]
    return LegIds(uniqueid, call_id, local_tag, remote_tag)


def sip_log_ids(path: Path, uniqueid: str) -> LegIds:
    """Ids of Asterisk's INVITE to the phone (From-tag: Asterisk's; the 180's To-tag: phone's)."""
    text = path.read_text()
    call_id = re.search(r"^Call-ID: (\S+)", text, re.M)
    from_tag = re.search(r"^From: .*;tag=(\S+)", text, re.M)
    to_tag = re.search(r"^To: .*;tag=(\S+)", text, re.M)
    assert call_id and from_tag and to_tag
    return LegIds(uniqueid, call_id[1], from_tag[1], to_tag[1])


IdSource = Callable[[str], LegIds | None]


def replay(
    scenario: str,
    exten: str = "202",
    ids: IdSource = lambda uid: None,
    settings: TrackerSettings | None = None,
) -> tuple[CallTracker, list[EntityState]]:
    """Replay a recording; fetch ids like the adapter does; collect the entity's changes."""
    t = CallTracker(settings)
    states: list[EntityState] = []
    for now, event in recorded_events(scenario):
        changed = t.apply(event, now)
        for uid in sorted(t.channels_needing_ids()):
            leg_ids = ids(uid)
            if leg_ids is not None:
                changed |= t.apply(leg_ids, now)
        if exten in changed:
            states.append(t.state(exten))
    return t, states


def test_recording_ring_cancel() -> None:
    t, states = replay("ring-cancel")
    assert shape(states) == [("early",), ()]
    d = states[0].dialogs[0]
    assert (d.direction, d.remote_num, d.remote_name) == (Direction.RECIPIENT, "201", "Phone 201")
    assert t.state("202") == EntityState("202") and t.state("201") == EntityState("201")


def test_recording_ring_answer_hangup() -> None:
    _, states = replay("ring-answer-hangup")
    assert shape(states) == [("early",), ("confirmed",), ()]
    assert {d.remote_num for s in states for d in s.dialogs} == {"201"}
    _, caller_states = replay("ring-answer-hangup", "201")
    assert shape(caller_states) == [("confirmed",), ()]
    assert caller_states[-2].dialogs[0].remote_num == "202"


def test_recording_pickup_replaces() -> None:
    leg = "1795325554.8"  # PJSIP/202-00000008, the leg that rang
    expected = replaces_ids("pickup-replaces", leg)
    t, states = replay("pickup-replaces", ids=lambda uid: expected if uid == leg else None)
    assert shape(states) == [("early",), ()]
    picked = [d.pickup for s in states for d in s.dialogs if d.pickup is not None]
    # csv: call-id;local_tag;remote_tag → call-id=f1, remote-tag=f2, local-tag=f3
    assert picked and set(picked) == {
        PickupIds(
            expected.call_id, local_tag=expected.remote_tag, remote_tag=expected.local_tag,
            endpoint="202",
        )
    }  # fmt: skip
    # The same ids as the picker's Replaces header: call-id;to-tag=<remote-tag>;from-tag=<local-tag>
    picker = (RECORDINGS / "pickup-replaces" / "sip-203-picker.log").read_text()
    p = picked[0]
    assert f"Replaces: {p.call_id};to-tag={p.remote_tag};from-tag={p.local_tag}" in picker
    # 203 took the call: its own dialog with the caller, confirmed, 202 is idle.
    _, picker_states = replay("pickup-replaces", "203")
    last = picker_states[-1].dialogs[0]
    assert (last.state, last.direction, last.remote_num) == (CONFIRMED, Direction.INITIATOR, "201")
    assert t.state("202").dialogs == ()


def test_recording_outbound_from_202() -> None:
    _, states = replay("outbound-from-202")
    assert shape(states) == [("confirmed",), ()]
    assert states[-2].dialogs[0].remote_num == "205"
    _, blinking = replay("outbound-from-202", settings=TrackerSettings(outgoing_blinks=True))
    assert shape(blinking) == [("trying",), ("early",), ("confirmed",), ()]
    _, callee = replay("outbound-from-202", "205")
    assert shape(callee) == [("early",), ("confirmed",), ()]


def test_recording_answer_hold_resume() -> None:
    _, states = replay("answer-hold-resume")
    held = [(s.dialogs[0].local_held, s.dialogs[0].remote_held) for s in states if s.dialogs]
    # 201 pressed hold (the Hold event is on PJSIP/201-…): for 202 the remote side holds.
    assert shape(states) == [("early",), ("confirmed",), ()]
    assert held[-3:] == [(False, False), (False, True), (False, False)]
    _, holder = replay("answer-hold-resume", "201")
    assert [(s.dialogs[0].local_held, s.dialogs[0].remote_held) for s in holder if s.dialogs][
        -2:
    ] == [(True, False), (False, False)]


def test_recording_ring_while_busy() -> None:
    ringing_leg = "1795325837.24"  # PJSIP/202-00000018
    expected = sip_log_ids(RECORDINGS / "ring-while-busy" / "sip-202-in.log", ringing_leg)
    talking_leg_ids = replaces_ids("ring-while-busy", "1795325833.21")

    def ids(uid: str) -> LegIds | None:
        return expected if uid == ringing_leg else None

    t = CallTracker()
    states = []
    for now, event in recorded_events("ring-while-busy"):
        changed = t.apply(event, now)
        if isinstance(event, ResyncFinished) and "1795325833.21" in t._channels:
            # The recorded client read the ids of the talking leg: they must not show up.
            changed |= t.apply(talking_leg_ids, now)
        for uid in t.channels_needing_ids():
            if (leg_ids := ids(uid)) is not None:
                changed |= t.apply(leg_ids, now)
        if "202" in changed:
            states.append(t.state("202"))
    assert shape(states) == [("confirmed",), ("confirmed", "early"), ("confirmed",), ()]
    both = next(s for s in states if len(s.dialogs) == 2)
    talking, ringing = both.dialogs
    assert (talking.id, talking.remote_num, talking.pickup) == ("1795325833.21", "205", None)
    assert (ringing.id, ringing.remote_num) == (ringing_leg, "201")
    assert ringing.pickup == PickupIds(
        expected.call_id, expected.remote_tag, expected.local_tag, "202"
    )


SCENARIOS = [
    "ring-cancel",
    "ring-answer-hangup",
    "pickup-replaces",
    "outbound-from-202",
    "answer-hold-resume",
    "ring-while-busy",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_is_deterministic(scenario: str) -> None:
    first = [replay(scenario, e)[1] for e in ("201", "202", "203", "205")]
    second = [replay(scenario, e)[1] for e in ("201", "202", "203", "205")]
    assert first == second


def live_events(scenario: str) -> tuple[list[AsteriskEvent], list[AsteriskEvent]]:
    """Hints, and the live events (resync markers left out: their order matters by design)."""
    events = [e for _, e in recorded_events(scenario)]
    hint_events: list[AsteriskEvent] = [e for e in events if isinstance(e, ExtensionHint)]
    live: list[AsteriskEvent] = [
        e for e in events if not isinstance(e, ExtensionHint | ResyncStarted | ResyncFinished)
    ]
    return hint_events, live


def final_states(hint_events: list[AsteriskEvent], live: list[AsteriskEvent]) -> list[EntityState]:
    t = CallTracker()
    for event in hint_events + live:
        t.apply(event, 1.0)
    return [t.state(e) for e in sorted(t.extensions())]


def ends_prefix(event: AsteriskEvent) -> bool:
    if isinstance(event, DialEnded):
        return event.status != "ANSWER"
    return isinstance(event, ChannelGone) or (isinstance(event, HoldChanged) and not event.on_hold)


def skeleton(states: list[EntityState]) -> list[tuple[object, ...]]:
    return [
        (s.exten, [(d.id, d.direction, d.state, d.pickup, d.remote_held) for d in s.dialogs])
        for s in states
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("seed", range(5))
def test_shuffled_events_converge(scenario: str, seed: int) -> None:
    hint_events, live = live_events(scenario)
    rng = random.Random(seed)
    # Whole scenario: the same calls in the same states, no channel resurrected by a late
    # event. Identities may differ: a connected line that really changed (201's, from 202 to
    # 203 after the pickup) is whichever update came last.
    shuffled = live[:]
    rng.shuffle(shuffled)
    expected = skeleton(final_states(hint_events, live))
    assert skeleton(final_states(hint_events, shuffled)) == expected
    # Mid-call: everything up to the first hangup (or Unhold, whose order against its Hold
    # matters by nature), in any order, gives the same picture.
    cut = next(i for i, e in enumerate(live) if ends_prefix(e))
    prefix = live[:cut]
    ordered = final_states(hint_events, prefix)
    assert any(s.dialogs for s in ordered)
    for _ in range(3):
        rng.shuffle(prefix)
        assert final_states(hint_events, prefix) == ordered
