"""A BLF list end to end, matched against Asterisk's own: the ``lists`` recording of Asterisk
22.10.1 (tests/fixtures/lists-asterisk-22.10.1: a ``resource_list`` blf-list of 201, 202, 203, 210
and 701; 201 calls 202 and 203 picks up by Replaces, 201 calls 203, 201 parks on 701 and 203
takes it back, DND201 goes busy and back) replayed over AMI into a running bridge, which reads
the list from Asterisk (``PJSIPShowResourceLists``), and a SIPp list watcher (Supported:
eventlist) on UDP. Each key's states in the bridge's list NOTIFYs must be those Asterisk's own
list NOTIFYs showed during the same calls (``own-blf-list.log``), key by key. The recorded
answer to ``PJSIPShowResourceLists`` is what makes the bridge serve the list at all."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lxml import etree
from own_blf import collapsed, key_state
from sipp import SCENARIOS, SippWatcher, TracedMessage, parse_trace
from test_app import (
    FIXTURES,
    IDLE_MS,
    NS,
    config_for,
    eventually,
    running_bridge,
    synced_bridge,
)
from test_core import Sip
from test_lists import ListNotify, read_list

from bridge.app import Bridge
from bridge.asterisk.ari import resource_list_entry
from bridge.config import load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.events import ResourceListEntry
from bridge.resource_lists import ResourceList

# Apart from the other recordings (which the demo bundles, and the benchmarks replay): the
# lab's pjsip.conf here has the resource_list, asterisk-etc/ beside the scenario.
RECORDINGS = FIXTURES / "lists-asterisk-22.10.1"
SCENARIO = "lists"
KEYS = ("201", "202", "203", "210", "701")
SPEED = 4.0  # the recording takes 33 s
# Asterisk's list gathers changes for 200 ms; replayed SPEED times faster, the bridge's must
# gather for 200 / SPEED ms, or two states Asterisk sent apart would go out as one.
INTERVAL_MS = 200


def as_sip(message: TracedMessage) -> Sip:
    headers = {name: values[0] for name, values in message.headers.items()}
    return Sip(message.start_line, headers, message.body)


def key_states(notifies: list[ListNotify], exten: str) -> list[str]:
    """One key's states, NOTIFY by NOTIFY, where a NOTIFY carries it."""
    return [key_state(part) for n in notifies if (part := n.part_of(exten)) is not None]


def asterisks_own() -> tuple[list[TracedMessage], list[ListNotify]]:
    """What Asterisk's own BLF sent the list watcher of the recording."""
    trace = parse_trace((RECORDINGS / SCENARIO / "own-blf-list.log").read_bytes())
    notifies = [m for m in trace if m.direction == "received" and m.method == "NOTIFY"
                and (m.header("Content-Type") or "").startswith("multipart/related")]  # fmt: skip
    return trace, [read_list(as_sip(m), strict=False) for m in notifies]


def test_the_recording_holds_asterisks_own_list_notifies() -> None:
    trace, notifies = asterisks_own()
    (ok,) = [m for m in trace if m.status == 200 and m.header("CSeq") == "1 SUBSCRIBE"]
    assert ok.header("Require") == "eventlist"
    # Full state first, and again answering the refresh and the unsubscribe (RFC 4662 §5.2).
    subscribes = [m for m in trace if m.direction == "sent" and m.method == "SUBSCRIBE"]
    assert notifies[0].full and sum(n.full for n in notifies) == len(subscribes) == 3
    assert all(m.header("Require") == "eventlist" for m in trace if m.method == "NOTIFY")
    assert [n.version for n in notifies] == list(range(len(notifies)))
    assert [r.rpartition("sip:")[2].partition("@")[0] for r in notifies[0].resources()] == list(
        KEYS
    )


@asynccontextmanager
async def bridge_with_list(ami: RecordedAmiServer) -> AsyncIterator[Bridge]:
    """A bridge following the replayed Asterisk, its list as Asterisk's at the replay's pace."""
    scaled = ResourceList("blf-list", KEYS, INTERVAL_MS / 1000 / SPEED, origin="config")
    config = dataclasses.replace(load(None, config_for(ami)), lists=(scaled,))
    async with synced_bridge(config, groups=True) as bridge:
        yield bridge


