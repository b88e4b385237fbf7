"""The whole bridge over real sockets: a replayed Asterisk 22 on AMI or ARI, SIPp as the phone.

The small end-to-end layer: what only the running process shows (sockets, the source's
reconnects, the one loop timer, the panel). Every recording's key states, the pickup policies
and the timers are tested on the sans-I/O core with a fake clock in tests/test_core.py. Every
body here is validated against the RFC 4235 schema, and key states are compared with what the
recording's README says the phones did (written out by hand, not derived from the bridge).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from lxml import etree
from releases import REFERENCE, recordings, releases_with
from sipp import SippResult, SippWatcher, TracedMessage

from bridge.app import Bridge
from bridge.config import Config, load
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.demo.ari_server import RecordedAriServer

FIXTURES = Path(__file__).parent / "fixtures"
RECORDINGS = recordings()  # 22.10.1
SCHEMA = etree.XMLSchema(etree.parse(str(FIXTURES / "schemas" / "dialog-info.xsd")))
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
DOMAIN = "pbx.example.test"
SPEED = 10.0  # recorded gaps of 2-3 s become 0.2-0.3 s: every state still gets its own NOTIFY
IDLE_MS = 1200  # SIPp ends after this long without a NOTIFY (longer than any gap at SPEED)


def config_for(server: RecordedAmiServer, *extra: str) -> list[str]:
    return [
        f"ami.port={server.port}",
        "ami.username=bridge",
        "ami.secret=bridgesecret",
        "ami.reconnect_min=0.05",
        "ami.reconnect_max=0.2",
        'sip.udp=["127.0.0.1:0"]',
        'sip.tcp=["127.0.0.1:0"]',
        f"sip.domain={DOMAIN}",
        "store.path=",  # these tests keep nothing; tests/test_restart.py covers the store
        "security.requests_per_second=0",  # tests/test_security.py covers the limits
        "web.listen=",  # off unless a test asks for it (test_panel_and_metrics_*)
        *extra,
    ]


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    # Polled: the conditions span the tracker, the notifier and the AMI source, which share no
    # change signal a test could wait on. 10 s: four workers on two cores start SIPp and a
    # bridge per test, and a start alone took over 5 s in a loaded full run.
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@asynccontextmanager
async def synced_bridge(config: Config, *, groups: bool = False) -> AsyncIterator[Bridge]:
    """A started bridge, in sync with its (replayed) Asterisk; ``groups``: also with the pickup
    groups of 201-206 read (they come after the sync; a ring before would show no ids)."""
    bridge = Bridge(config)
    await bridge.start()
    try:
        assert bridge.source is not None
        await asyncio.wait_for(bridge.source.synced.wait(), 5)
        if groups:
            await eventually(lambda: all(bridge.core.policy.knows(f"20{i}") for i in range(1, 7)))
        yield bridge
    finally:
        await bridge.stop()


@asynccontextmanager
async def running_bridge(server: RecordedAmiServer, *extra: str) -> AsyncIterator[Bridge]:
    async with synced_bridge(load(None, config_for(server, *extra)), groups=True) as bridge:
        yield bridge


@pytest.fixture
async def server() -> AsyncIterator[RecordedAmiServer]:
    async with RecordedAmiServer(RECORDINGS, speed=SPEED) as srv:
        yield srv


def dialogs(notify: TracedMessage) -> list[etree._Element]:
    """The <dialog> elements of a NOTIFY body, after checking it against the XSD."""
    doc = etree.fromstring(notify.body)
    SCHEMA.assertValid(doc)
    return list(doc.findall("d:dialog", NS))


def key_state(notify: TracedMessage) -> str:
    """What a Snom key shows, in a compact notation: ``idle`` or ``state/direction[/held]`` per
    dialog, joined by ``+``."""
    parts = []
    for d in dialogs(notify):
        if d.findtext("d:state", namespaces=NS) == "terminated":
            continue  # an idle key's one terminated dialog (watch.idle_dialog) lights nothing
        held = d.find("d:*/d:target/d:param[@pname='+sip.rendering'][@pval='no']", NS) is not None
        parts.append(
            f"{d.findtext('d:state', namespaces=NS)}/{d.get('direction')}" + "/held" * held
        )
    return "+".join(parts) or "idle"


def collapsed(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


def check_notify_sequence(result: SippResult, resource: str = "202") -> list[TracedMessage]:
    """Headers, CSeq and version of every NOTIFY of one subscription; returns them."""
    assert result.ok, result.output
    notifies = result.notifies
    assert notifies, "no NOTIFY arrived"
    cseqs = [n.cseq for n in notifies]
    assert cseqs == list(range(cseqs[0], cseqs[0] + len(cseqs))), cseqs
    versions = [int(etree.fromstring(n.body).get("version")) for n in notifies]
    assert versions == list(range(len(notifies))), versions
    for n in notifies:
        assert n.header("Event") == "dialog"
        assert n.header("Content-Type") == "application/dialog-info+xml"
        assert (n.header("Subscription-State") or "").startswith("active;expires=")
        entity = etree.fromstring(n.body).get("entity")
        assert entity == f"sip:{resource}@{DOMAIN}"
    return notifies


async def watch_scenario(
    server: RecordedAmiServer, bridge: Bridge, scenario: str, transport: str = "udp"
) -> SippResult:
    before = bridge.notifier.stats().subscriptions  # the fuzz test leaves some behind
    async with SippWatcher(
        "202",
        bridge.bound(transport),
        transport,  # type: ignore[arg-type]
        idle_ms=IDLE_MS,
    ) as watcher:
        await eventually(lambda: bridge.notifier.stats().subscriptions == before + 1)
        await server.play(scenario)
        return await watcher.finish()


# What 202's key goes through in each recording (see the fixtures' README).
EXPECTED = {
    "ring-cancel": ["idle", "early/recipient", "idle"],
    "ring-answer-hangup": ["idle", "early/recipient", "confirmed/recipient", "idle"],
    "pickup-replaces": ["idle", "early/recipient", "idle"],
    # 202's own call: steady (confirmed) from the start, never blinking.
    "outbound-from-202": ["idle", "confirmed/initiator", "idle"],
    # 201 holds: 202's remote side renders no media.
    "answer-hold-resume": [
        "idle",
        "early/recipient",
        "confirmed/recipient",
        "confirmed/recipient/held",
        "confirmed/recipient",
        "idle",
    ],
    # 202 talks to 205 (its own call) when 201 rings it: two dialogs while the second rings,
    # the ringing one first (watch.ringing_first).
    "ring-while-busy": [
        "idle",
        "confirmed/initiator",
        "early/recipient+confirmed/initiator",
        "confirmed/initiator",
        "idle",
    ],
}


def replaces_csv(scenario: str, folder: Path = RECORDINGS) -> list[str]:
    return (folder / scenario / "replaces.csv").read_text().splitlines()[1].split(";")


# Every release over UDP; TCP once (the transport does not depend on the release).
PICKUP_CASES = [*((r, "udp") for r in releases_with("pickup-replaces")), (REFERENCE, "tcp")]


@pytest.mark.parametrize(("release", "transport"), PICKUP_CASES)
async def test_pickup_ids_are_those_of_the_ringing_leg(release: str, transport: str) -> None:
    folder = recordings(release)
    async with (
        RecordedAmiServer(folder, speed=SPEED) as server,
        running_bridge(server) as bridge,
    ):
        result = await watch_scenario(server, bridge, "pickup-replaces", transport)
    states = collapsed([key_state(n) for n in check_notify_sequence(result)])
    assert states == EXPECTED["pickup-replaces"]
    ringing = [
        d
        for n in check_notify_sequence(result)
        for d in dialogs(n)
        if d.findtext("d:state", namespaces=NS) == "early"
    ]
    assert ringing
    call_id, asterisk_tag, phone_tag = replaces_csv("pickup-replaces", folder)
    for d in ringing:
        # replaces.csv: call-id;local_tag;remote_tag as Asterisk reads them on its leg to 202.
        assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == (
            call_id,
            asterisk_tag,
            phone_tag,
        )
        # The caller is shown; the pickup INVITE goes to the ringing extension on the PBX.
        identity = d.find("d:remote/d:identity", NS)
        assert identity is not None
        assert (identity.text, identity.get("display")) == (f"sip:201@{DOMAIN}", "Phone 201")
        target = d.find("d:remote/d:target", NS)
        assert target is not None and target.get("uri") == f"sip:202@{DOMAIN}"
        assert d.findtext("d:local/d:identity", namespaces=NS) == f"sip:202@{DOMAIN}"
    # The Replaces a Snom builds from it (call-id;to-tag=remote-tag;from-tag=local-tag) is the
    # one that really took the call over on that release (the picker's recorded INVITE).
    d = ringing[0]
    built = f"{d.get('call-id')};to-tag={d.get('remote-tag')};from-tag={d.get('local-tag')}"
    picker = (folder / "pickup-replaces" / "sip-203-picker.log").read_text()
    match = re.search(r"^Replaces: (.+?)\r?$", picker, re.M)
    assert match is not None and match[1] == built


RINGING_202 = event_matches(Event="Newstate", ChannelState="5")


def ringing(bridge: Bridge, exten: str) -> bool:
    return any(d.state == "early" for d in bridge.core.tracker.state(exten).dialogs)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        # Cancelled while the bridge was cut off: the resync must not leave the key blinking.
        ("ring-cancel", ["idle", "early/recipient", "idle"]),
        # Answered while cut off: after the resync the key is steady, then the call ends.
        ("ring-answer-hangup", ["idle", "early/recipient", "confirmed/recipient", "idle"]),
    ],
)
async def test_ami_lost_mid_call_and_restored(
    server: RecordedAmiServer, scenario: str, expected: list[str]
) -> None:
    server.speed = 0  # the pace is set by hand here
    async with running_bridge(server) as bridge:
        source = bridge.source
        assert source is not None
        async with SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS) as watcher:
            await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
            await server.play(scenario, until=RINGING_202)
            await eventually(lambda: ringing(bridge, "202"))
            await server.close()  # Asterisk goes away: connections cut, port closed
            await eventually(lambda: not source.connected)
            if scenario == "ring-cancel":
                await server.play(scenario)  # the rest of the call, unseen by the bridge
            else:
                await server.play(scenario, until=event_matches(Event="DialEnd"))
            await server.start()  # back on the same port
            await eventually(source.synced.is_set)
            await server.play(scenario)
            result = await watcher.finish()
    assert collapsed([key_state(n) for n in check_notify_sequence(result)]) == expected
    assert bridge.core.tracker.state("202").dialogs == ()


def sip_request(lines: list[str], port: int, body: str = "") -> bytes:
    head = "\r\n".join(lines).replace("PORT", str(port))
    return f"{head}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()


def subscribe(port: int, user: str = "202", *extra: str, expires: int = 600) -> bytes:
    return sip_request(
        [
            f"SUBSCRIBE sip:{user}@127.0.0.1 SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK-" + str(abs(hash((user, extra)))),
            "From: <sip:watcher@127.0.0.1>;tag=w1",
            f"To: <sip:{user}@127.0.0.1>",
            f"Call-ID: edge-{user}-{abs(hash(extra))}@127.0.0.1",
            "CSeq: 1 SUBSCRIBE",
            "Contact: <sip:watcher@127.0.0.1:PORT>",
            f"Expires: {expires}",
            *(extra or ("Event: dialog",)),
        ],
        port,
    )


async def test_subscribe_edge_cases_get_the_right_answer_and_the_service_keeps_running(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(server) as bridge:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        target = bridge.bound("udp")

        async def ask(data: bytes) -> str:
            await loop.sock_sendto(sock, data, target)
            while True:
                async with asyncio.timeout(3):
                    reply = (await loop.sock_recv(sock, 65535)).decode()
                if reply.startswith("SIP/2.0"):
                    return reply

        cases = [
            (subscribe(port, "999"), "404"),  # no hint for 999
            (subscribe(port, "202", "Event: presence"), "489"),
            (subscribe(port, "202", "Event: dialog", expires=5), "423"),
            (subscribe(port, "202").replace(b"CSeq: 1 ", b"CSeq: one "), "400"),
            (
                sip_request(
                    [
                        "INVITE sip:202@127.0.0.1 SIP/2.0",
                        "Via: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK-inv",
                        "From: <sip:a@b>;tag=1",
                        "To: <sip:202@b>",
                        "Call-ID: inv",
                        "CSeq: 1 INVITE",
                    ],
                    port,
                ),
                "405",
            ),
        ]
        for data, status in cases:
            reply = await ask(data)
            assert reply.split(" ", 2)[1] == status, reply
            if status == "423":
                assert re.search(r"^Min-Expires: 60\r$", reply, re.M)
            if status == "489":
                assert re.search(r"^Allow-Events: dialog\r$", reply, re.M)
        for garbage in (b"\x00\xff garbage", b"SUBSCRIBE sip:202@x SIP/2.0\r\nVia: broken"):
            await loop.sock_sendto(sock, garbage, target)
        sock.close()
        # Still serving: a real watcher subscribes, refreshes and unsubscribes.
        async with SippWatcher(
            "202", target, idle_ms=500, refresh=True, unsubscribe=True, expires=120
        ) as watcher:
            result = await watcher.finish()
        assert result.ok, result.output
        states = [n.header("Subscription-State") or "" for n in result.notifies]
        assert states[0].startswith("active;expires=")
        assert states[-1] == "terminated;reason=timeout"
        assert bridge.notifier.stats().subscriptions == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_ringing_key_stops_blinking_when_asterisk_stays_away(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.speed = 0
    async with running_bridge(server, "watch.stale_ring_timeout=0.5") as bridge:
        source = bridge.source
        assert source is not None
        async with SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS) as watcher:
            await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
            await server.play("ring-cancel", until=RINGING_202)
            await eventually(lambda: ringing(bridge, "202"))
            await server.close()
            await eventually(lambda: bridge.core.tracker.state("202").dialogs == ())  # 0.5 s later
            # Asterisk back, the call still ringing there (only the bridge lost sight of it).
            await server.start()
            await eventually(source.synced.is_set)
            await eventually(lambda: ringing(bridge, "202"))
            await server.play("ring-cancel")
            result = await watcher.finish()
    states = collapsed([key_state(n) for n in check_notify_sequence(result)])
    assert states == ["idle", "early/recipient", "idle", "early/recipient", "idle"]
    assert sum("Asterisk is unreachable" in r.message for r in caplog.records) == 1


def mutations(seed: int, count: int) -> list[bytes]:
    """Valid SUBSCRIBEs cut, spliced and sprinkled with bytes SIP parsers trip over."""
    rng = random.Random(seed)
    base = subscribe(5060, "202")
    nasty = [
        b"\r\n", b"\x00", b"\xff\xfe", b":", b";tag=", b"<", b"Content-Length: 99999\r\n",
        b"Expires: -1\r\n", b"CSeq: 1 INVITE\r\n", b"Via: SIP/2.0/UDP\r\n", b" " * 300,
    ]  # fmt: skip
    out = []
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[at:at] = rng.choice(nasty)
            else:
                del data[at : at + rng.randint(1, 40)]
        out.append(bytes(data))
    return out


async def test_garbage_on_every_input_never_stops_the_service(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = mutations(seed=4235, count=1500)
    async with running_bridge(server) as bridge:
        loop = asyncio.get_running_loop()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        for data in [*inputs, os.urandom(1200), b"\x00" * 20000, b"SUBSCRIBE"]:
            await loop.sock_sendto(udp, data, bridge.bound("udp"))
        udp.close()
        for data in [inputs[7], b"SUBSCRIBE sip:202@x SIP/2.0\r\nContent-Length: 100\r\n\r\nshort",
                     os.urandom(3000), b"\r\n" * 5000]:  # fmt: skip
            _, writer = await asyncio.open_connection(*bridge.bound("tcp"))
            writer.write(data)
            await writer.drain()
            writer.close()
        server.send_raw(b"Event: Newchannel\r\nChannelState: 99\r\nUniqueid: x\r\n\r\n")
        server.send_raw(b"Event: Hangup\r\nUniqueid: no-such-channel\r\n\r\n")
        server.send_raw(b"\x00\xff garbage without end")
        # Still whole: a phone subscribes and sees a call ring and end.
        assert bridge.source is not None
        await eventually(bridge.source.synced.is_set)
        result = await watch_scenario(server, bridge, "ring-cancel")
        assert collapsed([key_state(n) for n in check_notify_sequence(result)]) == EXPECTED[
            "ring-cancel"
        ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@asynccontextmanager
async def running_over_ari(server: RecordedAriServer, *extra: str) -> AsyncIterator[Bridge]:
    """The same bridge with asterisk.source = "ari" (the default pickup policy, "group", with
    the groups read over ARI's dynamic configuration API)."""
    config = [
        "asterisk.source=ari",
        f"ari.url=http://127.0.0.1:{server.port}",
        "ari.username=bridge",
        "ari.password=bridgesecret",
        'sip.udp=["127.0.0.1:0"]',
        'sip.tcp=["127.0.0.1:0"]',
        f"sip.domain={DOMAIN}",
        "store.path=",
        "security.requests_per_second=0",
        "web.listen=",
        *extra,
    ]
    bridge = Bridge(load(None, config))
    await bridge.start()
    try:
        assert bridge.source is not None
        await asyncio.wait_for(bridge.source.synced.wait(), 5)
        await eventually(lambda: all(bridge.core.policy.knows(f"20{i}") for i in range(1, 7)))
        yield bridge
    finally:
        await bridge.stop()


# Every release; and the reference served as 18 and 21 (and 20 before 20.20, 22 before 22.10,
# 23 before 23.4) would serve it: without ``GET …/variables`` (rest-api/api-docs/channels.json at
# those tags), so the bridge reads one variable per request.
ARI_CASES = [*((r, True) for r in releases_with("pickup-replaces")), (REFERENCE, False)]


@pytest.mark.parametrize(("release", "multi_variables"), ARI_CASES)
async def test_a_recording_over_ari_gives_the_same_key_states_and_ids(
    release: str, multi_variables: bool
) -> None:
    scenario = "pickup-replaces"
    folder = recordings(release)
    async with (
        RecordedAriServer(folder, speed=SPEED) as server,
        running_over_ari(server) as bridge,
        SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS) as watcher,
    ):
        server.multi_variables = multi_variables
        await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
        await server.play(scenario)
        result = await watcher.finish()
    notifies = check_notify_sequence(result)
    assert collapsed([key_state(n) for n in notifies]) == EXPECTED[scenario]
    call_id, asterisk_tag, phone_tag = replaces_csv("pickup-replaces", folder)
    early = [d for n in notifies for d in dialogs(n) if d.get("call-id")]
    assert early and all(
        (d.get("call-id"), d.get("remote-tag"), d.get("local-tag"))
        == (call_id, asterisk_tag, phone_tag)
        for d in early
    )


