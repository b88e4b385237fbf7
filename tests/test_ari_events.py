"""ARI event mapping: the real Asterisk 22.10.1 recordings, malformed input, and the tracker."""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from releases import recordings, release_cases

from bridge.asterisk import ami_events
from bridge.asterisk.ami_events import needs_ids
from bridge.asterisk.ari_events import (
    STATE_NAMES,
    DialPairs,
    ParkedChannels,
    aor_contacts,
    bridged,
    listed_channel,
    listed_device,
    listed_endpoint,
    protocol_ids,
    to_events,
)
from bridge.demo.recording import load_scenario
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
    LegIds,
)
from bridge.model import EntityState
from bridge.tracker import CallTracker

RECORDINGS = recordings()  # 22.10.1
SCENARIOS = [
    "ring-cancel",
    "ring-answer-hangup",
    "pickup-replaces",
    "outbound-from-202",
    "answer-hold-resume",
    "ring-while-busy",
]
EXTENS = ("201", "202", "203", "204", "205", "206")
HINTS: list[AsteriskEvent] = [ExtensionHint(e, "", f"PJSIP/{e}", 0) for e in EXTENS]
MAPPED_KINDS = [
    "ChannelCreated",
    "ChannelStateChange",
    "ChannelConnectedLine",
    "ChannelDestroyed",
    "Dial",
    "ChannelHold",
    "ChannelUnhold",
    "DeviceStateChanged",
    "ChannelEnteredBridge",
]
ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")
Json = dict[str, object]


