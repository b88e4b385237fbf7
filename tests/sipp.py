"""Run SIPp (`sipp`, Debian package sip-tester) as a BLF watcher from asyncio tests.

    async with SippWatcher("202", bridge=("127.0.0.1", port), transport="tcp") as watcher:
        ...  # the bridge runs in the same event loop meanwhile
        result = await watcher.finish()
    assert result.ok, result.output
    bodies = [n.body for n in result.notifies]

SIPp runs as an asyncio subprocess, so the loop is never blocked. Its message trace
(-trace_msg) is parsed here, independently of the bridge's own SIP parser, so tests do not
check the bridge with the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import string
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = [
    "SCENARIOS", "SippPhone", "SippResult", "SippWatcher", "TracedMessage", "free_port",
    "parse_trace",
]  # fmt: skip

SCENARIOS = Path(__file__).parent / "sipp"
_BLOCK_RE = re.compile(r"^-{20,} ?(.*)$", re.M)
_WHAT_RE = re.compile(r"(UDP|TCP) message (sent|received)")


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message from SIPp's trace: start line, headers (lower-case names), body."""

    direction: Literal["sent", "received"]
    transport: str
    start_line: str
    headers: dict[str, list[str]]
    body: bytes
    time: float | None  # when SIPp logged it (epoch seconds)
    raw: bytes

    def header(self, name: str) -> str | None:
        """First value of a header (full name, any case), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def method(self) -> str | None:
        """Request method, None for a response."""
        return None if self.start_line.startswith("SIP/2.0") else self.start_line.split(" ")[0]

    @property
    def status(self) -> int | None:
        """Response status, None for a request."""
        parts = self.start_line.split(" ")
        return int(parts[1]) if parts[0] == "SIP/2.0" else None

    @property
    def cseq(self) -> int:
        """CSeq number."""
        return int((self.header("CSeq") or "0").split()[0])


@dataclass
class SippResult:
    """What a finished SIPp run did."""

    returncode: int
    messages: list[TracedMessage]
    output: str = field(repr=False)

    @property
    def ok(self) -> bool:
        """SIPp counted its one call as successful."""
        return self.returncode == 0

    def received(self, method: str) -> list[TracedMessage]:
        """Every received request of a method, retransmissions included."""
        return [m for m in self.messages if m.direction == "received" and m.method == method]

    @property
    def notifies(self) -> list[TracedMessage]:
        """Received NOTIFYs without retransmissions (first copy of each Call-ID/CSeq)."""
        seen: set[tuple[str | None, int]] = set()
        out = []
        for message in self.received("NOTIFY"):
            key = (message.header("Call-ID"), message.cseq)
            if key not in seen:
                seen.add(key)
                out.append(message)
        return out


def parse_trace(text: bytes) -> list[TracedMessage]:
    """Parse a SIPp -trace_msg file (blocks between dashed lines)."""
    messages = []
    parts = _BLOCK_RE.split(text.decode("utf-8", "replace"))
    # split() alternates: text before the first line, then (timestamp, block) pairs.
    for stamp, block in zip(parts[1::2], parts[2::2], strict=True):
        what, _, raw = block.lstrip("\n").partition("\n")
        m = _WHAT_RE.search(what)
        if m is None or "Dead call" in what:
            continue
        raw = raw.lstrip("\r\n")
        head, _, rest = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get("content-length", ["0"])[0])
        body = rest.encode()[:length]
        direction: Literal["sent", "received"] = "sent" if m.group(2) == "sent" else "received"
        time = _stamp(stamp.strip())
        size = len(head) + 4 + len(body)
        messages.append(
            TracedMessage(
                direction, m.group(1).lower(), lines[0], headers, body, time, raw.encode()[:size]
            )
        )
    return messages


def free_port() -> int:
    """A loopback port free for both UDP and TCP right now (SIPp listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class SippWatcher:
    """One SIPp watcher call against the bridge (scenario tests/sipp/watcher.xml by default).

    Flags: silent (never answer NOTIFYs), refresh (refresh once after the first quiet
    period), unsubscribe (Expires: 0 at the end). SIPp ends after `idle_ms` without a NOTIFY
    in each listening phase; `timeout` bounds the whole run. `domain`: the host of the
    Request-URI and To (default: the address SIPp sends to), for a proxy routing by domain.
    """

    def __init__(
        self,
        resource: str,
        bridge: tuple[str, int],
        transport: Literal["udp", "tcp"] = "udp",
        *,
        expires: int = 600,
        idle_ms: int = 1500,
        silent: bool = False,
        refresh: bool = False,
        unsubscribe: bool = False,
        watcher: str = "203",
        scenario: Path = SCENARIOS / "watcher.xml",
        keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
        domain: str | None = None,
    ) -> None:
        self.resource = resource
        self.bridge = bridge
        self.transport = transport
        self.port = free_port()
        self.timeout = timeout
        self._flags = [name for name, on in (("silent", silent), ("refresh", refresh),
                       ("unsubscribe", unsubscribe)) if on]  # fmt: skip
        # The phone's identity (From user): an endpoint of the recorded PBX, which the default
        # pickup policy checks against the ringing endpoint's call group.
        self._keys = {"expires": str(expires), "watcher": watcher, **(keys or {})}
        self._template = string.Template(scenario.read_text())
        self._idle_ms = idle_ms
        self._hosts = {
            "ruri_host": domain or "[remote_ip]:[remote_port]",
            "to_host": domain or "[remote_ip]",
        }
        self._extra = list(extra_args)
        self._dir = tempfile.TemporaryDirectory(prefix="sipp-")
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start SIPp (returns at once; SIPp sends its SUBSCRIBE right away)."""
        workdir = Path(self._dir.name)
        scenario = workdir / "scenario.xml"
        scenario.write_text(self._template.safe_substitute(idle_ms=self._idle_ms, **self._hosts))
        args = ["-sf", str(scenario), f"{self.bridge[0]}:{self.bridge[1]}", "-s", self.resource]
        args += ["-i", "127.0.0.1", "-p", str(self.port), "-m", "1", "-nostdin"]
        args += ["-t", "t1" if self.transport == "tcp" else "u1"]
        args += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
        args += ["-timeout", f"{int(self.timeout)}s", "-timeout_error"]
        for name, value in self._keys.items():
            args += ["-key", name, value]
        for flag in self._flags:
            args += ["-set", flag, "1"]
        self._process = await asyncio.create_subprocess_exec(
            "sipp",
            *args,
            *self._extra,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def finish(self) -> SippResult:
        """Wait for SIPp to end by itself (killing it after `timeout`) and read its trace."""
        assert self._process is not None, "start() first"
        return await _finished(self._process, Path(self._dir.name), self.timeout)

    async def __aenter__(self) -> SippWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _ended(self._process)
        self._dir.cleanup()


class SippPhone:
    """SIPp as a phone that receives requests (scenario tests/sipp/led-phone.xml): it listens on
    ``port`` and ends after ``idle_ms`` without a request."""

    def __init__(
        self, *, idle_ms: int = 2000, status: int = 200, reason: str = "OK", timeout: float = 30
    ) -> None:
        self.port = free_port()
        self.timeout = timeout
        self._text = string.Template((SCENARIOS / "led-phone.xml").read_text()).safe_substitute(
            idle_ms=idle_ms, status=status, reason=reason
        )
        self._dir = tempfile.TemporaryDirectory(prefix="sipp-phone-")
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SippPhone:
        workdir = Path(self._dir.name)
        (workdir / "scenario.xml").write_text(self._text)
        args = ["-sf", "scenario.xml", "-i", "127.0.0.1", "-p", str(self.port), "-m", "1"]
        args += ["-nostdin", "-t", "u1", "-trace_msg", "-message_file", "messages.log"]
        args += ["-timeout", f"{int(self.timeout)}s"]
        self._process = await asyncio.create_subprocess_exec(
            "sipp", *args, cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await asyncio.sleep(0.2)  # SIPp binds its port before the bridge sends anything
        return self

    async def finish(self) -> SippResult:
        """Wait for SIPp to end by itself and read its trace."""
        assert self._process is not None
        return await _finished(self._process, Path(self._dir.name), self.timeout)

    async def __aexit__(self, *exc: object) -> None:
        await _ended(self._process)
        self._dir.cleanup()


async def _finished(process: asyncio.subprocess.Process, workdir: Path, limit: float) -> SippResult:
    """SIPp's result once it ends by itself (killed ``limit`` + 5 s on), with its trace."""
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit + 5)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    trace = workdir / "messages.log"
    messages = parse_trace(trace.read_bytes()) if trace.exists() else []
    code = process.returncode
    return SippResult(-1 if code is None else code, messages, output.decode())


async def _ended(process: asyncio.subprocess.Process | None) -> None:
    """Kill SIPp if it still runs, and reap it."""
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _stamp(text: str) -> float | None:
    """A trace block's time: SIPp writes a date, the recordings' own-blf logs epoch seconds."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None
