"""AriSource against the replayed Asterisk (RecordedAriServer) over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from source_events import WAIT, Collector, Events

from bridge.asterisk import ami_events
from bridge.asterisk import ari as ari_module
from bridge.asterisk.ami import AmiSource
from bridge.asterisk.ami_events import needs_ids
from bridge.asterisk.ari import AriSource
from bridge.asterisk.ari_events import DialPairs, to_events
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.demo.ari_server import RecordedAriServer, event_is
from bridge.demo.recording import load_scenario
from bridge.events import (
    AsteriskEvent,
    ChannelGone,
    ChannelSeen,
    DeviceStateChanged,
    EndpointGroups,
    ExtensionHint,
    HoldChanged,
    LegIds,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)
from bridge.model import DialogState, EntityState
from bridge.tracker import CallTracker

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
SCENARIOS = [
    "ring-cancel",
    "ring-answer-hangup",
    "pickup-replaces",
    "outbound-from-202",
    "answer-hold-resume",
    "ring-while-busy",
]
CSV = (FIXTURES / "pickup-replaces" / "replaces.csv").read_text().splitlines()[1].split(";")
PICKUP_IDS = LegIds("1795325554.8", *CSV)


def dial(status: str, peer: str) -> Callable[[Mapping[str, object]], bool]:
    """A ``play(until=…)`` predicate: the Dial event of that status for that peer."""

    def matches(event: Mapping[str, object]) -> bool:
        return event_is("Dial", channel=peer)(event) and event.get("dialstatus") == status

    return matches


LEG_RINGS = dial("RINGING", "PJSIP/202-00000008")
ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")


@pytest.fixture
async def server() -> AsyncIterator[RecordedAriServer]:
    async with RecordedAriServer(FIXTURES, speed=0) as srv:
        yield srv


@asynccontextmanager
async def running(
    server: RecordedAriServer, password: str = "bridgesecret", **options: float
) -> AsyncIterator[tuple[AriSource, Collector]]:
    collector = Collector()
    source = AriSource(
        f"http://127.0.0.1:{server.port}",
        "bridge",
        password,
        collector,
        backoff_min=options.pop("backoff_min", 0.05),
        **options,
    )
    task = asyncio.create_task(source.run())
    try:
        yield source, collector
    finally:
        await source.stop()
        await asyncio.wait_for(task, WAIT)


def with_ids(events: Iterable[AsteriskEvent], scenario: str) -> Events:
    """LegIds just before each ChannelSeen that needs them, from the recorded ids."""
    getvars = load_scenario(FIXTURES / scenario).getvars
    out: Events = []
    for event in events:
        if isinstance(event, ChannelSeen) and needs_ids(event):
            values = [getvars.get((event.name, v), "") for v in ID_VARIABLES]
            if all(values):
                out.append(LegIds(event.uniqueid, *values))
        out.append(event)
    return out


def recorded(server: RecordedAriServer, scenario: str) -> Events:
    """What the source should deliver for the events of a scenario played so far."""
    dials, sc = DialPairs(), server.scenarios[scenario]
    events = [e for r in sc.events[: sc.position] for e in to_events(r.event, dials)]
    return with_ids(events, scenario)


async def play_settled(server: RecordedAriServer, scenario: str, got: Collector) -> Events:
    """Play a scenario, pausing after each ringing leg until everything so far is delivered.

    At ``speed=0`` a leg would otherwise hang up before its id lookup could be answered (a real
    ring lasts seconds); a lookup cut short by its hangup is a test of its own.
    """

    def rings(event: Mapping[str, object]) -> bool:
        return any(isinstance(e, ChannelSeen) and needs_ids(e) for e in to_events(event))

    sc = server.scenarios[scenario]
    while sc.position < len(sc.events):
        await server.play(scenario, until=rings)
        n = len(recorded(server, scenario))
        await got.until(lambda evs, n=n: len(after_resync(evs)) >= n)
    return recorded(server, scenario)


def after_resync(events: Events) -> Events:
    return events[len(events) - events[::-1].index(ResyncFinished()) :]


def tracked(events: Iterable[AsteriskEvent], exten: str) -> tuple[CallTracker, list[EntityState]]:
    """Feed a tracker; the extension's state after every change, repeats merged."""
    t = CallTracker()
    out: list[EntityState] = []
    for i, event in enumerate(events):
        if exten in t.apply(event, float(i)) and (not out or out[-1] != t.state(exten)):
            out.append(t.state(exten))
    return t, out