def raw(scenario: str, folder: Path = RECORDINGS) -> list[Json]:
    lines = (folder / scenario / "ari-events.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines if line.strip()]


def first(scenario: str, kind: str, **channel: str) -> Json:
    """The first recorded event of a type whose channel (or peer) has the given fields."""
    for event in raw(scenario):
        ch = event.get("channel") or event.get("peer") or {}
        assert isinstance(ch, dict)
        if event["type"] == kind and all(ch.get(k) == v for k, v in channel.items()):
            return event
    raise AssertionError(f"no {kind} {channel} in {scenario}")


def mapped(scenario: str, folder: Path = RECORDINGS) -> list[AsteriskEvent]:
    dials = DialPairs()
    return [e for event in raw(scenario, folder) for e in to_events(event, dials)]


def with_ids(
    events: Iterable[AsteriskEvent], scenario: str, folder: Path = RECORDINGS
) -> list[AsteriskEvent]:
    """LegIds just before each ChannelSeen that needs them, as both sources deliver them."""
    getvars = load_scenario(folder / scenario).getvars
    out: list[AsteriskEvent] = []
    for event in events:
        if isinstance(event, ChannelSeen) and needs_ids(event):
            values = [getvars.get((event.name, v), "") for v in ID_VARIABLES]
            if all(values):
                out.append(LegIds(event.uniqueid, *values))
        out.append(event)
    return out


def ami_mapped(scenario: str, folder: Path = RECORDINGS) -> list[AsteriskEvent]:
    """The AMI recording's call/system events, as the AMI source hands them over."""
    out: list[AsteriskEvent] = []
    for event in load_scenario(folder / scenario).events:
        if {"call", "system"} & set(event.headers.get("Privilege", "").split(",")):
            out += ami_events.to_events(event.headers)
    return out


def states(events: Iterable[AsteriskEvent], exten: str) -> list[EntityState]:
    """The extension's state after every change, repeats merged."""
    t = CallTracker()
    out: list[EntityState] = []
    for i, event in enumerate([*HINTS, *events]):
        if exten in t.apply(event, float(i)) and (not out or out[-1] != t.state(exten)):
            out.append(t.state(exten))
    return out


def final(events: Iterable[AsteriskEvent]) -> list[EntityState]:
    t = CallTracker()
    for event in [*HINTS, *events]:
        t.apply(event, 1.0)
    return [t.state(e) for e in EXTENS]


# --- the recordings ----------------------------------------------------------------------


def test_channel_events_of_a_call() -> None:
    created = to_events(first("ring-cancel", "ChannelCreated", name="PJSIP/201-00000003"))
    caller = ChannelSeen("1795325527.3", "PJSIP/201-00000003", ChannelState.RING, "201")
    assert created == [
        ChannelSeen(**{**asdict(caller), "caller_name": "Phone 201", "dialed": False})
    ]
    (leg,) = to_events(first("ring-cancel", "ChannelCreated", name="PJSIP/202-00000004"))
    assert isinstance(leg, ChannelSeen)
    assert (leg.state, leg.dialed, leg.linkedid) == (ChannelState.DOWN, True, "")
    (line,) = to_events(first("ring-cancel", "ChannelConnectedLine", name="PJSIP/202-00000004"))
    assert isinstance(line, ChannelSeen) and line.dialed is None  # Down proves nothing here
    assert (line.connected_num, line.connected_name) == ("201", "Phone 201")
    (ringing,) = to_events(first("ring-cancel", "ChannelStateChange", state="Ringing"))
    assert isinstance(ringing, ChannelSeen) and needs_ids(ringing)
    (up,) = to_events(first("ring-answer-hangup", "ChannelStateChange", state="Up"))
    assert isinstance(up, ChannelSeen) and up.dialed is None
    gone = to_events(first("ring-cancel", "ChannelDestroyed", name="PJSIP/201-00000003"))
    assert gone == [ChannelGone("1795325527.3", 127)]


def test_dial_begins_once_per_pair_and_ends() -> None:
    dials = DialPairs()
    begin = first("ring-cancel", "Dial", state="Down")
    ringing = first("ring-cancel", "Dial", state="Ringing")
    peer, began = to_events(begin, dials)
    assert began == DialBegan("1795325527.3", "1795325527.4")
    assert isinstance(peer, ChannelSeen) and (peer.uniqueid, peer.dialed) == ("1795325527.4", True)
    assert to_events(ringing, dials) == []  # RINGING: the same attempt, nothing new
    assert len(to_events(ringing)) == 2  # without memory every report says it again
    cancel = next(e for e in raw("ring-cancel") if e.get("dialstatus") == "CANCEL")
    assert to_events(cancel, dials) == [DialEnded("1795325527.3", "1795325527.4", "CANCEL")]
    assert len(dials) == 0
    assert len(to_events(ringing, dials)) == 2  # a new attempt of the pair is news again


def test_ring_while_busy_reports_ringing_before_the_dial() -> None:
    # Asterisk sent the leg's Ringing before the Dial that started it: the first Dial for the
    # pair still begins it, and its peer is already ringing.
    events = mapped("ring-while-busy")
    began = events.index(DialBegan("1795325837.23", "1795325837.24"))
    peer = events[began - 1]
    assert isinstance(peer, ChannelSeen) and peer.state is ChannelState.RINGING and peer.dialed
    assert events.count(DialBegan("1795325837.23", "1795325837.24")) == 1


def test_pickup_dial_ends_on_the_picker() -> None:
    events = mapped("pickup-replaces")
    assert DialEnded("1795325554.7", "1795325561.9", "ANSWER") in events
    picker = [e for e in events if isinstance(e, ChannelSeen) and e.uniqueid == "1795325561.9"]
    assert picker[0].dialed is False and all(e.dialed is not True for e in picker)
    assert HoldChanged("1795325561.9", on_hold=False) in events  # ARI reports an Unhold too


def test_a_bridge_groups_the_channels_of_a_call() -> None:
    # ARI's channel has no linkedid: the bridge the channels meet in stands for it.
    entered = first("answer-hold-resume", "ChannelEnteredBridge", name="PJSIP/201-00000025")
    (seen,) = to_events(entered)
    assert isinstance(seen, ChannelSeen) and seen.linkedid == "84adfd00-a283-4137-8213-986f03d36ab5"
    assert seen.state is ChannelState.UP and seen.dialed is None
    assert to_events({**entered, "bridge": {"channels": []}}) == []
    listing = [entered["bridge"], {"id": "b2", "channels": ["9.1", 7]}, {"channels": ["9.2"]}, 3]
    in_bridge = bridged(listing)
    assert in_bridge == {
        "1795328184.37": seen.linkedid,
        "1795328184.38": seen.linkedid,
        "9.1": "b2",
    }
    assert bridged({"id": "b"}) == {}
    (listed,) = listed_channel(entered["channel"], in_bridge["1795328184.37"])
    assert isinstance(listed, ChannelSeen) and listed.linkedid == seen.linkedid
    channel = entered["channel"]
    assert isinstance(channel, dict)
    own = {**entered, "channel": {**channel, "linkedid": "1795328184.37"}}  # a future Asterisk
    assert to_events(own) == [replace(seen, linkedid="1795328184.37")]


def test_hold_and_device_states() -> None:
    events = mapped("answer-hold-resume")
    assert [e for e in events if isinstance(e, HoldChanged)] == [
        HoldChanged("1795328184.37", True),
        HoldChanged("1795328184.37", False),
    ]
    assert DeviceStateChanged("PJSIP/202", "ONHOLD") in events


@pytest.mark.parametrize(("release", "scenario"), release_cases(*SCENARIOS))
def test_the_rest_maps_to_nothing(release: str, scenario: str) -> None:
    for event in raw(scenario, recordings(release)):
        if event["type"] in MAPPED_KINDS:
            assert to_events(event), event["type"]
        else:
            assert to_events(event) == [], event["type"]


def test_every_state_name() -> None:
    assert len(STATE_NAMES) == len(ChannelState)
    names = [
        "Down",
        "Rsrvd",
        "OffHook",
        "Dialing",
        "Ring",
        "Ringing",
        "Up",
        "Busy",
        "Dialing Offhook",
        "Pre-ring",
    ]
    for number, name in enumerate(names):
        event = {
            "type": "ChannelStateChange",
            "channel": {"id": "1.1", "name": "X/1", "state": name},
        }
        (seen,) = to_events(event)
        assert isinstance(seen, ChannelSeen) and seen.state == number


def test_listed_channels_decide_dialed_from_the_application() -> None:
    def listed(state: str, app: str) -> bool | None:
        channel = {
            "id": "1.2",
            "name": "PJSIP/202-1",
            "state": state,
            "dialplan": {"app_name": app},
        }
        (seen,) = listed_channel(channel)
        assert isinstance(seen, ChannelSeen)
        return seen.dialed

    assert listed("Up", "AppDial") is True
    assert listed("Up", "Dial") is False  # stands in for AMI's Linkedid (module docstring)
    assert listed("Up", "") is None
    assert listed("Ringing", "") is True
    assert listed("Down", "") is None  # only ChannelCreated proves a Down PJSIP leg dialled
    assert listed("Ring", "AppDial") is True
    assert listed_channel({"id": "1.2", "state": "Up"}) == []


def test_endpoints_devices_and_protocol_ids() -> None:
    assert listed_endpoint({"technology": "PJSIP", "resource": "202", "state": "online"}) == [
        ExtensionHint("202", "", "PJSIP/202", 0)
    ]
    assert listed_endpoint({"technology": "IAX2", "resource": "trunk"}) == []
    assert listed_endpoint("PJSIP/202") == []
    change = {"type": "EndpointStateChange", "endpoint": {"technology": "PJSIP", "resource": "7"}}
    assert to_events(change) == [ExtensionHint("7", "", "PJSIP/7", 0)]
    assert listed_device({"name": "PJSIP/202", "state": "INUSE"}) == [
        DeviceStateChanged("PJSIP/202", "INUSE")
    ]
    assert listed_device({"name": "PJSIP/202"}) == []
    ringing = first("pickup-replaces", "Dial", state="Ringing")
    assert protocol_ids(ringing) == {
        "1795325554.7": "1-19107@127.0.0.1",
        "1795325554.8": "cca94fb4-0e6d-4824-99c2-15b0cc6b1cca",
    }
    assert protocol_ids(first("ring-cancel", "ChannelCreated")) == {}  # not known at creation
    assert protocol_ids([1, 2]) == {}


def test_dial_pairs_are_bounded_and_forgotten_with_their_channels() -> None:
    dials = DialPairs(limit=2)
    assert dials.begin("a", "b") and dials.begin("a", "c") and not dials.begin("a", "b")
    assert dials.begin("d", "e") and len(dials) == 2  # ("a", "b") evicted
    assert dials.begin("a", "b")
    dials.forget("a")
    assert len(dials) == 1
    hangup = {"type": "ChannelDestroyed", "cause": 16, "channel": {"id": "e"}}
    assert to_events(hangup, dials) == [ChannelGone("e", 16)] and len(dials) == 0


# --- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("channel", "id"), ""),
        (("channel", "id"), 17),
        (("channel", "name"), None),
        (("channel", "state"), "Unknown (12)"),
        (("channel", "state"), 5),
        (("channel",), "PJSIP/202-00000004"),
    ],
)
def test_malformed_channel_events_give_nothing(
    path: tuple[str, ...], value: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "bridge.asterisk.ari_events")
    event = copy.deepcopy(first("ring-cancel", "ChannelStateChange", state="Ringing"))
    target: dict[str, object] = event
    for key in path[:-1]:
        inner = target[key]
        assert isinstance(inner, dict)
        target = inner
    target[path[-1]] = value
    assert to_events(event) == []
    assert "malformed" in caplog.text


