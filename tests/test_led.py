"""Snom LED remote control: the x-buttons body, the sender's rules, and the whole path over sockets
(a replayed Asterisk says where the phone is and what changes; SIPp plays the phone)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sipp import SippPhone, TracedMessage
from test_app import RECORDINGS, eventually

from bridge.app import Bridge
from bridge.config import ConfigError, load
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.led.buttons import KeyLight, body
from bridge.led.controller import LedController
from bridge.led.rules import HINT_STATES, LedRule
from bridge.sip.message import Response, build_response, parse_message

HINT_202_RINGING = event_matches(Event="ExtensionStatus", Exten="202", Status="8")
DND = LedRule("203", 2, device="Custom:DND201", lights={"inuse": "on"}, label="DND 201",
              dial="*76201")  # fmt: skip
BLF = LedRule("203", 3, hint="202", lights={"ringing": "pickup", "inuse": "on"}, label="202")
OTHER = LedRule("204", 1, device="Custom:DND201", lights={"inuse": "red"})


def test_body_is_snoms_format() -> None:
    keys = [KeyLight(3, "pickup", label="202"), KeyLight(2, "on", "*76201", "", "DND\r\n201")]
    assert body(keys) == (
        b"k=2\r\nc=on\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n\r\nk=3\r\nc=pickup\r\nl=202\r\n"
    )


class Clock:
    """Drives a LedController with a fake time; phones answer through ``answer``."""

    def __init__(self, *rules: LedRule) -> None:
        self.now = 0.0
        self.c = LedController(rules, domain="pbx.test",
                               local=lambda host, transport: ("10.0.0.1", 5065))  # fmt: skip
        self.sent: list[tuple[float, tuple[str, int], bytes]] = []

    def drain(self) -> list[tuple[tuple[str, int], bytes]]:
        out = [(data, (to.host, to.port)) for data, to in self.c.outgoing()]
        self.sent += [(self.now, a, d) for d, a in out]
        return [(a, d) for d, a in out]

    def run_until(self, t: float) -> None:
        while (when := self.c.next_timer()) is not None and when <= t:
            self.now = when
            self.c.handle_timer(when)
            self.drain()
        self.now = t

    def answer(self, data: bytes, status: int = 200) -> None:
        request = parse_message(data)
        assert not isinstance(request, Response)
        response = build_response(request, status, to_tag="ph")
        assert self.c.receive_response(parse_message(response.to_bytes()), self.now)  # type: ignore[arg-type]
        self.drain()


def branch_of(data: bytes) -> str:
    return data.split(b";branch=", 1)[1].split(b";", 1)[0].decode()


def keys_of(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[1].decode()


def test_changes_wait_for_the_phone_then_go_out_together() -> None:
    clock = Clock(DND, BLF)
    clock.c.device_state("Custom:DND201", "INUSE", 0)
    clock.c.hint_state("202", 8, 0)
    assert clock.drain() == []  # nowhere to send yet
    clock.c.contact("203", "sip:203@10.0.0.7:5062", 0)
    ((to, data),) = clock.drain()
    assert to == ("10.0.0.7", 5062)
    assert data.startswith(b"MESSAGE sip:203@10.0.0.7:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1")
    assert b"\r\nContent-Type: application/x-buttons\r\n" in data
    assert keys_of(data) == (
        "k=2\r\nc=on\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n\r\nk=3\r\nc=pickup\r\nl=202\r\n"
    )
    # While that one is in flight, two changes: one MESSAGE after the answer, the newest state.
    clock.c.hint_state("202", 1, 0)
    clock.c.hint_state("202", 0, 0)
    assert clock.drain() == []
    clock.answer(data)
    ((_, _, second),) = clock.sent[1:]
    assert keys_of(second) == "k=3\r\nc=off\r\nl=202\r\n"  # only what changed


def test_udp_retransmission_then_growing_retries_and_other_phones_unaffected() -> None:
    clock = Clock(DND, OTHER)
    clock.c.contact("203", "sip:203@10.0.0.7:5062", 0)  # never answers
    clock.c.contact("204", "sip:204@10.0.0.8", 0)
    first = clock.drain()
    assert [a for a, _ in first] == [("10.0.0.7", 5062), ("10.0.0.8", 5060)]
    clock.answer(first[1][1])  # 204 answers at once, whatever 203 does
    clock.run_until(600)
    to_203 = [(t, branch_of(d)) for t, a, d in clock.sent if a[0] == "10.0.0.7"]
    first = [round(t, 1) for t, b in to_203 if b == to_203[0][1]]
    # One transaction: sent at 0, again after T1 doubling up to T2, given up at 64·T1 = 32 s.
    assert first == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    starts = sorted({b: t for t, b in reversed(to_203)}.values())
    gaps = [round(b - a) for a, b in itertools.pairwise(starts)]
    assert gaps[:4] == [32 + 5, 32 + 10, 32 + 20, 32 + 40]  # backoff grows, never a tight loop
    assert [a for _, a, _ in clock.sent].count(("10.0.0.8", 5060)) == 1


def test_a_new_registration_resends_every_light_and_refusals_back_off() -> None:
    clock = Clock(DND, BLF)
    clock.c.contact("203", "sip:203@10.0.0.7", 0)
    ((_, data),) = clock.drain()
    clock.answer(data)
    clock.now = 1.0
    clock.c.contact("203", "sip:203@10.0.0.7", 1.0, reachable=False)  # rebooted: unregistered,
    clock.c.contact("203", "sip:203@10.0.0.7:5099", 1.0)  # and back on another port
    ((to, again),) = clock.drain()
    assert to == ("10.0.0.7", 5099) and keys_of(again) == keys_of(data)
    clock.answer(again, 486)
    clock.c.device_state("Custom:DND201", "INUSE", 1.0)
    assert clock.drain() == []  # refused: not before the back-off (5 s)
    clock.run_until(6.1)
    (retry,) = [d for t, _, d in clock.sent if t > 1]
    assert keys_of(retry).startswith("k=2\r\nc=on\r\n")


def test_every_contact_of_a_phone_gets_the_lights_and_a_removed_one_no_more() -> None:
    clock = Clock(DND)
    clock.c.contact("203", "sip:203@10.0.0.7:5062", 0)  # registered
    clock.c.contact("203", "sip:203@10.0.0.9", 0, listed=True)  # a static contact=
    first = clock.drain()
    assert sorted(a for a, _ in first) == [("10.0.0.7", 5062), ("10.0.0.9", 5060)]
    for _, data in first:
        clock.answer(data)
    clock.c.device_state("Custom:DND201", "INUSE", 0)
    both = clock.drain()
    assert sorted(a for a, _ in both) == [("10.0.0.7", 5062), ("10.0.0.9", 5060)]
    assert {keys_of(d) for _, d in both} == {"k=2\r\nc=on\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n"}
    for _, data in both:
        clock.answer(data)
    clock.c.contact("203", "sip:203@10.0.0.7:5062", 0, reachable=False)  # ContactStatus Removed
    clock.c.device_state("Custom:DND201", "NOT_INUSE", 0)
    ((to, data),) = clock.drain()
    assert to == ("10.0.0.9", 5060) and keys_of(data).startswith("k=2\r\nc=off\r\n")
    # Gone while a MESSAGE was in flight: its retransmissions stop with it.
    clock.c.contact("203", "sip:203@10.0.0.9", 0, reachable=False)
    clock.run_until(60)
    assert clock.drain() == [] and [t for t, _, _ in clock.sent if t > 0] == []
    assert not clock.c.phones["203"].reachable


def test_a_contact_is_reached_at_its_uri_as_asterisk_reaches_it() -> None:
    clock = Clock(DND, OTHER)
    # rewrite_contact: Asterisk stored the REGISTER's source address, and its own parameter.
    nat = "sip:203@203.0.113.5:40123;x-ast-orig-host=192.168.1.20:5060;ob"
    clock.c.contact("203", nat, 0)
    # A rule may name the endpoint where the AOR is called otherwise.
    clock.c.contact("204-aor", "sip:204@10.0.0.8:5070", 0, endpoint="204")
    (to_203, data), (to_204, _) = clock.drain()
    assert to_203 == ("203.0.113.5", 40123) and to_204 == ("10.0.0.8", 5070)
    assert data.startswith(b"MESSAGE sip:203@203.0.113.5:40123;ob SIP/2.0\r\n")
    assert clock.c.phones["203"].contacts[nat].uri == nat  # as Asterisk names it (Removed)


def test_a_resync_keeps_what_it_lists_drops_the_rest_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(DND, OTHER, LedRule("205", 1, device="Custom:DND201"))
    clock.c.contact("203", "sip:203@10.0.0.7", 0)
    clock.c.contact("204", "sip:204@10.0.0.8", 0)
    for _, data in clock.drain():
        clock.answer(data)
    with caplog.at_level(logging.INFO, "bridge.led"):
        for _ in range(3):  # three reconnects: 204 unregistered meanwhile, 205 never registers
            clock.c.sync_started()
            clock.c.contact("203", "sip:203@10.0.0.7", 1, listed=True)
            clock.c.sync_finished(1)
    assert clock.drain() == []  # 203 listed again: nothing new to tell it
    assert list(clock.c.phones["203"].contacts) == ["sip:203@10.0.0.7"]
    assert not clock.c.phones["204"].reachable
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "led: phone 204 has no contact Asterisk knows of (not registered, no static contact=): "
        "its keys 1 cannot be lit until it registers",
        "led: phone 205 has no contact Asterisk knows of (not registered, no static contact=): "
        "its keys 1 cannot be lit until it registers",
    ]
    # Contacts a resync lists are sent to once the listing is complete: PJSIPShowAors lists a
    # contact that PJSIPShowContacts then says is unreachable; that one gets nothing.
    clock.c.sync_started()
    clock.c.contact("203", "sip:203@10.0.0.7", 2, listed=True)
    clock.c.contact("204", "sip:204@10.0.0.8:5070", 2, listed=True)
    clock.c.contact("204", "sip:204@10.0.0.8:5070", 2, reachable=False, listed=True)
    clock.c.contact("205", "sip:205@10.0.0.5", 2, listed=True)
    assert clock.drain() == []
    clock.c.sync_finished(2)
    assert [to for to, _ in clock.drain()] == [("10.0.0.5", 5060)]


def test_config_names_a_bad_rule(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    cases = {
        '[[led]]\nphone = "203"\nkey = 2\n': "set exactly one of device",
        '[[led]]\nphone = "203"\nkey = 2\ndevice = "Custom:X"\nlights = { inuse = "purple" }\n':
            "led[0].lights.inuse: 'purple' is not a light",
        '[[led]]\nphone = "203"\nkey = "two"\ndevice = "Custom:X"\n': "led[0].key",
    }  # fmt: skip
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load(path)


def test_a_rule_without_lights_lights_the_key_as_asterisks_own_blf_would(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[[led]]\nphone = "203"\nkey = 2\ndevice = "Custom:DND201"\n'
                    '[[led]]\nphone = "203"\nkey = 3\nhint = "202"\n')  # fmt: skip
    device_rule, hint_rule = load(path).leds
    lit = {"BUSY", "INUSE", "RINGING", "RINGINUSE", "ONHOLD"}
    for state in (*lit, "NOT_INUSE", "UNAVAILABLE", "UNKNOWN", "INVALID"):
        assert device_rule.light(state).light == ("on" if state in lit else "off"), state
    for status, name in HINT_STATES.items():
        assert hint_rule.light(name).light == ("off" if status in (0, 4, -1) else "on"), name


LED_CONFIG = """
[[led]]
phone = "203"
key = 2
device = "Custom:DND201"
lights = { inuse = "on" }
label = "DND 201"
dial = "*76201"