def ami_path(scenario: str) -> Events:
    """The AMI recording as the AMI source delivers it: the recorded hint list, then live."""
    sc = load_scenario(FIXTURES / scenario)
    hints = [e for f in sc.answers["extensionstatelist"][0].frames for e in ami_events.to_events(f)]
    live: Events = []
    for event in sc.events:
        if {"call", "system"} & set(event.headers.get("Privilege", "").split(",")):
            live += ami_events.to_events(event.headers)
    return [ResyncStarted(), *hints, ResyncFinished(), *with_ids(live, scenario)]


def skeleton(state: EntityState) -> list[tuple[object, ...]]:
    return [
        (d.id, d.direction, d.state, d.remote_num, d.remote_name, d.local_held, d.remote_held)
        for d in state.dialogs
    ]


def pickups(state: EntityState) -> list[tuple[str, str, str] | None]:
    return [
        (d.pickup.call_id, d.pickup.local_tag, d.pickup.remote_tag) if d.pickup else None
        for d in state.dialogs
    ]


# -- the replayed Asterisk itself -------------------------------------------------------------


async def test_the_replayed_asterisk_answers_like_asterisk(server: RecordedAriServer) -> None:
    assert list(server.endpoints) == ["201", "202", "203", "204", "205", "206"]  # pjsip.conf
    server.endpoints["203"]["pickup_group"] = "1,3-4"
    base = f"http://127.0.0.1:{server.port}/ari"
    auth = {"Authorization": aiohttp.encode_basic_auth("bridge", "bridgesecret")}
    async with aiohttp.ClientSession() as http:

        async def get(path: str, **headers: str) -> tuple[int, object]:
            async with http.get(base + path, headers=headers or auth) as response:
                return response.status, await response.json(content_type=None)

        assert (await get("/channels", Authorization="Basic Ym9ndXM6Ym9ndXM="))[0] == 401
        assert await get("/channels") == (200, [])
        await server.play("pickup-replaces", until=LEG_RINGS)
        status, channels = await get("/channels")
        assert status == 200 and isinstance(channels, list)
        assert [c["name"] for c in channels] == ["PJSIP/201-00000007", "PJSIP/202-00000008"]
        assert (await get("/deviceStates"))[1] == [
            {"name": "PJSIP/202", "state": "RINGING"},
            {"name": "PJSIP/201", "state": "INUSE"},
        ]
        status, endpoints = await get("/endpoints")
        assert isinstance(endpoints, list) and endpoints[1]["channel_ids"] == ["1795325554.8"]
        leg = "/channels/1795325554.8"
        tag = await get(f"{leg}/variable?variable=CHANNEL(pjsip,remote_tag)")
        assert tag == (200, {"value": CSV[2]})
        both = await get(
            f"{leg}/variables?variables=CHANNEL(pjsip,call-id), CHANNEL(pjsip,local_tag)"
        )
        assert both == (
            200,
            {"variables": {"CHANNEL(pjsip,call-id)": CSV[0], "CHANNEL(pjsip,local_tag)": CSV[1]}},
        )
        assert (await get(f"{leg}/variable"))[0] == 400
        assert (await get(f"{leg}/variable?variable=NOPE"))[0] == 404
        assert (await get(f"{leg}/variable?variable=CHANNEL(pjsip,nope)")) == (200, {"value": ""})
        assert (await get("/channels/9.9/variable?variable=CHANNEL(pjsip,local_tag)"))[0] == 404
        config = "/asterisk/config/dynamic/res_pjsip/endpoint"
        status, tuples = await get(f"{config}/203")
        assert status == 200 and isinstance(tuples, list)
        assert {"attribute": "call_group", "value": "1"} in tuples
        assert {"attribute": "pickup_group", "value": "1, 3, 4"} in tuples  # as Asterisk prints
        assert {"attribute": "context", "value": "internal"} in tuples  # from the template
        assert await get(f"{config}/299") == (404, {"message": "Object with id '299' not found"})
        assert (await get("/asterisk/config/dynamic/res_pjsip/nope/201"))[0] == 404
        assert (await get(f"{config}/201", Authorization="Basic Ym9ndXM6Ym9ndXM="))[0] == 401
        server.multi_variables = False
        assert await get(f"{leg}/variables?variables=A") == (404, {"message": "Resource not found"})
        await server.loop_forever(pause=0, rounds=1)  # the demo loop ends every round clean
        assert await get("/channels") == (200, [])


