"""Load tools for ``benchmarks.targets``: a fast fake Asterisk, a swarm of watchers, the bridge.

- ``FakeAsterisk``: an asyncio AMI server that answers what the bridge asks (Login, the three
  resync lists built from its own ``hints`` and ``channels``, Getvar with ids made up from the
  channel name, PJSIPShowEndpoints with "No endpoints found") and sends generated events as
  pre-serialized bytes, so the generator costs little next to the bridge it measures.
- ``Call``: the AMI events of one call from one extension to another, modelled on the recorded
  Asterisk 22 traffic (``ring-answer-hangup``: the ``call,system`` events the bridge asks for).
- ``Swarm``: thousands of subscription dialogs on one UDP socket; every NOTIFY is answered 200 at
  once and time-stamped on arrival (the socket is drained in a loop, not one datagram per loop
  turn, so the stamp is close to the wire).
- ``BridgeProcess``: the real bridge, ``python -m bridge run --set …``, in its own process (its
  own core); RSS is read from /proc.

Everything stays on loopback; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.sip.transport import grow_buffers

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
EPOCH = 1795400000  # uniqueids are "<epoch>.<sequence>", as Asterisk writes them
SOCKET_BUFFER = 16 << 20
WRITE_HIGH_WATER = 4 << 20  # fake Asterisk: pause the event stream above this much unsent
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; its control message type
_SCM_TIMESTAMPNS = _SO_TIMESTAMPNS  # is the same number
_TIMESPEC = struct.Struct("@qq")
_ECHOED = (b"Via:", b"From", b"To: ", b"Call", b"CSeq")  # lines a 200 copies from a NOTIFY


_BASE_NS = time.time_ns()


def clock() -> float:
    """Seconds on the clock the kernel stamps received datagrams with (CLOCK_REALTIME), from
    an origin near the start: NOTIFYs are timed by their arrival in the swarm's socket, not by
    when the swarm got round to reading them."""
    return (time.time_ns() - _BASE_NS) * 1e-9


def frame(fields: Iterable[tuple[str, str]]) -> bytes:
    """One AMI message on the wire."""
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode() + b"\r\n"


def getvar_value(channel: str, variable: str) -> str:
    """What the fake Asterisk answers to Getvar: ids derived from the channel's sequence."""
    suffix = channel.rpartition("-")[2]
    if variable == "CHANNEL(pjsip,call-id)":
        return f"bench-{suffix}@{HOST}"
    if variable == "CHANNEL(pjsip,local_tag)":
        return f"as{suffix}"
    if variable == "CHANNEL(pjsip,remote_tag)":
        return f"ph{suffix}"
    if variable == "CONNECTEDLINE(pres)":
        return "allowed"
    return ""


_STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}


@dataclass(slots=True)
class Channel:
    """One channel of a generated call, as Asterisk's channel block describes it."""

    name: str
    uniqueid: str
    linkedid: str
    state: int
    num: str  # CallerIDNum
    connected: str  # ConnectedLineNum, "" while unknown
    exten: str  # dialplan Exten
    application: str = ""

    def block(self, prefix: str = "") -> list[tuple[str, str]]:
        """The standard channel block (optionally as the ``Dest…`` block of a Dial event)."""
        conn = self.connected or "<unknown>"
        conn_name = f"Phone {self.connected}" if self.connected else "<unknown>"
        fields = [
            ("Channel", self.name), ("ChannelState", str(self.state)),
            ("ChannelStateDesc", _STATE_DESC.get(self.state, "Unknown")),
            ("CallerIDNum", self.num), ("CallerIDName", f"Phone {self.num}"),
            ("ConnectedLineNum", conn), ("ConnectedLineName", conn_name),
            ("Language", "en"), ("AccountCode", ""), ("Context", "internal"),
            ("Exten", self.exten), ("Priority", "1"), ("Uniqueid", self.uniqueid),
            ("Linkedid", self.linkedid),
        ]  # fmt: skip
        return [(prefix + k, v) for k, v in fields]

    def event(self, name: str, *extra: tuple[str, str]) -> bytes:
        """An event about this channel alone."""
        return frame([("Event", name), ("Privilege", "call,all"), *self.block(), *extra])

    def show(self, action_id: str) -> bytes:
        """This channel as an item of a CoreShowChannels answer."""
        data = "(Outgoing Line)" if self.application == "AppDial" else "PJSIP/..."
        return frame([
            ("Event", "CoreShowChannel"), ("ActionID", action_id), *self.block(),
            ("Application", self.application), ("ApplicationData", data),
            ("Duration", "00:00:07"), ("BridgeId", ""),
        ])  # fmt: skip


