"""Requests and responses on two sockets of one UDP address (bridge.sip.steering), over real
loopback sockets: the kernel's program puts every response on the second socket and everything
else on the first; a taken port fails as a plain bind does; where the program cannot be had the
listener is one socket as before. During a fan-out the phones' 200s wait in the kernel and are
all handled once it is done (or earlier, when their number would outgrow the buffer), while a
SUBSCRIBE is answered at once; nothing is lost or sent twice, with uvloop and with asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from test_fanout import HOST, Phone, until
from test_sip_notifier import Source as Keys

from bridge.sip import steering
from bridge.sip.message import Request, Response
from bridge.sip.notifier import Notifier, NotifierSettings, Peer
from bridge.sip.transport import FANOUT_SLICE, UDP_BATCH, SipService, start_sip

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="Linux only")

REQUESTS = [b"SUBSCRIBE sip:202@x SIP/2.0\r\n\r\n", b"\r\n\r\n", b"OP", b"NOTIFY sip:x SIP/2.0"]
RESPONSES = [b"SIP/2.0 200 OK\r\n\r\n", b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n\r\n"]


async def udp_notifier(keys: Keys) -> tuple[Notifier, SipService]:
    """A notifier of ``keys`` behind one UDP listener on loopback (its port: any free one)."""
    notifier = Notifier(keys, NotifierSettings(contacts={"udp": (HOST, 0), "tcp": (HOST, 0)}))
    return notifier, await start_sip(notifier, [(HOST, 0)], [])


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            if got:
                time.sleep(0.05)  # what is still on its way
                try:
                    got.append(sock.recv(2048))
                except BlockingIOError:
                    return got
            else:
                time.sleep(0.01)
    return got


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, HOST),
     pytest.param(socket.AF_INET6, "::1", marks=pytest.mark.skipif(not _ipv6(), reason="no ::1"))],
)  # fmt: skip
def test_the_kernel_puts_responses_on_their_own_socket_and_the_rest_on_the_first(
    family: int, host: str
) -> None:
    requests, responses = steering.bind_split(family, socket.SOCK_DGRAM, 0, (host, 0))
    assert responses is not None
    port = requests.getsockname()[1]
    assert responses.getsockname() == requests.getsockname()
    with requests, responses, socket.socket(family, socket.SOCK_DGRAM) as phone:
        for data in REQUESTS + RESPONSES:
            phone.sendto(data, (host, port))
        assert sorted(_received(requests)) == sorted(REQUESTS)
        assert sorted(_received(responses)) == sorted(RESPONSES)
        # The port is taken, for a plain socket and for another pair alike (a second bridge
        # must not join the group and receive nothing).
        with socket.socket(family, socket.SOCK_DGRAM) as plain:
            with pytest.raises(OSError) as taken:
                plain.bind((host, port))
            assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as again:
            steering.bind_split(family, socket.SOCK_DGRAM, 0, (host, port))
        assert again.value.errno == errno.EADDRINUSE


async def test_without_the_program_the_listener_is_the_one_socket_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(sock: socket.socket) -> None:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    monkeypatch.setattr(steering, "_attach_program", refused)
    keys = Keys()
    notifier, service = await udp_notifier(keys)
    phone = Phone("udp", notifier.contact("udp")[1])
    try:
        assert service._responses == []
        await phone.open(None)
        phone.subscribe("202", "w0")
        await until(lambda: len(phone.notifies()) == 1)
        keys.states["202"] = "early"
        notifier.resource_changed("202", asyncio.get_running_loop().time(), ringing=True)
        service.flush()
        await until(lambda: len(phone.notifies()) == 2)
        await until(lambda: notifier.stats().notifies_in_flight == 0)  # its 200 was read
    finally:
        await service.close()


async def _fan_out(room: int | None) -> tuple[list[bool], int, Phone, Notifier]:
    """300 watchers of 202 and a ringing change; ``room``: how many NOTIFYs may go out before
    the answers are read (None: the default, past 300). Returns, per 2xx the core was handed,
    whether a fan-out was still going on; how often the answers were read mid fan-out; the
    phone; the notifier once every answer is in."""
    keys = Keys()
    notifier, service = await udp_notifier(keys)
    assert len(service._responses) == 1
    reader = service._responses[0]
    if room is not None:
        reader.room = room
    handed: list[bool] = []
    read_mid = 0
    receive = notifier.receive

    def spy(message: bytes | Request | Response, peer: Peer, now: float) -> None:
        if isinstance(message, bytes) and message.startswith(b"SIP/2.0 2"):
            handed.append(notifier.fanout_pending)
        receive(message, peer, now)

    read = reader.datagrams.read

    def counted(sock: socket.socket, limit: int, batch: list[tuple[bytes, Any]] | None = None
                ) -> bool:  # fmt: skip
        nonlocal read_mid
        read_mid += sock is reader.sock and notifier.fanout_pending
        return read(sock, limit, batch)

    notifier.receive = spy  # type: ignore[method-assign]
    reader.datagrams.read = counted  # type: ignore[method-assign]
    phone = Phone("udp", notifier.contact("udp")[1])
    try:
        await phone.open(None)
        await phone.watch("202", 300)
        await until(lambda: notifier.stats().notifies_in_flight == 0)
        handed.clear()
        phone.got.clear()
        keys.states["202"] = "early"
        loop = asyncio.get_running_loop()
        notifier.resource_changed("202", loop.time(), ringing=True)
        service.flush()
        phone.subscribe("203", "late")  # mid fan-out: on the requests socket
        await until(lambda: len(phone.notifies()) == 301)
        await until(lambda: notifier.stats().notifies_in_flight == 0)
        await asyncio.sleep(0.05)  # no retransmission may follow
        return handed, read_mid, phone, notifier
    finally:
        await service.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_answers_wait_in_the_kernel_during_a_fan_out_and_are_all_handled_after(loop: str) -> None:
    run: Callable[..., tuple[list[bool], int, Phone, Notifier]] = (
        uvloop.run if loop == "uvloop" else asyncio.run  # type: ignore[assignment]
    )
    handed, read_mid, phone, notifier = run(_fan_out(None))
    assert len(handed) == 301 and not any(handed)  # none read while NOTIFYs were going out
    assert read_mid == 0
    late = [i for i, m in enumerate(phone.got) if isinstance(m, Response)]
    ringing = [i for i, m in enumerate(phone.got) if isinstance(m, Request)
               and m.call_id().startswith("w")]  # fmt: skip
    assert len(late) == 1 and late[0] < ringing[-1]  # the SUBSCRIBE did not wait for the end
    assert sorted(n.call_id() for n in phone.notifies()) == sorted(
        [f"w{i}" for i in range(300)] + ["late"]
    )  # each once: no answer was lost, no NOTIFY repeated
    assert notifier.notifies_failed == 0


def test_answers_are_read_mid_fan_out_when_their_number_would_fill_the_buffer() -> None:
    handed, read_mid, phone, notifier = uvloop.run(_fan_out(40))
    assert read_mid >= 300 // (40 + FANOUT_SLICE)  # every 40 NOTIFYs, to the slice
    assert len(handed) == 301 and not any(handed)  # kept until the fan-out was done
    assert sorted(n.call_id() for n in phone.notifies() if n.call_id() != "late") == sorted(
        f"w{i}" for i in range(300)
    )
    assert notifier.notifies_failed == 0 and notifier.stats().notifies_in_flight == 0


async def _datagrams_per_turn(flood: int) -> list[int]:
    """``flood`` OPTIONS queued on the listener before it reads: how many it took in each turn
    of the event loop."""
    notifier, service = await udp_notifier(Keys())
    loop = asyncio.get_running_loop()
    turn, per_turn = 0, {}
    ticking = True

    def tick() -> None:
        nonlocal turn
        turn += 1
        if ticking:
            loop.call_soon(tick)

    handed = service.received_datagrams

    def counted(batch: list[tuple[bytes, Peer]]) -> None:
        per_turn[turn] = per_turn.get(turn, 0) + len(batch)
        handed(batch)

    service.received_datagrams = counted  # type: ignore[method-assign]
    port = notifier.contact("udp")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind((HOST, 0))
        for n in range(flood):  # queued before the loop runs a single callback
            phone.sendto(f"OPTIONS sip:{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:9;branch="
                         f"z9hG4bK-{n}\r\nFrom: <sip:p@x>;tag={n}\r\nTo: <sip:{HOST}>\r\n"
                         f"Call-ID: flood-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                         .encode(), (HOST, port))  # fmt: skip
        loop.call_soon(tick)
        try:
            await until(lambda: sum(per_turn.values()) >= flood)
        finally:
            ticking = False
            await service.close()
    return list(per_turn.values())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_flood_of_requests_is_read_a_batch_a_turn(loop: str) -> None:
    """However the loop hands datagrams over (uvloop: up to 32 a turn), one turn reads at most
    one batch from the socket, so that the answers, the AMI events and the timers get their
    turn in between."""
    run = uvloop.run if loop == "uvloop" else asyncio.run
    per_turn = run(_datagrams_per_turn(3000))
    assert sum(per_turn) == 3000
    assert max(per_turn) <= UDP_BATCH + 32, per_turn
    assert len(per_turn) >= 3000 // (UDP_BATCH + 32)