# -- the recordings, end to end -------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_recording_gives_the_states_of_the_ami_path(
    server: RecordedAriServer, scenario: str
) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        snapshot = got.events[:]
        assert snapshot[0] == ResyncStarted() and snapshot[-1] == ResyncFinished()
        assert snapshot[1:-1] == [ExtensionHint(e, "", f"PJSIP/{e}", 0) for e in server.endpoints]
        expected = await play_settled(server, scenario, got)
        assert after_resync(got.events) == expected  # LegIds included, in place
    for exten in ("201", "202", "203", "205"):
        _, over_ari = tracked(got.events, exten)
        _, over_ami = tracked(ami_path(scenario), exten)
        # The AMI recording of pickup-replaces stops before the call ends; ARI's goes on.
        assert over_ari[: len(over_ami)] == over_ami, exten
        assert over_ari[-1:] in ([], [EntityState(exten)])
    assert SourceLost() not in got.events


async def test_pickup_replaces_shows_the_ids_of_replaces_csv(server: RecordedAriServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=LEG_RINGS)
        await got.until(lambda evs: PICKUP_IDS in evs)
        t, _ = tracked(got.events, "202")
        (dialog,) = t.state("202").dialogs
        assert dialog.state is DialogState.EARLY and dialog.pickup is not None
        # csv: call-id;local_tag;remote_tag → call-id=f1, remote-tag=f2, local-tag=f3
        call_id, asterisk_tag, phone_tag = CSV
        p = dialog.pickup
        assert (p.call_id, p.remote_tag, p.local_tag) == (call_id, asterisk_tag, phone_tag)
        picker = (FIXTURES / "pickup-replaces" / "sip-203-picker.log").read_text()
        assert f"Replaces: {p.call_id};to-tag={p.remote_tag};from-tag={p.local_tag}" in picker
    # The Call-ID came with the channel (protocol_id): only the two tags were asked, at once.
    asked = [what for kind, what in server.log if kind == "recv" and "/variable" in what]
    assert len(asked) == 1 and "/variables?variables=" in asked[0]


AriStop = Callable[[Mapping[str, object]], bool]
AmiStop = Callable[[Mapping[str, str]], bool]
# Where a fresh bridge connects (ARI stop, AMI stop), and how far the call goes on afterwards.
JOINS: dict[str, tuple[tuple[AriStop, AmiStop], tuple[AriStop, AmiStop] | None]] = {
    "pickup-replaces": (
        (LEG_RINGS, event_matches(Event="DialState", DestChannel="PJSIP/202-00000008")),
        None,
    ),
    "ring-while-busy": (
        (
            dial("RINGING", "PJSIP/202-00000018"),
            event_matches(Event="DialState", DestChannel="PJSIP/202-00000018"),
        ),
        None,
    ),
    "answer-hold-resume": (
        (
            event_is("ChannelEnteredBridge", channel="PJSIP/201-00000025"),
            event_matches(Event="BridgeEnter", Channel="PJSIP/201-00000025"),
        ),
        (event_is("ChannelHold"), event_matches(Event="Hold")),
    ),
}


