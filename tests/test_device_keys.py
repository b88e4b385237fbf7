"""Keys that follow device states and parking spaces, end to end: the device-states and
park-retrieve recordings of Asterisk 22.10.1 replayed (over AMI and over ARI) into a running
bridge, SIPp watchers on 210 (``Custom:DND201``), 211 (``PJSIP/201&Custom:DND201``) and 701
(``park:701@parkedcalls``). Each key must light and go dark exactly when Asterisk's own BLF did
(``own-blf-<ext>.log``, read by tests/own_blf.py), every body valid against the XSD."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from lxml import etree
from own_blf import ami_recording_end, collapsed, key_state, lit, own_blf
from releases import recordings, release_cases
from sipp import SippResult, SippWatcher
from test_app import (
    DOMAIN,
    IDLE_MS,
    NS,
    RECORDINGS,
    SPEED,
    check_notify_sequence,
    dialogs,
    eventually,
    running_bridge,
    running_over_ari,
)

from bridge.app import Bridge
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.demo.ari_server import RecordedAriServer

KEYS = {"device-states": ("210", "211"), "park-retrieve": ("701",)}
# Over ARI the configuration names what Asterisk's hints say (ARI cannot list them).
HINTS = [
    'hints.210="Custom:DND201"',
    'hints.211="PJSIP/201&Custom:DND201"',
    'hints.701="park:701@parkedcalls"',
]
CHANNEL_FREE = {"210", "701"}  # no channel device: the key shows exactly Asterisk's state
Play = Callable[[], Awaitable[None]]


@asynccontextmanager
async def replayed(
    source: str, scenario: str, folder: Path = RECORDINGS
) -> AsyncIterator[tuple[Bridge, Play]]:
    async with AsyncExitStack() as stack:
        if source == "ami":
            ami = await stack.enter_async_context(RecordedAmiServer(folder, speed=SPEED))
            ami.select(scenario)  # the login-time lists name the hints 210, 211, 701
            bridge = await stack.enter_async_context(running_bridge(ami))
            yield bridge, lambda: ami.play(scenario)
        else:
            ari = await stack.enter_async_context(RecordedAriServer(folder, speed=SPEED))
            bridge = await stack.enter_async_context(running_over_ari(ari, *HINTS))
            yield bridge, lambda: ari.play(scenario)


async def watch(source: str, scenario: str, folder: Path = RECORDINGS) -> dict[str, SippResult]:
    async with replayed(source, scenario, folder) as (bridge, play):
        watchers = [
            SippWatcher(exten, bridge.bound("udp"), idle_ms=IDLE_MS) for exten in KEYS[scenario]
        ]
        async with AsyncExitStack() as stack:
            for watcher in watchers:
                await stack.enter_async_context(watcher)
            await eventually(lambda: bridge.notifier.stats().subscriptions == len(watchers))
            await play()
            results = await asyncio.gather(*(w.finish() for w in watchers))
    return dict(zip(KEYS[scenario], results, strict=True))


@pytest.mark.parametrize("source", ["ami", "ari"])
@pytest.mark.parametrize(("release", "scenario"), release_cases(*sorted(KEYS)))
async def test_keys_light_when_asterisks_own_blf_did(
    release: str, scenario: str, source: str
) -> None:
    folder = recordings(release)
    # The AMI recording ends a moment before the last state change (its client logged off).
    until = ami_recording_end(scenario, folder) if source == "ami" else None
    for exten, result in (await watch(source, scenario, folder)).items():
        notifies = check_notify_sequence(result, exten)  # headers, CSeq, version; XSD below
        got = [key_state(n.body) for n in notifies if dialogs(n) is not None]  # XSD-valid
        expected = own_blf(scenario, exten, until, folder)
        assert collapsed(map(lit, got)) == collapsed(map(lit, expected)), exten
        if exten in CHANNEL_FREE:
            assert collapsed(got) == collapsed(expected), exten
        if exten == "211":  # 201 rings while DND201 is busy: its call is there, with its ids
            calls = [d for n in notifies for d in dialogs(n) if d.find("d:remote/d:identity", NS)
                     is not None]  # fmt: skip
            assert calls and all(d.findtext("d:state", namespaces=NS) == "early" for d in calls)
            assert all(d.get("call-id") for d in calls)
            assert {d.findtext("d:remote/d:identity", namespaces=NS) for d in calls} == {
                f"sip:203@{DOMAIN}"
            }
            busy = [key_state(n.body) for n in notifies]
            assert "confirmed+early" in busy  # and DND201's own dialog next to it
        if exten == "701":  # the parked caller is shown; the key dials the space
            parked = [d for n in notifies for d in dialogs(n)
                      if d.findtext("d:state", namespaces=NS) == "confirmed"]  # fmt: skip
            assert parked and all(d.get("call-id") is None for d in parked)
            # The space turns busy and the call is told parked at one moment, in either order
            # (ParkedCall after it on 23.4.1 over AMI, the lot's bridge entered after it on
            # 20.20.1 over ARI): for that moment the key is busy without a caller, as
            # Asterisk's own BLF always is.
            parked = list(itertools.dropwhile(lambda d: d.get("id") == "devstate", parked))
            identities = {etree.tostring(d.find("d:remote/d:identity", NS)) for d in parked}
            assert identities == {
                f'<identity xmlns="{NS["d"]}" display="Phone 201">sip:201@{DOMAIN}</identity>'
                .encode()
            }
            target = parked[0].find("d:remote/d:target", NS)
            assert target is not None and target.get("uri") == f"sip:701@{DOMAIN}"


async def first_key_state(bridge: Bridge, exten: str) -> tuple[str, list[etree._Element]]:
    """What a watcher that subscribes now is told first."""
    async with SippWatcher(exten, bridge.bound("udp"), idle_ms=500) as watcher:
        result = await watcher.finish()
    first = check_notify_sequence(result, exten)[0]
    return key_state(first.body), dialogs(first)


@pytest.mark.parametrize("source", ["ami", "ari"])
async def test_a_bridge_that_connects_late_finds_the_device_states_and_parked_calls(
    source: str,
) -> None:
    async with AsyncExitStack() as stack:
        if source == "ami":
            ami = await stack.enter_async_context(RecordedAmiServer(RECORDINGS, speed=0))
            await ami.play("device-states", until=event_matches(State="RINGINUSE"))
            await ami.play("park-retrieve", until=event_matches(Event="ParkedCall"))
            bridge = await stack.enter_async_context(running_bridge(ami))
        else:
            ari = await stack.enter_async_context(RecordedAriServer(RECORDINGS, speed=0))
            await ari.play("device-states", until=device_is("Custom:DND201", "RINGINUSE"))
            await ari.play("park-retrieve", until=device_is("park:701@parkedcalls", "INUSE"))
            bridge = await stack.enter_async_context(running_over_ari(ari, *HINTS))
        # Ringing while in use: Asterisk's own BLF says confirmed (own-blf-210.log).
        assert (await first_key_state(bridge, "210"))[0] == "confirmed"
        assert (await first_key_state(bridge, "211"))[0] == "confirmed"
        state, (parked,) = await first_key_state(bridge, "701")
        assert state == "confirmed"
        caller = parked.find("d:remote/d:identity", NS)
        if source == "ami":  # ParkedCalls lists who waits there
            assert caller is not None and caller.get("display") == "Phone 201"
        else:  # ARI tells a parked call only as it is parked: a late bridge sees the space busy
            assert caller is None


def device_is(device: str, state: str) -> Callable[[Mapping[str, object]], bool]:
    def matches(event: Mapping[str, object]) -> bool:
        found = event.get("device_state")
        return isinstance(found, Mapping) and (found.get("name"), found.get("state")) == (
            device,
            state,
        )

    return matches
