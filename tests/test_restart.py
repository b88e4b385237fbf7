"""Restarting the bridge under live phones: SIGTERM, SIGKILL and SIGHUP, with SIPp watching.

The bridge runs as a real process (python -m bridge run) against the replayed Asterisk; a SIPp
watcher subscribed to 202 must go on receiving NOTIFYs in the same dialog across the restart,
never a terminated one, with CSeq and version only ever going up (by exactly one across a clean
stop).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from bridge_process import BridgeProcess
from lxml import etree
from sipp import SippWatcher, TracedMessage, free_port
from test_app import RINGING_202, collapsed, key_state

from bridge.demo.ami_server import RecordedAmiServer

AMI_REPLAY_SPEED = 4  # the shared server fixture (conftest.py) replays this fast


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text("# everything comes from --set\n")
    return path


def versions(notifies: list[TracedMessage]) -> list[int]:
    return [int(etree.fromstring(n.body).get("version")) for n in notifies if n.body]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_a_restart_keeps_every_subscription(
    server: RecordedAmiServer, config: Path, tmp_path: Path, how: signal.Signals
) -> None:
    sip_port = free_port()
    store = tmp_path / "subscriptions.sqlite3"
    first = BridgeProcess(config, sip_port, server.port, store)
    second = BridgeProcess(config, sip_port, server.port, store)
    try:
        await first.start()
        async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=4000) as watcher:
            await first.wait_for("subscribed to 202")
            await server.play("ring-cancel", until=RINGING_202)
            await first.wait_for("202: ringing")
            await asyncio.sleep(0.5)  # several store flushes: the crash finds the lease stored
            code = await first.end(how)
            assert code == (0 if how is signal.SIGTERM else -signal.SIGKILL), first.log
            await second.start()
            await second.wait_for("resumed 1 subscriptions")
            await second.wait_for("202: ringing")
            await server.play("ring-cancel")
            await second.wait_for("202: idle")
            result = await watcher.finish()
    finally:
        await first.close()
        await second.close()
    assert result.ok, result.output
    notifies = result.notifies
    assert all(
        (n.header("Subscription-State") or "").startswith("active;") for n in notifies
    ), "a phone was told its subscription ended"
    assert len({n.header("Call-ID") for n in notifies}) == 1
    assert len({n.header("From") for n in notifies}) == 1  # our tag: the same dialog
    cseqs, docs = [n.cseq for n in notifies], versions(notifies)
    assert cseqs == sorted(set(cseqs)) and docs == sorted(set(docs)), (cseqs, docs)
    if how is signal.SIGTERM:  # stored exactly: the next NOTIFY continues at +1
        assert cseqs == list(range(1, len(cseqs) + 1)), cseqs
        assert docs == list(range(len(docs))), docs
    # The first process's last NOTIFY and the second's first: one ringing key, then idle.
    assert collapsed([key_state(n) for n in notifies]) == ["idle", "early/recipient", "idle"]
    assert "Traceback" not in first.log + second.log


async def test_sighup_reloads_without_dropping_the_watcher(
    server: RecordedAmiServer, config: Path, tmp_path: Path
) -> None:
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "s.sqlite3")
    try:
        await bridge.start()
        async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=3000) as watcher:
            await bridge.wait_for("subscribed to 202")
            # Report outgoing calls as RFC 4235 does: the tracker is rebuilt from a resync.
            # The event loop cannot change under a running bridge: kept, and the log says so.
            # So cannot the [[led]] rules: kept too, and said (not "nothing changed").
            new = "[watch]\noutgoing_blinks = true\n[runtime]\nevent_loop = 'asyncio'\n" + (
                '[[led]]\nphone = "203"\nkey = 2\ndevice = "Custom:DND201"\n')  # fmt: skip
            await asyncio.to_thread(config.write_text, new)
            assert bridge.process is not None
            bridge.process.send_signal(signal.SIGHUP)
            await bridge.wait_for("reloaded: watch.outgoing_blinks")
            await bridge.wait_for("led[0], runtime.event_loop only change on a restart")
            await bridge.wait_for("in sync with Asterisk", count=2)
            await asyncio.to_thread(config.write_text, "[watch\nbroken")
            bridge.process.send_signal(signal.SIGHUP)
            await bridge.wait_for("reload refused")
            await server.play("outbound-from-202")
            await bridge.wait_for("202: idle")
            result = await watcher.finish()
        assert await bridge.end(signal.SIGTERM) == 0
    finally:
        await bridge.close()
    assert result.ok, result.output
    states = collapsed([key_state(n) for n in result.notifies])
    assert "early/initiator" in states, states  # the reloaded setting is in force
    assert all("active;" in (n.header("Subscription-State") or "") for n in result.notifies)


async def test_systemd_hears_ready_only_after_the_sync(
    server: RecordedAmiServer, config: Path, tmp_path: Path
) -> None:
    """Type=notify: READY=1 once Asterisk is in sync (the keys are right), STATUS before and
    after, STOPPING=1 on SIGTERM; here Asterisk takes a second to list its channels."""
    async def slow_channels(frame: Mapping[str, str]) -> None:
        if frame.get("Action") == "CoreShowChannels":
            await asyncio.sleep(1.0)

    server.before_answer = slow_channels
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    listener.bind(str(path))
    listener.setblocking(False)
    bridge = BridgeProcess(config, free_port(), server.port, tmp_path / "s.sqlite3")
    bridge.env = {"NOTIFY_SOCKET": str(path)}
    received: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def collect() -> None:
        while True:
            data = await loop.sock_recv(listener, 4096)
            received.append((loop.time(), data.decode()))

    collector = asyncio.create_task(collect())
    try:
        started = loop.time()
        await bridge.start()  # returns once the log says "in sync"
        await eventually_true(lambda: any("READY=1" in m for _, m in received))
        assert await bridge.end(signal.SIGTERM) == 0
        await eventually_true(lambda: any("STOPPING=1" in m for _, m in received))
    finally:
        collector.cancel()
        listener.close()
        await bridge.close()
    ready_at = next(t for t, m in received if "READY=1" in m)
    assert ready_at - started >= 1.0  # not before Asterisk had listed its channels
    first = received[0][1]
    assert first.startswith("STATUS=") and "waiting for Asterisk" in first
    assert "in sync with Asterisk" in next(m for _, m in received if "READY=1" in m)


async def eventually_true(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110  (datagrams arrive on another task)
            await asyncio.sleep(0.02)