@pytest.mark.parametrize("scenario", list(JOINS))
async def test_joining_mid_call_resyncs_like_ami(scenario: str) -> None:
    # A fresh bridge (empty tracker) meets calls that are already up: only the resync tells.
    # ARI has no linkedid: directions and holds must still come out as over AMI.
    (ari_join, ami_join), then = JOINS[scenario]
    over_ari, over_ami = Collector(), Collector()
    async with RecordedAriServer(FIXTURES, speed=0) as ari_server:
        await ari_server.play(scenario, until=ari_join)
        source = AriSource(
            f"http://127.0.0.1:{ari_server.port}", "bridge", "bridgesecret", over_ari
        )
        task = asyncio.create_task(source.run())
        await asyncio.wait_for(source.synced.wait(), WAIT)
        if then is not None:
            await ari_server.play(scenario, until=then[0])
            await over_ari.count(HoldChanged)
        await source.stop()
        await asyncio.wait_for(task, WAIT)
    async with RecordedAmiServer(FIXTURES, speed=0) as ami_server:
        await ami_server.play(scenario, until=ami_join)
        ami = AmiSource("127.0.0.1", ami_server.port, "bridge", "bridgesecret", over_ami)
        task = asyncio.create_task(ami.run())
        await asyncio.wait_for(ami.synced.wait(), WAIT)
        if then is not None:
            await ami_server.play(scenario, until=then[1])
            await over_ami.count(HoldChanged)
        await ami.stop()
        await asyncio.wait_for(task, WAIT)
    for exten in ("201", "202", "203", "205"):
        ari_state = tracked(over_ari.events, exten)[0].state(exten)
        ami_state = tracked(over_ami.events, exten)[0].state(exten)
        assert skeleton(ari_state) == skeleton(ami_state), exten
        assert pickups(ari_state) == pickups(ami_state), exten
    assert any(d.pickup for d in tracked(over_ari.events, "202")[0].state("202").dialogs) is (
        scenario != "answer-hold-resume"
    )


# -- the pickup ids ---------------------------------------------------------------------------


async def test_without_the_multi_variable_call_both_tags_are_asked_at_once(
    server: RecordedAriServer,
) -> None:
    server.multi_variables = False  # an Asterisk before 22.10
    server.variable_delay = 0.05  # both requests are surely in flight together
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        # two ringing legs: 205's, then 202's
        expected = await play_settled(server, "ring-while-busy", got)
        assert after_resync(got.events) == expected
        assert sum(isinstance(e, LegIds) for e in expected) == 3  # 202's leg rings twice
    traffic = [(kind, what) for kind, what in server.log if "/variable" in what]
    multi = [t for t in traffic if "/variables?" in t[1]]
    assert multi == [("recv", multi[0][1]), ("send", multi[0][1])]  # tried once, remembered
    single = [kind for kind, what in traffic if "/variable?" in what]
    assert single == ["recv"] * 3 + ["send"] * 3 + ["recv"] * 3 + ["send"] * 3  # tags, pres


@pytest.mark.parametrize("multi", [True, False])
async def test_a_withheld_caller_is_marked_hidden(server: RecordedAriServer, multi: bool) -> None:
    leg = ("PJSIP/202-00000008", "CONNECTEDLINE(pres)")
    server.scenarios["pickup-replaces"].getvars[leg] = "prohib_not_screened"
    server.multi_variables = multi
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=LEG_RINGS)
        hidden = replace(PICKUP_IDS, caller_hidden=True)
        await got.until(lambda evs: hidden in evs)
        (dialog,) = tracked(got.events, "202")[0].state("202").dialogs
        assert (dialog.remote_num, dialog.remote_name) == ("", "")
        assert dialog.pickup is not None  # still pickable: only the display is withheld


async def test_a_slow_asterisk_delivers_without_ids(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.variable_delay = 0.3
    async with running(server, ids_timeout=0.05) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=LEG_RINGS)
        expected = [e for e in recorded(server, "pickup-replaces") if not isinstance(e, LegIds)]
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        assert after_resync(got.events) == expected
    assert "reading the ids of PJSIP/202-00000008 timed out" in caplog.text


async def test_a_slow_lookup_holds_later_events_back(server: RecordedAriServer) -> None:
    server.variable_delay = 0.1
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=LEG_RINGS)
        expected = recorded(server, "pickup-replaces")
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        assert after_resync(got.events) == expected  # nothing overtook the waiting leg