def test_other_malformed_events() -> None:
    assert to_events(None) == [] and to_events([]) == [] and to_events({}) == []
    assert to_events({"type": "ChannelDestroyed"}) == []
    hangup = {"type": "ChannelDestroyed", "channel": {"id": "1.8"}}
    for cause in ("x", "²", -3, True, 1.5, "9" * 5000):  # an odd cause must not lose a hangup
        assert to_events({**hangup, "cause": cause}) == [ChannelGone("1.8", 0)]
    dial = {"type": "Dial", "dialstatus": "", "caller": {"id": "1.7"}, "peer": {"id": "1.8"}}
    assert to_events(dial) == [DialBegan("1.7", "1.8")]  # a bad peer block keeps the dial
    assert to_events({**dial, "dialstatus": 3}) == []
    assert to_events({**dial, "caller": {"id": ""}}) == []
    originated = {"type": "Dial", "dialstatus": "NOANSWER", "peer": {"id": "1.8"}}
    assert to_events(originated) == []  # nothing to link it to
    assert to_events({"type": "DeviceStateChanged", "device_state": {"name": "PJSIP/1"}}) == []
    odd_party = copy.deepcopy(first("ring-cancel", "ChannelCreated"))
    odd_party["channel"]["caller"] = {"number": ["201"], "name": "<unknown>"}  # type: ignore[index]
    (seen,) = to_events(odd_party)
    assert isinstance(seen, ChannelSeen) and (seen.caller_num, seen.caller_name) == ("", "")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
