"""AmiSource against the replayed Asterisk (RecordedAmiServer) over a real TCP socket."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeGuard

import pytest
from source_events import WAIT, Collector, Events

from bridge.asterisk import ami as ami_module
from bridge.asterisk.ami import AmiSource, _ignorable
from bridge.asterisk.ami_events import needs_ids, to_events
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.events import (
    AsteriskEvent,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    DeviceStateChanged,
    DialplanRead,
    ExtensionHint,
    LegIds,
    ResourceListsRead,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
CSV = (FIXTURES / "pickup-replaces" / "replaces.csv").read_text().splitlines()[1].split(";")
PICKUP_IDS = LegIds("1795325554.8", *CSV)
RINGING_DONE = event_matches(Event="DialState", DestChannel="PJSIP/202-00000008")


@asynccontextmanager
async def running(
    server: RecordedAmiServer,
    secret: str = "bridgesecret",
    getvar_timeout: float = 1.0,
    ping_interval: float = 10.0,
) -> AsyncIterator[tuple[AmiSource, Collector]]:
    collector = Collector()
    source = AmiSource(
        "127.0.0.1",
        server.port,
        "bridge",
        secret,
        collector,
        backoff_min=0.05,
        getvar_timeout=getvar_timeout,
        ping_interval=ping_interval,
    )
    task = asyncio.create_task(source.run())
    try:
        yield source, collector
    finally:
        await source.stop()
        await asyncio.wait_for(task, WAIT)


def recorded(
    server: RecordedAmiServer,
    scenario: str,
    until: Callable[[Mapping[str, str]], bool] | None = None,
) -> Events:
    """What the tracker should get for a scenario's call/system events, LegIds not included."""
    out: Events = []
    for event in server.scenarios[scenario].events:
        if {"call", "system"} & set(event.headers.get("Privilege", "").split(",")):
            out += to_events(event.headers)
        if until is not None and until(event.headers):
            break
    return out


def after_resync(events: Events) -> Events:
    """The events after the last resync, but the resource lists read in the background."""
    tail = events[len(events) - events[::-1].index(ResyncFinished()) :]
    return [e for e in tail if not isinstance(e, ResourceListsRead)]


def ringing(event: AsteriskEvent) -> TypeGuard[ChannelSeen]:
    return isinstance(event, ChannelSeen) and needs_ids(event)


async def test_login_mask_resync_and_live_events(server: RecordedAmiServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert source.connected
        assert server.logins[-1]["Events"] == "call,system"
        snapshot = got.events[:]
        assert snapshot[0] == ResyncStarted() and snapshot[-1] == ResyncFinished()
        listed = [DeviceStateChanged] * 6 + [ExtensionHint] * 6 + [DialplanRead]
        assert [type(e) for e in snapshot[1:-1]] == listed
        # ShowDialPlan, answered from the recorded PBX's extensions.conf: its one include.
        assert snapshot[-2] == DialplanRead((("internal", ("parkedcalls",)),))

        await server.play("ring-answer-hangup")
        expected = recorded(server, "ring-answer-hangup")
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected) + 1)
        live = after_resync(got.events)
        # One LegIds (answered from 202's SIP trace), delivered just before the ringing leg.
        (at,) = [i for i, e in enumerate(live) if isinstance(e, LegIds)]
        assert ringing(live[at + 1]) and live[at].uniqueid == live[at + 1].uniqueid
        assert live[:at] + live[at + 1 :] == expected
    sent = {name for kind, name, _ in server.log if kind == "event"}
    assert "Newchannel" in sent
    assert not sent & {"VarSet", "Newexten"}  # the mask kept the flood on Asterisk's side


async def test_pickup_ids_are_read_at_once_and_delivered_first(server: RecordedAmiServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=RINGING_DONE)
        expected = recorded(server, "pickup-replaces", RINGING_DONE)
        await got.until(lambda evs: len(after_resync(evs)) > len(expected))
        live = after_resync(got.events)
        at = live.index(PICKUP_IDS)
        leg = live[at + 1]
        assert ringing(leg) and leg.uniqueid == PICKUP_IDS.uniqueid
        assert leg.state is ChannelState.RINGING
        assert live[:at] + live[at + 1 :] == expected
    getvars = [kind for kind, name, _ in server.log if name == "Getvar" and kind != "event"]
    # ids and caller presentation, all four asked before the first answer
    assert getvars == ["recv"] * 4 + ["send"] * 4