def _state_events(exten: str, device: str, status: int, text: str) -> list[bytes]:
    return [
        frame([("Event", "DeviceStateChange"), ("Privilege", "call,all"),
               ("Device", f"PJSIP/{device}"), ("State", device_state(status))]),
        frame([("Event", "ExtensionStatus"), ("Privilege", "call,all"), ("Exten", exten),
               ("Context", "internal"), ("Hint", f"PJSIP/{device}"), ("Status", str(status)),
               ("StatusText", text)]),
    ]  # fmt: skip


def device_state(status: int) -> str:
    """Device state name of an extension status number."""
    return {0: "NOT_INUSE", 1: "INUSE", 8: "RINGING", 9: "RINGINUSE"}.get(status, "INUSE")


class Call:
    """One call ``caller`` → ``callee`` (both PJSIP endpoints named like their extension).

    Each method returns the events of one step as bytes, and moves the channels' states so the
    fake Asterisk can list them in a resync.
    """

    def __init__(self, number: int, caller: str, callee: str) -> None:
        seq = 2 * number
        uid = f"{EPOCH}.{seq}"
        self.caller = Channel(f"PJSIP/{caller}-{seq:08x}", uid, uid, 4, caller, "", callee,
                              "Dial")  # fmt: skip
        self.dest = Channel(f"PJSIP/{callee}-{seq + 1:08x}", f"{EPOCH}.{seq + 1}", uid, 0,
                            callee, caller, callee, "AppDial")  # fmt: skip
        self.caller_exten, self.callee_exten = caller, callee

    def channels(self) -> list[Channel]:
        """Both channels, caller first."""
        return [self.caller, self.dest]

    def setup(self) -> list[bytes]:
        """Newchannel of both legs and DialBegin: nothing rings yet (the leg is Down)."""
        c, d = self.caller, self.dest
        out = [c.event("Newchannel"), d.event("Newchannel")]
        d.connected = c.num
        out.append(d.event("NewConnectedLine"))
        out.append(frame([("Event", "DialBegin"), ("Privilege", "call,all"), *c.block(),
                          *d.block("Dest"), ("DialString", self.callee_exten)]))  # fmt: skip
        c.connected = d.num
        out.append(c.event("NewConnectedLine"))
        return out

    def ring(self) -> list[bytes]:
        """The callee's 180: Newstate 5 first (the event the bridge reads ids for)."""
        d = self.dest
        d.state = 5
        out = [d.event("Newstate")]
        out.append(frame([("Event", "DialState"), ("Privilege", "call,all"),
                          *self.caller.block(), *d.block("Dest"),
                          ("DialStatus", "RINGING")]))  # fmt: skip
        out += _state_events(self.callee_exten, self.callee_exten, 8, "Ringing")
        out += _state_events(self.caller_exten, self.caller_exten, 1, "InUse")
        return out

    def answer(self) -> list[bytes]:
        """The callee answers: both legs Up and bridged."""
        c, d = self.caller, self.dest
        d.state = 6
        out = [d.event("Newstate")]
        out.append(frame([("Event", "DialEnd"), ("Privilege", "call,all"), *c.block(),
                          *d.block("Dest"), ("DialStatus", "ANSWER")]))  # fmt: skip
        c.state = 6
        out.append(c.event("Newstate"))
        out += _state_events(self.callee_exten, self.callee_exten, 1, "InUse")
        bridge = [("BridgeUniqueid", f"bridge-{c.uniqueid}"), ("BridgeType", "basic")]
        out.append(frame([("Event", "BridgeCreate"), ("Privilege", "call,all"), *bridge]))
        out += [ch.event("BridgeEnter", *bridge) for ch in (c, d)]
        return out

    def hangup(self) -> list[bytes]:
        """The call ends (answered: both hang up; ringing: the caller gives up)."""
        c, d = self.caller, self.dest
        out = [c.event("HangupRequest")]
        if d.state == 6:
            bridge = [("BridgeUniqueid", f"bridge-{c.uniqueid}"), ("BridgeType", "basic")]
            out += [ch.event("BridgeLeave", *bridge) for ch in (c, d)]
            out.append(frame([("Event", "BridgeDestroy"), ("Privilege", "call,all"), *bridge]))
        else:
            out.append(frame([("Event", "DialEnd"), ("Privilege", "call,all"), *c.block(),
                              *d.block("Dest"), ("DialStatus", "CANCEL")]))  # fmt: skip
        cause = [("Cause", "16"), ("Cause-txt", "Normal Clearing")]
        out += [d.event("Hangup", *cause), c.event("Hangup", *cause)]
        out += _state_events(self.callee_exten, self.callee_exten, 0, "Idle")
        out += _state_events(self.caller_exten, self.caller_exten, 0, "Idle")
        return out