KINDS = st.sampled_from([*MAPPED_KINDS, "ChannelCallerId", "EndpointStateChange", "StasisStart"])
FIELDS = st.sampled_from(
    ["channel", "peer", "caller", "dialstatus", "cause", "device_state", "endpoint"]
)


@given(JSON)
def test_to_events_never_raises_on_any_json(value: object) -> None:
    assert isinstance(to_events(value), list)
    assert isinstance(to_events(value, DialPairs()), list)
    for listed in (listed_channel, listed_device, listed_endpoint):
        assert isinstance(listed(value), list)
    assert isinstance(bridged(value), dict) and isinstance(bridged([value]), dict)
    protocol_ids(value)


@given(
    KINDS,
    st.dictionaries(FIELDS, JSON),
    st.dictionaries(
        st.sampled_from(["id", "name", "state", "caller", "connected", "dialplan", "protocol_id"]),
        JSON,
    ),
)
def test_to_events_never_raises_on_near_misses(kind: str, fields: Json, channel: Json) -> None:
    base = {"id": "1.2", "name": "PJSIP/202-1", "state": "Ringing"}
    event = {"type": kind, **fields, "channel": {**base, **channel}, "peer": {**base, **channel}}
    for msg in (event, {**event, "caller": {**base, "id": "1.1"}}):
        assert all(isinstance(e, AsteriskEvent) for e in to_events(msg, DialPairs()))


