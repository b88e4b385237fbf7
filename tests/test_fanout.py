"""The fan-out over real sockets (UDP, TCP, TLS; uvloop and asyncio): sent a slice per turn of the
event loop, so a SUBSCRIBE that arrives during a burst is answered before the burst ends; the
ringing key's watchers are told before another key changed in the same burst; every watcher gets
exactly one NOTIFY for the change, its CSeq and version one above the last. An RFC 4662 list
subscription to the same keys is told in the same sliced burst (or once its gathering interval
ends), one NOTIFY carrying both keys.

The bridge's SIP side runs in-process (``start_sip`` around a ``Notifier``) so the burst can be
made exactly; the phone is a socket of its own that answers every NOTIFY 200.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from lxml import etree
from test_core import NS, SCHEMA, Sip
from test_lists import read_list
from test_sip_notifier import Source as Keys  # 202 and 203, whose states a test sets

from bridge.dialoginfo import DialogInfoDocument, RenderSettings, render, sip_uri
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds
from bridge.resource_lists import ResourceList
from bridge.sip.message import Request, Response, build_response, parse_message
from bridge.sip.notifier import Notifier, NotifierSettings
from bridge.sip.transport import FANOUT_SLICE, SipService, grow_buffers, start_sip

HOST = "127.0.0.1"
WATCHERS = 10 * FANOUT_SLICE + 7  # several slices, the last one short


class Phone:
    """Many subscription dialogs on one socket or connection; every NOTIFY is answered 200 and
    everything received is kept in arrival order."""

    def __init__(self, transport: str, port: int) -> None:
        self.transport, self.bridge_port = transport, port
        self.got: list[Request | Response] = []
        self.write: Callable[[bytes], None] = lambda data: None
        self.local_port = 0

    async def open(self, tls: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            phone = self

            class Datagrams(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                    phone.received(data)

            udp, _ = await loop.create_datagram_endpoint(
                Datagrams, local_addr=(HOST, 0), remote_addr=(HOST, self.bridge_port)
            )
            # One socket for hundreds of dialogs: the whole burst must fit in its buffer (a
            # phone has a socket of its own), or NOTIFYs are dropped and come again 0.5 s on.
            grow_buffers(udp.get_extra_info("socket"), 4 << 20)
            self.write = udp.sendto
            self.local_port = udp.get_extra_info("sockname")[1]
            return
        reader, writer = await asyncio.open_connection(HOST, self.bridge_port, ssl=tls)
        self.write = writer.write
        self.local_port = writer.get_extra_info("sockname")[1]
        self.reading = asyncio.create_task(self.read(reader))

    async def read(self, reader: asyncio.StreamReader) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.partition(b":")[2]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            self.received(head + await reader.readexactly(length))

    def received(self, data: bytes) -> None:
        message = parse_message(data)
        self.got.append(message)
        if isinstance(message, Request) and message.method == "NOTIFY":
            self.write(build_response(message, 200).to_bytes())

    def subscribe(self, resource: str, call_id: str) -> None:
        kind = self.transport.upper()
        params = "" if self.transport == "udp" else f";transport={self.transport}"
        self.write((
            f"SUBSCRIBE sip:{resource}@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/{kind} {HOST}:{self.local_port};branch=z9hG4bK-{call_id};rport\r\n"
            f"From: <sip:{call_id}@{HOST}>;tag=f-{call_id}\r\nTo: <sip:{resource}@{HOST}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:{call_id}@{HOST}:{self.local_port}{params}>\r\nEvent: dialog\r\n"
            "Expires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode())  # fmt: skip

    async def watch(self, resource: str, count: int) -> None:
        """Subscribe ``count`` dialogs (w0, w1, …) to ``resource``, fifty at a time, each with
        its first NOTIFY in."""
        first = len(self.notifies())
        for i in range(count):
            self.subscribe(resource, f"w{i}")
            if i % 50 == 49 or i == count - 1:
                await until(lambda i=i: len(self.notifies()) == first + i + 1)  # type: ignore[misc]

    def notifies(self) -> list[Request]:
        return [m for m in self.got if isinstance(m, Request) and m.method == "NOTIFY"]


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (the phone fills a list; polling is simplest)
            await asyncio.sleep(0.005)


def version(notify: Request) -> int:
    return int(notify.body.decode().partition('version="')[2].partition('"')[0])


async def burst(transport: str, server_tls: ssl.SSLContext) -> None:
    keys = Keys()
    contacts = {name: (HOST, 0) for name in ("udp", "tcp", "tls")}
    notifier = Notifier(keys, NotifierSettings(contacts=contacts))
    service: SipService = await start_sip(
        notifier, [(HOST, 0)], [(HOST, 0)], tls_addrs=[(HOST, 0)], tls=server_tls
    )
    phone = Phone(transport, notifier.contact(transport)[1])
    client_tls = ssl.create_default_context()
    client_tls.check_hostname, client_tls.verify_mode = False, ssl.CERT_NONE
    try:
        await phone.open(client_tls if transport == "tls" else None)
        await phone.watch("202", WATCHERS)
        phone.subscribe("203", "busy-key")
        await until(lambda: len(phone.notifies()) == WATCHERS + 1)
        before = {n.call_id(): n for n in phone.notifies()}
        phone.got.clear()
        # A phone subscribes just as the burst starts: its SUBSCRIBE waits in the socket.
        phone.subscribe("203", "late")
        keys.states.update({"203": "busy", "202": "early"})
        now = asyncio.get_running_loop().time()
        notifier.resource_changed("203", now)  # first in the burst, not ringing
        notifier.resource_changed("202", now, ringing=True)
        service.flush()  # as after an Asterisk event: the ringing key's first slice at once
        await until(lambda: len(phone.notifies()) == WATCHERS + 2)  # + busy-key, + late
        await asyncio.sleep(0.05)  # nothing more may come
        got = phone.got
        notifies = phone.notifies()
        assert len(notifies) == WATCHERS + 2, [n.call_id() for n in notifies]
        answer = next(i for i, m in enumerate(got) if isinstance(m, Response))
        ringing = [i for i, m in enumerate(got) if isinstance(m, Request)
                   and m.call_id().startswith("w")]  # fmt: skip
        busy = next(i for i, m in enumerate(got) if isinstance(m, Request)
                    and m.call_id() == "busy-key")  # fmt: skip
        # The SUBSCRIBE was answered within the burst, a few slices in, not after it.
        assert answer < ringing[-1] and answer <= 5 * FANOUT_SLICE, (answer, len(got))
        assert got[answer].status == 200 and got[answer].call_id() == "late"  # type: ignore[union-attr]
        assert busy > ringing[-1]  # ringing first, though the busy key changed first
        for notify in notifies:
            call_id = notify.call_id()
            if call_id == "late":
                assert b'state="busy"' in notify.body
                continue
            old = before[call_id]
            assert notify.cseq().seq == old.cseq().seq + 1 and version(notify) == version(old) + 1
            assert (b'state="early"' if call_id != "busy-key" else b'state="busy"') in notify.body
    finally:
        if transport != "udp":
            phone.reading.cancel()
        await service.close()


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_burst_goes_out_in_slices_ringing_first_once_per_watcher(
    transport: str, loop: str, certificate: tuple[Path, Path]
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*certificate)
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(burst(transport, server_tls))


# ----------------------------------------------------------------- a list in the burst


class ListedKeys:
    """Keys 202 and 203 rendered as the bridge renders them, and one RFC 4662 list ``blf`` of
    both (``batch_interval`` seconds of gathering)."""

    def __init__(self, batch_interval: float) -> None:
        self.states = {k: EntityState(k) for k in ("202", "203")}
        self.settings = RenderSettings(domain=HOST)
        self.blf = ResourceList("blf", ("202", "203"), batch_interval=batch_interval)

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        return user

    def knows(self, resource: str) -> bool:
        return resource in self.states

    def document(self, resource: str, watcher: str) -> DialogInfoDocument:
        return render(self.states[resource], self.settings)

    def find_list(self, user: str, watcher: str, domain: str) -> ResourceList | None:
        return self.blf if user == "blf" else None

    def list_uri(self, name: str, domain: str) -> str:
        return sip_uri(name, HOST)

    def resource_uri(self, resource: str) -> str:
        return sip_uri(resource, HOST)


def dialog_state(body: bytes) -> str:
    """The state of the first dialog of a dialog-info body, checked against the RFC 4235 XSD."""
    doc = etree.fromstring(body)
    SCHEMA.assertValid(doc)
    return str(doc.findtext("d:dialog/d:state", namespaces=NS))


async def list_burst(transport: str, batch_interval: float) -> None:
    keys = ListedKeys(batch_interval)
    contacts = {name: (HOST, 0) for name in ("udp", "tcp")}
    notifier = Notifier(keys, NotifierSettings(contacts=contacts), lists=keys)
    service: SipService = await start_sip(notifier, [(HOST, 0)], [(HOST, 0)])
    phone = Phone(transport, notifier.contact(transport)[1])
    raw: list[bytes] = []  # every NOTIFY as it came, for the list's MIME reader
    received = phone.received

    def keep(data: bytes) -> None:
        if data.startswith(b"NOTIFY "):
            raw.append(data)
        received(data)

    phone.received = keep  # type: ignore[method-assign]
    try:
        await phone.open(None)
        await phone.watch("202", WATCHERS)
        phone.subscribe("203", "busy-key")
        # The list: the same SUBSCRIBE with Supported: eventlist (RFC 4662 §5.1).
        params = "" if transport == "udp" else f";transport={transport}"
        phone.write((
            f"SUBSCRIBE sip:blf@{HOST} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} {HOST}:{phone.local_port};branch=z9hG4bK-l;rport"
            f"\r\nFrom: <sip:lister@{HOST}>;tag=f-l\r\nTo: <sip:blf@{HOST}>\r\n"
            f"Call-ID: list\r\nCSeq: 1 SUBSCRIBE\r\nSupported: eventlist\r\n"
            f"Contact: <sip:lister@{HOST}:{phone.local_port}{params}>\r\nEvent: dialog\r\n"
            "Accept: application/dialog-info+xml, application/rlmi+xml, multipart/related\r\n"
            "Expires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode())  # fmt: skip
        await until(lambda: len(phone.notifies()) == WATCHERS + 2)
        before = {n.call_id(): n for n in phone.notifies()}
        assert before["list"].headers.get("Require") == "eventlist"
        phone.got.clear()
        raw.clear()
        phone.subscribe("203", "late")  # waits in the socket as the burst starts
        ids = PickupIds("abc@pbx", "tag-ringing-phone", "tag-asterisk")
        keys.states["202"] = EntityState("202", (
            Dialog("c1", Direction.RECIPIENT, DialogState.EARLY, "201", pickup=ids),))  # fmt: skip
        keys.states["203"] = EntityState("203", (
            Dialog("c2", Direction.INITIATOR, DialogState.CONFIRMED, "204"),))  # fmt: skip
        now = asyncio.get_running_loop().time()
        notifier.resource_changed("203", now)
        notifier.resource_changed("202", now, ringing=True)
        service.flush()  # as after an Asterisk event
        await until(lambda: len(phone.notifies()) == WATCHERS + 3)  # + busy-key, late, list
        await asyncio.sleep(max(0.05, 2 * batch_interval))  # nothing more may come
        got, notifies = phone.got, phone.notifies()
        assert len(notifies) == WATCHERS + 3, [n.call_id() for n in notifies]
        answer = next(i for i, m in enumerate(got) if isinstance(m, Response))
        ringing = [i for i, m in enumerate(got) if isinstance(m, Request)
                   and m.call_id().startswith("w")]  # fmt: skip
        assert answer < ringing[-1], "the SUBSCRIBE waited for the whole burst: no slices"
        for notify in notifies:
            if notify.call_id().startswith("w"):
                assert dialog_state(notify.body) == "early"
                assert notify.cseq().seq == before[notify.call_id()].cseq().seq + 1
        # The list subscription: one NOTIFY (RLMI version 1) carrying both keys' new state.
        (listed,) = [read_list(Sip.read(d), strict=True) for d in raw if b"Call-ID: list\r\n" in d]
        assert listed.notify.headers["require"] == "eventlist"
        assert listed.notify.headers["cseq"] == f"{before['list'].cseq().seq + 1} NOTIFY"
        assert listed.version == 1 and not listed.full
        assert sorted(listed.resources()) == [sip_uri("202", HOST), sip_uri("203", HOST)]
        assert dialog_state(listed.parts[sip_uri("202", HOST)].body) == "early"
        assert dialog_state(listed.parts[sip_uri("203", HOST)].body) == "confirmed"
        assert b"abc@pbx" in listed.parts[sip_uri("202", HOST)].body  # the pickup ids
        if batch_interval == 0:  # sent in the ringing key's walk, before the busy key's
            busy = next(i for i, m in enumerate(got) if isinstance(m, Request)
                        and m.call_id() == "busy-key")  # fmt: skip
            at = next(i for i, m in enumerate(got) if isinstance(m, Request)
                      and m.call_id() == "list")  # fmt: skip
            assert at < busy
    finally:
        if transport != "udp":
            phone.reading.cancel()
        await service.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("batch_interval", [0.0, 0.05])
def test_a_list_subscription_and_single_key_watchers_are_told_in_one_sliced_burst(
    transport: str, batch_interval: float
) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(list_burst(transport, batch_interval))
