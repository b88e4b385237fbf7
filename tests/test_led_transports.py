"""LED MESSAGEs over the phone's own transport, over real sockets: a replayed Asterisk says the
phone's contact is ``transport=tcp``/``tls``; a phone speaking SIP over raw asyncio streams (the
Debian SIPp has no TLS) takes the MESSAGE, either on the connection it keeps open to the bridge
(its subscription's) or on one the bridge opens to its contact, as Asterisk would send it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from stream_phone import SipMessage, StreamPhone, read_message
from test_app import RECORDINGS, eventually
from test_led import contact_status

from bridge.app import Bridge
from bridge.config import load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.led.controller import LedController
from bridge.led.rules import LedRule

RULE = """
[[led]]
phone = "203"
key = 2
device = "Custom:DND201"
lights = { inuse = "on" }
label = "DND"
"""
DND_ON = {"Event": "DeviceStateChange", "Privilege": "call,all", "Device": "Custom:DND201",
          "State": "INUSE"}  # fmt: skip


@asynccontextmanager
async def led_bridge(server: RecordedAmiServer, tmp_path: Path,
                     certificate: tuple[Path, Path] | None = None) -> AsyncIterator[Bridge]:
    """A bridge with the LED rule; listening on TLS too when given a ``certificate``."""
    path = tmp_path / "bridge.toml"
    path.write_text(RULE)
    tls = [] if certificate is None else [
        'sip.tls=["127.0.0.1:0"]', f"sip.tls_certificate={certificate[0]}",
        f"sip.tls_key={certificate[1]}",
    ]  # fmt: skip
    bridge = Bridge(load(path, [
        f"ami.port={server.port}", "ami.username=bridge", "ami.secret=bridgesecret",
        'sip.udp=["127.0.0.1:0"]', 'sip.tcp=["127.0.0.1:0"]', *tls, "sip.domain=pbx.test",
        "store.path=", "web.listen=", "security.requests_per_second=0",
    ]))  # fmt: skip
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


async def next_message(reader: asyncio.StreamReader, method: str) -> SipMessage:
    """The next request ``method`` on a connection (responses and other requests skipped)."""
    async with asyncio.timeout(5):
        while True:
            message = await read_message(reader)
            if message.start_line.startswith(f"{method} "):
                return message


def lights(bridge: Bridge) -> dict[int, str]:
    assert bridge.core.leds is not None
    contacts = bridge.core.leds.phones["203"].contacts.values()
    return {k: v.light for c in contacts for k, v in c.confirmed.items()}


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_the_bridge_opens_a_connection_to_a_contact_registered_over_a_stream(
    transport: str, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """No connection from the phone: the MESSAGE goes on a new one to the contact's port (TLS
    as the bridge dials phones: encrypted, the phone's certificate unchecked), even from a
    bridge that does not listen on TLS."""
    async with (
        RecordedAmiServer(RECORDINGS, speed=0) as server,
        led_bridge(server, tmp_path) as bridge,
        StreamPhone(bridge.bound("tcp"), transport, certificate=certificate) as phone,  # type: ignore[arg-type]
    ):
        server.static_contacts.clear()
        uri = f"sip:203@127.0.0.1:{phone.contact_port};transport={transport}"
        server.emit(contact_status("203", uri, "Reachable"))
        reader, writer = await asyncio.wait_for(phone.dialed.get(), 5)
        first = await next_message(reader, "MESSAGE")
        assert first.start_line == f"MESSAGE {uri} SIP/2.0"
        assert (first.header("Via") or "").startswith(f"SIP/2.0/{transport.upper()} ")
        assert first.header("Content-Type") == "application/x-buttons"
        assert first.body == b"k=2\r\nc=off\r\nl=DND\r\n"
        phone.answer(writer, first)
        await eventually(lambda: lights(bridge) == {2: "off"})
        server.emit(DND_ON)
        second = await next_message(reader, "MESSAGE")  # the same connection, kept open
        assert second.body == b"k=2\r\nc=on\r\nl=DND\r\n"
        phone.answer(writer, second)
        await eventually(lambda: lights(bridge) == {2: "on"})
        assert phone.dialed.empty()  # one connection for both
        writer.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_the_message_reuses_the_connection_the_phone_subscribed_on(
    transport: str, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """The phone keeps a connection open to the bridge (its BLF subscription): the MESSAGE
    comes on it, as Asterisk sends on a registration's flow, and the bridge dials nothing."""
    async with (
        RecordedAmiServer(RECORDINGS, speed=0) as server,
        led_bridge(server, tmp_path, certificate) as bridge,
        StreamPhone(bridge.bound(transport), transport, certificate=certificate) as phone,  # type: ignore[arg-type]
    ):
        server.static_contacts.clear()
        assert bridge.source is not None
        await asyncio.wait_for(bridge.source.synced.wait(), 5)
        await phone.connect()
        phone.subscribe("202")
        assert phone.reader is not None and phone.writer is not None
        await phone.notify(phone.reader, phone.writer)
        uri = f"sip:203@127.0.0.1:{phone.contact_port};transport={transport}"
        server.emit(contact_status("203", uri, "Reachable"))
        message = await next_message(phone.reader, "MESSAGE")
        assert message.start_line == f"MESSAGE {uri} SIP/2.0"
        assert (message.header("Via") or "").startswith(f"SIP/2.0/{transport.upper()} ")
        phone.answer(phone.writer, message)
        await eventually(lambda: lights(bridge) == {2: "off"})
        assert phone.dialed.empty()


def test_the_contact_uri_says_the_transport_and_a_stream_is_not_retransmitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rule = LedRule("203", 2, device="Custom:DND201")
    leds = LedController([rule], domain="pbx.test", local=lambda host, transport: ("10.0.0.1", 5))
    leds.contact("203", "<sip:203@10.0.0.7:5070;transport=TCP;x-ast-txp=tcp>", 0.0)
    leds.contact("203", "sips:203@10.0.0.8", 0.0)
    leds.contact("203", "sip:203@10.0.0.9;transport=ws", 0.0)  # a WebSocket: not ours to reach
    sent = leds.outgoing()
    assert sorted(to[:3] for _, to in sent) == [
        ("10.0.0.7", 5070, "tcp"), ("10.0.0.8", 5061, "tls"),
    ]  # fmt: skip
    assert {to.phone for _, to in sent} == {"203"}
    assert "the bridge speaks no ws" in caplog.text
    vias = sorted(data.split(b"\r\n")[1].split(b" ")[1] for data, _ in sent)
    assert vias == [b"SIP/2.0/TCP", b"SIP/2.0/TLS"]
    when = leds.next_timer()
    assert when == 32.0  # Timer F (64*T1) only: no Timer E over a stream
    leds.handle_timer(when)
    assert leds.outgoing() == []  # given up, not resent
