"""``python -m benchmarks.wire [--watchers 1,2000,5000] [--rounds N] [--capture C] [--loop L]``:
the fan-out timed on the wire, from the Asterisk-side trigger to each watcher's first early NOTIFY.

The real bridge runs in its own process against the fake Asterisk (``load.FakeAsterisk``); the
watchers are one ``load.Swarm`` socket. The trigger is the fake Asterisk's write of the ringing
``Newstate`` (the event Asterisk sends right after its INVITE to the ringing phone has been
answered 180); the bridge then asks for the leg's ids with ``Getvar`` (a round trip) and tells
every watcher. Times are taken on the loopback interface:

- ``--capture dumpcap`` (the default when dumpcap can capture on ``lo``): the trigger is the TCP
  segment that carries the ``Newstate``, each watcher's time is its first early NOTIFY's datagram,
  both as dumpcap stamped them (the lab's ``wire_fanout.py`` reads its captures the same way);
- ``--capture socket``: the trigger is the clock read just before the write, each NOTIFY's time the
  kernel's arrival stamp on the swarm's socket (SO_TIMESTAMPNS): no capture rights needed (CI).

Per size it prints the first, p50 and p99 watcher of each round (median over the rounds, and the
worst round), and at 500 watchers or more how long a SUBSCRIBE sent in the middle of the fan-out
(once a tenth of the watchers have their NOTIFY) waits for its 200, and whether the fan-out was
still going on when the 200 came.

After the rings of each size comes the floor: the same early NOTIFYs (each watcher's own, its
CSeq one higher), built beforehand, sent back to back by a plain Python socket in a process of
its own to the same swarm (``--floor-send``). Its spread, first to p99 watcher, is what the
kernel and one ``sendto`` per datagram cost on this machine with a live receiver; the bridge's
spread is printed beside it (the bridge's p99 cannot be below the trigger's round trip plus it).

Targets (issue 24; benchmarks, not tests): first NOTIFY <= 3 ms at every size; p99 <= 10 ms at
2,000 watchers and <= 25 ms at 5,000; the mid-fan-out SUBSCRIBE answered within 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load import (
    HOST,
    BridgeProcess,
    Call,
    FakeAsterisk,
    Swarm,
    Watcher,
    clock,
    wait_until,
)
from benchmarks.targets import Row, percentile, table
from bridge.config import EVENT_LOOPS

KEY, SIDE_KEY = "1000", "1001"  # the ringing key, and the key of the mid-fan-out SUBSCRIBE
_numbers = itertools.count(1)


@dataclass(slots=True)
class Round:
    """One ring: each watcher's first early NOTIFY, in seconds after the trigger."""

    latencies: list[float]
    subscribe_wait: float | None = None  # mid-fan-out SUBSCRIBE → its 200
    subscribe_mid: bool = False  # the 200 came before the fan-out's last NOTIFY


@dataclass(slots=True)
class SideWatcher:
    """A phone that subscribes once, in the middle of a fan-out, from its own socket."""

    swarm: Swarm
    sent: float = 0.0
    answered: float = 0.0
    early_then: int = 0  # early NOTIFYs the big swarm had when the 200 came
    watchers: list[Watcher] = field(default_factory=list)

    def subscribe(self) -> None:
        """Send one SUBSCRIBE now (from inside the swarm's reading: mid fan-out)."""
        n = len(self.swarm.watchers)
        call_id = f"side-{n}@{HOST}".encode()
        w = self.swarm.watchers[call_id] = Watcher(n, SIDE_KEY, call_id)
        self.watchers.append(w)
        self.sent = clock()
        self.swarm._start(w, self.swarm.loop.time())


