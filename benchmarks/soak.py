"""``python -m benchmarks.soak``: the real bridge under 10,000 churning subscriptions, for minutes.

The bridge runs as its own process (``python -m bridge run --demo``: the built-in replayed
Asterisk changes the state of extensions 201-206 every few seconds, so NOTIFYs flow), and a farm
of fake phones in this process talks to it over loopback UDP. Every subscription is a dialog of
its own. Every second a slice of them is unsubscribed or left to expire and replaced by new ones,
while the rest refresh before their 30 s run out. A few dialogs misbehave on purpose: some never
answer NOTIFYs, some answer them with 481; both must be dropped by the bridge. All phones share
the address 127.0.0.1, so the bridge's limits per source address (``security.*``, meant for one
phone or one flooder) are lifted; every other setting but the expiry bounds is the default.

Nothing passes or fails: the figures (memory, counts, lost subscriptions) are printed as a table.
The exit status is 1 only when the run itself broke: the bridge did not start or get in sync,
died during the run, or did not stop cleanly on SIGTERM.

Run ``python -m benchmarks.soak [--subscriptions 10000] [--minutes 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import os
import random
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bridge import config as bridge_config

ROOT = Path(__file__).resolve().parent.parent  # the bridge is started from the repository root
HOST = "127.0.0.1"  # every datagram of the soak stays on loopback
RESOURCES = ("201", "202", "203", "204", "205", "206")  # the demo PBX's extensions
EXPIRES = 30  # asked for in every SUBSCRIBE; the bridge runs with min_expires 5
T1, T2 = 0.5, 4.0  # RFC 3261 timers of the farm's SUBSCRIBE client transactions
TIMER_F = 64 * T1  # a transaction without a final answer gives up after this (32 s)
TICK = 0.01  # how often the farm serves its timers and its send queue
REFRESH_AT = (0.4, 0.7)  # refresh when this share of the granted time has passed (random)
SILENT_PROBE_AFTER = TIMER_F + 13.0  # after the 200: the bridge has given up on it by then
REJECT_PROBE_AFTER = T2 + 1.0  # after the last 481: had it been lost, the NOTIFY came again
REJECT_FALLBACK = 35.0  # probe a rejecting dialog even if its first NOTIFY never came
GONE_KEEP = 40.0  # a finished dialog still answers retransmitted NOTIFYs this long
FINAL_WAIT = 35.0  # after an unsubscribe, the final NOTIFY counts as missing after this
EXPIRY_SLACK = 15.0  # the bridge's timeout NOTIFY counts as missing this long after expiry
RETRY_503 = 0.5  # an initial SUBSCRIBE refused with 503 (bridge not in sync yet) is resent
MAX_ATTEMPTS = 120  # ... at most this often (a minute), then the dialog is given up
READY_TIMEOUT = 30.0  # the bridge must answer a first SUBSCRIBE with 200 within this
RAMP_TIMEOUT = 180.0  # every initial SUBSCRIBE of the ramp-up is answered within this
SETTLE_TIMEOUT = 5.0  # at the end, transactions in progress get this long to finish
STOP_TIMEOUT = 30.0  # the bridge must exit this long after SIGTERM, else it is killed
GRACE = 300.0  # the whole run is cut off this long after its planned end
BUFFER = 4 * 1024 * 1024  # SO_RCVBUF/SO_SNDBUF of the farm sockets: fan-outs come in bursts
STDERR_KEPT = 40  # bridge stderr lines kept for the report (first and last ones)
# The farm is one source address standing in for thousands of phones: the bridge's limits per
# source (meant for one phone or one flooder) are lifted, every other setting is the default.
PER_SOURCE_LIMITS = {"requests_per_second": "0", "max_subscriptions_per_source": "0"}
DEFAULT_TOTAL_LIMIT = 20_000  # security.max_subscriptions as shipped


class Kind(Enum):
    """How a fake phone treats the NOTIFYs of one dialog."""

    GOOD = "good"  # answers every NOTIFY with 200 and refreshes on time
    SILENT = "silent"  # never answers: the bridge retransmits, then drops it after 32 s
    REJECT = "reject"  # answers 481: the bridge drops it at once


class State(Enum):
    """Where a dialog stands, as the farm sees it."""

    INITIAL = "initial"  # initial SUBSCRIBE queued, in progress, or waiting to retry a 503
    ACTIVE = "active"  # subscribed and well behaved; the timer is its next refresh
    REFRESHING = "refreshing"  # in-dialog refresh queued or in progress
    UNSUBSCRIBING = "unsubscribing"  # Expires: 0 queued or in progress, or final NOTIFY awaited
    EXPIRING = "expiring"  # never refreshed again: the bridge's timeout NOTIFY is awaited
    BAD = "bad"  # a silent or rejecting dialog, waiting for (or in) the probe refresh
    GONE = "gone"  # finished; kept a while so retransmitted NOTIFYs still get their answer


class Purpose(Enum):
    """What a SUBSCRIBE transaction is for."""

    INITIAL = "initial"
    REFRESH = "refresh"
    UNSUBSCRIBE = "unsubscribe"
    PROBE = "probe"  # a refresh of a misbehaving dialog: 481 shows the bridge dropped it


@dataclass(frozen=True, slots=True)
class Options:
    """The run's settings, from the command line."""

    subscriptions: int
    seconds: int
    rate: float  # SUBSCRIBEs per second at most (token bucket)
    sockets: int
    silent_share: float
    reject_share: float
    unsubscribe_share: float  # of the subscriptions, unsubscribed per second
    expire_share: float  # of the subscriptions, left to expire per second
    seed: int
    quick: bool


