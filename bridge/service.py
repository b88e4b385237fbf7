"""systemd integration without libsystemd: sd_notify datagrams and the watchdog.

Everything is a no-op when the bridge does not run under systemd ($NOTIFY_SOCKET unset), and a
failing notification never raises: the bridge's work matters more than the service manager's
bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("bridge.service")

# A send may block while systemd's receive queue is full; never let that stall the event loop
# for long (a lost WATCHDOG=1 is cheaper than a frozen bridge).
SEND_TIMEOUT = 1.0


def _socket_address(value: str) -> str | None:
    """The AF_UNIX address of $NOTIFY_SOCKET: a path, or '@name' for the abstract namespace."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a transport we do not speak (vsock:, …)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 pings: half of $WATCHDOG_USEC, None when not asked."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    # The variables are inherited by children: only the process systemd named must ping.
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2_000_000


class SystemdNotifier:
    """Sends sd_notify(3) state changes to the service manager, when there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw)
        self._interval = watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failing = False
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%s: unsupported address, systemd will not be told", raw)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two watchdog pings (half of WatchdogSec=), None when not asked."""
        return self._interval if self.enabled else None

    def ready(self, status: str | None = None) -> bool:
        """Startup or reload finished."""
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status``."""
        return self.send(*_status(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; ``ready()`` ends it. MONOTONIC_USEC lets systemd 253+ match the two."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began."""
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """The process is alive and its event loop turns."""
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str) -> bool:
        """Send raw ``KEY=value`` assignments in one datagram; True when it went out."""
        if self._address is None or not assignments:
            return False
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT)
                try:
                    sock.connect(self._address)
                except OSError:
                    sock.close()
                    raise
                self._socket = sock
            self._socket.send("\n".join(assignments).encode())
        except OSError as exc:
            self.close()  # reconnect next time: systemd may have been re-executed
            if not self._failing:
                log.warning("cannot notify systemd (%s); will keep trying quietly", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
            self._failing = False
        return True

    def close(self) -> None:
        """Close the socket (the next send opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would end the assignment and start a bogus one.
    return ("STATUS=" + " ".join(text.splitlines()),)


async def keep_watchdog(notifier: SystemdNotifier, interval: float | None) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled; returns at once when
    ``interval`` is None. Runs on the event loop on purpose: a blocked loop stops the pings
    and systemd restarts the bridge."""
    if interval is None or interval <= 0:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


READY_WAIT = 30.0  # seconds to wait for the first sync before telling systemd we are up


async def tell_systemd(notifier: SystemdNotifier, synced: asyncio.Event,
                       line: Callable[[], str]) -> None:  # fmt: skip
    """READY=1 once the source has synced (the keys are right) or, without Asterisk, after
    READY_WAIT: the bridge still serves what it knows. Then a STATUS ``line()`` now and then."""
    notifier.status(line())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(synced.wait(), READY_WAIT)
    notifier.ready(line())
    while True:
        await asyncio.sleep(10)
        notifier.status(line())
