"""The real process (``python -m bridge run``) over UDP, TCP and TLS, on uvloop and on the
standard loop: a phone subscribes, a replayed Asterisk rings 202, the phone sees the ringing call
with its pickup ids. Over TCP and TLS the phone then drops its connection, and the bridge must
dial the port of its Contact to deliver the next NOTIFY.

SIPp plays the phone over UDP and TCP; over TLS (Debian's SIPp is built without it) and for the
dropped connection a raw-socket phone does (tests/stream_phone.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import sys
from pathlib import Path
from typing import Literal

import pytest
from bridge_process import BridgeProcess
from lxml import etree
from sipp import SippWatcher, free_port
from stream_phone import SipMessage, StreamPhone
from test_app import NS, RINGING_202, SCHEMA

from bridge.demo.ami_server import RecordedAmiServer

LOOPS = ["uvloop", "asyncio"]
SHIPPED = Path(__file__).parent.parent / "etc" / "snom-blf-bridge.toml"
OPTIONS = (
    b"OPTIONS sip:202@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-o1\r\n"
    b"From: <sip:203@127.0.0.1>;tag=o\r\nTo: <sip:202@127.0.0.1>\r\nCall-ID: fds-1\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


AMI_REPLAY_SPEED = 4  # the shared server fixture (conftest.py) replays this fast


def pickable(body: bytes) -> list[etree._Element]:
    """The ringing dialogs of a dialog-info body that carry pickup ids (schema checked)."""
    doc = etree.fromstring(body)
    SCHEMA.assertValid(doc)
    found: list[etree._Element] = doc.xpath(
        "d:dialog[@call-id][@local-tag][@remote-tag][d:state='early']", namespaces=NS
    )
    return found


async def until_ringing(phone: StreamPhone, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> SipMessage:  # fmt: skip
    """Answer NOTIFYs on a connection until one shows 202 ringing with its pickup ids."""
    while not pickable((notify := await phone.notify(reader, writer)).body):
        pass
    return notify


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("loop", LOOPS)
async def test_a_phone_sees_a_ringing_call_over_each_transport_on_each_loop(
    server: RecordedAmiServer,
    tmp_path: Path,
    certificate: tuple[Path, Path],
    loop: str,
    transport: Literal["udp", "tcp", "tls"],
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("# everything comes from --set\n")
    sip_port, tls_port = free_port(), free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "store.sqlite3")
    cert, key = certificate
    bridge.args += [
        "--set", f"runtime.event_loop={loop}", "--set", f'sip.tls=["127.0.0.1:{tls_port}"]',
        "--set", f"sip.tls_certificate={cert}", "--set", f"sip.tls_key={key}",
    ]  # fmt: skip
    port = tls_port if transport == "tls" else sip_port
    try:
        await bridge.start()
        assert f"event loop: {loop}" in bridge.log
        if transport != "tls":
            async with SippWatcher("202", ("127.0.0.1", port), transport, idle_ms=1500) as sipp:
                await bridge.wait_for("subscribed to 202")
                await server.play("pickup-replaces", until=RINGING_202)
                result = await sipp.finish()
            assert result.ok, result.output
            assert {m.transport for m in result.messages} == {transport}
            assert any(pickable(n.body) for n in result.notifies)
        if transport != "udp":
            phone = StreamPhone(("127.0.0.1", port), transport, certificate=certificate)
            async with phone:
                _, own_port = await phone.connect()
                phone.subscribe()
                assert phone.reader is not None and phone.writer is not None
                first = await phone.notify(phone.reader, phone.writer)
                phone.hang_up()
                # The close reaches the bridge in well under a millisecond on loopback; the
                # pause only keeps the next NOTIFY from racing it.
                await asyncio.sleep(0.3)
                scenario = "ring-cancel" if transport == "tcp" else "pickup-replaces"
                await server.play(scenario, until=RINGING_202)
                reader, writer = await asyncio.wait_for(phone.dialed.get(), 5)
                again = await until_ringing(phone, reader, writer)
            assert phone.contact_port != own_port  # the Contact was dialed, not the old source
            assert again.header("Call-ID") == first.header("Call-ID") == phone.call_id
            assert (again.header("Via") or "").startswith(f"SIP/2.0/{transport.upper()} ")
            cseqs = [int((m.header("CSeq") or "").split()[0]) for m in (first, again)]
            assert cseqs[1] > cseqs[0]
        assert await bridge.end(signal.SIGTERM) == 0, bridge.log
    finally:
        await bridge.close()
    assert "Traceback" not in bridge.log
    assert " ERROR " not in bridge.log, bridge.log


def _few_descriptors() -> None:
    """In the bridge's process before exec: 160 descriptors, and no way to raise them."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


@pytest.mark.parametrize("loop", LOOPS)
async def test_running_out_of_descriptors_is_logged_once_and_survived(
    tmp_path: Path, loop: str
) -> None:
    port = free_port()
    listen = f'["127.0.0.1:{port}"]'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(SHIPPED),
        "--set", f"sip.udp={listen}", "--set", f"sip.tcp={listen}", "--set", "web.listen=",
        "--set", f"store.path={tmp_path / 's.sqlite3'}", "--set", f"runtime.event_loop={loop}",
        "--set", "sip.max_connections=0", "--set", "sip.max_connections_per_source=0",
        stderr=asyncio.subprocess.PIPE, preexec_fn=_few_descriptors,
    )  # fmt: skip
    assert process.stderr is not None
    started: list[bytes] = []
    try:
        async with asyncio.timeout(10):
            while line := await process.stderr.readline():
                started.append(line)
                if b"listening for SUBSCRIBEs" in line:
                    break
        rest = asyncio.ensure_future(process.stderr.read())
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        await asyncio.sleep(1.5)  # the bridge takes what it can, rests a second, tries again
        for _, writer in held:
            writer.close()
        for _ in range(30):  # served again once the descriptors are back
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(OPTIONS)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
                writer.close()
                assert head.startswith(b"SIP/2.0 200 OK\r\n")
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the bridge never served a connection again")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()
    log = b"".join(started).decode() + (await rest).decode()
    assert process.returncode == 0, log
    assert log.count("cannot accept TCP connections: Too many open files") == 1, log
    assert "sip.max_connections is 0 (no limit) while the process may open 160 files" in log
    assert "Traceback" not in log and " ERROR " not in log.replace(
        " ERROR bridge.sip: cannot accept", ""), log  # fmt: skip