# --- through the tracker: the same states as AMI, in any order ----------------------------


@pytest.mark.parametrize(("release", "scenario"), release_cases(*SCENARIOS))
def test_same_states_as_the_ami_recording(release: str, scenario: str) -> None:
    folder = recordings(release)
    ari = with_ids(mapped(scenario, folder), scenario, folder)
    ami = with_ids(ami_mapped(scenario, folder), scenario, folder)
    for exten in ("201", "202", "203", "205"):
        over_ari, over_ami = states(ari, exten), states(ami, exten)
        # The AMI recording of pickup-replaces stops before the call ends; ARI's goes on.
        assert over_ari[: len(over_ami)] == over_ami
        assert over_ari[-1:] in ([], [EntityState(exten)])


def test_pickup_ids_from_the_recording() -> None:
    ringing = states(with_ids(mapped("pickup-replaces"), "pickup-replaces"), "202")[0]
    call_id, asterisk_tag, phone_tag = (
        (RECORDINGS / "pickup-replaces" / "replaces.csv").read_text().splitlines()[1].split(";")
    )
    pickup = ringing.dialogs[0].pickup
    assert pickup is not None
    # csv: call-id;local_tag;remote_tag → call-id=f1, remote-tag=f2, local-tag=f3
    assert (pickup.call_id, pickup.local_tag, pickup.remote_tag) == (
        call_id,
        phone_tag,
        asterisk_tag,
    )


def live(scenario: str) -> list[AsteriskEvent]:
    return with_ids(mapped(scenario), scenario)


def ends_prefix(event: AsteriskEvent) -> bool:
    if isinstance(event, DialEnded):
        return event.status != "ANSWER"
    return isinstance(event, ChannelGone) or (isinstance(event, HoldChanged) and not event.on_hold)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("seed", range(6))
def test_shuffled_arrivals_converge(scenario: str, seed: int) -> None:
    # ARI does not promise the order of events about one call (docs/ASTERISK.md): the raw events are
    # shuffled before the mapping (with its Dial memory), as a reordering websocket would.
    rng = random.Random(seed)
    events = raw(scenario)
    shuffled = events[:]
    rng.shuffle(shuffled)
    dials = DialPairs()
    mixed = with_ids([e for event in shuffled for e in to_events(event, dials)], scenario)
    assert final(mixed) == [EntityState(e) for e in EXTENS]  # nothing resurrected
    # Mid-call: everything up to the first end (hangup, failed dial, unhold), in any order.
    ordered = live(scenario)
    cut = next(i for i, e in enumerate(ordered) if ends_prefix(e))
    prefix = ordered[:cut]
    expected = final(prefix)
    assert any(s.dialogs for s in expected)
    for _ in range(3):
        rng.shuffle(prefix)
        assert final(prefix) == expected, prefix