class Dialog:
    """One subscription dialog of the farm, with its single client transaction (a phone never
    sends a new SUBSCRIBE in a dialog while the previous one is unanswered)."""

    __slots__ = (
        "alive_until", "attempts", "believed_alive", "call_id", "counted", "cseq", "final_seen",
        "from_tag", "gen", "idx", "interval", "kind", "last_notify", "purpose", "queued",
        "refresh_due", "rejected", "resource", "sent_at", "sock", "state", "subscribed_at",
        "target", "to_tag", "tx_cseq", "tx_data", "tx_deadline",
    )  # fmt: skip

    def __init__(self, idx: int, run_id: str, sock: int, kind: Kind) -> None:
        self.idx = idx
        self.call_id = f"soak-{run_id}-{idx}@{HOST}"
        self.from_tag = f"{run_id}{idx:x}"
        self.resource = RESOURCES[idx % len(RESOURCES)]
        self.sock = sock
        self.kind = kind
        self.state = State.INITIAL
        self.to_tag: str | None = None  # the bridge's tag, from its 200 (or its first NOTIFY)
        self.target: str | None = None  # the bridge's Contact: Request-URI of in-dialog requests
        self.cseq = 0
        self.alive_until = 0.0  # first send of the last granted SUBSCRIBE + Expires: no later
        self.subscribed_at = 0.0
        self.counted = True  # part of the population the churn keeps at the target size
        self.final_seen = False
        self.rejected = False
        self.attempts = 0
        self.last_notify = -1  # CSeq of the newest NOTIFY: an older or equal one is a resend
        self.refresh_due = 0.0
        self.gen = 0  # bumped to invalidate the dialog's pending timer entry
        self.queued: Purpose | None = None  # waiting in the send queue for this
        self.purpose: Purpose | None = None  # the transaction in progress, if any
        self.tx_data = b""
        self.tx_cseq = 0
        self.sent_at = 0.0
        self.interval = T1
        self.tx_deadline = 0.0
        self.believed_alive = False  # at send time, the farm thought the bridge still had it


@dataclass(slots=True)
class Message:
    """Just enough of a SIP message for the farm: start line and the headers it reads."""

    method: bytes  # b"" for a response
    status: int  # 0 for a request
    headers: dict[bytes, bytes]  # first value per header; names lower-case, long form
    echoed: list[bytes]  # Via, From, To, Call-ID and CSeq lines, as a response copies them

    def cseq(self) -> tuple[int, bytes]:
        """CSeq number and method (0, b"" when unreadable)."""
        number, _, method = self.headers.get(b"cseq", b"").partition(b" ")
        return (int(number), method.strip()) if number.isdigit() else (0, b"")


_COMPACT = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"v": b"via", b"m": b"contact"}
_ECHOED = frozenset({b"via", b"from", b"to", b"call-id", b"cseq"})


def parse(data: bytes) -> Message | None:
    """Split a datagram into start line and headers; None when it is not SIP at all."""
    lines = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    start = lines[0].split(b" ", 2)
    if len(start) < 2:
        return None
    if start[0] == b"SIP/2.0":
        if not start[1].isdigit():
            return None
        method, status = b"", int(start[1])
    else:
        method, status = start[0], 0
    headers: dict[bytes, bytes] = {}
    echoed: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        if key in _ECHOED:
            echoed.append(line)
        headers.setdefault(key, value.strip())
    return Message(method, status, headers, echoed)


def tag_of(value: bytes) -> str | None:
    """The tag parameter of a From or To value (after the closing ``>``)."""
    for param in value.rpartition(b">")[2].split(b";"):
        name, _, tag = param.partition(b"=")
        if name.strip().lower() == b"tag" and tag.strip():
            return tag.strip().decode()
    return None


def uri_of(value: bytes) -> str | None:
    """The URI inside ``<...>`` of a Contact value."""
    inside = value.partition(b"<")[2].partition(b">")[0]
    return inside.decode() if inside else None


def reply(msg: Message, status: int, reason: bytes) -> bytes:
    """A response to a NOTIFY: Via (all), From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6)."""
    return b"\r\n".join(
        [b"SIP/2.0 %d %s" % (status, reason), *msg.echoed, b"Content-Length: 0", b"", b""]
    )


