"""``python -m benchmarks.attacks``: the attacks of issue 14 against the real bridge, one table.

Each attack gets a bridge process of its own (``python -m bridge run --demo``, loopback only,
default settings unless the attack needs others) and a bounded number of packets from
127.0.0.x addresses. Nothing passes or fails; per attack the table says what was sent, what came
back to the attacking address (bytes and the ratio: an amplifier sends back many times what it
got), the bridge's peak resident memory (VmHWM) and its memory when the attack was over, the log
lines the bridge wrote meanwhile, and whether a fresh phone at 127.0.0.1 still subscribed and got
its first NOTIFY within a second, during the attack and after it.

``--root DIR`` runs the bridge of another checkout (for a before/after comparison); the
attacking side is always this one. ``--only NAME`` runs one attack. The whole run takes about
two minutes; the two amplification attacks wait out the 32 s a NOTIFY may be retransmitted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.soak import free_port, rss_mib
from bridge.sip.digest import answer as digest_answer

HOST = "127.0.0.1"
RESOURCE = "202"  # an extension of the demo PBX
PASSWORDS = {"203": "pw-203-secret", "206": "pw-206-secret"}
RETRANSMISSION_WAIT = 34.0  # 64*T1 = 32 s, and a little


@dataclass(slots=True)
class Row:
    """One attack's figures."""

    attack: str
    sent: str = ""
    got: str = ""
    ratio: str = ""
    rss_peak: float = 0.0
    rss_after: float = 0.0
    log_lines: int = 0
    during: str = "-"
    after: str = "-"
    note: str = ""


@dataclass(slots=True)
class Counter:
    """Bytes and packets one attacking socket sent and received."""

    sent_bytes: int = 0
    sent_packets: int = 0
    got_bytes: int = 0
    got_packets: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def ratio(self) -> str:
        return f"{self.got_bytes / self.sent_bytes:.1f}x" if self.sent_bytes else "-"


class Attacker:
    """A UDP socket on one loopback address that sends and counts what comes back (without
    ever answering: it stands for a forged source address)."""

    def __init__(self, host: str, bridge: tuple[str, int], counter: Counter) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.bridge = bridge
        self.counter = counter

    def send(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError):
            self.sock.sendto(data, self.bridge)
            self.counter.sent_bytes += len(data)
            self.counter.sent_packets += 1

    def drain(self) -> list[bytes]:
        got: list[bytes] = []
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return got
            self.counter.got_bytes += len(data)
            self.counter.got_packets += 1
            if data.startswith(b"SIP/2.0 "):
                code = int(data[8:11])
                self.counter.statuses[code] = self.counter.statuses.get(code, 0) + 1
            got.append(data)

    def close(self) -> None:
        self.sock.close()


def subscribe(
    host: str,
    port: int,
    *,
    user: str = "203",
    expires: int = 600,
    call_id: str = "",
    from_tag: str = "",
    to_tag: str = "",
    cseq: int = 1,
    extra: str = "",
    resource: str = RESOURCE,
    contact: str = "",
) -> bytes:
    """A SUBSCRIBE as a Snom sends it (about 370 bytes); ``contact``: user@host:port claimed in
    From and Contact instead of the sender's own."""
    claimed_user = contact.partition("@")[0] if contact else user
    to = f"<sip:{resource}@pbx.test>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"SUBSCRIBE sip:{resource}@pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"From: <sip:{claimed_user}@pbx.test>;tag={from_tag or secrets.token_hex(5)}\r\n"
        f"To: {to}\r\nCall-ID: {call_id or secrets.token_hex(10)}\r\nCSeq: {cseq} SUBSCRIBE\r\n"
        f"Contact: <sip:{contact or f'{user}@{host}:{port}'}>\r\nEvent: dialog\r\n"
        f"Accept: application/dialog-info+xml\r\nExpires: {expires}\r\nMax-Forwards: 70\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def header(message: bytes, name: str) -> str:
    m = re.search(rb"^" + name.encode() + rb":\s*(.*?)\r$", message, re.M | re.I)
    return m[1].decode() if m else ""


