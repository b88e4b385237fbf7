"""TCP and TLS connections as a stranger would abuse them, over real loopback sockets, on uvloop
and on the standard loop: connection caps, the allow-list at accept, header and idle timeouts,
413 and 400 with a quiet log, failed TLS handshakes, and the memory of unfinished messages.

Each test runs its scenario on the loop it names (asyncio.Runner), as the bridge does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import resource
import socket
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from test_app import eventually
from test_sip_transport import Bridge, _bridge

from bridge.event_loop import choose_event_loop
from bridge.sip.access import AccessLimits, SourceGate, StreamLimits

LOOPS = ["uvloop", "asyncio"]
SLACK = 0.01  # uvloop keeps time in whole milliseconds
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def on_loop(loop: str, scenario: Callable[[], Awaitable[None]]) -> None:
    factory, _ = choose_event_loop(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())  # type: ignore[arg-type]


@asynccontextmanager
async def running(limits: StreamLimits, **options: Any) -> AsyncIterator[Bridge]:
    bridge = await _bridge(limits=limits, **options)
    try:
        yield bridge
    finally:
        await bridge.service.close()


def options(n: int = 1, transport: str = "TCP", extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:202@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-s{n};rport\r\n"
        f"From: <sip:203@127.0.0.1>;tag=s\r\nTo: <sip:202@127.0.0.1>\r\nCall-ID: streams-{n}\r\n"
        f"CSeq: {n} OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


async def answered(stream: Stream, n: int = 1) -> bool:
    """Whether the bridge answers an OPTIONS on this connection (it is open and served)."""
    reader, writer = stream
    writer.write(options(n))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head.startswith(b"SIP/2.0 200 OK\r\n")


async def to_the_end(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the bridge sends until it closes the connection (a reset counts as a close)."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return b""


async def refused(
    address: tuple[str, int], tls: ssl.SSLContext | None = None, send: bytes = b""
) -> bool:
    """Whether a new connection is closed by the bridge before a single byte is answered."""
    try:
        reader, writer = await asyncio.open_connection(*address, ssl=tls)
    except (ConnectionResetError, ssl.SSLError):
        return True  # the reset came before the connection (or its TLS handshake) was done
    try:
        writer.write(send)
        return await to_the_end(reader) == b""
    finally:
        writer.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("setting", ["max_connections", "max_connections_per_source"])
@pytest.mark.parametrize("loop", LOOPS)
def test_the_connection_past_a_cap_is_refused_at_once(
    loop: str, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    other = "max_connections" if setting != "max_connections" else "max_connections_per_source"

    async def scenario() -> None:
        async with running(StreamLimits(**{setting: 3, other: 0})) as bridge:  # type: ignore[arg-type]
            address, streams = bridge.address("tcp"), bridge.service.streams
            admitted = [await asyncio.open_connection(*address) for _ in range(3)]
            for i, stream in enumerate(admitted):
                assert await answered(stream, i)
            for _ in range(3):
                assert await refused(address)
            assert streams.open_total == 3
            admitted[0][1].close()  # one leaves: the next one is welcome again
            await eventually(lambda: streams.open_total == 2)
            admitted[0] = await asyncio.open_connection(*address)
            assert await answered(admitted[0], 9)
            for _, writer in admitted:
                writer.close()

    on_loop(loop, scenario)
    (line,) = lines(caplog, "refusing TCP connections from 127.0.0.1")  # once, not per refusal
    assert f"sip.{setting} (3) reached" in line


@pytest.mark.parametrize("loop", LOOPS)
def test_a_source_outside_the_allow_list_is_cut_off_before_anything_is_read(
    loop: str, caplog: pytest.LogCaptureFixture, certificate: tuple[Path, Path]
) -> None:
    caplog.set_level(logging.INFO)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    client.check_hostname = False
    gate = SourceGate(AccessLimits(allow=(ipaddress.ip_network("10.0.0.0/8"),)))

    async def scenario() -> None:
        tls_options = {"tls_addrs": [("127.0.0.1", 0)], "tls": server}
        async with running(StreamLimits(), gate=gate, **tls_options) as bridge:
            tls_address = bridge.service.tls[0].sockets[0].getsockname()[:2]
            for _ in range(3):
                # Not even answered 403: nothing is read. Over TLS, no handshake either.
                assert await refused(bridge.address("tcp"), send=options())
                assert await refused(tls_address, client)
            assert bridge.service.streams.open_total == 0
            assert bridge.notifier.stats().server_transactions == 0

    on_loop(loop, scenario)
    assert len(lines(caplog, "from 127.0.0.1: not in security.allow")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("loop", LOOPS)
def test_silent_and_slow_connections_are_closed_at_the_header_timeout(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    timeout = 0.3

    async def scenario() -> None:
        clock = asyncio.get_running_loop().time
        async with running(StreamLimits(header_timeout=timeout, idle_timeout=60)) as bridge:
            address = bridge.address("tcp")
            reader, writer = await asyncio.open_connection(*address)
            opened = clock()
            assert await to_the_end(reader) == b""  # said nothing at all
            assert clock() - opened >= timeout - SLACK
            writer.close()

            reader, writer = await asyncio.open_connection(*address)
            assert await answered((reader, writer))  # a real message first: then one byte
            message = options(2)  # every 50 ms (slowloris) would take 7 s for the next
            closed = asyncio.ensure_future(to_the_end(reader))
            started, sent = clock(), 0
            while not closed.done() and sent < len(message):
                writer.write(message[sent : sent + 1])
                sent += 1
                await asyncio.wait([closed], timeout=0.05)
            assert await closed == b"" and sent < len(message)
            assert clock() - started >= timeout - SLACK
            writer.close()
            await eventually(lambda: bridge.service.streams.open_total == 0)

    on_loop(loop, scenario)
    assert len(lines(caplog, "no whole message within sip.header_timeout (0.3 s)")) == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_connection_is_closed_but_keep_alives_hold_it(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    idle = 0.3

    async def scenario() -> None:
        clock = asyncio.get_running_loop().time
        async with running(StreamLimits(idle_timeout=idle, header_timeout=10)) as bridge:
            reader, writer = await asyncio.open_connection(*bridge.address("tcp"))
            assert await answered((reader, writer))
            for _ in range(6):  # 0.6 s of RFC 5626 keep-alives, twice the idle timeout
                writer.write(b"\r\n\r\n")
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
                await asyncio.sleep(idle / 3)
            assert await answered((reader, writer), 2)
            quiet = clock()
            assert await to_the_end(reader) == b""
            assert clock() - quiet >= idle - SLACK
            writer.close()

    on_loop(loop, scenario)
    assert len(lines(caplog, "idle for sip.idle_timeout (0.3 s)")) == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_too_large_is_413_other_framing_errors_400_and_the_log_stays_short(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = options(1).removesuffix(b"Content-Length: 0\r\n\r\n")
    sent = {
        b"SIP/2.0 413 Request Entity Too Large (message exceeds the size limit)\r\n":
            head + b"Content-Length: 5000\r\n\r\n",
        b"SIP/2.0 413 Request Entity Too Large (headers exceed the size limit)\r\n":
            head + b"X-Pad: y\r\n" * 400,
        b"SIP/2.0 400 Bad Request (missing Content-Length on a stream)\r\n": head + b"\r\n",
    }  # fmt: skip

    async def scenario() -> None:
        async with running(StreamLimits(), max_message=2048) as bridge:
            for _ in range(2):  # twice each: the log must not say it twice
                for expected, data in sent.items():
                    reader, writer = await asyncio.open_connection(*bridge.address("tcp"))
                    writer.write(data)
                    answer = await to_the_end(reader)
                    assert answer.startswith(expected), answer
                    assert b"\r\nCall-ID: streams-1\r\n" in answer
                    writer.close()
            await eventually(lambda: bridge.service.streams.open_total == 0)

    on_loop(loop, scenario)
    assert len(lines(caplog, "closing the connection from tcp:127.0.0.1:")) == 1
    assert not lines(caplog, "OPTIONS from")  # the notifier's per-answer line is not reached


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_garbage_and_stalled_handshakes_end_quietly(
    loop: str, caplog: pytest.LogCaptureFixture, certificate: tuple[Path, Path]
) -> None:
    caplog.set_level(logging.DEBUG)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    client.check_hostname = False

    async def scenario() -> None:
        limits = StreamLimits(header_timeout=0.3)
        async with running(limits, tls_addrs=[("127.0.0.1", 0)], tls=server) as bridge:
            address = bridge.service.tls[0].sockets[0].getsockname()[:2]
            for garbage in (b"OPTIONS sip:x SIP/2.0\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
                reader, writer = await asyncio.open_connection(*address)
                writer.write(garbage)  # b"": a handshake that never starts
                assert await to_the_end(reader) == b""
                writer.close()
            reader, writer = await asyncio.open_connection(*address, ssl=client)
            assert await answered((reader, writer))  # the listener still serves
            writer.close()
            await eventually(lambda: bridge.service.streams.open_total == 0)

    on_loop(loop, scenario)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]
    assert lines(caplog, "closed during the handshake")


@pytest.mark.parametrize("loop", LOOPS)
def test_unfinished_messages_are_let_go_when_their_connections_close(loop: str) -> None:
    count, half = 1000, b"SUBSCRIBE sip:202@127.0.0.1 SIP/2.0\r\n" + b"X-Pad: y\r\n" * 800
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * count + 200  # both ends of every connection live in this process
    if soft < need and (hard != resource.RLIM_INFINITY and hard < need):
        pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
    figures: dict[str, int] = {}

    async def scenario() -> None:
        limits = StreamLimits(max_connections=0, max_connections_per_source=0)
        async with running(limits, max_message=16384) as bridge:
            loop = asyncio.get_running_loop()
            streams = bridge.service.streams
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            socks = []
            for _ in range(count):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, bridge.address("tcp"))
                await loop.sock_sendall(sock, half)
                socks.append(sock)
            pending = lambda: sum(s.framer.pending for s in streams.by_peer.values())  # noqa: E731
            await eventually(lambda: pending() == count * len(half), within=30)
            figures["held"] = tracemalloc.get_traced_memory()[0] - base
            for sock in socks:
                sock.close()
            del socks
            await eventually(lambda: streams.open_total == 0, within=30)
            await asyncio.sleep(0.1)  # the loop drops its last references to the transports
            figures["after"] = tracemalloc.get_traced_memory()[0] - base
            gc.collect()
            figures["collected"] = tracemalloc.get_traced_memory()[0] - base

    with contextlib.ExitStack() as undo:
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            undo.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        gc.disable()  # given back by reference counting alone, not by a later collection
        undo.callback(gc.enable)
        tracemalloc.start()
        undo.callback(tracemalloc.stop)
        on_loop(loop, scenario)
    print(f"{loop}: {count} unfinished {len(half)}-byte heads held {figures['held'] >> 10} KiB, "
          f"after they closed {figures['after'] >> 10} KiB, after a collection "
          f"{figures['collected'] >> 10} KiB")  # fmt: skip
    assert figures["held"] >= count * len(half)
    # The buffers go with the connections. What the standard loop still holds (about 1.4 KiB a
    # connection: its closed transports, in reference cycles) waits for the cycle collector.
    assert figures["after"] < count * len(half) // 4
    assert figures["collected"] < count * len(half) // 20


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_reads_nothing_is_cut_off(
    loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    monkeypatch.setattr("bridge.sip.streams.WRITE_BACKLOG", 256 << 10)
    requests = b"".join(options(n) for n in range(1, 20001))  # 5 MB asking for 6 MB of answers

    async def scenario() -> None:
        async with running(StreamLimits()) as bridge:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and reads none of it
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, bridge.address("tcp"))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await asyncio.wait_for(loop.sock_sendall(sock, requests), 30)
            await eventually(lambda: bridge.service.streams.open_total == 0, within=30)
            sock.close()

    on_loop(loop, scenario)
    assert len(lines(caplog, ": it reads nothing (")) == 1