class _Phones(asyncio.DatagramProtocol):
    """One farm socket: hands every datagram to the farm."""

    def __init__(self, farm: Farm, index: int) -> None:
        self.farm = farm
        self.index = index

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.farm.received(data, self.index, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the bridge is not (yet, or any more) listening.
        self.farm.n["farm: ICMP errors"] += 1


class Farm:
    """The fake phones: a few UDP sockets, each carrying many subscription dialogs."""

    def __init__(self, opts: Options, bridge: tuple[str, int]) -> None:
        self.opts = opts
        self.bridge = bridge
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(opts.seed)
        self.run_id = secrets.token_hex(3)
        self.transports: list[asyncio.DatagramTransport] = []
        self.ports: list[int] = []
        self.dialogs: dict[str, Dialog] = {}  # by Call-ID, unique per dialog
        self.active: dict[str, Dialog] = {}  # ACTIVE dialogs: where the churn picks from
        self.population = 0  # dialogs with counted set
        self.queue: deque[Dialog] = deque()
        self.tokens = 0.0
        self.last_pump = self.loop.time()
        self.timers: list[tuple[float, int, int, Dialog]] = []  # (when, seq, gen, dialog)
        self.seq = itertools.count()
        self.branches = itertools.count(1)
        self.indexes = itertools.count()
        self.n: Counter[str] = Counter()
        self.max_backlog = 0
        self.max_late = 0.0  # how late the latest refresh left after it was due, in s
        self.closed = False
        self.frozen = False  # set at the end: transactions in progress finish, none start

    # ------------------------------------------------------------------ sockets and pacing

    async def open(self) -> None:
        """Bind the farm's sockets on loopback, with room for the bridge's NOTIFY bursts."""
        for index in range(self.opts.sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            sock.bind((HOST, 0))
            sock.setblocking(False)
            transport, _ = await self.loop.create_datagram_endpoint(
                functools.partial(_Phones, self, index), sock=sock
            )
            self.transports.append(transport)
            self.ports.append(int(sock.getsockname()[1]))

    def close(self) -> None:
        """Stop serving and close the sockets."""
        self.closed = True
        for transport in self.transports:
            transport.close()

    async def serve(self, until: float) -> None:
        """Serve timers and the send queue every TICK, until close() or ``until``."""
        while not self.closed and self.loop.time() < until:
            now = self.loop.time()
            self.run_timers(now)
            self.pump(now)
            await asyncio.sleep(TICK)

    def pump(self, now: float) -> None:
        """Send queued SUBSCRIBEs as the token bucket allows: a ramp-up of thousands goes out
        over seconds instead of one burst that would overflow the bridge's socket buffer."""
        rate = self.opts.rate
        self.tokens = min(self.tokens + rate * (now - self.last_pump), max(1.0, rate * 5 * TICK))
        self.last_pump = now
        self.max_backlog = max(self.max_backlog, len(self.queue))
        while self.queue and self.tokens >= 1:
            d = self.queue.popleft()
            purpose, d.queued = d.queued, None
            if purpose is None:
                continue  # retired while waiting
            self.tokens -= 1
            self.start_transaction(d, purpose, now)

    def schedule(self, d: Dialog, when: float) -> None:
        """Set the dialog's one timer (replacing any earlier one)."""
        d.gen += 1
        heapq.heappush(self.timers, (when, next(self.seq), d.gen, d))

    def run_timers(self, now: float) -> None:
        """Fire every timer due at ``now``; bounded by the heap's size at the start."""
        for _ in range(len(self.timers)):
            if not self.timers or self.timers[0][0] > now:
                return
            _, _, gen, d = heapq.heappop(self.timers)
            if gen == d.gen:
                self.on_timer(d, now)

    # ------------------------------------------------------------------ dialogs

    def create(self, now: float) -> Dialog:
        """A brand-new subscription: its own Call-ID, From tag, From URI and Contact."""
        idx = next(self.indexes)
        draw = self.rng.random()
        kind = Kind.GOOD
        if draw < self.opts.silent_share:
            kind = Kind.SILENT
        elif draw < self.opts.silent_share + self.opts.reject_share:
            kind = Kind.REJECT
        d = Dialog(idx, self.run_id, idx % len(self.transports), kind)
        self.dialogs[d.call_id] = d
        self.population += 1
        self.n["created"] += 1
        self.n[f"created {kind.value}"] += 1
        self.enqueue(d, Purpose.INITIAL)
        return d

    def enqueue(self, d: Dialog, purpose: Purpose) -> None:
        """Queue a SUBSCRIBE behind the token bucket."""
        d.queued = purpose
        self.queue.append(d)

    def retire(self, d: Dialog, now: float) -> None:
        """The farm is done with a dialog: out of the population, kept a while to answer
        retransmitted NOTIFYs, then forgotten."""
        d.purpose = d.queued = None
        if d.counted:
            d.counted = False
            self.population -= 1
        self.active.pop(d.call_id, None)
        d.state = State.GONE
        self.schedule(d, now + GONE_KEEP)

    def to_active(self, d: Dialog, granted: int, now: float) -> None:
        """Subscribed (or refreshed): refresh again when 40-70 % of the granted time is used."""
        d.state = State.ACTIVE
        self.active[d.call_id] = d
        d.refresh_due = max(d.sent_at + granted * self.rng.uniform(*REFRESH_AT), now + TICK)
        self.schedule(d, d.refresh_due)

    def churn(self, now: float) -> None:
        """One second of churn: unsubscribe a slice, abandon another slice to expiry, and
        create new subscriptions so the population stays at the target."""
        target = self.opts.subscriptions
        unsubscribe = self._share(self.opts.unsubscribe_share * target)
        expire = self._share(self.opts.expire_share * target)
        pool = list(self.active.values())
        chosen = self.rng.sample(pool, min(len(pool), unsubscribe + expire))
        for i, d in enumerate(chosen):
            del self.active[d.call_id]
            d.counted = False
            self.population -= 1
            if i < unsubscribe:
                d.state = State.UNSUBSCRIBING
                d.gen += 1  # its refresh timer is void
                self.enqueue(d, Purpose.UNSUBSCRIBE)
            else:
                d.state = State.EXPIRING
                self.n["left to expire"] += 1
                self.schedule(d, d.alive_until + EXPIRY_SLACK)
        # New ones at most at the send rate: a refusing bridge must not grow the farm forever.
        for _ in range(min(target - self.population, int(self.opts.rate))):
            self.create(now)

    def _share(self, expected: float) -> int:
        """A per-second count with fractional expectation (0.3 of a dialog: sometimes one)."""
        whole = int(expected)
        return whole + (self.rng.random() < expected - whole)

    # ------------------------------------------------------------------ SUBSCRIBE transactions

    def start_transaction(self, d: Dialog, purpose: Purpose, now: float) -> None:
        """Send a new SUBSCRIBE in the dialog (new CSeq and branch) and arm Timer E/F."""
        d.cseq += 1
        d.purpose, d.tx_cseq, d.sent_at = purpose, d.cseq, now
        d.interval, d.tx_deadline = T1, now + TIMER_F
        d.believed_alive = now < d.alive_until
        if purpose is Purpose.REFRESH:
            self.max_late = max(self.max_late, now - d.refresh_due)
        d.tx_data = self.subscribe(d, 0 if purpose is Purpose.UNSUBSCRIBE else EXPIRES)
        self.transports[d.sock].sendto(d.tx_data, self.bridge)
        self.n["SUBSCRIBE transactions"] += 1
        self.n[f"SUBSCRIBE {purpose.value}"] += 1
        self.schedule(d, now + T1)

    def subscribe(self, d: Dialog, expires: int) -> bytes:
        """The SUBSCRIBE's bytes; in-dialog ones carry the bridge's To tag and target."""
        port = self.ports[d.sock]
        branch = f"z9hG4bK{self.run_id}.{next(self.branches):x}"
        in_dialog = d.purpose is not Purpose.INITIAL and d.to_tag is not None
        to = f"<sip:{d.resource}@{HOST}>" + (f";tag={d.to_tag}" if in_dialog else "")
        uri = d.target if in_dialog and d.target else f"sip:{d.resource}@{HOST}:{self.bridge[1]}"
        lines = (
            f"SUBSCRIBE {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{port};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:w{d.idx}@{HOST}>;tag={d.from_tag}",
            f"To: {to}",
            f"Call-ID: {d.call_id}",
            f"CSeq: {d.cseq} SUBSCRIBE",
            f"Contact: <sip:w{d.idx}@{HOST}:{port}>",
            "Event: dialog",
            "Accept: application/dialog-info+xml",
            f"Expires: {expires}",
            "Content-Length: 0",
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def on_timer(self, d: Dialog, now: float) -> None:
        """A dialog's timer: retransmission or timeout of its transaction, else what its
        state waits for (refresh, probe, 503 retry, a NOTIFY that never came, forgetting)."""
        starts_work = d.state in (State.INITIAL, State.ACTIVE, State.BAD)
        if self.frozen and d.purpose is None and starts_work:
            return  # the run is ending: no retry, refresh or probe starts any more
        if d.purpose is not None:
            if now >= d.tx_deadline:
                self.n[f"SUBSCRIBE {d.purpose.value} timed out"] += 1
                self.retire(d, now)
                return
            self.transports[d.sock].sendto(d.tx_data, self.bridge)
            self.n["SUBSCRIBE retransmissions"] += 1
            d.interval = min(2 * d.interval, T2)
            self.schedule(d, min(now + d.interval, d.tx_deadline))
        elif d.state is State.INITIAL:
            self.enqueue(d, Purpose.INITIAL)  # after a 503
        elif d.state is State.ACTIVE:
            del self.active[d.call_id]
            d.state = State.REFRESHING
            self.enqueue(d, Purpose.REFRESH)
        elif d.state is State.BAD:
            self.enqueue(d, Purpose.PROBE)
        elif d.state is State.UNSUBSCRIBING:
            self.n["final NOTIFY missing after unsubscribe"] += 1
            self.retire(d, now)
        elif d.state is State.EXPIRING:
            self.n["timeout NOTIFY missing after expiry"] += 1
            self.retire(d, now)
        elif d.state is State.GONE:
            del self.dialogs[d.call_id]

    def on_response(self, msg: Message, now: float) -> None:
        """A response to one of our SUBSCRIBEs; a resent or late one is counted and ignored."""
        d = self.dialogs.get(msg.headers.get(b"call-id", b"").decode())
        cseq, method = msg.cseq()
        if d is None or d.purpose is None or cseq != d.tx_cseq or method != b"SUBSCRIBE":
            self.n["stray responses"] += 1
            return
        if msg.status < 200:
            return
        purpose, d.purpose = d.purpose, None
        d.gen += 1  # no more retransmissions
        status = msg.status
        self.n[f"answer {status if status in (200, 481, 503) else 'other'}"] += 1
        if status != 200:
            self.n[f"answer {status} to {purpose.value}"] += 1
        granted = EXPIRES
        if status == 200:
            expires = msg.headers.get(b"expires", b"")
            granted = int(expires) if expires.isdigit() else EXPIRES
            if granted:
                d.alive_until = d.sent_at + granted
            if d.to_tag is None:
                d.to_tag = tag_of(msg.headers.get(b"to", b""))
            if d.target is None:
                d.target = uri_of(msg.headers.get(b"contact", b""))
        if d.state is State.GONE:
            return
        if purpose is Purpose.INITIAL:
            self._initial_answered(d, status, granted, now)
        elif purpose is Purpose.REFRESH:
            if status == 200:
                self.n["refreshed"] += 1
                self.to_active(d, granted, now)
                return
            if status == 481 and d.believed_alive:
                self.n["lost: refresh got 481"] += 1
            self.retire(d, now)  # the churn replaces it with a new one
        elif purpose is Purpose.UNSUBSCRIBE:
            if status == 200:
                self.n["unsubscribed"] += 1
                if d.final_seen:
                    self.retire(d, now)
                else:
                    self.schedule(d, now + FINAL_WAIT)
                return
            if status == 481 and d.believed_alive:
                self.n["lost: unsubscribe got 481"] += 1
            self.retire(d, now)
        else:  # a probe of a misbehaving dialog
            verdict = "dropped" if status == 481 else "kept" if status == 200 else "other"
            self.n[f"{d.kind.value} {verdict} by the bridge"] += 1
            self.retire(d, now)

    def _initial_answered(self, d: Dialog, status: int, granted: int, now: float) -> None:
        """The final answer to an initial SUBSCRIBE."""
        if status == 503:
            d.attempts += 1
            if d.attempts < MAX_ATTEMPTS:
                self.schedule(d, now + RETRY_503)
            else:
                self.retire(d, now)
            return
        if status != 200:
            self.retire(d, now)
            return
        d.subscribed_at = now
        self.n["subscribed"] += 1
        if d.kind is Kind.GOOD:
            if d.state is State.INITIAL:
                self.to_active(d, granted, now)
            return
        d.state = State.BAD
        if d.kind is Kind.SILENT:
            # From the 200, not from our first send: the bridge's NOTIFY left with the 200, and
            # a lost SUBSCRIBE can have reached it much later than we first sent it.
            self.schedule(d, now + SILENT_PROBE_AFTER)
        else:
            self.schedule(d, now + (REJECT_PROBE_AFTER if d.rejected else REJECT_FALLBACK))

    # ------------------------------------------------------------------ incoming

    def received(self, data: bytes, index: int, addr: tuple[str, int]) -> None:
        """One datagram from the bridge."""
        if addr[0] != HOST:
            return  # answers only ever go to loopback
        msg = parse(data)
        if msg is None:
            self.n["unreadable datagrams"] += 1
            return
        now = self.loop.time()
        if msg.status:
            self.on_response(msg, now)
        elif msg.method == b"NOTIFY":
            self.on_notify(msg, index, addr, now)
        else:
            self.n["other requests"] += 1

    def on_notify(self, msg: Message, index: int, addr: tuple[str, int], now: float) -> None:
        """Answer a NOTIFY as the dialog's phone would, and follow the subscription's end."""
        self.n["NOTIFY received"] += 1
        transport = self.transports[index]
        d = self.dialogs.get(msg.headers.get(b"call-id", b"").decode())
        if d is None:
            self.n["NOTIFY for unknown dialog (481)"] += 1
            transport.sendto(reply(msg, 481, b"Call/Transaction Does Not Exist"), addr)
            return
        cseq = msg.cseq()[0]
        resent = cseq <= d.last_notify
        if resent:
            self.n["NOTIFY resent by the bridge"] += 1
        d.last_notify = max(d.last_notify, cseq)
        if d.kind is Kind.SILENT:
            self.n["NOTIFY ignored (silent)"] += 1
            return
        if d.kind is Kind.REJECT:
            self.n["NOTIFY answered 481 (rejecting)"] += 1
            transport.sendto(reply(msg, 481, b"Call/Transaction Does Not Exist"), addr)
            d.rejected = True
            # Probe only once the NOTIFYs stop: a resent one means our 481 was lost.
            if d.state is State.BAD and d.purpose is None and d.queued is None:
                self.schedule(d, now + REJECT_PROBE_AFTER)
            return
        transport.sendto(reply(msg, 200, b"OK"), addr)
        self.n["NOTIFY answered 200"] += 1
        if d.to_tag is None:  # the 200 to our SUBSCRIBE was lost: the NOTIFY names the dialog
            d.to_tag = tag_of(msg.headers.get(b"from", b""))
        state = msg.headers.get(b"subscription-state", b"")
        if resent or not state.startswith(b"terminated"):
            return
        if d.state is State.UNSUBSCRIBING:
            self.n["final NOTIFY after unsubscribe"] += 1
            d.final_seen = True
            if d.purpose is None and d.queued is None:
                self.retire(d, now)
        elif d.state is State.EXPIRING:
            self.n["expired by the bridge"] += 1
            if now < d.alive_until - 1.0:
                self.n["expired early by the bridge"] += 1
            self.retire(d, now)
        elif d.state is not State.GONE:
            self.n["lost: terminated by the bridge while live"] += 1
            reason = state.partition(b"reason=")[2].partition(b";")[0].decode() or "none"
            self.n[f"terminated while live, reason={reason}"] += 1
            self.retire(d, now)

    # ------------------------------------------------------------------ figures

    def pending(self) -> int:
        """Transactions in progress or queued."""
        return len(self.queue) + sum(d.purpose is not None for d in self.dialogs.values())

    def initial_pending(self) -> int:
        """Dialogs whose initial SUBSCRIBE has no final 200 yet."""
        return sum(d.state is State.INITIAL for d in self.dialogs.values())

    def held_by_bridge(self, now: float) -> tuple[int, int, int]:
        """What the bridge should hold now: live well-behaved subscriptions, those left to
        expire that have not yet, silent ones the bridge has not given up on yet."""
        live = expiring = silent = 0
        for d in self.dialogs.values():
            if d.kind is Kind.GOOD and d.state in (State.ACTIVE, State.REFRESHING):
                live += 1
            elif d.state is State.EXPIRING and now < d.alive_until:
                expiring += 1
            elif d.kind is Kind.SILENT and d.state is State.BAD:
                silent += now < d.subscribed_at + TIMER_F
        return live, expiring, silent


# ---------------------------------------------------------------------- the bridge process


def free_port() -> int:
    """A loopback port free for both UDP and TCP (the bridge listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for the bridge")


def limit_overrides(subscriptions: int) -> list[str]:
    """``--set`` items lifting the bridge's per-source limits, for the bridges that have them
    (the farm sends everything from 127.0.0.1); the total limit is only raised when the run's
    population, with the dialogs still expiring on top, would not fit under it."""
    security = getattr(bridge_config, "SecurityConfig", None)
    known = {f.name for f in dataclasses.fields(security)} if security is not None else set()
    items = [f"security.{name}={value}" for name, value in PER_SOURCE_LIMITS.items()
             if name in known]  # fmt: skip
    if "max_subscriptions" in known and 2 * subscriptions > DEFAULT_TOTAL_LIMIT:
        items.append(f"security.max_subscriptions={2 * subscriptions}")
    return items


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (0 once it is gone), in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped on our loopback UDP sockets with these ports (full
    receive buffer), from /proc/net/udp."""
    try:
        lines = Path("/proc/net/udp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return 0
    dropped = 0
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and int(fields[1].rpartition(":")[2], 16) in ports:
            dropped += int(fields[-1])
    return dropped


def kernel_rcvbuf() -> int:
    """The receive buffer a UDP socket gets when it sets none (0 when unknown)."""
    try:
        return int(Path("/proc/sys/net/core/rmem_default").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 0


def store_rows(path: Path) -> int | None:
    """Rows in the bridge's subscription store (None when it cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            row = db.execute("SELECT count(*) FROM subscriptions").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0])


class Stderr:
    """Drains the bridge's stderr so the pipe never fills; counts warnings and errors and keeps
    the first and last lines for the report."""

    def __init__(self) -> None:
        self.lines = 0
        self.config_warnings = 0  # "config: ..." at start-up: expected for this setup
        self.warnings = 0  # other WARNING lines
        self.errors = 0  # ERROR, CRITICAL and traceback lines
        self.first: list[str] = []
        self.last: deque[str] = deque(maxlen=STDERR_KEPT)

    async def drain(self, stream: asyncio.StreamReader) -> None:
        """Read until EOF, which comes when the bridge exits (the run makes sure it does)."""
        rest = b""
        while chunk := await stream.read(65536):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                self.note(line.decode(errors="replace"))
        if rest:
            self.note(rest.decode(errors="replace"))

    def note(self, line: str) -> None:
        """Count and keep one line."""
        self.lines += 1
        if " WARNING bridge: config: " in line:
            self.config_warnings += 1
        elif " WARNING " in line:
            self.warnings += 1
        elif " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
            self.errors += 1
        if len(self.first) < STDERR_KEPT:
            self.first.append(line)
        else:
            self.last.append(line)


@dataclass(slots=True)
class Figures:
    """What the run measured, besides the farm's counters."""

    ramp_seconds: float = 0.0
    ramp_99_seconds: float = 0.0  # until 99 % of the initial SUBSCRIBEs were answered
    churn_seconds: float = 0.0
    rss_ramp: float = 0.0
    rss_middle: float = 0.0
    rss_end: float = 0.0
    rss_peak: float = 0.0
    rss_max_sampled: float = 0.0
    cpu_churn: float = 0.0
    bridge_drops: int = 0
    farm_drops: int = 0
    alive_at_end: bool = False
    exit_code: int | None = None
    stop_seconds: float = 0.0
    killed: bool = False
    held: tuple[int, int, int] = (0, 0, 0)
    subscribes_churn: int = 0
    notifies_churn: int = 0
    broken: str = ""  # why the run itself broke; empty when it did not


async def soak(opts: Options, workdir: Path, figures: Figures, stderr: Stderr) -> Farm:
    """Start the bridge, ramp up, churn, stop the bridge; fills ``figures``."""
    loop = asyncio.get_running_loop()
    config = workdir / "empty.toml"
    config.write_text("", encoding="utf-8")  # every setting comes from --set
    port = free_port()
    settings = [
        f'sip.udp=["{HOST}:{port}"]', f'sip.tcp=["{HOST}:{port}"]',
        f"store.path={workdir / 'subs.sqlite3'}",
        "sip.min_expires=5", f"sip.default_expires={EXPIRES}", "log.level=warning",
        *limit_overrides(opts.subscriptions),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config), "--demo",
        *itertools.chain.from_iterable(("--set", item) for item in settings),
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    drain = asyncio.create_task(stderr.drain(proc.stderr))
    farm = Farm(opts, (HOST, port))
    serving: asyncio.Task[None] | None = None
    try:
        await farm.open()
        serving = asyncio.create_task(farm.serve(loop.time() + opts.seconds + GRACE))
        await _run_phases(opts, proc, farm, figures)
        await _stop_bridge(proc, figures)
    finally:
        if proc.returncode is None:  # an exception cut the run short: never leave it running
            proc.kill()
            await proc.wait()
        farm.close()
        if serving is not None:
            await serving
        await asyncio.wait_for(drain, STOP_TIMEOUT)
    return farm


async def _wait(done: bool, proc: asyncio.subprocess.Process) -> bool:
    """One poll step of a bounded wait: False when ``done`` or once the bridge has exited,
    else True after a short sleep (callers loop over it a bounded number of times)."""
    if done:
        return False
    await asyncio.sleep(0.1)
    return proc.returncode is None


async def _run_phases(
    opts: Options, proc: asyncio.subprocess.Process, farm: Farm, figures: Figures
) -> None:
    """Readiness, ramp-up, churn and settling, each bounded in time."""
    loop = asyncio.get_running_loop()
    pid = proc.pid
    # Readiness: one subscription, retried on 503 until the bridge's first sync is done.
    first = farm.create(loop.time())
    for _ in range(int(READY_TIMEOUT / 0.1)):
        if not await _wait(first.state is not State.INITIAL, proc):
            break
    if first.state is not State.ACTIVE:
        figures.broken = "the bridge never answered a SUBSCRIBE with 200"
        return
    # Ramp-up: the rest of the population at once; the token bucket spreads it out.
    ramp_start = loop.time()
    for _ in range(opts.subscriptions - 1):
        farm.create(ramp_start)
    for _ in range(int(RAMP_TIMEOUT / 0.1)):
        waiting = farm.initial_pending()
        if not figures.ramp_99_seconds and waiting <= opts.subscriptions // 100:
            figures.ramp_99_seconds = loop.time() - ramp_start
        if not await _wait(waiting == 0, proc):
            break
    figures.ramp_seconds = loop.time() - ramp_start
    if proc.returncode is not None:
        figures.broken = f"the bridge exited during the ramp-up ({proc.returncode})"
        return
    figures.rss_ramp = rss_mib(pid)
    cpu_start = cpu_seconds(pid)
    churn_start = loop.time()
    subscribes, notifies = farm.n["SUBSCRIBE transactions"], farm.n["NOTIFY received"]
    farm.max_backlog = 0  # the ramp-up's queue is the whole population: measure the churn's
    progress_every = 5 if opts.quick else 15
    last_cpu, last_drops = cpu_start, udp_drops({farm.bridge[1]})
    for second in range(1, opts.seconds + 1):
        await asyncio.sleep(max(0.0, churn_start + second - loop.time()))
        if proc.returncode is not None:
            figures.broken = f"the bridge exited during the churn ({proc.returncode})"
            return
        farm.churn(loop.time())
        rss = rss_mib(pid)
        figures.rss_max_sampled = max(figures.rss_max_sampled, rss)
        if second == opts.seconds // 2:
            figures.rss_middle = rss
        if second % progress_every == 0:
            cpu, drops = cpu_seconds(pid), udp_drops({farm.bridge[1]})
            lost = sum(v for k, v in farm.n.items() if k.startswith("lost:"))
            print(
                f"[soak] {second:4d}/{opts.seconds} s: {farm.population} subscriptions, "
                f"bridge RSS {rss:.1f} MiB, CPU {100 * (cpu - last_cpu) / progress_every:.0f} %,"
                f" {drops - last_drops} datagrams dropped; {farm.n['NOTIFY received']} NOTIFYs,"
                f" {lost} lost so far",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            last_cpu, last_drops = cpu, drops
    figures.churn_seconds = loop.time() - churn_start
    figures.cpu_churn = cpu_seconds(pid) - cpu_start
    figures.rss_end = rss_mib(pid)
    figures.rss_peak = rss_mib(pid, "VmHWM")
    figures.subscribes_churn = farm.n["SUBSCRIBE transactions"] - subscribes
    figures.notifies_churn = farm.n["NOTIFY received"] - notifies
    # Settle: no new work; let what is in progress finish so the farm's view is current.
    farm.frozen = True
    for _ in range(int(SETTLE_TIMEOUT / 0.1)):
        if not await _wait(farm.pending() == 0, proc):
            break
    figures.held = farm.held_by_bridge(loop.time())
    figures.bridge_drops = udp_drops({farm.bridge[1]})
    figures.farm_drops = udp_drops(set(farm.ports))


async def _stop_bridge(proc: asyncio.subprocess.Process, figures: Figures) -> None:
    """SIGTERM, then wait (bounded); kill it if it does not exit in time."""
    figures.alive_at_end = proc.returncode is None
    if proc.returncode is None:
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            figures.killed = True
            proc.kill()
            await proc.wait()
        figures.stop_seconds = time.monotonic() - stopping
    figures.exit_code = proc.returncode
    if not figures.broken and (not figures.alive_at_end or figures.killed or proc.returncode):
        figures.broken = f"the bridge did not stop cleanly (exit code {proc.returncode})"


# ---------------------------------------------------------------------- report


def table(rows: list[tuple[str, str, str]]) -> str:
    """Rows aligned in columns: name left, value right, unit left (like python -m benchmarks)."""
    header = ("figure", "value", "unit")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit}"
        for name, value, unit in [header, ("-" * widths[0], "-" * widths[1], "-" * widths[2]),
                                  *rows]
    ]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:+.1f}" if whole else "n/a"


def rows(farm: Farm, f: Figures, stored: int | None, wall: float) -> list[tuple[str, str, str]]:
    """Every figure of the run, in reading order."""
    n = farm.n
    live, expiring, silent = f.held
    churn = f.churn_seconds or 1.0
    out: list[tuple[str, str, str]] = [
        ("bridge: RSS after ramp-up", f"{f.rss_ramp:.1f}", "MiB"),
        ("bridge: RSS at the middle", f"{f.rss_middle:.1f}", "MiB"),
        ("bridge: RSS at the end", f"{f.rss_end:.1f}", "MiB"),
        ("bridge: RSS growth end vs ramp-up", f"{f.rss_end - f.rss_ramp:+.1f}", "MiB"),
        ("bridge: RSS growth end vs ramp-up", _pct(f.rss_end - f.rss_ramp, f.rss_ramp), "%"),
        ("bridge: RSS growth end vs middle", f"{f.rss_end - f.rss_middle:+.1f}", "MiB"),
        ("bridge: RSS growth end vs middle", _pct(f.rss_end - f.rss_middle, f.rss_middle), "%"),
        ("bridge: RSS peak (VmHWM)", f"{f.rss_peak:.1f}", "MiB"),
        ("bridge: CPU during the churn", f"{100 * f.cpu_churn / churn:.0f}", "% of a core"),
        ("bridge: datagrams dropped by its socket", f"{f.bridge_drops:,}", "(kernel, rcvbuf)"),
        ("kernel: default SO_RCVBUF", f"{kernel_rcvbuf():,}", "bytes (net.core.rmem_default)"),
        ("subscriptions: target population", f"{farm.opts.subscriptions:,}", ""),
        ("subscriptions: created", f"{n['created']:,}", "dialogs"),
        ("subscriptions: created silent", f"{n['created silent']:,}", "never answer NOTIFY"),
        ("subscriptions: created rejecting", f"{n['created reject']:,}", "answer NOTIFY 481"),
        ("subscriptions: subscribed (200)", f"{n['subscribed']:,}", ""),
        ("subscriptions: refreshed", f"{n['refreshed']:,}", ""),
        ("subscriptions: unsubscribed", f"{n['unsubscribed']:,}", ""),
        ("subscriptions: final NOTIFY after unsubscribe",
         f"{n['final NOTIFY after unsubscribe']:,}", ""),
        ("subscriptions: final NOTIFY missing",
         f"{n['final NOTIFY missing after unsubscribe']:,}", "after 35 s"),
        ("subscriptions: left to expire", f"{n['left to expire']:,}", ""),
        ("subscriptions: expired by the bridge", f"{n['expired by the bridge']:,}",
         "timeout NOTIFY seen"),
        ("subscriptions: expired early", f"{n['expired early by the bridge']:,}", ""),
        ("subscriptions: expiry NOTIFY missing", f"{n['timeout NOTIFY missing after expiry']:,}",
         "15 s after expiry"),
        ("subscriptions lost: refresh got 481", f"{n['lost: refresh got 481']:,}", "should be 0"),
        ("subscriptions lost: unsubscribe got 481", f"{n['lost: unsubscribe got 481']:,}",
         "should be 0"),
        ("subscriptions lost: terminated while live",
         f"{n['lost: terminated by the bridge while live']:,}", "should be 0"),
        ("silent dialogs dropped by the bridge", f"{n['silent dropped by the bridge']:,}",
         "probe got 481"),
        ("silent dialogs kept by the bridge", f"{n['silent kept by the bridge']:,}",
         "probe got 200"),
        ("rejecting dialogs dropped by the bridge", f"{n['reject dropped by the bridge']:,}",
         "probe got 481"),
        ("rejecting dialogs kept by the bridge", f"{n['reject kept by the bridge']:,}",
         "probe got 200"),
        ("SUBSCRIBE: transactions", f"{n['SUBSCRIBE transactions']:,}", ""),
        ("SUBSCRIBE: rate during the churn", f"{f.subscribes_churn / churn:,.0f}", "/s"),
        ("SUBSCRIBE: retransmissions", f"{n['SUBSCRIBE retransmissions']:,}", ""),
        ("SUBSCRIBE: timed out", f"{sum(v for k, v in n.items() if k.endswith('timed out')):,}",
         "no answer in 32 s"),
        ("SUBSCRIBE: answered 200", f"{n['answer 200']:,}", ""),
        ("SUBSCRIBE: answered 481", f"{n['answer 481']:,}", ""),
        ("SUBSCRIBE: answered 503", f"{n['answer 503']:,}", "not in sync yet, or a limit"),
        ("SUBSCRIBE: answered other", f"{n['answer other']:,}", ""),
        ("NOTIFY: received", f"{n['NOTIFY received']:,}", ""),
        ("NOTIFY: rate during the churn", f"{f.notifies_churn / churn:,.0f}", "/s"),
        ("NOTIFY: resent by the bridge", f"{n['NOTIFY resent by the bridge']:,}",
         "retransmissions"),
        ("NOTIFY: answered 200", f"{n['NOTIFY answered 200']:,}", ""),
        ("NOTIFY: answered 481 (rejecting)", f"{n['NOTIFY answered 481 (rejecting)']:,}", ""),
        ("NOTIFY: ignored (silent)", f"{n['NOTIFY ignored (silent)']:,}", ""),
        ("NOTIFY: for unknown dialogs", f"{n['NOTIFY for unknown dialog (481)']:,}",
         "answered 481"),
        ("farm: datagrams dropped by its sockets", f"{f.farm_drops:,}", "(kernel, rcvbuf)"),
        ("farm: largest send backlog in the churn", f"{farm.max_backlog:,}", "SUBSCRIBEs"),
        ("farm: latest refresh after due", f"{farm.max_late:.2f}", "s"),
        ("farm: stray responses", f"{n['stray responses']:,}", "resent or late"),
        ("store: live well-behaved (farm view)", f"{live:,}", "at SIGTERM"),
        ("store: + left to expire, not yet expired", f"{expiring:,}", ""),
        ("store: + silent, not yet given up", f"{silent:,}", ""),
        ("store: rows after stop", "unreadable" if stored is None else f"{stored:,}",
         "SELECT count(*)"),
        ("bridge: alive at the end", "yes" if f.alive_at_end else "no", ""),
        ("bridge: exit code after SIGTERM", str(f.exit_code),
         "killed after 30 s" if f.killed else ""),
        ("bridge: time to stop", f"{f.stop_seconds:.2f}", "s"),
        ("run: ramp-up, 99 % subscribed", f"{f.ramp_99_seconds:.1f}", "s"),
        ("run: ramp-up, all subscribed", f"{f.ramp_seconds:.1f}", "s"),
        ("run: churn", f"{f.churn_seconds:.1f}", "s"),
        ("run: wall time", f"{wall:.1f}", "s"),
    ]
    # Why the bridge ended the live ones, right under their count.
    at = next(i for i, row in enumerate(out) if row[0].endswith("terminated while live")) + 1
    out[at:at] = [(f"  {key.partition(', ')[2]}", f"{value:,}", "Subscription-State")
                  for key, value in sorted(n.items())
                  if key.startswith("terminated while live, ")]  # fmt: skip
    if n["farm: ICMP errors"]:
        out.append(("farm: ICMP errors", f"{n['farm: ICMP errors']:,}", "bridge not listening"))
    return out


def options() -> Options:
    """The command line, with --quick filling in what was not given."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subscriptions", type=int, help="population (10000; quick: 500)")
    parser.add_argument("--minutes", type=float, help="churn duration (3; quick: 20 s)")
    parser.add_argument("--quick", action="store_true", help="500 subscriptions, 20 s")
    parser.add_argument("--rate", type=float, default=2000, help="SUBSCRIBEs/s at most")
    parser.add_argument("--sockets", type=int, default=8, help="farm UDP sockets")
    parser.add_argument("--silent-share", type=float, default=0.02,
                        help="dialogs that never answer NOTIFYs")  # fmt: skip
    parser.add_argument("--reject-share", type=float, default=0.01,
                        help="dialogs that answer NOTIFYs with 481")  # fmt: skip
    parser.add_argument("--unsubscribe-share", type=float, default=0.005,
                        help="of the population, unsubscribed per second")  # fmt: skip
    parser.add_argument("--expire-share", type=float, default=0.005,
                        help="of the population, left to expire per second")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="random seed of the farm")
    args = parser.parse_args()
    subscriptions = args.subscriptions or (500 if args.quick else 10_000)
    seconds = round(args.minutes * 60) if args.minutes else (20 if args.quick else 180)
    if subscriptions < 1 or seconds < 1 or args.rate < 1 or args.sockets < 1:
        parser.error("--subscriptions, --minutes, --rate and --sockets must be positive")
    return Options(
        subscriptions=subscriptions, seconds=seconds, rate=args.rate, sockets=args.sockets,
        silent_share=args.silent_share, reject_share=args.reject_share,
        unsubscribe_share=args.unsubscribe_share, expire_share=args.expire_share,
        seed=args.seed, quick=args.quick,
    )  # fmt: skip


def main() -> int:
    """Run the soak, print the table; 1 when the run itself broke."""
    opts = options()
    started = time.perf_counter()
    figures, stderr = Figures(), Stderr()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        budget = opts.seconds + RAMP_TIMEOUT + READY_TIMEOUT + GRACE
        try:
            farm = asyncio.run(asyncio.wait_for(soak(opts, workdir, figures, stderr), budget))
        except TimeoutError:
            print(f"soak: the run did not finish within {budget:.0f} s", file=sys.stderr)
            return 1
        stored = store_rows(workdir / "subs.sqlite3")
    wall = time.perf_counter() - started
    print(f"snom-blf-bridge soak: {opts.subscriptions:,} subscriptions, {opts.seconds} s churn, "
          f"{opts.sockets} UDP sockets, Python {sys.version.split()[0]}")  # fmt: skip
    lifted = limit_overrides(opts.subscriptions)
    print(f"bridge limits lifted (one farm address stands for every phone): "
          f"{', '.join(lifted) or 'none'}")  # fmt: skip
    print(table(rows(farm, figures, stored, wall)))
    print(f"bridge stderr: {stderr.lines} lines: {stderr.config_warnings} start-up config "
          f"warnings, {stderr.warnings} other warnings, {stderr.errors} errors")  # fmt: skip
    for line in stderr.first:
        print(f"  {line}")
    if stderr.last:
        print(f"  ... ({stderr.lines - len(stderr.first) - len(stderr.last)} more lines) ...")
        for line in stderr.last:
            print(f"  {line}")
    if figures.broken:
        print(f"soak: the run broke: {figures.broken}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