def test_a_parked_call_is_told_when_its_space_turns_busy_before_it_enters_the_lot() -> None:
    # Seen on the lab Asterisk: the parking bridge's ChannelEnteredBridge and the space's
    # DeviceStateChanged carry the same timestamp and came in the other order than recorded.
    events = raw("park-retrieve")
    enter = next(i for i, e in enumerate(events) if e["type"] == "ChannelEnteredBridge")
    busy = next(i for i, e in enumerate(events) if e["type"] == "DeviceStateChanged"
                and e["device_state"]["name"].startswith("park:"))  # fmt: skip
    assert busy == enter + 1
    entered, space_busy = events[enter], events[busy]
    events[enter], events[busy] = space_busy, entered
    parked = ParkedChannels()
    found = [e for event in events for e in to_events(event, None, parked)
             if isinstance(e, CallParked | CallUnparked)]  # fmt: skip
    assert found == [
        CallParked("701", "1796290418.81", "201", "Phone 201"),
        CallUnparked("701", "1796290418.81"),
    ]
    # A space told busy again while its call is parked is no vacancy for the next parked call.
    parked = ParkedChannels()
    assert parked.events(space_busy) == []
    assert parked.events(entered) == [CallParked("701", "1796290418.81", "201", "Phone 201")]
    assert parked.events(space_busy) == []
    other = {**entered, "channel": {**entered["channel"], "id": "9.9"}}
    assert parked.events(other) == []  # waits for a space: none is vacant and busy


def test_a_parked_call_is_told_by_the_space_that_turns_busy_after_it_enters_the_lot() -> None:
    parked = ParkedChannels()
    events = [e for event in raw("park-retrieve") for e in to_events(event, None, parked)]
    found = [e for e in events if isinstance(e, CallParked | CallUnparked)]
    assert found == [
        CallParked("701", "1796290418.81", "201", "Phone 201"),
        CallUnparked("701", "1796290418.81"),
    ]
    busy = DeviceStateChanged("park:701@parkedcalls", "INUSE")
    assert events.index(found[0]) == events.index(busy) - 1  # the caller before the state
    # A space that turns busy with nobody waiting in a lot, or a device that is no space.
    assert ParkedChannels().events({"type": "DeviceStateChanged",
                                    "device_state": {"name": "park:702@x", "state": "INUSE"}}) == []
    lonely = ParkedChannels()
    entered = first("park-retrieve", "ChannelEnteredBridge")
    assert lonely.events(entered) == []
    assert lonely.events({"type": "DeviceStateChanged",
                          "device_state": {"name": "Custom:DND201", "state": "BUSY"}}) == []
    assert lonely.events({"type": "ChannelDestroyed", "channel": entered["channel"]}) == []
    assert lonely.events({"type": "DeviceStateChanged",
                          "device_state": {"name": "park:701@parkedcalls", "state": "INUSE"}}) == []


# --- contacts (LED rules) -----------------------------------------------------------------


def test_contact_changes_and_an_aors_contacts_as_asterisk_22_reports_them() -> None:
    changes = [ev for msg in raw("contacts") for ev in to_events(msg)]
    assert changes == [
        ContactChanged("204", "sip:204@127.0.0.1:5094", True, "204"),
        ContactChanged("203", "sip:203@127.0.0.1:5093", False, "203"),
        ContactChanged("204", "sip:204@127.0.0.1:5094", False, "204"),
    ]
    # GET /ari/asterisk/config/dynamic/res_pjsip/aor/203: the registered and the static one.
    tuples = json.loads((RECORDINGS / "contacts" / "ari-aor-203.json").read_text())
    assert aor_contacts("203", tuples) == [
        ContactChanged("203", "sip:203@127.0.0.1:5093", listed=True),
        ContactChanged("203", "sip:203@127.0.0.1:5073", listed=True),
    ]
    missing = json.loads((RECORDINGS / "contacts" / "ari-aor-207-missing.json").read_text())
    assert aor_contacts("207", missing) == []
    broken = {"type": "ContactStatusChange", "contact_info": {"uri": "sip:x@h"}}
    assert to_events(broken) == []  # no aor: dropped, not a crash