async def test_a_leg_that_hangs_up_does_not_wait_for_its_ids(server: RecordedAriServer) -> None:
    server.variable_delay = 0.5
    loop = asyncio.get_running_loop()
    async with running(server, ids_timeout=WAIT) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        start = loop.time()
        await server.play("pickup-replaces")  # the leg rings, is picked up and hangs up
        expected = [e for e in recorded(server, "pickup-replaces") if not isinstance(e, LegIds)]
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        assert loop.time() - start < 0.4  # the lookup was dropped, not waited for
        assert after_resync(got.events) == expected


# -- the pickup groups -----------------------------------------------------------------------

CONFIG_PATH = "/ari/asterisk/config/dynamic/res_pjsip/endpoint/"


def config_requests(server: RecordedAriServer) -> list[str]:
    """The endpoints whose configuration was asked for, in order."""
    return [w.removeprefix(CONFIG_PATH) for k, w in server.log if k == "recv" and CONFIG_PATH in w]


async def test_pickup_groups_of_every_endpoint_are_read_after_the_sync(
    server: RecordedAriServer,
) -> None:
    server.endpoints["206"]["pickup_group"] = "2,4-5"
    AriSource("http://127.0.0.1:1", "bridge", "bridgesecret", Collector()).refresh_groups()
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await got.until(lambda _: len(got.groups) == 6)
        first = got.everything.index(got.groups[0])
        assert got.everything.index(ResyncFinished()) < first  # the sync did not wait for them
        groups = {g.endpoint: (g.call_groups, g.pickup_groups) for g in got.groups}
        assert groups.keys() == server.endpoints.keys()
        assert groups["202"] == (frozenset({1}), frozenset({1}))
        assert groups["206"] == (frozenset({1}), frozenset({2, 4, 5}))
        assert sorted(config_requests(server)) == sorted(server.endpoints)
        # Asked again (a reload): re-listed, and what changed meanwhile is seen.
        server.endpoints["203"]["call_group"] = "7"
        server.endpoints["203"]["subscribe_context"] = "tenant-b"  # where its keys resolve
        source.refresh_groups()
        await got.until(lambda _: len(got.groups) == 12)
        assert got.groups[0].subscribe_context == "internal"
        assert EndpointGroups("203", frozenset({7}), frozenset({1}), "tenant-b", "internal") in (
            got.groups[6:]
        )  # with its context: where it resolves without a subscribe_context (FreePBX)
        expected = await play_settled(server, "pickup-replaces", got)
        assert after_resync(got.events) == expected  # the groups took nothing from the stream
    asked = [w for k, w in server.log if k == "recv"]
    assert asked.count("/ari/endpoints") == 2  # the sync's list, then the refresh's own


async def test_pickup_groups_are_read_at_most_16_at_once(server: RecordedAriServer) -> None:
    for n in range(300, 340):
        server.endpoints[str(n)] = dict(server.endpoints["201"])
    in_flight, peak = 0, 0

    async def slow_config(request: web.Request) -> None:
        nonlocal in_flight, peak
        if request.path.startswith(CONFIG_PATH):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1

    server.before_answer = slow_config
    async with running(server) as (_, got):
        await got.until(lambda _: len(got.groups) == 46)
    assert peak == 16


# What the configuration GET answers → what is logged. A response is made for each request.
REFUSALS: dict[str, Callable[[], web.HTTPException]] = {
    "HTTP 403 Forbidden": lambda: web.HTTPForbidden(text='{"message": "Forbidden"}'),
    "no call_group/pickup_group": lambda: web.HTTPOk(text='[{"attribute": 1}]'),  # a bad body
}