async def test_a_slow_getvar_holds_later_events_back(server: RecordedAmiServer) -> None:
    server.getvar_delay = 0.1
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=RINGING_DONE)
        expected = recorded(server, "pickup-replaces", RINGING_DONE)
        await got.until(lambda evs: len(after_resync(evs)) > len(expected))
        live = after_resync(got.events)
        assert live.index(PICKUP_IDS) == next(i for i, e in enumerate(expected) if ringing(e))
        assert [e for e in live if e != PICKUP_IDS] == expected


async def test_a_leg_that_hangs_up_does_not_wait_for_its_ids(server: RecordedAmiServer) -> None:
    server.getvar_delay = 0.5
    async with running(server, getvar_timeout=WAIT) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces")  # the leg rings, then is picked up and hangs up
        expected = recorded(server, "pickup-replaces")
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        assert after_resync(got.events) == expected
        assert ("send", "Getvar") not in {(kind, name) for kind, name, _ in server.log}


async def test_getvar_timeout_delivers_without_ids(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.getvar_delay = 0.3
    async with running(server, getvar_timeout=0.05) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=RINGING_DONE)
        expected = recorded(server, "pickup-replaces", RINGING_DONE)
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        assert after_resync(got.events) == expected
    assert "Getvar for PJSIP/202-00000008 timed out" in caplog.text


async def test_each_ringing_leg_is_asked_once(server: RecordedAmiServer) -> None:
    # ring-while-busy reports the leg to 202 ringing twice (Newstate, then DialBegin)
    server.getvar_delay = 0.05  # the first lookup is surely still in flight at the second
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("ring-while-busy")
        expected = recorded(server, "ring-while-busy")
        await got.until(lambda evs: len(after_resync(evs)) >= len(expected))
        # The whole call is over before the (slowed) Getvars are answered: no ids to deliver.
        assert after_resync(got.events) == expected
    legs = {e.uniqueid for e in expected if isinstance(e, ChannelSeen) and needs_ids(e)}
    assert len(legs) == 2 and sum(map(ringing, expected)) == 3
    assert sum(1 for kind, name, _ in server.log if (kind, name) == ("recv", "Getvar")) == 4 * 2


async def test_live_events_during_resync_are_kept_in_order(server: RecordedAmiServer) -> None:
    async def call_starts_meanwhile(action: Mapping[str, str]) -> None:
        if (
            action["Action"] == "CoreShowChannels"
            and not server.scenarios["pickup-replaces"].position
        ):
            await server.play("pickup-replaces", until=RINGING_DONE)

    server.before_answer = call_starts_meanwhile
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        events = got.events
        lists_end = 1 + 12
        live = recorded(server, "pickup-replaces", RINGING_DONE)
        at = next(i for i, e in enumerate(live) if ringing(e))
        assert events[lists_end:][: len(live) + 1] == [*live[:at], PICKUP_IDS, *live[at:]]
        snapshot = events[lists_end + len(live) + 1 :]
        assert [type(e) for e in snapshot] == [LegIds, ChannelSeen, ChannelSeen, DialplanRead,
                                               ResyncFinished]  # fmt: skip
        assert snapshot[0] == PICKUP_IDS and ringing(snapshot[1])


async def test_reconnect_after_drop_resyncs_the_ringing_leg(server: RecordedAmiServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=RINGING_DONE)
        await got.until(lambda evs: PICKUP_IDS in evs)
        before = len(got.events)
        server.drop_clients()
        await got.count(ResyncFinished, 2)
        again = got.events[before:]
        assert again[0] == SourceLost() and again[1] == ResyncStarted()
        assert again.count(SourceLost()) == 1
        assert [e for e in again if isinstance(e, LegIds)] == [PICKUP_IDS]
        leg = again[again.index(PICKUP_IDS) + 1]
        assert ringing(leg) and leg.uniqueid == PICKUP_IDS.uniqueid
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert source.connected
        await server.play("pickup-replaces")
        await got.until(lambda evs: ChannelGone(PICKUP_IDS.uniqueid, 0) in evs)