class _AmiClient(asyncio.Protocol):
    """One connection to the fake Asterisk."""

    def __init__(self, server: FakeAsterisk) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.logged_in = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        transport.write(BANNER)
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.discard(self)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            block, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            action: dict[str, str] = {}
            for line in block.decode("utf-8", "replace").split("\r\n"):
                key, _, value = line.partition(": ")
                action[key.lower()] = value
            self.server.answer(self, action)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class FakeAsterisk:
    """A loopback AMI server standing in for Asterisk; see the module docstring."""

    def __init__(self, hints: Iterable[str] = ()) -> None:
        self.hints = list(hints)
        self.channels: dict[str, Channel] = {}  # what CoreShowChannels lists, by uniqueid
        self.calls: list[Call] = []  # every call put up with add_calls, for the benchmarks
        self.clients: set[_AmiClient] = set()
        self.port = 0
        self.logins: list[float] = []  # clock() when each Login was accepted
        self.synced: list[float] = []  # ... when the last resync list was written
        self.actions: Counter[str] = Counter()
        # channel → clock() when its first Getvar came in and when its last one was answered
        self.getvar_asked: dict[str, float] = {}
        self.getvar_answered: dict[str, float] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on a free loopback port (``port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AmiClient(self), HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        self.drop()
        if self._server is not None:
            await self._server.wait_closed()

    def drop(self) -> None:
        """Abort every connection, like an Asterisk that restarts."""
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()

    def add_calls(self, calls: Iterable[Call]) -> None:
        """Put calls up for the next resync to list."""
        for call in calls:
            self.calls.append(call)
            for ch in call.channels():
                self.channels[ch.uniqueid] = ch

    def remove_calls(self, calls: Iterable[Call]) -> None:
        """Take calls down (silently: a resync will tell)."""
        for call in calls:
            for ch in call.channels():
                self.channels.pop(ch.uniqueid, None)

    def send(self, events: Iterable[bytes]) -> float:
        """Write events to every logged-in client at once; returns clock() just before."""
        data = b"".join(events)
        now = clock()
        for client in self.clients:
            if client.logged_in:
                client.write(data)
        return now

    async def stream(self, events: list[bytes], rate: float, batch: int = 100) -> None:
        """Write a long list of events at ``rate`` events per second (in batches)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(0, len(events), batch):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = b"".join(events[n : n + batch])
            for client in list(self.clients):
                if client.logged_in:
                    await asyncio.wait_for(client.writable.wait(), 30)
                    client.write(chunk)

    def answer(self, client: _AmiClient, action: dict[str, str]) -> None:
        """Answer one action as Asterisk 22 would."""
        name = action.get("action", "").lower()
        aid = action.get("actionid", "")
        self.actions[name] += 1
        if name == "getvar":
            variable, channel = action.get("variable", ""), action.get("channel", "")
            self.getvar_asked.setdefault(channel, clock())
            value = getvar_value(channel, variable)
            client.write(frame([("Response", "Success"), ("ActionID", aid),
                                ("Variable", variable), ("Value", value)]))  # fmt: skip
            self.getvar_answered[channel] = clock()
        elif name == "login":
            client.logged_in = True
            self.logins.append(clock())
            client.write(frame([("Response", "Success"), ("ActionID", aid),
                                ("Message", "Authentication accepted")]))  # fmt: skip
        elif name in ("devicestatelist", "extensionstatelist", "coreshowchannels"):
            client.write(self._listing(name, aid))
            if name == "coreshowchannels":
                self.synced.append(clock())
        elif name == "pjsipshowendpoints":
            client.write(frame([("Response", "Error"), ("ActionID", aid),
                                ("Message", "No endpoints found")]))  # fmt: skip
        elif name == "ping":
            client.write(frame([("Response", "Success"), ("ActionID", aid), ("Ping", "Pong"),
                                ("Timestamp", f"{time.time():.6f}")]))  # fmt: skip
        elif name == "logoff":
            client.write(frame([("Response", "Goodbye"), ("ActionID", aid),
                                ("Message", "Thanks for all the fish.")]))  # fmt: skip
            if client.transport is not None:
                client.transport.close()
        else:
            client.write(frame([("Response", "Success" if name == "events" else "Error"),
                                ("ActionID", aid)]))  # fmt: skip

    def _listing(self, name: str, aid: str) -> bytes:
        items: list[bytes] = []
        busy: dict[str, int] = {}
        for ch in self.channels.values():
            device = ch.name[len("PJSIP/") :].rpartition("-")[0]
            busy[device] = 8 if ch.state == 5 else max(busy.get(device, 0), 1)
        if name == "devicestatelist":
            head, done = "Device State Changes will follow", "DeviceStateListComplete"
            items = [frame([("Event", "DeviceStateChange"), ("ActionID", aid),
                            ("Device", f"PJSIP/{e}"), ("State", device_state(busy.get(e, 0)))])
                     for e in self.hints]  # fmt: skip
        elif name == "extensionstatelist":
            head, done = "Extension Statuses will follow", "ExtensionStateListComplete"
            items = [frame([("Event", "ExtensionStatus"), ("ActionID", aid), ("Exten", e),
                            ("Context", "internal"), ("Hint", f"PJSIP/{e}"),
                            ("Status", str(busy.get(e, 0))), ("StatusText", "Idle")])
                     for e in self.hints]  # fmt: skip
        else:
            head, done = "Channels will follow", "CoreShowChannelsComplete"
            items = [ch.show(aid) for ch in reversed(self.channels.values())]
        start = frame([("Response", "Success"), ("ActionID", aid), ("EventList", "start"),
                       ("Message", head)])  # fmt: skip
        end = frame([("Event", done), ("ActionID", aid), ("EventList", "Complete"),
                     ("ListItems", str(len(items)))])  # fmt: skip
        return b"".join([start, *items, end])


@dataclass(slots=True, eq=False)
class Watcher:
    """One subscription dialog of the swarm."""

    index: int
    resource: str
    call_id: bytes
    subscribed: bool = False
    attempts: int = 0
    sent_at: float = 0.0
    last_cseq: int = 0  # of the newest NOTIFY: an equal or older one is a retransmission
    state: str = ""  # what the newest NOTIFY showed: early, confirmed, idle, terminated
    at: float = 0.0  # clock() when the newest NOTIFY arrived


@dataclass(slots=True)
class Tally:
    """NOTIFYs counted since the last ``Swarm.reset()``."""

    notifies: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    last: dict[str, float] = field(default_factory=dict)  # state → last arrival
    first: float = 0.0
    resent: int = 0  # retransmissions received (not counted above)


class Swarm:
    """Many subscription dialogs on one UDP socket (see the module docstring)."""

    def __init__(self, bridge: tuple[str, int], run_id: str = "b") -> None:
        self.bridge = bridge
        self.run_id = run_id
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        grow_buffers(self.sock, SOCKET_BUFFER)  # a fan-out arrives all at once
        with contextlib.suppress(OSError):  # kernel arrival stamps (Linux)
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.watchers: dict[bytes, Watcher] = {}
        self.tally = Tally()
        self.answers: Counter[int] = Counter()  # SUBSCRIBE answers by status
        self.errors: Counter[str] = Counter()
        self._pending: dict[bytes, Watcher] = {}  # SUBSCRIBEs without a final answer
        self._backlog: list[tuple[bytes, tuple[str, int]]] = []
        self._barriers: dict[bytes, asyncio.Future[float]] = {}
        self._barrier_seq = 0
        self.on_notify: Callable[[Watcher], None] | None = None
        self.loop.add_reader(self.sock, self._readable)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.loop.remove_reader(self.sock)
        with contextlib.suppress(Exception):
            self.loop.remove_writer(self.sock)
        self.sock.close()

    def drops(self) -> int:
        """Datagrams the kernel dropped on the swarm's socket (receive buffer full)."""
        return udp_drops(self.port)

    def reset(self) -> Tally:
        """Start counting NOTIFYs afresh; returns the old tally."""
        old, self.tally = self.tally, Tally()
        return old

    # ------------------------------------------------------------------ sending

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._backlog:
            self._backlog.append((data, addr))
            return
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            self._backlog.append((data, addr))
            self.loop.add_writer(self.sock, self._writable)

    def _writable(self) -> None:
        sent = 0
        try:
            for data, addr in self._backlog:
                self.sock.sendto(data, addr)
                sent += 1
        except BlockingIOError:
            pass
        del self._backlog[:sent]
        if not self._backlog:
            self.loop.remove_writer(self.sock)

    def _subscribe_request(self, w: Watcher, cseq: int) -> bytes:
        res, port, i = w.resource, self.port, w.index
        return (
            f"SUBSCRIBE sip:{res}@{self.bridge[0]}:{self.bridge[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-{self.run_id}-{i}-{cseq};rport\r\n"
            f"From: <sip:w{i}@{HOST}>;tag=f{self.run_id}{i}\r\n"
            f"To: <sip:{res}@{HOST}>\r\n"
            f"Call-ID: {w.call_id.decode()}\r\n"
            f"CSeq: {cseq} SUBSCRIBE\r\n"
            f"Contact: <sip:w{i}@{HOST}:{port}>\r\n"
            "Event: dialog\r\n"
            "Accept: application/dialog-info+xml\r\n"
            "Supported: replaces, 100rel\r\n"
            "User-Agent: snomD785/10.1.54.13\r\n"
            "Expires: 3600\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    async def subscribe(
        self, resources: list[str], *, window: int = 200, limit: float = 300.0
    ) -> int:
        """Subscribe one new dialog per entry of ``resources``, at most ``window`` unanswered
        at once (503 "not in sync yet" and lost datagrams are retried); returns how many got
        their 200 within ``limit`` seconds."""
        first = len(self.watchers)
        todo = []
        for n, resource in enumerate(resources, start=first):
            call_id = f"{self.run_id}-{n}@{HOST}".encode()
            w = self.watchers[call_id] = Watcher(n, resource, call_id)
            todo.append(w)
        todo.reverse()
        deadline = self.loop.time() + limit
        retry: list[Watcher] = []
        while (todo or self._pending or retry) and self.loop.time() < deadline:
            now = self.loop.time()
            for w in list(self._pending.values()):
                if now - w.sent_at > 2.0:  # lost, or the bridge was not ready: again
                    del self._pending[w.call_id]
                    retry.append(w)
            while retry and len(self._pending) < window:
                self._start(retry.pop(), now)
            while todo and len(self._pending) < window:
                self._start(todo.pop(), now)
            await asyncio.sleep(0.002)
        return sum(1 for w in self.watchers.values() if w.subscribed and w.index >= first)

    def _start(self, w: Watcher, now: float) -> None:
        w.attempts += 1
        if w.attempts > 60:
            self.errors["SUBSCRIBE given up"] += 1
            return
        w.sent_at = now
        self._pending[w.call_id] = w
        self._send(self._subscribe_request(w, w.attempts), self.bridge)

    async def barrier(self, limit: float = 10.0) -> float:
        """An OPTIONS to the bridge, answered after everything this socket sent before it has
        been handled there (one socket, one ordered queue): the bridge is idle again. Returns
        the round trip in seconds."""
        self._barrier_seq += 1
        call_id = f"barrier-{self.run_id}-{self._barrier_seq}@{HOST}".encode()
        future: asyncio.Future[float] = self.loop.create_future()
        self._barriers[call_id] = future
        seq = self._barrier_seq
        data = (
            f"OPTIONS sip:{self.bridge[0]}:{self.bridge[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK-o{self.run_id}{seq};rport\r\n"
            f"From: <sip:bench@{HOST}>;tag=o{seq}\r\nTo: <sip:{self.bridge[0]}>\r\n"
            f"Call-ID: {call_id.decode()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        start = clock()
        self._send(data, self.bridge)
        try:
            return await asyncio.wait_for(future, limit) - start
        finally:
            self._barriers.pop(call_id, None)

    # ------------------------------------------------------------------ receiving

    def _readable(self) -> None:
        recv, base = self.sock.recvmsg, _BASE_NS
        for _ in range(512):  # bounded: let the loop breathe between batches
            try:
                data, ancillary, _, addr = recv(65536, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable: the bridge is gone
                self.errors[f"socket: {exc.strerror}"] += 1
                return
            now = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    now = (sec * 1_000_000_000 + nsec - base) * 1e-9
            now = now or clock()
            if data.startswith(b"NOTIFY "):
                self._notify(data, addr, now)
            elif data.startswith(b"SIP/2.0 "):
                self._response(data, now)
            else:
                self.errors["unexpected request"] += 1

    def _notify(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        echoed = [line for line in lines[1:] if line[:4] in _ECHOED]
        self._send(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(echoed) + b"\r\nContent-Length: 0\r\n\r\n",
                   addr)  # fmt: skip
        call_id = cseq = b""
        terminated = False
        for line in lines[1:]:
            if line.startswith(b"Call-ID: "):
                call_id = line[9:]
            elif line.startswith(b"CSeq: "):
                cseq = line[6:].partition(b" ")[0]
            elif line.startswith(b"Subscription-State: terminated"):
                terminated = True
        w = self.watchers.get(call_id)
        if w is None:
            self.errors["NOTIFY for an unknown dialog"] += 1
            return
        number = int(cseq) if cseq.isdigit() else 0
        tally = self.tally
        if number <= w.last_cseq:
            tally.resent += 1
            return
        w.last_cseq = number
        if terminated:
            state = "terminated"
        elif b"<state>early</state>" in body:
            state = "early"
        elif b"<state>confirmed</state>" in body:
            state = "confirmed"
        elif body.count(b"<dialog ") == body.count(b"<state>terminated</state>"):
            state = "idle"  # no dialog, or only terminated ones (watch.idle_dialog, the default)
        else:
            state = "other"
        w.state, w.at = state, now
        if not tally.notifies:
            tally.first = now
        tally.notifies += 1
        tally.by_state[state] += 1
        tally.last[state] = now
        if self.on_notify is not None:
            self.on_notify(w)

    def _response(self, data: bytes, now: float) -> None:
        head = data.partition(b"\r\n\r\n")[0]
        lines = head.split(b"\r\n")
        status = int(lines[0][8:11]) if lines[0][8:11].isdigit() else 0
        call_id = next((line[9:] for line in lines if line.startswith(b"Call-ID: ")), b"")
        future = self._barriers.get(call_id)
        if future is not None:
            if not future.done():
                future.set_result(now)
            return
        w = self._pending.pop(call_id, None)
        if w is None:
            return  # an answer to a retransmission, already counted
        self.answers[status] += 1
        if status == 200:
            w.subscribed = True
        elif status == 503:
            # not in sync yet: try again once the retry interval of subscribe() has passed
            w.sent_at = self.loop.time() - 1.5
            self._pending[call_id] = w
        else:
            self.errors[f"SUBSCRIBE answered {status}"] += 1


def udp_drops(port: int) -> int:
    """The kernel's drop counter of the loopback UDP socket bound to ``port`` (0 if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == port:
                return int(fields[-1])
    return 0


def free_udp_port() -> int:
    """A loopback UDP port free right now (for the bridge's SIP listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# The settings every target runs the bridge with: limits off (one swarm address is thousands
# of phones), memory-only store, everyone may pick up, quiet log.
BASE_SETTINGS = (
    "security.requests_per_second=0",
    "security.max_subscriptions_per_source=0",
    "security.max_subscriptions=0",
    "store.path=",
    "security.pickup=everyone",
    "log.level=warning",
)


class BridgeProcess:
    """``python -m bridge run`` against the fake Asterisk, in its own process."""

    def __init__(
        self, ami_port: int, *settings: str, event_loop: str = "auto", profile: str = ""
    ) -> None:
        self.sip_port = free_udp_port()
        self.settings = [
            *BASE_SETTINGS,
            f"ami.host={HOST}", f"ami.port={ami_port}", "ami.username=bench",
            "ami.secret=bench", f"sip.udp=[\"{HOST}:{self.sip_port}\"]", "sip.tcp=[]",
            f"sip.domain={HOST}", f"runtime.event_loop={event_loop}", *settings,
        ]  # fmt: skip
        self.profile = profile  # py-spy writes the bridge's sampled stacks here ("": none)
        self.proc: asyncio.subprocess.Process | None = None
        self._spy: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # closed in stop()

    @property
    def address(self) -> tuple[str, int]:
        """Where the bridge takes SUBSCRIBEs."""
        return HOST, self.sip_port

    @property
    def pid(self) -> int:
        """The bridge's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start the process (it then connects to the fake Asterisk on its own)."""
        args = ["run", *(a for s in self.settings for a in ("--set", s))]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip
        if self.profile:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            self._spy = await asyncio.create_subprocess_exec(
                spy, "record", "--nonblocking", "--format", "raw", "--rate", "1000",
                "-o", self.profile, "-p", str(self.proc.pid), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

    def rss(self) -> int:
        """Resident set size of the whole bridge process, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the bridge process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> str:
        """SIGTERM (SIGKILL after 10 s); returns what the bridge wrote to stderr."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._spy is not None:  # it writes its file once the bridge is gone
            try:
                await asyncio.wait_for(self._spy.wait(), 30)
            except TimeoutError:
                self._spy.kill()
                await self._spy.wait()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()
        return text


async def wait_until(predicate: Callable[[], bool], limit: float, step: float = 0.001) -> bool:
    """Poll ``predicate`` until it holds or ``limit`` seconds pass; returns whether it held."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(step)
    return True