@pytest.mark.parametrize("logged", list(REFUSALS))
async def test_pickup_groups_refused_are_logged_once_and_do_not_disturb_the_keys(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture, logged: str
) -> None:
    async def refuse_config(request: web.Request) -> None:
        if request.path.startswith(CONFIG_PATH):
            raise REFUSALS[logged]()

    server.before_answer = refuse_config
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        expected = await play_settled(server, "pickup-replaces", got)
        assert after_resync(got.events) == expected
        asked = len(config_requests(server))
        assert 1 <= asked <= 6
        source.refresh_groups()  # not again on this connection
        await server.play("ring-cancel")
        await got.until(lambda evs: ChannelGone("1795325527.3", 127) in evs)
        assert len(config_requests(server)) == asked
        # A new connection tries again; the same refusal is not logged again.
        server.drop_clients()
        await got.count(ResyncFinished, 2)
        await asyncio.wait_for(
            server.wait_until(lambda: len(config_requests(server)) > asked), WAIT
        )
        assert source.connected and SourceLost() in got.events
    assert got.groups == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    refused = [w for w in warnings if "cannot read pickup groups over ARI" in w]
    assert len(refused) == 1 and logged in refused[0], warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- resync and reconnect ---------------------------------------------------------------------


async def test_events_during_the_resync_come_after_the_snapshot(server: RecordedAriServer) -> None:
    async def call_starts_meanwhile(request: web.Request) -> None:
        if request.path == "/ari/channels" and not server.scenarios["pickup-replaces"].position:
            await server.play("pickup-replaces", until=LEG_RINGS)

    server.before_answer = call_starts_meanwhile
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        events = got.events[:]
    held = recorded(server, "pickup-replaces")
    assert events[0] == ResyncStarted() and events[-1] == ResyncFinished()
    assert events[-1 - len(held) : -1] == held  # in arrival order, nothing dropped
    snapshot = events[1 : -1 - len(held)]
    channels = [e for e in snapshot if not isinstance(e, DeviceStateChanged | ExtensionHint)]
    assert [type(e) for e in channels] == [ChannelSeen, LegIds, ChannelSeen]
    assert channels[1] == PICKUP_IDS and channels[2].uniqueid == PICKUP_IDS.uniqueid
    t, _ = tracked(events, "202")
    (dialog,) = t.state("202").dialogs
    assert dialog.state is DialogState.EARLY and dialog.pickup is not None


async def test_reconnect_after_drop_resyncs_the_ringing_leg(server: RecordedAriServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=LEG_RINGS)
        await got.until(lambda evs: PICKUP_IDS in evs)
        before = len(got.events)
        server.drop_clients()
        await got.count(ResyncFinished, 2)
        again = got.events[before:]
        assert again[0] == SourceLost() and again[1] == ResyncStarted()
        assert again.count(SourceLost()) == 1
        assert [e for e in again if isinstance(e, LegIds)] == [PICKUP_IDS]
        leg = again[again.index(PICKUP_IDS) + 1]
        assert isinstance(leg, ChannelSeen) and needs_ids(leg)
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert source.connected
        t, states = tracked(got.events, "202")
        assert [s.known for s in states][-2:] == [False, True]
        assert t.state("202").dialogs[0].pickup is not None
        await server.play("pickup-replaces")
        await got.until(lambda evs: ChannelGone(PICKUP_IDS.uniqueid, 0) in evs)
        t, _ = tracked(got.events, "202")
        assert t.state("202") == EntityState("202")


async def test_wrong_password_is_logged_once_and_retried_with_backoff(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "bridge.asterisk.ari")
    loop = asyncio.get_running_loop()
    async with running(server, password="guess") as (source, got):

        def attempts(n: int) -> Callable[[], bool]:
            return lambda: len(server.logins) >= n

        times: list[float] = []
        for n in range(1, 5):
            await asyncio.wait_for(server.wait_until(attempts(n)), WAIT)
            times.append(loop.time())
        assert not source.connected and got.events == []
    assert server.logins[0] == ("bridge", False)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < gaps[1] < gaps[2]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "401 Unauthorized" in warnings[0].getMessage()
    assert sum("401 Unauthorized" in r.getMessage() for r in caplog.records) >= 4