async def test_wrong_secret_is_logged_once_and_retried_with_backoff(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "bridge.asterisk.ami")
    loop = asyncio.get_running_loop()
    async with running(server, secret="guess") as (source, got):

        def attempts(n: int) -> Callable[[], bool]:
            return lambda: len(server.logins) >= n

        times: list[float] = []
        for n in range(1, 5):
            await asyncio.wait_for(server.wait_until(attempts(n)), WAIT)
            times.append(loop.time())
        assert not source.connected and got.events == []
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < gaps[1] < gaps[2]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "Authentication failed" in warnings[0].getMessage()


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
    server = RecordedAmiServer(FIXTURES, port=port, speed=0)
    refused = LogSeen("cannot connect")
    logging.getLogger("bridge.asterisk.ami").addHandler(refused)
    try:
        async with running(server) as (source, _):
            await asyncio.wait_for(refused.seen.wait(), WAIT)
            await server.start()
            await asyncio.wait_for(source.synced.wait(), WAIT)
    finally:
        logging.getLogger("bridge.asterisk.ami").removeHandler(refused)
        await server.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("cannot connect" in w for w in warnings) == 1


async def test_garbage_from_asterisk_never_crashes(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        server.send_raw(
            b"\xff\xfe\x00 not AMI at all\r\n\r\nResponse: Nonsense\r\nActionID: nobody\r\n\r\n"
            b"Event: Newstate\r\nChannelState: banana\r\nUniqueid: 1\r\n\r\nEvent: Hangup\r\n\r\n"
        )
        await server.play("ring-cancel")
        await got.until(lambda evs: ChannelGone("1795325527.3", 127) in evs)
        assert SourceLost() not in got.events  # harmless garbage: same connection

        server.send_raw(b"Event: Hangup\r\nEvent: Hangup\r\n\r\n")  # trips panoramisk itself
        await got.count(ResyncFinished, 2)
        server.send_raw(b"x" * (2 << 20))  # a message that never ends
        await got.count(ResyncFinished, 3)
        assert got.events.count(SourceLost()) == 2
        assert source.connected
    assert "unreadable data from AMI" in caplog.text


async def test_stop_while_logging_in_returns_at_once() -> None:
    login_sent = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)  # takes the Login, never answers: the login would time out
        login_sent.set()
        await reader.read(1000)

    mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    async with mute_server:
        port = mute_server.sockets[0].getsockname()[1]
        source = AmiSource("127.0.0.1", port, "bridge", "secret", Collector())
        task = asyncio.create_task(source.run())
        await asyncio.wait_for(login_sent.wait(), WAIT)
        await source.stop()
        await asyncio.wait_for(task, 1.0)  # well below the 5 s login timeout
        assert not source.connected


async def test_stop_logs_off_without_source_lost(server: RecordedAmiServer) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
    assert ("recv", "Logoff") in {(kind, name) for kind, name, _ in server.log}
    assert SourceLost() not in got.events and not source.connected


