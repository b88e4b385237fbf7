"""What differs between Asterisk releases where no recording of that release exists (18 and 21 are
end of life and not built on the lab; the extension-state rewrite of 22.11 / 23.5 writes
``Hint: None``): the reference recording served as that release would serve it, read from the
release's source (docs/COMPATIBILITY.md says where). The releases that were recorded are replayed
through the same tests as 22.10.1 (tests/releases.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import ClassVar

import pytest
from lxml import etree
from own_blf import ami_recording_end, collapsed, key_state, own_blf
from sipp import SippWatcher
from source_events import WAIT, Collector
from test_app import IDLE_MS, RECORDINGS, SPEED, eventually, running_bridge, running_over_ari
from test_core import EXPECTED, dialogs, lab, over_ami
from test_core import collapsed as core_collapsed
from test_core import key_state as core_key_state
from test_device_keys import HINTS

from bridge.app import Bridge
from bridge.asterisk.ami import AmiSource
from bridge.asterisk.ami_events import to_events
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.events import DeviceStateChanged, ExtensionHint, ResyncFinished

# --- 18 and 21: every device state published again, changed or not ---------------------------
# main/devicestate.c drops an unchanged state before publishing it only since 20.17.0, 22.7.0
# and 23.0.0 ("devicestate: Don't publish redundant device state messages."); 18 and 21 send
# each again, over AMI (DeviceStateChange) and over ARI (DeviceStateChanged) alike.


REPEAT_AFTER = 0.03  # s: after the state, before the next recorded event (0.08 s at SPEED)


class RepeatingAmiServer(RecordedAmiServer):
    """The recordings as an 18 or 21 sends them: every DeviceStateChange again a moment later
    (in a read of its own, as when another channel of the device comes or goes)."""

    def _emit(self, event: Mapping[str, str]) -> None:
        super()._emit(event)
        if event.get("Event") == "DeviceStateChange":
            asyncio.get_running_loop().call_later(REPEAT_AFTER, super()._emit, event)


class RepeatingAriServer(RecordedAriServer):
    """The same over ARI: every DeviceStateChanged again a moment later."""

    async def emit(self, event: Mapping[str, object]) -> None:
        await super().emit(event)
        if event.get("type") == "DeviceStateChanged":
            self._repeats.add(asyncio.create_task(self._repeat(event)))

    async def _repeat(self, event: Mapping[str, object]) -> None:
        await asyncio.sleep(REPEAT_AFTER)
        await super().emit(event)

    _repeats: ClassVar[set[asyncio.Task[None]]] = set()  # kept until done (asyncio's rule)


@asynccontextmanager
async def repeating(source: str) -> AsyncIterator[tuple[Bridge, RecordedAmiServer | None,
                                                       RecordedAriServer | None]]:  # fmt: skip
    async with AsyncExitStack() as stack:
        if source == "ami":
            ami = await stack.enter_async_context(RepeatingAmiServer(RECORDINGS, speed=SPEED))
            ami.select("device-states")
            yield await stack.enter_async_context(running_bridge(ami)), ami, None
        else:
            ari = await stack.enter_async_context(RepeatingAriServer(RECORDINGS, speed=SPEED))
            yield await stack.enter_async_context(running_over_ari(ari, *HINTS)), None, ari


@pytest.mark.parametrize("source", ["ami", "ari"])
async def test_repeated_identical_device_states_send_no_extra_notify(source: str) -> None:
    async with (
        repeating(source) as (bridge, ami, ari),
        SippWatcher("210", bridge.bound("udp"), idle_ms=IDLE_MS) as watcher,
    ):
        await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
        if ami is not None:
            await ami.play("device-states")
        elif ari is not None:
            await ari.play("device-states")
        result = await watcher.finish()
    assert result.ok, result.output
    bodies = [etree.fromstring(n.body) for n in result.notifies]
    for body in bodies:  # the version differs by design; what the key shows must not repeat
        del body.attrib["version"]
    shown = [etree.tostring(b) for b in bodies]
    assert all(a != b for a, b in itertools.pairwise(shown)), "a NOTIFY repeated"
    got = [key_state(n.body) for n in result.notifies]
    # What 22.10.1's own BLF showed, each state once (the AMI recording ends a moment early).
    until = ami_recording_end("device-states") if source == "ami" else None
    expected = own_blf("device-states", "210", until)
    assert collapsed(got) == collapsed(expected)


# --- 18 (and 20 before 20.14, 22 before 22.4): hold marks the whole PJSIP device ---------------
# chan_pjsip_indicate(AST_CONTROL_HOLD) publishes AST_DEVICE_ONHOLD for the held channel's
# device whatever its other channels do; the fix ("chan_pjsip: set correct Endpoint Device State
# on multiple channels") publishes UNKNOWN so that the state is aggregated over the channels.


def test_a_whole_device_on_hold_does_not_hide_its_ringing_call() -> None:
    # ring-while-busy: 202 talks to 205 when 201 rings it. An 18 that was told to hold would
    # report PJSIP/202 ONHOLD right after each of its states; the key follows the channels.
    resync, timed = over_ami("ring-while-busy")
    as_18 = []
    for ms, event in timed:
        as_18.append((ms, event))
        if isinstance(event, DeviceStateChanged) and event.device == "PJSIP/202":
            as_18.append((ms, DeviceStateChanged("PJSIP/202", "ONHOLD")))
    assert len(as_18) > len(timed)
    lb = lab()
    lb.feed(resync)
    assert lb.subscribe("202").status == 200
    lb.play(as_18, start=lb.clock.ms)
    notifies = lb.notifies("202")
    assert core_collapsed([core_key_state(n) for n in notifies]) == EXPECTED["ring-while-busy"]
    ringing = [d for n in notifies for d in dialogs(n)
               if d.findtext("d:state", namespaces={"d": "urn:ietf:params:xml:ns:dialog-info"})
               == "early"]  # fmt: skip
    assert ringing and all(d.get("call-id") for d in ringing)  # still picked up by the key


# --- the extension-state rewrite (22.11.0, 23.5.0) --------------------------------------------
# main/extension_state.c lists an extension state without its hint extension as "Hint: None",
# and answers ExtensionStateList with an error, not an empty list, when there is no hint.


def test_hint_none_names_no_device() -> None:
    (hint,) = to_events({"Event": "ExtensionStatus", "Exten": "202", "Context": "internal",
                         "Hint": "None", "Status": "4", "StatusText": "Unavailable"})  # fmt: skip
    assert hint == ExtensionHint("202", "internal", "", 4)
    (kept,) = to_events({"Event": "ExtensionStatus", "Exten": "202", "Context": "internal",
                         "Hint": "PJSIP/202", "Status": "0"})  # fmt: skip
    assert kept.hint == "PJSIP/202"  # type: ignore[union-attr]


class HintlessAmiServer(RecordedAmiServer):
    """A 22.11 / 23.5 without a single hint."""

    def _respond(
        self, client: object, action: str, frame: Mapping[str, str]
    ) -> list[dict[str, str]]:
        if action == "extensionstatelist":
            return [{"Response": "Error", "Message": "No dialplan hints are available"}]
        return super()._respond(client, action, frame)  # type: ignore[arg-type]


async def test_no_hints_is_an_empty_list_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "bridge.asterisk.ami")
    async with HintlessAmiServer(RECORDINGS, speed=0) as server:
        got = Collector()
        source = AmiSource("127.0.0.1", server.port, "bridge", "bridgesecret", got,
                           backoff_min=0.05)  # fmt: skip
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(source.synced.wait(), WAIT)
            assert ResyncFinished() in got.events
            assert not [e for e in got.events if isinstance(e, ExtensionHint)]
        finally:
            await source.stop()
            await asyncio.wait_for(task, WAIT)
    refused = [r for r in caplog.records if "No dialplan hints" in r.getMessage()]
    assert refused and all(r.levelno == logging.DEBUG for r in refused)