[[led]]
phone = "203"
key = 3
hint = "202"
lights = { ringing = "pickup", inuse = "on" }
label = "202"

[[led]]
phone = "204"
key = 1
hint = "202"
lights = { ringing = "red" }
"""


@asynccontextmanager
async def led_bridge(server: RecordedAmiServer, tmp_path: Path) -> AsyncIterator[Bridge]:
    path = tmp_path / "bridge.toml"
    path.write_text(LED_CONFIG)
    overrides = [f"ami.port={server.port}", "ami.username=bridge", "ami.secret=bridgesecret",
                 'sip.udp=["127.0.0.1:0"]', 'sip.tcp=["127.0.0.1:0"]', "sip.domain=pbx.test",
                 "store.path=", "web.listen="]  # fmt: skip
    bridge = Bridge(load(path, overrides))
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


def contact_status(aor: str, uri: str, status: str = "NonQualified") -> dict[str, str]:
    """A ContactStatus event as Asterisk 22 sends it (``registrations`` recording)."""
    return {
        "Event": "ContactStatus", "Privilege": "system,all", "URI": uri, "ContactStatus": status,
        "AOR": aor, "EndpointName": aor, "RoundtripUsec": "0",
    }  # fmt: skip


def bodies(messages: list[TracedMessage]) -> list[str]:
    received = [m for m in messages if m.direction == "received" and m.method == "MESSAGE"]
    return [m.body.decode() for m in received]


async def test_keys_follow_asterisk_and_a_reregistration_relights_them(tmp_path: Path) -> None:
    async with RecordedAmiServer(RECORDINGS, speed=0) as server, SippPhone(idle_ms=1500) as phone:
        server.static_contacts.clear()  # only the phones registered here
        server.emit(contact_status("203", f"sip:203@127.0.0.1:{phone.port}"))
        server.emit(contact_status("204", "sip:204@127.0.0.1:9"))  # nobody: must not hold 203 up
        async with led_bridge(server, tmp_path) as bridge:
            leds = bridge.core.leds
            assert leds is not None
            await eventually(lambda: bool(leds.phones["203"].contacts))
            (first,) = leds.phones["203"].contacts.values()
            confirmed = first.confirmed
            await eventually(lambda: len(confirmed) == 2)  # the first MESSAGE, both keys
            dnd = {"Event": "DeviceStateChange", "Privilege": "call,all",
                   "Device": "Custom:DND201", "State": "INUSE"}  # fmt: skip
            server.emit(dnd)
            await eventually(lambda: confirmed[2].light == "on")
            await server.play("ring-cancel", until=HINT_202_RINGING)
            await eventually(lambda: confirmed[3].light == "pickup")
            moved = f"sip:203@127.0.0.1:{phone.port};ob"
            server.emit(contact_status("203", moved, "Reachable"))
            at_203 = bridge.core.leds.phones["203"].contacts
            await eventually(lambda: moved in at_203 and at_203[moved].in_flight is None)
            result = await phone.finish()
            # 204 never answers: its MESSAGE is still being retransmitted (the unit test above
            # follows it into the growing back-off) while 203 got every change at once.
            (at_204,) = bridge.core.leds.phones["204"].contacts.values()
            assert at_204.in_flight is not None
    got = bodies(result.messages)
    assert got == [
        "k=2\r\nc=off\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n\r\nk=3\r\nc=off\r\nl=202\r\n",
        "k=2\r\nc=on\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n",
        "k=3\r\nc=pickup\r\nl=202\r\n",
        # registered anew (a second contact, on the same socket): every key, as it is now
        "k=2\r\nc=on\r\nn=*76201\r\na=invite\r\nl=DND 201\r\n\r\nk=3\r\nc=pickup\r\nl=202\r\n",
    ], got


async def test_led_command_lights_one_key_by_hand() -> None:
    async with SippPhone(idle_ms=1000) as phone:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "led", f"127.0.0.1:{phone.port}", "5", "on",
            "--label", "Night", "--dial", "*80",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        result = await phone.finish()
    assert process.returncode == 0, output.decode()
    assert bodies(result.messages) == ["k=5\r\nc=on\r\nn=*80\r\na=invite\r\nl=Night\r\n"]
    assert "200" in output.decode()


async def test_led_command_reports_a_refusal() -> None:
    async with SippPhone(idle_ms=1000, status=403, reason="Forbidden") as phone:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "led", f"127.0.0.1:{phone.port}", "5", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        await phone.finish()
    assert process.returncode == 1
    assert "403" in output.decode()