async def test_a_silent_asterisk_is_noticed_by_ping_and_reconnected(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Asterisk hangs (or the TCP connection is half-open): the socket stays up, nothing answers.
    hang = asyncio.Event()
    silenced = 0

    async def stall_first_ping(frame: Mapping[str, str]) -> None:
        nonlocal silenced
        if frame.get("Action") == "Ping" and not silenced:
            silenced += 1
            await hang.wait()

    server.before_answer = stall_first_ping
    try:
        async with running(server, ping_interval=0.2) as (source, got):
            await got.count(ResyncFinished, 2)
            assert [e for e in got.events if isinstance(e, SourceLost)] == [SourceLost()]
            assert source.connected
            assert sum("did not answer a Ping" in r.message for r in caplog.records) == 1
            assert sum("lost the AMI connection" in r.message for r in caplog.records) == 1
    finally:
        hang.set()


async def test_pickup_groups_of_every_endpoint_are_read_after_the_sync(
    server: RecordedAmiServer,
) -> None:
    server.endpoints["206"]["pickup_group"] = "2,4-5"
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await got.until(lambda _: len(got.groups) == 6)
    groups = {g.endpoint: (g.call_groups, g.pickup_groups) for g in got.groups}
    assert groups["202"] == (frozenset({1}), frozenset({1}))
    assert groups["206"] == (frozenset({1}), frozenset({2, 4, 5}))
    asked = [name for kind, name, _ in server.log if kind == "recv"]
    assert asked.index("PJSIPShowEndpoints") > asked.index("CoreShowChannels")
    assert asked.count("PJSIPShowEndpoint") == 6


async def test_a_withheld_caller_is_marked_hidden(server: RecordedAmiServer) -> None:
    leg = "PJSIP/202-00000008"
    getvars = server.scenarios["pickup-replaces"].getvars
    getvars[(leg, "CONNECTEDLINE(pres)")] = "prohib_not_screened"
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        await server.play("pickup-replaces", until=RINGING_DONE)
        await got.until(lambda evs: any(isinstance(e, LegIds) for e in evs))
    (ids,) = [e for e in got.events if isinstance(e, LegIds)]
    assert ids == dataclasses.replace(PICKUP_IDS, caller_hidden=True)


class TricklingAsterisk:
    """A bare AMI server that writes everything in pieces of a few bytes, so the bridge's reads
    end anywhere: inside lines, inside the blank line between messages, inside a character."""

    RINGING_LEG = (
        "Channel: PJSIP/202-00000001\r\nChannelState: 5\r\nChannelStateDesc: Ringing\r\n"
        "CallerIDNum: 201\r\nCallerIDName: Jürgen Müller\r\nConnectedLineNum: 201\r\n"
        "ConnectedLineName: Jürgen Müller\r\nUniqueid: 1795400000.1\r\n"
        "Linkedid: 1795400000.0\r\n"
    )

    def __init__(self, piece: int = 3, hints: Mapping[str, str] | None = None) -> None:
        self.piece = piece
        self.hints = dict(hints or {})  # exten → hint, listed by ExtensionStateList
        self.port = 0
        self.actions: list[str] = []
        self.getvar_channels: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._writing = asyncio.Lock()  # one message at a time, however slowly

    async def __aenter__(self) -> TricklingAsterisk:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.transport.abort()

    async def send(self, writer: asyncio.StreamWriter, text: str) -> None:
        data = text.encode()
        async with self._writing:
            for start in range(0, len(data), self.piece):
                writer.write(data[start : start + self.piece])
                await writer.drain()
                await asyncio.sleep(0)

    async def send_all(self, text: str) -> None:
        for writer in self.writers:
            await self.send(writer, text)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await self.send(writer, "Asterisk Call Manager/11.0.0\r\n")
        buffer = b""
        while data := await reader.read(4096):
            buffer += data
            while b"\r\n\r\n" in buffer:
                block, _, buffer = buffer.partition(b"\r\n\r\n")
                action = dict(line.split(": ", 1) for line in block.decode().split("\r\n"))
                self.actions.append(action["Action"])
                if action["Action"] == "Getvar":
                    self.getvar_channels.append(action["Channel"])
                await self.send(writer, self._answer(action))

    @staticmethod
    def ringing_leg(channel: str, uniqueid: str) -> str:
        """A live Newstate of a leg Asterisk dialled, now ringing."""
        return (
            f"Event: Newstate\r\nPrivilege: call,all\r\nChannel: {channel}\r\nChannelState: 5\r\n"
            f"ChannelStateDesc: Ringing\r\nCallerIDNum: 201\r\nConnectedLineNum: 201\r\n"
            f"Uniqueid: {uniqueid}\r\nLinkedid: 1795400000.0\r\n\r\n"
        )

    @staticmethod
    def extension_status(exten: str, hint: str, action_id: str = "") -> str:
        """An ExtensionStatus: live, or with ``action_id`` an ExtensionStateList item."""
        head = f"ActionID: {action_id}\r\n" if action_id else "Privilege: call,all\r\n"
        return (
            f"Event: ExtensionStatus\r\n{head}Exten: {exten}\r\nContext: internal\r\n"
            f"Hint: {hint}\r\nStatus: 0\r\nStatusText: Idle\r\n\r\n"
        )

    def _answer(self, action: dict[str, str]) -> str:
        name, aid = action["Action"], action["ActionID"]
        if name in ("DeviceStateList", "ExtensionStateList", "CoreShowChannels"):
            items = ""
            count = 0
            if name == "CoreShowChannels":
                items = f"Event: CoreShowChannel\r\nActionID: {aid}\r\n{self.RINGING_LEG}"
                items += "Application: AppDial\r\nApplicationData: (Outgoing Line)\r\n\r\n"
                count = 1
            elif name == "ExtensionStateList":
                items = "".join(self.extension_status(*hint, aid) for hint in self.hints.items())
                count = len(self.hints)
            return (
                f"Response: Success\r\nActionID: {aid}\r\nEventList: start\r\n"
                f"Message: will follow\r\n\r\n{items}Event: {name}Complete\r\n"
                f"ActionID: {aid}\r\nEventList: Complete\r\nListItems: {count}\r\n\r\n"
            )
        if name == "Getvar":
            value = {"CONNECTEDLINE(pres)": "allowed_not_screened"}.get(
                action["Variable"], f"{action['Variable']}-of-{action['Channel']}"
            )
            return (
                f"Response: Success\r\nActionID: {aid}\r\nVariable: {action['Variable']}\r\n"
                f"Value: {value}\r\n\r\n"
            )
        if name in ("Login", "Ping"):
            return (
                f"Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted\r\n\r\n"
            )
        if name == "Logoff":
            return f"Response: Goodbye\r\nActionID: {aid}\r\nMessage: Thanks\r\n\r\n"
        return f"Response: Error\r\nActionID: {aid}\r\nMessage: No endpoints found\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 3, 7])
async def test_answers_cut_anywhere_still_resolve_panoramisk_actions(piece: int) -> None:
    async with TricklingAsterisk(piece) as pbx:
        got = Collector()
        source = AmiSource("127.0.0.1", pbx.port, "bridge", "secret", got, backoff_min=0.05)
        task = asyncio.create_task(source.run())
        try:
            # Login, the three lists and the ringing leg's Getvars: every one answered.
            await asyncio.wait_for(source.synced.wait(), WAIT)
            ids, leg = got.events[-3:-1]
            assert isinstance(ids, LegIds) and ids.call_id.endswith("PJSIP/202-00000001")
            assert isinstance(leg, ChannelSeen) and leg.uniqueid == ids.uniqueid
            assert leg.caller_name == "Jürgen Müller"  # with ü cut in two by the reads
            assert pbx.actions.count("Getvar") == 4
            # An action's future holds panoramisk's Message, as it always did.
            assert source._conn is not None
            action = {"Action": "Getvar", "Channel": "PJSIP/9-1", "Variable": "X"}
            message = await asyncio.wait_for(source._conn.send(action)[1], WAIT)
            assert message["Value"] == "X-of-PJSIP/9-1" and message.success
        finally:
            await source.stop()
            await asyncio.wait_for(task, WAIT)


async def test_shutdown_from_asterisk_reconnects() -> None:
    async with TricklingAsterisk() as pbx:
        got = Collector()
        source = AmiSource("127.0.0.1", pbx.port, "bridge", "secret", got, backoff_min=0.05)
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.synced.wait(), WAIT)
            await pbx.send_all(
                "Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\n\r\n"
            )
            await got.count(ResyncFinished, 2)
            assert got.events.count(SourceLost()) == 1
            assert pbx.actions.count("Login") == 2
        finally:
            await source.stop()
            await asyncio.wait_for(task, WAIT)