async def test_panel_and_metrics_show_what_the_bridge_sees(server: RecordedAmiServer) -> None:
    server.speed = 0
    async with running_bridge(server, "web.listen=127.0.0.1:0") as bridge:
        assert bridge.web is not None
        host, port = bridge.web.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS) as watcher:
            await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
            await server.play("pickup-replaces", until=RINGING_202)
            await eventually(lambda: ringing(bridge, "202"))
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/api/entities") as r:
                    entities = {e["exten"]: e for e in await r.json()}
                    raw = json.dumps(entities)
                async with http.get(f"{base}/metrics") as r:
                    metrics = await r.text()
                async with http.get(f"{base}/healthz") as r:
                    health = r.status
                async with http.get(f"{base}/api/subscriptions") as r:
                    subscriptions = await r.json()
            await server.play("pickup-replaces")
            await watcher.finish()
    assert entities["202"]["state"] == "ringing" and "Phone 201" in entities["202"]["caller"]
    assert entities["204"]["state"] == "idle"
    call_id = replaces_csv("pickup-replaces")[0]
    assert call_id not in raw  # the panel never hands out what takes a call
    ringing_202 = r'^snom_blf_entity_state\{exten="202",state="ringing"\} 1(\.0)?$'
    assert re.search(ringing_202, metrics, re.M)
    assert re.search(r"^snom_blf_subscriptions 1(\.0)?$", metrics, re.M)
    assert re.search(r"^snom_blf_event_to_notify_seconds_count [1-9]", metrics, re.M)
    assert health == 200
    assert [s["resource"] for s in subscriptions] == ["202"]
