"""The replayed Asterisk itself, spoken to over a real TCP socket with raw AMI."""

from __future__ import annotations

import asyncio
import filecmp
import itertools
import re
from pathlib import Path

from bridge.demo.ami_server import (
    RecordedAmiServer,
    bundled_recordings,
    event_matches,
    parse_event_mask,
)
from bridge.demo.recording import offered_calls, parse_frames

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
CSV = (FIXTURES / "pickup-replaces" / "replaces.csv").read_text().splitlines()[1].split(";")
RINGING_DONE = event_matches(Event="DialState", DestChannel="PJSIP/202-00000008")
LEG_RINGS = event_matches(Event="Newstate", Channel="PJSIP/202-00000008", ChannelState="5")
_ids = itertools.count(1)


class RawClient:
    """A bare AMI client: sends actions, collects answers, keeps unsolicited events apart."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[dict[str, str]] = []
        self._frames: list[dict[str, str]] = []
        self._pending = ""

    @classmethod
    async def connect(cls, server: RecordedAmiServer) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await reader.readline() == b"Asterisk Call Manager/11.0.0\r\n"
        return cls(reader, writer)

    async def login(self, events: str = "on", secret: str = "bridgesecret") -> dict[str, str]:
        (answer,) = await self.action("Login", Username="bridge", Secret=secret, Events=events)
        return answer

    async def action(self, name: str, **headers: str) -> list[dict[str, str]]:
        """Send one action; return its response plus, for a list, its events up to Complete."""
        action_id = f"t-{next(_ids)}"
        text = "".join(
            f"{k}: {v}\r\n" for k, v in {"Action": name, "ActionID": action_id, **headers}.items()
        )
        self.writer.write((text + "\r\n").encode())
        answer: list[dict[str, str]] = []
        while True:
            frame = await self.next_frame()
            if frame.get("ActionID") != action_id:
                self.events.append(frame)
                continue
            answer.append(frame)
            if answer[0].get("EventList") != "start" or frame.get("EventList") == "Complete":
                return answer

    async def next_frame(self) -> dict[str, str]:
        while not self._frames:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            self._frames, self._pending = parse_frames(self._pending + data.decode())
        return self._frames.pop(0)

    async def drain_events(self, server: RecordedAmiServer) -> list[dict[str, str]]:
        """Everything sent so far: a Ping's answer comes after every event queued before it."""
        await self.action("Ping")
        return self.events

    async def closed(self) -> bool:
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True


def items(answer: list[dict[str, str]]) -> list[dict[str, str]]:
    return [f for f in answer[1:] if f.get("EventList") != "Complete"]


