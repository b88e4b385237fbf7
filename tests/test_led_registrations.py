"""LED rules on real registrations, over real sockets: the recordings of a real Asterisk 22 say
where the phones are (``registrations``) and what changes (``device-states``); SIPp plays each
contact of the phones; the bridge runs with its web endpoint, asked as an installer would.

The two recordings are two sessions of the same PBX, replayed in turn on one connection: the
bridge logs in to the ``registrations`` session as it begins (203 and 206 registered, so the
login's PJSIPShowContacts lists them), ``device-states`` then lights and unlights the key
(Custom:DND201 BUSY, NOT_INUSE), then the rest of ``registrations`` plays (204 registers, 203's
registration goes) and ``device-states`` goes on (INUSE). The recordings name fixed ports for
the phones' contacts; each test moves them to where its SIPp phones listen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sipp import SippPhone, free_port
from test_app import RECORDINGS, eventually
from test_led import bodies

from bridge.app import Bridge
from bridge.config import load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.demo.contacts import Registrations

RULES = """
[[led]]
phone = "203"
key = 2
device = "Custom:DND201"
lights = { busy = "on", inuse = "on" }
label = "DND"

[[led]]
phone = "204"
key = 1
device = "Custom:DND201"
lights = { busy = "on", inuse = "on" }

[[led]]
phone = "205"
key = 4
device = "Custom:DND201"
"""
OFF_203, ON_203 = "k=2\r\nc=off\r\nl=DND\r\n", "k=2\r\nc=on\r\nl=DND\r\n"
OFF_204, ON_204 = "k=1\r\nc=off\r\n", "k=1\r\nc=on\r\n"
NO_CONTACT = "led: phone {} has no contact Asterisk knows of"
Server = RecordedAmiServer | RecordedAriServer


def move_phones(server: Server, moves: Mapping[str, int]) -> None:
    """Put the recorded contacts ``127.0.0.1:<port>`` where this test's phones listen."""

    def moved(obj: dict[str, Any]) -> None:
        text = json.dumps(obj)
        for recorded, port in moves.items():
            text = text.replace(f"@127.0.0.1:{recorded}", f"@127.0.0.1:{port}")
        fresh = json.loads(text)
        obj.clear()
        obj.update(fresh)

    if isinstance(server, RecordedAmiServer):
        for sc in server.scenarios.values():
            for event in sc.events:
                moved(event.headers)
            for answers in sc.answers.values():
                for answer in answers:
                    for frame in answer.frames:
                        moved(frame)
        return
    for ari in server.scenarios.values():
        for recorded_event in ari.events:
            moved(recorded_event.event)
        items = [dict(c) for cs in ari.registered.by_aor.values() for c in cs.values()]
        for item in items:
            moved(item)
        ari.registered = Registrations(items)


def dnd(state: str) -> Callable[[Mapping[str, object]], bool]:
    """Stop a replay right after Custom:DND201 turns ``state`` (AMI or ARI)."""

    def matches(event: Mapping[str, object]) -> bool:
        ari = event.get("device_state")
        if isinstance(ari, Mapping):
            return (ari.get("name"), ari.get("state")) == ("Custom:DND201", state)
        return (event.get("Event"), event.get("Device"), event.get("State")) == (
            "DeviceStateChange", "Custom:DND201", state
        )  # fmt: skip

    return matches


@asynccontextmanager
async def bridge_with_rules(tmp_path: Path, *source: str) -> AsyncIterator[tuple[Bridge, str]]:
    """The bridge with the LED rules and its web endpoint; (bridge, web URL)."""
    path = tmp_path / "bridge.toml"
    path.write_text(RULES)
    web = f"127.0.0.1:{free_port()}"
    overrides = [*source, 'sip.udp=["127.0.0.1:0"]', 'sip.tcp=["127.0.0.1:0"]',
                 "sip.domain=pbx.test", "store.path=", f"web.listen={web}"]  # fmt: skip
    bridge = Bridge(load(path, overrides))
    await bridge.start()
    try:
        yield bridge, f"http://{web}"
    finally:
        await bridge.stop()


def lit(bridge: Bridge, phone: str, light: str, contacts: int) -> Callable[[], bool]:
    """The phone has ``contacts`` contacts and each has confirmed ``light`` on every key."""

    def check() -> bool:
        assert bridge.core.leds is not None
        known = bridge.core.leds.phones[phone].contacts.values()
        return len(known) == contacts and all(
            c.in_flight is None and c.confirmed and all(k.light == light for k in
                                                        c.confirmed.values())
            for c in known
        )  # fmt: skip

    return check