async def test_a_failed_resync_is_retried_without_announcing_anything(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = 3

    async def busy(request: web.Request) -> None:
        nonlocal refusals
        if request.path == "/ari/channels" and refusals:
            refusals -= 1
            raise web.HTTPServiceUnavailable(text='{"message": "busy"}')

    server.before_answer = busy
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert refusals == 0 and source.connected
        assert got.events.count(ResyncStarted()) == 1 and SourceLost() not in got.events
    assert len([login for login in server.logins if login[1]]) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "GET /ari/channels: HTTP 503" in warnings[0]


async def test_a_silent_asterisk_is_noticed_by_ping_and_reconnected(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Asterisk hangs (or the connection is half-open): the socket stays up, nothing answers.
    server.answer_pings = False
    async with running(server, ping_interval=0.2) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        server.answer_pings = True  # the next connection is answered again
        await got.count(ResyncFinished, 2)
        assert got.events.count(SourceLost()) == 1
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert source.connected
    assert sum("lost the ARI connection" in r.getMessage() for r in caplog.records) == 1


class LogSeen(logging.Handler):
    """Lets a test await a log line: the only trace a failed connect attempt leaves."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.seen = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_asterisk_not_there_yet(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = RecordedAriServer(FIXTURES, port=port, speed=0)
    refused = LogSeen("cannot connect")
    logging.getLogger("bridge.asterisk.ari").addHandler(refused)
    try:
        async with running(server) as (source, _):
            await asyncio.wait_for(refused.seen.wait(), WAIT)
            await server.start()
            await asyncio.wait_for(source.synced.wait(), WAIT)
            assert (source.host, source.port) == ("127.0.0.1", port)
    finally:
        logging.getLogger("bridge.asterisk.ari").removeHandler(refused)
        await server.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("cannot connect" in w for w in warnings) == 1


async def test_garbage_from_asterisk_never_crashes(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        for text in (
            "\x00 not JSON at all",
            "[1, 2, 3]",
            "[" * 100_000,
            json.dumps({"type": "ChannelStateChange", "channel": {"id": 5, "state": "Ringing"}}),
            json.dumps({"type": "Dial", "dialstatus": None, "peer": "PJSIP/202"}),
        ):
            await server.send_raw(text)
        await server.play("ring-cancel")
        await got.until(lambda evs: ChannelGone("1795325527.3", 127) in evs)
        assert after_resync(got.events) == recorded(server, "ring-cancel")
        assert SourceLost() not in got.events and source.connected  # the same connection
    assert "unreadable message from ARI" in caplog.text


async def test_stop_closes_without_source_lost(server: RecordedAriServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert server.connected == 1
    await asyncio.wait_for(server.wait_until(lambda: server.connected == 0), WAIT)
    assert SourceLost() not in got.events and not source.connected
    assert ("recv", "/ari/events?app=snom-blf-bridge&subscribeAll=true") in server.log


async def test_stop_while_connecting_returns_at_once() -> None:
    request_sent = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)  # takes the websocket upgrade, never answers it
        request_sent.set()
        await reader.read(1000)

    mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    async with mute_server:
        port = mute_server.sockets[0].getsockname()[1]
        source = AriSource(f"http://127.0.0.1:{port}/ari/", "bridge", "secret", Collector())
        task = asyncio.create_task(source.run())
        await asyncio.wait_for(request_sent.wait(), WAIT)
        await source.stop()
        await asyncio.wait_for(task, 1.0)  # well below the 5 s connect timeout
        assert not source.connected


async def test_a_bug_in_a_session_is_logged_and_the_source_reconnects(
    server: RecordedAriServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug planted where nothing Asterisk sends can reach: the first session's setup raises.
    made = itertools.count()

    def second_one_fails() -> DialPairs:
        if next(made) == 1:  # the first is the source's own, made before any session
            raise RuntimeError("planted bug")
        return DialPairs()

    monkeypatch.setattr(ari_module, "DialPairs", second_one_fails)
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)  # a second session got through
        assert got.events.count(ResyncStarted()) == 1 and SourceLost() not in got.events
        assert len([login for login in server.logins if login[1]]) == 2
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "ARI session failed unexpectedly" in error.getMessage()
    assert error.exc_info is not None and "planted bug" in str(error.exc_info[1])