class Capture:
    """dumpcap on the loopback interface, written to a pcap file while the rounds run."""

    def __init__(self, ami_port: int, swarm_port: int) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="wire-")) / "fanout.pcap"
        self.filter = f"(tcp src port {ami_port}) or (udp dst port {swarm_port})"
        self.proc: asyncio.subprocess.Process | None = None
        self.ami_port, self.swarm_port = ami_port, swarm_port

    @staticmethod
    def usable() -> bool:
        """Whether dumpcap is installed and may capture on ``lo`` here."""
        dumpcap = shutil.which("dumpcap")
        if dumpcap is None:
            return False
        done = subprocess.run([dumpcap, "-D"], capture_output=True, text=True, timeout=10,
                              check=False)  # fmt: skip
        return done.returncode == 0 and any(line.split()[-1:] == ["lo"] or ". lo" in line
                                            for line in done.stdout.splitlines())  # fmt: skip

    async def start(self) -> None:
        """Start capturing (waits until dumpcap says it is)."""
        self.proc = await asyncio.create_subprocess_exec(
            "dumpcap", "-q", "-P", "-B", "128", "-i", "lo", "-f", self.filter,
            "-w", str(self.path), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # dumpcap opens the interface and applies the filter
        if self.proc.returncode is not None:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise RuntimeError(f"dumpcap failed: {err.decode().strip()}")

    async def stop(self) -> None:
        """Stop capturing; the file is complete afterwards."""
        await asyncio.sleep(0.5)  # the last datagrams reach the capture buffer
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)

    def rounds(self) -> list[list[float]]:
        """Per trigger found in the capture: each watcher's first early NOTIFY after it."""
        triggers: list[float] = []
        per_round: list[dict[bytes, float]] = []
        for stamp, proto, sport, dport, payload in read_pcap(self.path):
            if proto == 6 and sport == self.ami_port and _rings(payload):
                triggers.append(stamp)
                per_round.append({})
            elif proto == 17 and dport == self.swarm_port and payload.startswith(b"NOTIFY "):
                if not per_round or b"<state>early</state>" not in payload:
                    continue
                call_id = _header(payload, b"Call-ID")
                if call_id.startswith(b"side-"):
                    continue
                per_round[-1].setdefault(call_id, stamp - triggers[-1])
        return [sorted(found.values()) for found in per_round]

    def close(self) -> None:
        """Remove the capture file."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _rings(payload: bytes) -> bool:
    """Whether an AMI segment carries the callee's ringing Newstate (the trigger)."""
    at = payload.find(b"Event: Newstate\r\n")
    return at >= 0 and b"ChannelState: 5\r\n" in payload[at : payload.find(b"\r\n\r\n", at)]


def _header(payload: bytes, name: bytes) -> bytes:
    start = payload.find(b"\r\n" + name + b": ")
    if start < 0:
        return b""
    start += len(name) + 4
    return payload[start : payload.find(b"\r\n", start)]