def ok_for(request: bytes) -> bytes:
    """200 to a NOTIFY."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [h for h in head[1:] if h.split(b":")[0].lower() in (b"via", b"from", b"to",
                                                                b"call-id", b"cseq")]  # fmt: skip
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"


def status_of(data: bytes) -> int:
    return int(data[8:11]) if data.startswith(b"SIP/2.0 ") else 0


class Phone:
    """A well-behaved phone at 127.0.0.1: subscribes (authenticating when challenged) and
    answers every NOTIFY."""

    def __init__(self, bridge: tuple[str, int], user: str = "203", host: str = HOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.bridge = bridge
        self.user = user
        self.call_id = secrets.token_hex(10)
        self.from_tag = secrets.token_hex(5)
        self.to_tag = ""
        self.cseq = 0
        self.nc = 0
        self.challenge = ""
        self.notifies: list[bytes] = []
        self.disguise = ""  # user@host:port claimed in From and Contact

    async def recv(self, until: float, notify: bool = False) -> bytes | None:
        """The next response (NOTIFYs are answered and kept; with ``notify`` also returned)."""
        loop = asyncio.get_running_loop()
        while (left := until - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    data = await loop.sock_recv(self.sock, 65535)
            except TimeoutError:
                return None
            if data.startswith(b"NOTIFY "):
                self.notifies.append(data)
                await loop.sock_sendto(self.sock, ok_for(data), self.bridge)
                if not notify:
                    continue
            return data
        return None

    def _request(self, expires: int) -> bytes:
        self.cseq += 1
        extra = ""
        if self.challenge:
            self.nc += 1
            auth = digest_answer(self.challenge, self.user, PASSWORDS.get(self.user, ""),
                                 "SUBSCRIBE", f"sip:{RESOURCE}@pbx.test", nc=self.nc)  # fmt: skip
            extra = f"Authorization: {auth}\r\n"
        return subscribe(self.host, self.port, user=self.user, expires=expires,
                         call_id=self.call_id, from_tag=self.from_tag, to_tag=self.to_tag,
                         cseq=self.cseq, extra=extra, contact=self.disguise)  # fmt: skip

    async def subscribe(self, expires: int = 600, wait: float = 1.0) -> int:
        """Subscribe (or refresh); the final status, 0 when silent. Answers one 401."""
        loop = asyncio.get_running_loop()
        until = time.monotonic() + wait
        for _ in range(2):
            await loop.sock_sendto(self.sock, self._request(expires), self.bridge)
            while (data := await self.recv(until)) is not None and status_of(data) < 200:
                pass
            if data is None:
                return 0
            code = status_of(data)
            if code == 401 and not self.challenge:
                known = [c for c in re.findall(rb"^WWW-Authenticate: (.*?)\r$", data, re.M)
                         if b"algorithm=MD5" in c]  # fmt: skip
                self.challenge, self.nc = (known[0].decode() if known else ""), 0
                continue
            if code == 200 and not self.to_tag:
                m = re.search(r";tag=([^;>\s]+)", header(data, "To"))
                self.to_tag = m[1] if m else ""
            return code
        return 0

    async def fresh_check(self) -> str:
        """Subscribe and get the first NOTIFY within one second: 'ok 0.01s' or why not."""
        start = time.monotonic()
        code = await self.subscribe(wait=1.0)
        if code != 200:
            return f"NO ({code or 'silent'})"
        if not self.notifies:
            await self.recv(start + 1.0, notify=True)
        if not self.notifies:
            return "NO (no NOTIFY)"
        return f"ok {time.monotonic() - start:.2f}s"

    def close(self) -> None:
        self.sock.close()


class Bridge:
    """The bridge under attack, as a subprocess; counts its stderr lines."""

    def __init__(self, root: Path, workdir: Path, settings: list[str]) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.settings = [
            f'sip.udp=["{HOST}:{self.port}"]', f'sip.tcp=["{HOST}:{self.port}"]',
            f"store.path={workdir / 'subs.sqlite3'}", 'web.listen=""', *settings,
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    async def __aenter__(self) -> Bridge:
        config = self.workdir / "empty.toml"
        config.write_text("", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        for attempt in range(3):  # the free port may be taken by someone else meanwhile
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(config), "--demo",
                *itertools.chain.from_iterable(("--set", s) for s in self.settings),
                cwd=self.root, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self._drain = asyncio.create_task(self._read())
            try:
                await self._ready()
                return self
            except RuntimeError:
                await self._drain
                if attempt == 2 or not any("Address already in use" in x for x in self.lines):
                    raise
            old = self.port
            self.port = free_port()
            self.settings = [x.replace(f":{old}", f":{self.port}") for x in self.settings]
        raise AssertionError("unreachable")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    async def _ready(self) -> None:
        """Until a phone subscribes (the demo PBX has synced); then unsubscribe it."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError("bridge died:\n" + "\n".join(self.lines[-20:]))
            phone = Phone(self.address)
            try:
                if await phone.subscribe(wait=0.5) == 200:
                    await phone.subscribe(expires=0, wait=0.5)
                    return
            finally:
                phone.close()
            await asyncio.sleep(0.3)
        raise RuntimeError("bridge not ready:\n" + "\n".join(self.lines[-20:]))

    def rss(self, name: str = "VmRSS") -> float:
        assert self.proc is not None
        return rss_mib(self.proc.pid, name)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await self._drain