@asynccontextmanager
async def bridged(pbx: TricklingAsterisk) -> AsyncIterator[tuple[AmiSource, Collector]]:
    got = Collector()
    source = AmiSource("127.0.0.1", pbx.port, "bridge", "secret", got, backoff_min=0.05)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), WAIT)
        yield source, got
    finally:
        await source.stop()
        await asyncio.wait_for(task, WAIT)


async def ring(pbx: TricklingAsterisk, got: Collector, *legs: str) -> None:
    """Ring ``legs`` live, one after another, and wait until the last one is delivered."""
    for channel in legs:
        await pbx.send(pbx.writers[-1], pbx.ringing_leg(channel, f"1795400100.{channel}"))
    last = f"1795400100.{legs[-1]}"
    await got.until(lambda evs: any(isinstance(e, ChannelSeen) and e.uniqueid == last
                                    for e in evs))  # fmt: skip


async def test_only_legs_of_hinted_devices_are_asked_for_their_ids() -> None:
    # Asterisk reads its hint devices without regard to case; so does the filter.
    hints = {"202": "PJSIP/202&Custom:dnd202", "203": "pjsip/203,CustomPresence:203"}
    async with TricklingAsterisk(piece=4096, hints=hints) as pbx, bridged(pbx) as (_, got):
        # The listed ringing leg (to 202) comes after the hints in the resync: asked about.
        assert pbx.getvar_channels == ["PJSIP/202-00000001"] * 4
        # A call between two devices no hint names: no BLF key can show it, nothing is asked.
        await ring(pbx, got, "PJSIP/305-0000000b", "PJSIP/203-0000000c")
        assert pbx.getvar_channels[4:] == ["PJSIP/203-0000000c"] * 4
        ids = [e for e in got.events if isinstance(e, LegIds)]
        assert [i.call_id.rpartition("-of-")[2] for i in ids] == [
            "PJSIP/202-00000001", "PJSIP/203-0000000c"
        ]  # fmt: skip
        # A hint learnt live counts from its place in the stream on; one that changes
        # (202 now PJSIP/999) keeps naming what it named until the next resync.
        await pbx.send_all(pbx.extension_status("305", "PJSIP/305"))
        await pbx.send_all(pbx.extension_status("202", "PJSIP/999"))
        await ring(pbx, got, "PJSIP/306-0000000d", "PJSIP/305-0000000e", "PJSIP/202-0000000f")
        assert pbx.getvar_channels[8:] == ["PJSIP/305-0000000e"] * 4 + ["PJSIP/202-0000000f"] * 4