def read_pcap(path: Path) -> list[tuple[float, int, int, int, bytes]]:
    """(stamp in seconds, IP protocol, source port, destination port, payload) of every IPv4
    TCP/UDP packet of a pcap file (Ethernet or Linux cooked link layer)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    nano = magic == 0xA1B23C4D
    link = struct.unpack_from("<I", data, 20)[0]
    l2 = {1: 14, 113: 16, 0: 4}.get(link, 14)
    out = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16
        packet = data[offset : offset + incl]
        offset += incl
        ip = packet[l2:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] not in (6, 17):
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack_from(">HH", ip, ihl)
        # UDP: an 8-byte header; TCP: its data offset
        payload = ip[ihl + 8 :] if ip[9] == 17 else ip[ihl + (ip[ihl + 12] >> 4) * 4 :]
        stamp = sec + frac / (1e9 if nano else 1e6)
        out.append((stamp, ip[9], sport, dport, payload))
    return out


class _SideSwarm(Swarm):
    """A Swarm that keeps when each SUBSCRIBE answer arrived (kernel stamp)."""

    answered_at: float = 0.0

    def _response(self, data: bytes, now: float) -> None:
        if data.startswith(b"SIP/2.0 200") and b" SUBSCRIBE\r\n" in data:
            self.answered_at = now
        super()._response(data, now)


class _RecordingSwarm(Swarm):
    """A Swarm that keeps each watcher's newest early NOTIFY (the floor round replays them)."""

    def __init__(self, bridge: tuple[str, int], run_id: str = "b") -> None:
        super().__init__(bridge, run_id)
        self.early: dict[bytes, bytes] = {}

    def _notify(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if b"<state>early</state>" in data:
            self.early[_header(data, b"Call-ID")] = data
        super()._notify(data, addr, now)


def _replayed(notify: bytes, cseq: int) -> bytes:
    """``notify`` with CSeq ``cseq`` (same length or one digit more: the floor's datagrams are
    the bridge's own)."""
    start = notify.index(b"\r\nCSeq: ") + 8
    end = notify.index(b" ", start)
    return notify[:start] + str(cseq).encode() + notify[end:]


async def _floor(swarm: _RecordingSwarm, rounds: int) -> list[float]:
    """Per round: the spread (first to p99 arrival) of the swarm's early NOTIFYs sent back to
    back, prebuilt, by another process (``--floor-send``)."""
    spreads = []
    for n in range(rounds):
        datagrams = [_replayed(data, swarm.watchers[call_id].last_cseq + 1)
                     for call_id, data in swarm.early.items()]  # fmt: skip
        with tempfile.NamedTemporaryFile(suffix=".bin") as batch:
            for data in datagrams:
                batch.write(struct.pack("!I", len(data)) + data)
            batch.flush()
            await swarm.barrier()
            swarm.reset()
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.wire", "--floor-send",
                f"{HOST}:{swarm.port}", batch.name, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            await sender.wait()
            count = len(datagrams)
            if not await wait_until(lambda c=count: swarm.tally.by_state["early"] >= c, 15):
                raise RuntimeError(f"floor round {n}: {swarm.tally.by_state['early']} of "
                                   f"{count} replayed NOTIFYs arrived")  # fmt: skip
        arrivals = sorted(w.at for w in swarm.watchers.values() if w.state == "early")
        spreads.append(percentile(arrivals, 0.99) - arrivals[0])
    return spreads


def floor_send(target: str, path: str) -> None:
    """Send every datagram of ``path`` (length-prefixed) to ``target``, back to back."""
    host, _, port = target.rpartition(":")
    data = Path(path).read_bytes()
    datagrams, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from("!I", data, at)
        datagrams.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    address = (host, int(port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sendto = sock.sendto
        for datagram in datagrams:
            sendto(datagram, address)


async def one_size(
    watchers: int, rounds: int, capture: str, loop: str, profile: str = ""
) -> list[Row]:
    """Ring the key ``rounds`` times with ``watchers`` watchers; the figures of this size.
    ``profile``: a folder for py-spy's raw stacks of the bridge ("": not sampled)."""
    ami = FakeAsterisk([KEY, SIDE_KEY])
    await ami.start()
    spy = f"{profile}/wire-{watchers}.txt" if profile else ""
    bridge = BridgeProcess(ami.port, event_loop=loop, profile=spy)
    swarm: _RecordingSwarm | None = None
    side: _SideSwarm | None = None
    cap: Capture | None = None
    try:
        await bridge.start()
        if not await wait_until(lambda: bool(ami.synced) or not bridge.alive(), 30, 0.01):
            raise RuntimeError("the bridge did not log in to the fake Asterisk")
        await asyncio.sleep(0.2)
        swarm = _RecordingSwarm(bridge.address, "w")
        got = await swarm.subscribe([KEY] * watchers, window=300, limit=120)
        if got != watchers:
            raise RuntimeError(f"only {got} of {watchers} SUBSCRIBEs answered")
        if not await wait_until(lambda: all(w.last_cseq for w in swarm.watchers.values()), 30):
            raise RuntimeError("not every watcher got its first NOTIFY")
        side = _SideSwarm(bridge.address, "x")
        if capture == "dumpcap":
            cap = Capture(ami.port, swarm.port)
            await cap.start()
        done = [await _ring(ami, swarm, side, watchers) for _ in range(rounds)]
        if cap is not None:
            await cap.stop()
            wired = [r for r in cap.rounds() if r]
            if len(wired) != rounds or any(len(r) != watchers for r in wired):
                raise RuntimeError(f"capture: {[len(r) for r in wired]} early NOTIFYs per round, "
                                   f"expected {rounds} rounds of {watchers}")  # fmt: skip
            for found, latencies in zip(done, wired, strict=True):
                found.latencies = latencies
        floor = await _floor(swarm, rounds) if watchers > 1 else []
    finally:
        for s in (swarm, side):
            if s is not None:
                s.close()
        if cap is not None:
            cap.close()
        stderr = await bridge.stop()
        await ami.close()
        for line in [x for x in stderr.splitlines() if "ERROR" in x or "Traceback" in x][:5]:
            print(f"  bridge stderr: {line}", file=sys.stderr)
    return _rows(watchers, done, floor)


async def _ring(ami: FakeAsterisk, swarm: Swarm, side: _SideSwarm, watchers: int) -> Round:
    call = Call(next(_numbers), "3000", KEY)
    ami.send(call.setup())
    await asyncio.sleep(0.005)
    await swarm.barrier()
    # The 200s to the last fan-out may wait on the bridge's responses socket, which the barrier
    # (a request) does not queue behind: a little time for them, at about 4 µs each.
    await asyncio.sleep(0.01 + watchers * 4e-6)
    swarm.reset()
    phone = SideWatcher(side)
    if watchers >= 500:  # a phone subscribes once a tenth of the watchers have the news

        def on_notify(w: Watcher) -> None:
            if swarm.tally.by_state["early"] == watchers // 10 and not phone.sent:
                phone.subscribe()

        swarm.on_notify = on_notify
    side.answered_at = 0.0
    start = ami.send(call.ring())
    if not await wait_until(lambda: swarm.tally.by_state["early"] >= watchers, 15.0):
        raise RuntimeError(f"{swarm.tally.by_state['early']} of {watchers} early NOTIFYs in 15 s")
    swarm.on_notify = None
    latencies = sorted(w.at - start for w in swarm.watchers.values() if w.state == "early")
    found = Round(latencies)
    if phone.sent:
        await wait_until(lambda: side.answered_at > 0, 2.0)
        if side.answered_at:
            found.subscribe_wait = side.answered_at - phone.sent
            found.subscribe_mid = side.answered_at < swarm.tally.last["early"]
    swarm.reset()
    ami.send(call.hangup())
    if not await wait_until(lambda: swarm.tally.by_state["idle"] >= watchers, 15.0):
        raise RuntimeError("the idle NOTIFYs did not all come")
    await side.barrier()
    return found


def ms(seconds: float) -> str:
    """Milliseconds, two decimals."""
    return f"{seconds * 1e3:.2f} ms"


def _rows(watchers: int, rounds: list[Round], floor: list[float]) -> list[Row]:
    firsts = [r.latencies[0] for r in rounds]
    p50s = [percentile(r.latencies, 0.5) for r in rounds]
    p99s = [percentile(r.latencies, 0.99) for r in rounds]
    p99_target = {2000: 0.010, 5000: 0.025}.get(watchers)
    label = f"{watchers:,} watcher{'s' if watchers > 1 else ''}"
    rows = [
        Row(f"wire, {label}: first NOTIFY (median of {len(rounds)} rounds; worst)", "<= 3 ms",
            f"{ms(statistics.median(firsts))}; {ms(max(firsts))}",
            statistics.median(firsts) <= 0.003),
        Row(f"wire, {label}: p50 watcher (median; worst)", "",
            f"{ms(statistics.median(p50s))}; {ms(max(p50s))}"),
        Row(f"wire, {label}: p99 watcher (median; worst)",
            f"<= {p99_target * 1e3:g} ms" if p99_target else "",
            f"{ms(statistics.median(p99s))}; {ms(max(p99s))}",
            statistics.median(p99s) <= p99_target if p99_target else None),
    ]  # fmt: skip
    if floor:
        spreads = [percentile(r.latencies, 0.99) - r.latencies[0] for r in rounds]
        bridge, kernel = statistics.median(spreads), statistics.median(floor)
        rows += [
            Row(f"wire, {label}: first to p99 watcher, the bridge (median; worst)", "",
                f"{ms(bridge)}; {ms(max(spreads))}"),
            Row(f"floor, {label}: first to p99, the same NOTIFYs prebuilt and sent back to back "
                "(median; worst)", "", f"{ms(kernel)}; {ms(max(floor))}"),
            Row(f"floor, {label}: the bridge's spread / the floor's", "",
                f"{bridge / kernel:.2f}x ({(bridge - kernel) / watchers * 1e6:.2f} µs per "
                "watcher more)"),
        ]  # fmt: skip
    waits = [r.subscribe_wait for r in rounds if r.subscribe_wait is not None]
    if waits:
        mid = sum(r.subscribe_mid for r in rounds)
        rows.append(Row(f"wire, {label}: SUBSCRIBE sent mid fan-out → 200 (median; worst; "
                        f"{mid}/{len(waits)} answered before the last NOTIFY)", "<= 5 ms",
                        f"{ms(statistics.median(waits))}; {ms(max(waits))}",
                        statistics.median(waits) <= 0.005))  # fmt: skip
    elif watchers >= 500:
        rows.append(Row(f"wire, {label}: SUBSCRIBE sent mid fan-out", "<= 5 ms", "no 200", False))
    return rows


def main() -> int:
    """Parse the arguments, run every size, print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.wire",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--watchers", default="1,2000,5000",
                        help="comma-separated sizes (default: 1,2000,5000)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10, help="rings per size (default: 10)")
    parser.add_argument(
        "--capture",
        choices=("auto", "dumpcap", "socket"),
        default="auto",
        help="how NOTIFYs are timed (auto: dumpcap when it can capture)",
    )
    parser.add_argument("--loop", choices=EVENT_LOOPS, default="auto",
                        help="the bridge's runtime.event_loop (default: auto)")  # fmt: skip
    parser.add_argument("--profile", metavar="DIR", default="",
                        help="py-spy samples of the bridge: DIR/wire-<watchers>.txt")  # fmt: skip
    parser.add_argument("--floor-send", nargs=2, metavar=("HOST:PORT", "FILE"),
                        help=argparse.SUPPRESS)  # the floor round's sender process  # fmt: skip
    args = parser.parse_args()
    if args.floor_send:
        floor_send(*args.floor_send)
        return 0
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.watchers.split(",") if n.strip()]
    capture = args.capture
    if capture == "auto":
        capture = "dumpcap" if Capture.usable() else "socket"
    started, load = time.perf_counter(), os.getloadavg()
    rows: list[Row] = []
    for watchers in sizes:
        run = one_size(watchers, args.rounds, capture, args.loop, args.profile)
        rows += asyncio.run(asyncio.wait_for(run, 900))
    print(f"snom-blf-bridge wire fan-out (timed by {capture}), bridge event loop {args.loop}, "
          f"Python {platform.python_version()}, {os.cpu_count()} cores; load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print(table(rows))
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