async def probe(bridge: Bridge) -> str:
    phone = Phone(bridge.address, "206")
    try:
        return await phone.fresh_check()
    finally:
        phone.close()


Attack = Callable[[Path, Path], Awaitable[Row]]


async def attacked(
    row: Row,
    root: Path,
    workdir: Path,
    settings: list[str],
    body: Callable[[Bridge], Awaitable[None]],
) -> Row:
    """Run ``body`` against a fresh bridge and fill in memory, log lines and the after-probe."""
    async with Bridge(root, workdir, settings) as bridge:
        logged = len(bridge.lines)
        await body(bridge)
        row.log_lines = len(bridge.lines) - logged
        row.rss_peak = bridge.rss("VmHWM")
        row.rss_after = bridge.rss()
        row.after = await probe(bridge)
    return row


async def spray(attackers: list[Attacker], packets: Callable[[Attacker, int], bytes],
                count: int, per_second: float) -> None:  # fmt: skip
    """``count`` packets round-robin over the attackers at ``per_second`` in all."""
    start = time.monotonic()
    for i in range(count):
        attackers[i % len(attackers)].send(packets(attackers[i % len(attackers)], i))
        if i % 50 == 49:
            for a in attackers:
                a.drain()
            ahead = start + (i + 1) / per_second - time.monotonic()
            await asyncio.sleep(max(0.0, ahead))


