"""sd_notify over a real Unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.service import SystemdNotifier, keep_watchdog, watchdog_interval


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A listening datagram socket in $NOTIFY_SOCKET: the service manager's end."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_lifecycle_messages_arrive(manager: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert notifier.enabled
    assert notifier.ready(status="serving 3 extensions")
    assert received(manager) == "READY=1\nSTATUS=serving 3 extensions"
    assert notifier.status("asterisk lost\nretrying")
    assert received(manager) == "STATUS=asterisk lost retrying"  # one line, never two keys
    assert notifier.watchdog()
    assert received(manager) == "WATCHDOG=1"
    assert notifier.reloading()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", received(manager))
    assert notifier.stopping()
    assert received(manager) == "STOPPING=1"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(manager: socket.socket) -> None:
    notifier = SystemdNotifier()
    before = _monotonic_usec()
    notifier.reloading()
    usec = int(received(manager).split("MONOTONIC_USEC=")[1])
    assert before <= usec <= _monotonic_usec()


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"snom-blf-bridge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert SystemdNotifier().ready()
        assert received(sock) == "READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_vanished_manager_never_raises_and_is_logged_once(
    manager: socket.socket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier()
    assert notifier.ready()
    received(manager)
    manager.close()
    (tmp_path / "notify").unlink()
    with caplog.at_level(logging.WARNING, logger="bridge.service"):
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()


def test_unsupported_address_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert not notifier.ready()


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 15.0
    # Inherited from a parent: not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_keep_watchdog_pings_from_the_loop(
    manager: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")
    notifier = SystemdNotifier()
    interval = notifier.watchdog_interval()
    assert interval == 0.02
    manager.setblocking(False)
    task = asyncio.create_task(keep_watchdog(notifier, interval))
    await asyncio.sleep(0.15)
    pings = _drain(manager)
    assert len(pings) >= 3 and set(pings) == {"WATCHDOG=1"}
    # A blocked event loop sends nothing: that is how systemd notices a hung bridge.
    time.sleep(0.1)  # noqa: ASYNC251 - blocking the loop on purpose
    assert _drain(manager) == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Not asked for a watchdog: returns at once instead of pinging.
    await asyncio.wait_for(keep_watchdog(notifier, None), 1)


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out