async def test_before_any_hint_every_ringing_leg_is_asked_for_its_ids() -> None:
    hints = {"202": "PJSIP/202"}
    async with TricklingAsterisk(piece=4096, hints=hints) as pbx, bridged(pbx) as (_, got):
        await ring(pbx, got, "PJSIP/305-0000000b")
        assert "PJSIP/305-0000000b" not in pbx.getvar_channels
        # After a reconnect to an Asterisk without hints, nothing is left of the old ones.
        pbx.hints.clear()
        await pbx.send_all("Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\n\r\n")
        await got.count(ResyncFinished, 2)
        await ring(pbx, got, "PJSIP/305-0000000c", "PJSIP/306-0000000d")
        assert pbx.getvar_channels[-8:] == ["PJSIP/305-0000000c"] * 4 + ["PJSIP/306-0000000d"] * 4
        assert pbx.actions.count("Login") == 2


def test_only_events_nobody_reads_are_passed_over_unread() -> None:
    assert _ignorable("Event: BridgeEnter\r\nPrivilege: call,all\r\nUniqueid: 1.2")
    assert _ignorable("Event: DialState")
    assert not _ignorable("Event: Newstate\r\nUniqueid: 1.2")  # mapped
    assert not _ignorable("Event: NEWSTATE\r\nUniqueid: 1.2")
    assert not _ignorable("Event: Shutdown\r\nShutdown: Cleanly")  # panoramisk acts on it
    assert not _ignorable("Event: CoreShowChannelsComplete\r\nActionID: 5")  # ends a list
    assert not _ignorable("Event: EndpointList\r\nactionid: 5")
    assert not _ignorable("Event: BridgeEnter\r\nEVENT: Hangup")  # which one? parse it