async def listen(attackers: list[Attacker], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for a in attackers:
            a.drain()
        await asyncio.sleep(0.05)


def summed(attackers: list[Attacker]) -> Counter:
    total = Counter()
    for a in attackers:
        c = a.counter
        total.sent_bytes += c.sent_bytes
        total.sent_packets += c.sent_packets
        total.got_bytes += c.got_bytes
        total.got_packets += c.got_packets
        for k, v in c.statuses.items():
            total.statuses[k] = total.statuses.get(k, 0) + v
    return total


def describe(row: Row, c: Counter, what: str) -> None:
    row.sent = f"{c.sent_packets} {what}, {c.sent_bytes / 1024:.0f} KiB"
    codes = ",".join(f"{n}x{k}" for k, n in sorted(c.statuses.items()))
    row.got = f"{c.got_packets} pkts {c.got_bytes / 1024:.0f} KiB"
    row.got += f" ({codes})" if codes else ""
    row.ratio = c.ratio()


# ---------------------------------------------------------------------- the attacks


async def amplify(name: str, expires: int, root: Path, workdir: Path) -> Row:
    """Point 2: 50 SUBSCRIBEs from one address that never answers (a forged source)."""
    row = Row(name)

    async def body(bridge: Bridge) -> None:
        attacker = Attacker("127.0.0.2", bridge.address, Counter())
        await spray([attacker], lambda a, i: subscribe(a.host, a.port, expires=expires), 50, 25)
        await listen([attacker], 1.0)
        row.during = await probe(bridge)
        await listen([attacker], RETRANSMISSION_WAIT)
        describe(row, attacker.counter, "SUBSCRIBE" + (" Expires:0" if expires == 0 else ""))
        attacker.close()

    return await attacked(row, root, workdir, [], body)


SIZES = {"fetches": 60000}  # --fetches


async def fetch_memory(root: Path, workdir: Path) -> Row:
    """Point 2: fetches from 200 addresses, each under the per-source rate."""
    row = Row("fetch-memory")

    async def body(bridge: Bridge) -> None:
        attackers = [Attacker(f"127.0.1.{i}", bridge.address, Counter()) for i in range(1, 201)]
        during: asyncio.Task[str] | None = None

        async def probe_later() -> str:
            await asyncio.sleep(3.0)
            return await probe(bridge)

        during = asyncio.create_task(probe_later())
        # 200 addresses x 15/s: under the default 20/s per source
        fetch = functools.partial(subscribe, expires=0)
        await spray(attackers, lambda a, i: fetch(a.host, a.port), SIZES["fetches"], 3000)
        await listen(attackers, 2.0)
        row.during = await during
        describe(row, summed(attackers), "fetches")
        for a in attackers:
            a.close()
        await asyncio.sleep(3.0)

    return await attacked(row, root, workdir, [], body)


def users_file(workdir: Path, users: dict[str, str]) -> Path:
    path = workdir / "users.toml"
    path.write_text("".join(f'{u} = "{p}"\n' for u, p in users.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


async def hijack(root: Path, workdir: Path) -> Row:
    """Point 3: with digest auth, a refresh copying a subscription's ids from elsewhere, with no
    credentials; a second user copying the first one's From and Contact; a user removed from
    users_file refreshing after a reload; an Authorization whose uri is another resource."""
    row = Row("refresh-hijack")
    settings = ["security.auth=digest", f"security.users_file={users_file(workdir, PASSWORDS)}"]

    async def body(bridge: Bridge) -> None:
        owner = Phone(bridge.address, "203")
        assert await owner.subscribe() == 200, "the owner cannot subscribe"
        await owner.recv(time.monotonic() + 0.5)
        counter = Counter()
        attacker = Attacker("127.0.0.4", bridge.address, counter)
        stolen = functools.partial(subscribe, call_id=owner.call_id, from_tag=owner.from_tag,
                                   to_tag=owner.to_tag, cseq=owner.cseq + 1)  # fmt: skip
        attacker.send(stolen(attacker.host, attacker.port))
        owner.cseq += 1  # the owner's next refresh is in order either way
        await listen([attacker], 1.0)
        moved = any(d.startswith(b"NOTIFY ") for d in attacker.drain()) or counter.got_packets > 1
        results = [f"refresh from elsewhere: {'/'.join(map(str, counter.statuses)) or 'silent'}"
                   f"{' NOTIFYs moved' if moved else ''}"]  # fmt: skip
        # 206 authenticates as itself but copies the From and Contact of another of 203's
        # subscriptions in a new dialog.
        victim = Phone(bridge.address, "203")
        assert await victim.subscribe() == 200, "the victim cannot subscribe"
        other = Phone(bridge.address, "206")
        other.disguise = f"203@{victim.host}:{victim.port}"
        results.append(f"206 copies 203's From/Contact: {await other.subscribe()}")
        other.close()
        code = await victim.subscribe()  # the victim's own refresh: 481 if displaced
        results.append(f"then 203 refreshes: {code}")
        victim.close()
        loop = asyncio.get_running_loop()
        # The uri of the Authorization names another resource.
        spoof = Phone(bridge.address, "206", host="127.0.0.8")
        await spoof.subscribe(wait=0.5)  # gets the challenge
        spoof.call_id, spoof.from_tag, spoof.to_tag = secrets.token_hex(8), "x1", ""
        spoof.cseq += 1
        spoof.nc += 1
        auth = digest_answer(spoof.challenge, "206", PASSWORDS["206"], "SUBSCRIBE",
                             "sip:999@pbx.test", nc=spoof.nc)  # fmt: skip
        await loop.sock_sendto(spoof.sock, subscribe(
            spoof.host, spoof.port, user="206", call_id=spoof.call_id,
            extra=f"Authorization: {auth}\r\n"), bridge.address)  # fmt: skip
        got = await spoof.recv(time.monotonic() + 1.0)
        results.append(f"uri of another resource: {status_of(got) if got else 'silent'}")
        spoof.close()
        # 203 removed from users_file, SIGHUP, then 203 refreshes.
        users_file(workdir, {"206": PASSWORDS["206"]})
        bridge.reload()
        await asyncio.sleep(1.0)
        code = await owner.subscribe()
        results.append(f"removed user refreshes: {code}")
        row.during = await probe(bridge)
        row.sent = "4 requests"
        row.got = "; ".join(results)
        attacker.close()
        owner.close()

    return await attacked(row, root, workdir, settings, body)


async def malformed(root: Path, workdir: Path) -> Row:
    """Point 5: garbage datagrams and requests too broken to serve, from one address."""
    row = Row("malformed-flood")

    async def body(bridge: Bridge) -> None:
        attacker = Attacker("127.0.0.5", bridge.address, Counter())

        def packet(a: Attacker, i: int) -> bytes:
            if i % 2:
                return b"\x16\x03\x01garbage that is no SIP at all\r\n\r\n"
            return (
                f"SUBSCRIBE sip:202@pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP {a.host}:{a.port}"
                f";branch=z9hG4bK{i}\r\nCSeq: what\r\nContent-Length: 0\r\n\r\n"
            ).encode()

        await spray([attacker], packet, 20000, 4000)
        row.during = await probe(bridge)
        await listen([attacker], 1.0)
        describe(row, attacker.counter, "datagrams")
        attacker.close()

    return await attacked(row, root, workdir, [], body)


async def outsider(root: Path, workdir: Path) -> Row:
    """Point 5: an address outside security.allow, with good and broken requests."""
    row = Row("outside-allow")

    async def body(bridge: Bridge) -> None:
        attacker = Attacker("127.0.0.6", bridge.address, Counter())

        def packet(a: Attacker, i: int) -> bytes:
            if i % 2:
                return subscribe(a.host, a.port)
            return (
                f"SUBSCRIBE sip:202@pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP {a.host}:{a.port}"
                f";branch=z9hG4bK{i}\r\nCSeq: what\r\nContent-Length: 0\r\n\r\n"
            ).encode()

        await spray([attacker], packet, 2000, 1000)
        row.during = await probe(bridge)
        await listen([attacker], 1.0)
        describe(row, attacker.counter, "requests")
        attacker.close()

    return await attacked(row, root, workdir, ['security.allow=["127.0.0.1/32"]'], body)


async def over_cap(root: Path, workdir: Path) -> Row:
    """Point 5: SUBSCRIBEs over security.max_subscriptions (20 here), from 10 addresses."""
    row = Row("over-sub-cap")

    async def body(bridge: Bridge) -> None:
        attackers = [Attacker(f"127.0.2.{i}", bridge.address, Counter()) for i in range(1, 11)]
        # A new watcher each time (From and Contact differ), not one phone re-subscribing.
        await spray(attackers, lambda a, i: subscribe(a.host, a.port, user=str(1000 + i)), 400, 400)
        await listen(attackers, 1.0)
        describe(row, summed(attackers), "SUBSCRIBE")
        for a in attackers:
            a.close()

    settings = ["security.max_subscriptions=21"]  # 20 for the attackers, 1 for the probe

    async def body_with_probe(bridge: Bridge) -> None:
        await body(bridge)

    row = await attacked(row, root, workdir, settings, body_with_probe)
    row.note = "cap 21: probes refused once it is full (expected)"
    return row


async def connect_many(address: tuple[str, int], count: int) -> tuple[list[socket.socket], int]:
    """``count`` non-blocking TCP connections and how many were refused (or not accepted
    within a quarter of a second)."""
    loop = asyncio.get_running_loop()
    socks, refused = [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(0.25):
                await loop.sock_connect(sock, address)
        except (OSError, TimeoutError):
            sock.close()
            refused += 1
            continue
        socks.append(sock)
    return socks, refused


def peer_closed(sock: socket.socket) -> bool:
    """Whether the bridge has closed (or reset) this connection."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def tcp_idle(root: Path, workdir: Path, count: int = 300) -> Row:
    """Point 4 (the other helper's fix): many TCP connections that never send a byte."""
    row = Row("tcp-idle")

    async def body(bridge: Bridge) -> None:
        socks, refused = await connect_many(bridge.address, count)
        await asyncio.sleep(2.0)
        row.during = await probe(bridge)
        await asyncio.sleep(3.0)
        closed = sum(peer_closed(s) for s in socks)
        row.sent = f"{count} idle TCP connections"
        row.got = f"{refused} refused, {closed} closed by the bridge within 5 s"
        for s in socks:
            s.close()

    return await attacked(row, root, workdir, [], body)


async def tcp_slow(root: Path, workdir: Path, count: int = 100) -> Row:
    """Point 4: connections that send one byte of a SUBSCRIBE every two seconds."""
    row = Row("tcp-slow")

    async def body(bridge: Bridge) -> None:
        socks, refused = await connect_many(bridge.address, count)
        data = subscribe(HOST, 5999)
        for step in range(6):
            for s in socks:
                if not peer_closed(s):
                    with contextlib.suppress(OSError):
                        s.send(data[step : step + 1])
            if step == 3:
                row.during = await probe(bridge)
            await asyncio.sleep(2.0)
        closed = sum(peer_closed(s) for s in socks)
        row.sent = f"{count} TCP conns, 1 byte/2 s for 12 s"
        row.got = f"{refused} refused, {closed} closed by the bridge"
        for s in socks:
            s.close()

    return await attacked(row, root, workdir, [], body)


ATTACKS: dict[str, Attack] = {
    "fetch-amplify": lambda r, w: amplify("fetch-amplify", 0, r, w),
    "subscribe-amplify": lambda r, w: amplify("subscribe-amplify", 600, r, w),
    "fetch-memory": fetch_memory,
    "refresh-hijack": hijack,
    "malformed-flood": malformed,
    "outside-allow": outsider,
    "over-sub-cap": over_cap,
    "tcp-idle": tcp_idle,
    "tcp-slow": tcp_slow,
}
CONCURRENT = ("fetch-amplify", "subscribe-amplify")  # mostly waiting: run side by side


def table(rows: list[Row]) -> str:
    header = ("attack", "sent", "got back", "ratio", "peak RSS", "RSS after", "log lines",
              "phone during", "phone after")  # fmt: skip
    cells = [
        (r.attack, r.sent, r.got, r.ratio, f"{r.rss_peak:.0f} MiB", f"{r.rss_after:.0f} MiB",
         str(r.log_lines), r.during, r.after)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = [" | ".join(f"{v:<{w}}" for v, w in zip(c, widths, strict=True)) for c in
             [header, tuple("-" * w for w in widths), *cells]]  # fmt: skip
    notes = [f"  {r.attack}: {r.note}" for r in rows if r.note]
    return "\n".join([*(line.rstrip() for line in lines), *notes])


async def run(root: Path, only: list[str]) -> list[Row]:
    names = only or list(ATTACKS)
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
        dirs = {n: Path(tmp) / n for n in names}
        for d in dirs.values():
            d.mkdir()
        together = [n for n in names if n in CONCURRENT]
        if together:
            done = await asyncio.gather(*(ATTACKS[n](root, dirs[n]) for n in together))
            rows.update(zip(together, done, strict=True))
        for name in names:
            if name not in rows:
                rows[name] = await ATTACKS[name](root, dirs[name])
                print(table([rows[name]]).splitlines()[2], file=sys.stderr, flush=True)
    return [rows[n] for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).parent.parent,
                        help="checkout whose bridge is attacked")  # fmt: skip
    parser.add_argument("--only", action="append", choices=list(ATTACKS), default=[])
    parser.add_argument("--fetches", type=int, default=SIZES["fetches"],
                        help="how many fetches fetch-memory sends")  # fmt: skip
    opts = parser.parse_args()
    SIZES["fetches"] = opts.fetches
    start = time.monotonic()
    rows = asyncio.run(run(opts.root.resolve(), opts.only))
    print(table(rows))
    print(f"({time.monotonic() - start:.0f} s, bridge from {opts.root.resolve()})")


if __name__ == "__main__":
    main()