async def test_each_key_of_the_list_shows_what_asterisks_own_list_showed() -> None:
    async with RecordedAmiServer(RECORDINGS, speed=SPEED) as ami:
        ami.select(SCENARIO)
        async with bridge_with_list(ami) as bridge:
            watcher = SippWatcher("blf-list", bridge.bound("udp"), idle_ms=IDLE_MS * 2,
                                  scenario=SCENARIOS / "list-watcher.xml", timeout=40)  # fmt: skip
            async with watcher:
                await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
                await ami.play(SCENARIO)
                result = await watcher.finish()
    assert result.ok, result.output
    ours = [read_list(as_sip(m)) for m in result.notifies]  # RLMI and every part XSD-valid
    assert [n.version for n in ours] == list(range(len(ours)))
    assert ours[0].full and not any(n.full for n in ours[1:])
    assert all(m.header("Require") == "eventlist" for m in result.notifies)
    _, theirs = asterisks_own()
    for exten in KEYS:
        got, expected = key_states(ours, exten), key_states(theirs, exten)
        # Ringing, in a call, idle: the very states Asterisk's list sent, in the same order.
        assert collapsed(got) == collapsed(expected), exten
    # The pickup ids of the ringing 202 inside its part: those 203 took the call with.
    early = [p for n in ours if (p := n.part_of("202")) is not None and b"early" in p]
    call_id = (RECORDINGS / SCENARIO / "replaces.csv").read_text().splitlines()[1].split(";")[0]
    assert early and all(f'call-id="{call_id}"'.encode() in p for p in early)


async def test_the_list_is_read_from_the_recorded_ami_answer() -> None:
    async with RecordedAmiServer(RECORDINGS, speed=SPEED) as ami:
        ami.select(SCENARIO)
        async with running_bridge(ami) as bridge:
            await eventually(lambda: bridge.core.lists.find("blf-list") is not None)
            found = bridge.core.lists.find("blf-list")
    assert found is not None and found.items == KEYS
    assert found.batch_interval == 0.2 and not found.full_state


def test_the_lab_pickup_took_the_ids_from_the_bridges_list_notify() -> None:
    """The lab proof (pickup-via-list: the bridge against the lab Asterisk 22.10.1, a list
    watcher as 203; 203's INVITE with Replaces took 201's call to 202): the list NOTIFYs the
    bridge sent there are valid, and 203's Replaces is built from 202's ringing part."""
    proof = RECORDINGS / "pickup-via-list"
    trace = parse_trace((proof / "watcher.log").read_bytes())
    notifies = [read_list(as_sip(m)) for m in trace if m.direction == "received"
                and m.method == "NOTIFY" and m.header("Content-Type")]  # fmt: skip
    ringing = [p for n in notifies if (p := n.part_of("202")) is not None and b"early" in p]
    assert notifies[0].full and ringing
    dialog = etree.fromstring(ringing[0]).find("d:dialog", NS)
    assert dialog is not None
    built = (f"{dialog.get('call-id')};to-tag={dialog.get('remote-tag')}"
             f";from-tag={dialog.get('local-tag')}")  # fmt: skip
    (invite,) = [m for m in parse_trace((proof / "sip-203.log").read_bytes())
                 if m.direction == "sent" and m.method == "INVITE"]  # fmt: skip
    assert invite.header("Replaces") == built
    answered = [m for m in parse_trace((proof / "sip-203.log").read_bytes()) if m.status == 200]
    assert answered, "Asterisk answered the pickup INVITE"


# --- over ARI: lists named in the configuration, read by name ------------------------------------


def test_ari_reads_a_list_by_name_as_asterisk_answers_it() -> None:
    """Asterisk 22.10.1's answer to GET …/res_pjsip/resource_list/blf-list, recorded."""
    text = (RECORDINGS / SCENARIO / "ari-config-resource_list-blf-list.txt").read_text()
    status = text.rstrip().rpartition("HTTP ")[2]
    assert status == "200"
    body = json.loads(text.rstrip().rpartition("\nHTTP ")[0])
    assert resource_list_entry("blf-list", body) == ResourceListEntry(
        "blf-list", "dialog", KEYS, full_state=False, batch_interval_ms=200)  # fmt: skip
    listing = (RECORDINGS / SCENARIO / "ari-config-resource_list.txt").read_text()
    assert listing.rstrip().endswith("HTTP 405")  # why ARI reads lists by name only


async def test_over_ari_a_list_named_in_the_configuration_takes_asterisks_keys() -> None:
    async with RecordedAriServer(RECORDINGS, speed=SPEED) as ari:
        config = load(None, [
            "asterisk.source=ari", f"ari.url=http://127.0.0.1:{ari.port}", "ari.username=bridge",
            "ari.password=bridgesecret", 'sip.udp=["127.0.0.1:0"]', 'sip.tcp=["127.0.0.1:0"]',
            "store.path=", "security.requests_per_second=0", "web.listen=",
        ])  # fmt: skip
        named = (ResourceList("blf-list", (), origin="config"),
                 ResourceList("no-such-list", (), origin="config"))  # fmt: skip
        bridge = Bridge(dataclasses.replace(config, lists=named))
        await bridge.start()
        try:
            await eventually(lambda: bridge.core.lists.find("blf-list") is not None)
            found = bridge.core.lists.find("blf-list")
            assert found is not None and found.items == KEYS and found.batch_interval == 0.2
            assert bridge.core.lists.find("no-such-list") is None  # Asterisk has none: 404
        finally:
            await bridge.stop()