async def api_leds(url: str) -> dict[str, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/leds") as response:
        assert response.status == 200
        return {p["phone"]: p for p in await response.json()}


async def play_the_sessions(
    server: Server, bridge: Bridge, url: str, static_203: int
) -> dict[str, dict[str, object]]:
    """The scenario of the module docstring; returns /api/leds as it stood before 204 came."""
    # The first light waits for the whole start (a sync over ARI, the contacts' first answers):
    # more time on a loaded machine than one change does.
    await eventually(lit(bridge, "203", "off", 2), within=15)  # registered and static contact
    await server.play("device-states", until=dnd("BUSY"))
    await eventually(lit(bridge, "203", "on", 2))
    await server.play("device-states", until=dnd("NOT_INUSE"))
    await eventually(lit(bridge, "203", "off", 2))
    before = await api_leds(url)
    await server.play("registrations")  # 204 registers, 203's registration and 206 go
    await eventually(lit(bridge, "204", "off", 1))
    await eventually(lit(bridge, "203", "off", 1))
    await server.play("device-states", until=dnd("INUSE"))
    await eventually(lit(bridge, "204", "on", 1))
    await eventually(lit(bridge, "203", "on", 1))
    assert bridge.core.leds is not None
    assert list(bridge.core.leds.phones["203"].contacts) == [f"sip:203@127.0.0.1:{static_203}"]
    return before


async def test_lights_reach_every_registered_contact_over_ami(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(RecordedAmiServer(RECORDINGS, speed=0))
        registered_203, static_203, phone_204 = [
            await stack.enter_async_context(SippPhone(idle_ms=1500)) for _ in range(3)
        ]
        # 203's recorded contact is on 5083 (its REGISTER came from 51418: not where Asterisk,
        # nor the bridge, sends), 204's on 5084; 203 also has a static contact= here.
        move_phones(server, {"5083": registered_203.port, "5084": phone_204.port})
        server.static_contacts = {"203": [f"sip:203@127.0.0.1:{static_203.port}"]}
        server.select("registrations")
        source = [f"ami.port={server.port}", "ami.username=bridge", "ami.secret=bridgesecret"]
        with caplog.at_level(logging.INFO, "bridge.led"):
            bridge, url = await stack.enter_async_context(bridge_with_rules(tmp_path, *source))
            before = await play_the_sessions(server, bridge, url, static_203.port)
            after = await api_leds(url)
            status = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "status", "--url", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(status.communicate(), 20)
        results = [await p.finish() for p in (registered_203, static_203, phone_204)]
    # Lit, then unlit, on both contacts; then only the static one is left to light.
    assert bodies(results[0].messages) == [OFF_203, ON_203, OFF_203]
    assert bodies(results[1].messages) == [OFF_203, ON_203, OFF_203, ON_203]
    assert bodies(results[2].messages) == [OFF_204, ON_204]
    assert_reachability(before, after, registered_203.port, static_203.port)
    text = output.decode()
    assert status.returncode == 0, text
    lines = text.splitlines()
    assert lines[lines.index("LED phones:") + 1 :] == [
        f"  203  reachable  keys 2  at sip:203@127.0.0.1:{static_203.port} (lit)",
        f"  204  reachable  keys 1  at sip:204@127.0.0.1:{phone_204.port} (lit)",
        "  205  NOT reachable (no contact known to Asterisk)  keys 4",
    ]
    assert_warned_once(caplog)


async def test_lights_reach_every_registered_contact_over_ari(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(RecordedAriServer(RECORDINGS, speed=0))
        registered_203, static_203, phone_204 = [
            await stack.enter_async_context(SippPhone(idle_ms=1500)) for _ in range(3)
        ]
        move_phones(server, {"5083": registered_203.port, "5084": phone_204.port})
        server.static_contacts = {"203": [f"sip:203@127.0.0.1:{static_203.port}"]}
        server.select("registrations")
        source = ["asterisk.source=ari", f"ari.url=http://127.0.0.1:{server.port}",
                  "ari.username=bridge", "ari.password=bridgesecret"]  # fmt: skip
        with caplog.at_level(logging.INFO, "bridge"):
            bridge, url = await stack.enter_async_context(bridge_with_rules(tmp_path, *source))
            before = await play_the_sessions(server, bridge, url, static_203.port)
            after = await api_leds(url)
        results = [await p.finish() for p in (registered_203, static_203, phone_204)]
    assert bodies(results[0].messages) == [OFF_203, ON_203, OFF_203]
    assert bodies(results[1].messages) == [OFF_203, ON_203, OFF_203, ON_203]
    assert bodies(results[2].messages) == [OFF_204, ON_204]
    assert_reachability(before, after, registered_203.port, static_203.port)
    assert_warned_once(caplog)
    # How the ARI source learnt the contacts at start: each rule phone's AOR configuration.
    asked = [path for kind, path in server.log if kind == "recv" and "/aor/" in path]
    assert sorted(asked) == [f"/ari/asterisk/config/dynamic/res_pjsip/aor/{n}" for n in
                             ("203", "204", "205")]  # fmt: skip


def assert_reachability(
    before: dict[str, dict[str, object]],
    after: dict[str, dict[str, object]],
    registered_203: int,
    static_203: int,
) -> None:
    """What /api/leds said with 203 on two contacts and 204 unregistered, and at the end."""
    assert before["203"] == {
        "phone": "203", "reachable": True, "keys": [2],
        "contacts": [
            {"uri": f"sip:203@127.0.0.1:{registered_203}", "address":
             f"127.0.0.1:{registered_203}", "state": "lit"},
            {"uri": f"sip:203@127.0.0.1:{static_203}", "address": f"127.0.0.1:{static_203}",
             "state": "lit"},
        ],
    }  # fmt: skip
    assert {p: v["reachable"] for p, v in before.items()} == {"203": True, "204": False,
                                                                "205": False}  # fmt: skip
    assert {p: v["reachable"] for p, v in after.items()} == {"203": True, "204": True,
                                                               "205": False}  # fmt: skip


def assert_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    """Phones without a contact are named at warning level once each, whatever follows."""
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warned if w.startswith("led: phone")] == [
        NO_CONTACT.format("204") + " (not registered, no static contact=): its keys 1 cannot "
        "be lit until it registers",
        NO_CONTACT.format("205") + " (not registered, no static contact=): its keys 4 cannot "
        "be lit until it registers",
    ]