async def test_banner_login_and_refusals(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    (refused,) = await client.action("CoreShowChannels")
    assert refused == {
        "Response": "Error",
        "ActionID": refused["ActionID"],
        "Message": "Permission denied",
    }
    assert await client.login() == {
        "Response": "Success", "ActionID": server.logins[-1]["ActionID"],
        "Message": "Authentication accepted",
    }  # fmt: skip
    booted = await client.next_frame()
    assert booted["Event"] == "FullyBooted"
    (pong,) = await client.action("Ping")
    assert pong["Ping"] == "Pong"
    (unknown,) = await client.action("Status", Variables="CHANNEL(pjsip,call-id)")
    assert unknown["Response"] == "Error"
    assert unknown["Message"].startswith("Invalid/unknown command")
    (bye,) = await client.action("Logoff")
    assert bye["Response"] == "Goodbye"
    assert await client.closed()


async def test_wrong_secret_is_refused_and_hung_up(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    answer = await client.login(secret="guess")
    assert (answer["Response"], answer["Message"]) == ("Error", "Authentication failed")
    assert await client.closed()
    assert server.logged_in == 0


def test_event_masks() -> None:
    assert parse_event_mask("on") == parse_event_mask(None) == frozenset({"all"})
    assert parse_event_mask("off") == frozenset()
    assert parse_event_mask("Call, system") == frozenset({"call", "system"})


async def test_events_are_filtered_by_the_login_mask(server: RecordedAmiServer) -> None:
    everything, calls, nothing = [await RawClient.connect(server) for _ in range(3)]
    await everything.login("on")
    await calls.login("call")
    await nothing.login("off")
    await server.play("ring-cancel")
    names = {
        c: {e.get("Event") for e in await c.drain_events(server)}
        for c in (everything, calls, nothing)
    }
    assert {"VarSet", "Newexten", "Newchannel", "Hangup", "FullyBooted"} <= names[everything]
    assert {"Newchannel", "DeviceStateChange", "Hangup"} <= names[calls]
    assert not names[calls] & {"VarSet", "Newexten", "FullyBooted"}
    assert names[nothing] == set()
    (switched,) = await nothing.action("Events", EventMask="system")
    assert switched["Events"] == "On"


async def test_list_answers_follow_the_replay_position(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    await client.login("off")
    assert items(await client.action("CoreShowChannels")) == []  # recorded, before the call

    await server.play("pickup-replaces", until=RINGING_DONE)
    answer = await client.action("CoreShowChannels")
    assert answer[0]["ActionID"] == answer[-1]["ActionID"] != "action/ffecf69c"
    chans = {c["Channel"]: c for c in items(answer)}  # the answer recorded while ringing
    assert chans["PJSIP/202-00000008"]["ChannelState"] == "5"
    assert chans["PJSIP/202-00000008"]["Application"] == "AppDial"
    devices = {d["Device"]: d["State"] for d in items(await client.action("DeviceStateList"))}
    assert devices["PJSIP/202"] == "RINGING"

    await server.play("pickup-replaces")  # to the end: 201 and the picker 203 are bridged
    chans = {c["Channel"]: c for c in items(await client.action("CoreShowChannels"))}
    assert set(chans) == {"PJSIP/201-00000007", "PJSIP/203-00000009"}
    assert {c["ChannelState"] for c in chans.values()} == {"6"}
    assert chans["PJSIP/201-00000007"]["BridgeId"] != ""
    exts = {e["Exten"]: e["Status"] for e in items(await client.action("ExtensionStateList"))}
    assert (exts["202"], exts["203"]) == ("0", "1")


async def test_list_built_from_replay_matches_the_recording(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    await client.login("off")
    # Right after the leg's Newstate, more events with the same timestamp are due: no recorded
    # answer fits there, so the server builds it from what it has replayed.
    await server.play("pickup-replaces", until=LEG_RINGS)
    built = items(await client.action("CoreShowChannels"))
    await server.play("pickup-replaces", until=RINGING_DONE)  # same channels, recorded answer
    recorded = items(await client.action("CoreShowChannels"))
    keep = ("Channel", "ChannelState", "Uniqueid", "Linkedid", "Application", "ConnectedLineNum")
    assert [{k: c[k] for k in keep} for c in built] == [{k: c[k] for k in keep} for c in recorded]
    assert [c["Duration"] for c in built] != [c["Duration"] for c in recorded]  # really built


async def test_getvar_answers_from_the_recording(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    await client.login("off")
    (early,) = await client.action(
        "Getvar", Channel="PJSIP/202-00000008", Variable="CHANNEL(pjsip,call-id)"
    )
    assert (early["Response"], early["Message"]) == ("Error", "No such channel")
    await server.play("pickup-replaces", until=LEG_RINGS)
    got = []
    for channel, variable in zip(
        ["PJSIP/202-00000008", "1795325554.8", "PJSIP/202-00000008"],
        ["CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)"],
        strict=True,
    ):
        (answer,) = await client.action("Getvar", Channel=channel, Variable=variable)
        assert answer["Variable"] == variable
        got.append(answer["Value"])
    assert got == CSV
    await server.play("pickup-replaces")
    (gone,) = await client.action(
        "Getvar", Channel="1795325554.8", Variable="CHANNEL(pjsip,call-id)"
    )
    assert gone["Message"] == "No such channel"


async def test_loop_leaves_no_channel_up(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    await client.login("call")
    await server.loop_forever(pause=0, rounds=1)
    assert items(await client.action("CoreShowChannels")) == []
    states = {d["State"] for d in items(await client.action("DeviceStateList"))}
    assert states == {"NOT_INUSE"}
    assert {e["Status"] for e in items(await client.action("ExtensionStateList"))} == {"0"}
    hangups = {e["Uniqueid"] for e in client.events if e.get("Event") == "Hangup"}
    assert {"1795325554.7", "1795325561.9"} <= hangups  # synthesized after pickup-replaces
    created = {e["Uniqueid"] for e in client.events if e.get("Event") == "Newchannel"}
    assert created == hangups


async def test_drop_clients_cuts_connections_but_keeps_listening(server: RecordedAmiServer) -> None:
    client = await RawClient.connect(server)
    await client.login()
    server.drop_clients()
    assert await client.closed()
    again = await RawClient.connect(server)
    assert (await again.login())["Response"] == "Success"


async def test_recorded_pace(server: RecordedAmiServer) -> None:
    server.speed = 20.0  # ring-cancel's events span about 2 s
    loop = asyncio.get_running_loop()
    start = loop.time()
    await server.play("ring-cancel")
    assert loop.time() - start >= 1.9 / 20


def test_bundled_recordings_are_the_fixtures() -> None:
    bundled = bundled_recordings()
    etc = "asterisk-etc"  # the PBX's pjsip.conf: the endpoints' groups for PJSIPShowEndpoint
    assert filecmp.cmp(bundled / etc / "pjsip.conf", FIXTURES / etc / "pjsip.conf", shallow=False)
    names = sorted(p.name for p in bundled.iterdir() if p.name != etc)
    assert names == sorted(p.parent.name for p in FIXTURES.glob("*/ami-wire.jsonl"))
    for name in names:
        for file in (bundled / name).iterdir():
            assert file.name in ("ami-wire.jsonl", "replaces.csv") or (
                file.name.startswith("sip-") and file.suffix == ".log"
            )
            assert filecmp.cmp(file, FIXTURES / name / file.name, shallow=False)
    assert set(RecordedAmiServer().scenarios) == set(names)


def test_ids_read_from_the_phone_trace_match_the_recorded_getvar() -> None:
    # pickup-replaces has both: Getvar answers recorded on AMI (replaces.csv) and 202's trace.
    trace = (FIXTURES / "pickup-replaces" / "sip-202.log").read_text()
    assert offered_calls(trace) == [tuple(CSV)]


async def test_getvar_of_a_ringing_leg_without_recorded_getvar_comes_from_the_trace(
    server: RecordedAmiServer,
) -> None:
    # ring-cancel recorded no Getvar; 202's trace shows the INVITE Asterisk sent and 202's 180.
    trace = (FIXTURES / "ring-cancel" / "sip-202.log").read_text()
    call_id = re.search(r"^Call-ID: (\S+)", trace, re.M)
    asterisk_tag = re.search(r"^From: .*;tag=(\S+)", trace, re.M)
    phone_tag = re.search(r"^To: .*;tag=(\S+)", trace, re.M)
    assert call_id and asterisk_tag and phone_tag
    client = await RawClient.connect(server)
    await client.login("off")
    await server.play("ring-cancel", until=event_matches(Event="Newstate", ChannelState="5"))
    got = []
    for variable in ("call-id", "local_tag", "remote_tag"):
        (answer,) = await client.action(
            "Getvar", Channel="PJSIP/202-00000004", Variable=f"CHANNEL(pjsip,{variable})"
        )
        got.append(answer["Value"])
    assert got == [call_id[1], asterisk_tag[1], phone_tag[1]]