async def test_a_bug_in_a_session_is_logged_and_the_source_reconnects(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing Asterisk can send reaches this any more (the reader guards itself), so the bug is
    # planted: reading the first Login answer raises, as a library surprise would.
    read_answer = ami_module._headers
    calls = itertools.count()

    def first_read_fails(message: object) -> dict[str, str]:
        if next(calls) == 0:
            raise RuntimeError("planted bug")
        return read_answer(message)

    monkeypatch.setattr(ami_module, "_headers", first_read_fails)
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)  # a second session got through
        # The first Login was accepted (the resync had begun) when the bug hit: the tracker is
        # told the source was lost, then gets the second session's full resync.
        assert got.events[:3] == [ResyncStarted(), SourceLost(), ResyncStarted()]
        assert got.events.count(ResyncFinished()) == 1 and got.events[-1] == ResyncFinished()
        assert len(server.logins) == 2
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "AMI session failed unexpectedly" in error.getMessage()
    assert error.exc_info is not None and "planted bug" in str(error.exc_info[1])


async def test_an_action_after_the_connection_closed_is_not_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Asterisk going away mid-sync: the actions still queued (the pickup-group reads) end like
    actions in flight, without a write to the dead socket (panoramisk would log a traceback
    for each: seen under uvloop when a failover test stopped its primary)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = ami_module._Connection(AmiSource("127.0.0.1", port, "u", "s", lambda e: None))
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: ami_module._Protocol(conn), "127.0.0.1", port)
        await asyncio.wait_for(conn.lost.wait(), WAIT)
        with caplog.at_level(logging.DEBUG):
            _, answer = conn.send({"Action": "PJSIPShowEndpoint", "Endpoint": "202"}, lists=True)
            with pytest.raises(asyncio.CancelledError):  # not left pending for ever
                await asyncio.wait_for(answer, WAIT)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dialplan_reload_reads_the_includes_and_pattern_hints_again(
    server: RecordedAmiServer,
) -> None:
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        # FreePBX's Apply Config: new includes and a DND pattern hint, then a burst of Reloads.
        server.dialplan = [
            {"Event": "ListDialplan", "Context": "from-internal", "IncludeContext": "ext-local",
             "Registrar": "pbx_config"},
            {"Event": "ListDialplan", "Context": "from-internal",
             "IncludeContext": "ext-dnd-hints", "Registrar": "pbx_config"},
            {"Event": "ListDialplan", "Context": "ext-dnd-hints", "Extension": "_*76X.",
             "Priority": "hint", "Application": "Custom:DEVDND${EXTEN:3}",
             "Registrar": "pbx_config"},
        ]  # fmt: skip
        for module in ("pbx_config", "res_parking", "app_queue"):
            server.emit({"Event": "Reload", "Privilege": "system,all", "Module": module,
                         "Status": "2"})  # fmt: skip
        await got.until(lambda evs: sum(isinstance(e, DialplanRead) for e in evs) == 2)
        await asyncio.sleep(0.8)  # the burst settled: one read, not three
        reads = [e for e in got.events if isinstance(e, DialplanRead)]
        assert len(reads) == 2
        assert reads[-1] == DialplanRead(
            (("from-internal", ("ext-local", "ext-dnd-hints")),),
            (("ext-dnd-hints", "_*76X.", "Custom:DEVDND${EXTEN:3}"),),
        )
    asked = [name for kind, name, _ in server.log if kind == "recv"]
    assert asked.count("ShowDialPlan") == 2 and asked.count("ExtensionStateList") == 2


async def test_an_ami_user_without_reporting_is_told_what_to_add(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.write = frozenset({"system", "call"})  # ShowDialPlan needs config or reporting
    async with running(server) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        assert not any(isinstance(e, DialplanRead) for e in got.events)
        assert got.events[-1] == ResyncFinished()  # the sync did not wait for it
    assert "write = reporting" in caplog.text


async def test_the_dialplan_is_read_again_without_a_reload_event(
    server: RecordedAmiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's `dialplan reload` tells AMI nothing: the periodic read still finds the change.
    monkeypatch.setattr(ami_module, "DIALPLAN_REREAD", 0.2)
    async with running(server, ping_interval=0.05) as (source, got):
        await asyncio.wait_for(source.synced.wait(), WAIT)
        server.dialplan = [{"Event": "ListDialplan", "Context": "from-internal",
                            "IncludeContext": "ext-local", "Registrar": "pbx_config"}]  # fmt: skip
        changed = DialplanRead((("from-internal", ("ext-local",)),))
        await got.until(lambda evs: changed in evs)
