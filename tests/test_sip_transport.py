"""The asyncio glue over real loopback sockets, with SIPp playing the phone."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest
from sipp import SippWatcher, free_port

from bridge.sip.access import SourceGate
from bridge.sip.message import Request, Response, StreamFramer, build_response
from bridge.sip.notifier import Notifier, NotifierSettings, Peer
from bridge.sip.transport import SipService, start_sip


class Doc:
    def __init__(self, state: str) -> None:
        self.state = state
        self.prefix = b'<dialog-info version="'
        self.suffix = f'" state="{state}"/>'.encode()

    def body(self, version: int) -> bytes:
        return self.prefix + str(version).encode() + self.suffix


class Source:
    def __init__(self) -> None:
        self.states = {"202": "idle"}

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        return user

    def knows(self, resource: str) -> bool:
        return resource in self.states

    def document(self, resource: str, watcher: str) -> Doc:
        return Doc(self.states[resource])


class ObservedNotifier(Notifier):
    """The real Notifier; a test can await a condition on its state, checked after each input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def receive(self, message: bytes | Request | Response, peer: Peer, now: float) -> None:
        super().receive(message, peer, now)
        self._wake()

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self._wake()

    def _wake(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once predicate() holds (fails the test after 10 s)."""
        if predicate():
            return
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(10):
                await entry[1]
        finally:
            self._waiters.remove(entry)

    def idle_with(self, subscriptions: int) -> Callable[[], bool]:
        """Predicate: that many subscriptions and no NOTIFY waiting for an answer."""
        return lambda: (self.stats().subscriptions, self.stats().notifies_in_flight) == (
            subscriptions, 0
        )  # fmt: skip


class Bridge:
    def __init__(self, notifier: ObservedNotifier, service: SipService, source: Source) -> None:
        self.notifier, self.service, self.source = notifier, service, source

    def address(self, transport: str) -> tuple[str, int]:
        return self.notifier.contact(transport)

    def change(self, state: str) -> None:
        self.source.states["202"] = state
        self.service.resource_changed("202")


async def _bridge(t1: float = 0.5, gate: SourceGate | None = None, **options: Any) -> Bridge:
    """A notifier on real loopback sockets; ``options`` go to start_sip (limits, tls, ...)."""
    source = Source()
    contacts = {"udp": ("127.0.0.1", 0), "tcp": ("127.0.0.1", 0), "tls": ("127.0.0.1", 0)}
    notifier = ObservedNotifier(
        source, NotifierSettings(contacts=contacts, t1=t1, t2=8 * t1), gate=gate
    )
    service = await start_sip(notifier, [("127.0.0.1", 0)], [("127.0.0.1", 0)], **options)
    return Bridge(notifier, service, source)


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    b = await _bridge()
    yield b
    await b.service.close()


@pytest.fixture
async def fast_bridge() -> AsyncIterator[Bridge]:
    """T1 = 50 ms, so retransmissions give up after 3.2 s instead of 32 s."""
    b = await _bridge(t1=0.05)
    yield b
    await b.service.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_subscribes_sees_changes_refreshes_and_unsubscribes(
    bridge: Bridge, transport: Literal["udp", "tcp"]
) -> None:
    n = bridge.notifier
    async with SippWatcher(
        "202", bridge.address(transport), transport, idle_ms=1000, refresh=True, unsubscribe=True
    ) as watcher:
        await n.until(n.idle_with(subscriptions=1))  # the first NOTIFY was answered
        (peer,) = (w.peer for w in n.watchers("202"))
        assert peer == Peer(transport, "127.0.0.1", watcher.port)
        bridge.change("early")
        result = await watcher.finish()
    assert result.ok, result.output
    notifies = result.notifies
    assert [m.body for m in notifies] == [
        b'<dialog-info version="0" state="idle"/>',
        b'<dialog-info version="1" state="early"/>',  # the change
        b'<dialog-info version="2" state="early"/>',  # after the refresh
        b'<dialog-info version="3" state="early"/>',  # the final one
    ]
    assert [m.cseq for m in notifies] == [1, 2, 3, 4]
    states = [m.header("Subscription-State") or "" for m in notifies]
    assert states[0] == "active;expires=600" and states[2].startswith("active;expires=")
    assert states[3] == "terminated;reason=timeout"
    assert {m.transport for m in result.messages} == {transport}
    assert all(m.header("Event") == "dialog" for m in notifies)
    await n.until(n.idle_with(subscriptions=0))


async def test_silent_watcher_gets_retransmissions_then_is_dropped(fast_bridge: Bridge) -> None:
    n = fast_bridge.notifier
    async with SippWatcher("202", fast_bridge.address("udp"), silent=True, idle_ms=1500) as watcher:
        await n.until(lambda: n.stats().subscriptions == 1)
        await n.until(n.idle_with(subscriptions=0))  # gave up after 3*T1 = 0.15 s
        result = await watcher.finish()
    assert result.ok, result.output
    copies = result.received("NOTIFY")
    assert len(result.notifies) == 1  # no final NOTIFY after a timeout, no new ones
    assert len({m.raw for m in copies}) == 1  # retransmissions are byte-identical
    # Its address never answered a NOTIFY (a SUBSCRIBE's source may be forged): sent at 0 and
    # T1 only. The full RFC 3261 schedule, for an address that has answered, is tested with a
    # fake clock in test_sip_notifier.py.
    assert len(copies) == 2
    times = [m.time for m in copies]
    assert None not in times
    gaps = [b - a for a, b in itertools.pairwise(times)]  # type: ignore[operator]
    assert 0.03 < gaps[0] < 0.2


async def test_tcp_notify_reopens_a_closed_connection(bridge: Bridge) -> None:
    n, host_port = bridge.notifier, bridge.address("tcp")
    port = free_port()
    # The phone closes first, leaving its port in TIME_WAIT; SO_REUSEADDR on both sockets lets
    # the test listen on that port again (as a real phone listens on its Contact port).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, host_port)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(_subscribe(port))
    ok, notify = await _read(reader, 2)
    assert isinstance(ok, Response) and ok.status == 200
    writer.write(build_response(notify, 200).to_bytes())  # type: ignore[arg-type]
    await n.until(n.idle_with(subscriptions=1))
    closed = asyncio.Event()
    bridge.service.on_disconnect = lambda peer: closed.set()
    writer.close()
    await asyncio.wait_for(closed.wait(), 5)  # the bridge saw the close
    assert Peer("tcp", "127.0.0.1", port) not in bridge.service.connections()

    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", port)
    async with server:
        bridge.change("early")
        reader2, writer2 = await asyncio.wait_for(accepted.get(), 5)
        (again,) = await _read(reader2, 1)
        assert isinstance(again, Request) and again.cseq().seq == 2
        assert again.body == b'<dialog-info version="1" state="early"/>'
        writer2.write(build_response(again, 200).to_bytes())
        await n.until(n.idle_with(subscriptions=1))
        writer2.close()


async def test_tcp_keepalive_pong_and_garbage_closes(bridge: Bridge) -> None:
    reader, writer = await asyncio.open_connection(*bridge.address("tcp"))
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    writer.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
    # No Content-Length on a stream: told why, then the connection is closed.
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"SIP/2.0 400 Bad Request (missing Content-Length on a stream)\r\n")
    writer.close()


async def test_tcp_garbage_without_a_request_line_is_closed_without_answer(
    bridge: Bridge,
) -> None:
    reader, writer = await asyncio.open_connection(*bridge.address("tcp"))
    writer.write(b"\x16\x03\x01 this is TLS or noise\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_oversized_datagrams_are_dropped_with_one_log_line(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        options = _subscribe(sock.getsockname()[1], "UDP").replace(b"SUBSCRIBE", b"OPTIONS")
        big = options.replace(b"Content-Length: 0", b"X-Pad: " + b"x" * 17000)
        for _ in range(50):
            sock.sendto(big, bridge.address("udp"))
        sock.sendto(options, bridge.address("udp"))
        # Datagrams are handled in order: when OPTIONS is answered, the big ones were seen.
        answer = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
    assert answer.startswith(b"SIP/2.0 200 OK") and b"CSeq: 1 OPTIONS" in answer
    dropped = [r.getMessage() for r in caplog.records if "datagram" in r.getMessage()]
    assert len(dropped) == 1 and "over sip.max_message_size" in dropped[0], dropped


def _subscribe(port: int, transport: str = "TCP") -> bytes:
    return (
        f"SUBSCRIBE sip:202@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK-t1;rport\r\n"
        f"From: <sip:203@127.0.0.1>;tag=t\r\nTo: <sip:202@127.0.0.1>\r\nCall-ID: tcp-1\r\n"
        f"CSeq: 1 {'SUBSCRIBE' if transport == 'TCP' else 'OPTIONS'}\r\n"
        f"Contact: <sip:203@127.0.0.1:{port};transport=tcp>\r\nEvent: dialog\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def _read(reader: asyncio.StreamReader, count: int) -> list[Request | Response]:
    framer, messages = StreamFramer(), list[Request | Response]()
    async with asyncio.timeout(5):
        while len(messages) < count:
            messages += framer.feed(await reader.read(4096))
    return messages


class _DueAt(Notifier):
    """A notifier whose next deadline the test sets (``due``): the glue's timer is what is
    tested here."""

    due: float | None = None
    fired = 0

    def next_timer(self) -> float | None:
        return self.due

    def handle_timer(self, now: float) -> None:
        self.fired += 1
        self.due = None
        super().handle_timer(now)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_deadline_due_at_once_is_rearmed_and_run_on_each_loop(loop: str) -> None:
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def main() -> int:
        notifier = _DueAt(Source())
        service = await start_sip(notifier, [("127.0.0.1", 0)], [])
        try:
            clock = asyncio.get_running_loop().time
            notifier.due = clock()  # uvloop answers call_at() with a bare Handle for this
            service.flush()
            notifier.due = clock() + 60  # moved: the old timer must go, whatever it is
            service.flush()
            notifier.due = clock()
            service.flush()
            await asyncio.sleep(0.05)
            return notifier.fired
        finally:
            await service.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main()) == 1
