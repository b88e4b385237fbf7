"""``python -m benchmarks.targets [--quick] [--loop L]``: the performance targets, measured on the
real bridge over loopback UDP and TCP, one run each, printed as a table with pass/fail.

The bridge runs as its own process (``python -m bridge run --set …``), so it has one core to
itself and its RSS is the whole process; the fake Asterisk (``load.FakeAsterisk``) and the watcher
swarm (``load.Swarm``) run here, on the other core. Every time is taken here, on one clock: from
just before the AMI event is written to the moment the NOTIFY is read off the swarm's socket.

Targets (issue "Step 7 — Performance"):

- fan-out: 2,000 watchers of one extension, AMI ``Newstate`` (ringing) → last early NOTIFY: p99
  under 100 ms; sustained 25,000 NOTIFY/s or more (the bridge is one process: one core).
- latency, one watcher: AMI event in → NOTIFY out, Getvar round trip included: p50 < 2 ms,
  p99 < 5 ms.
- memory: 50,000 live subscriptions in under 150 MB RSS of the whole process.
- AMI ingest: 50,000 AMI events/s through parser and tracker (Getvars answered on the way).
- resync: 5,000 extensions with 500 live calls resynced after a reconnect in under 1 s.

``--quick`` runs smaller sizes (a smoke run: its figures are not the targets' sizes).
``--loop`` sets the bridge's ``runtime.event_loop``: ``auto`` (the default, as shipped: uvloop
when installed), ``uvloop`` or ``asyncio``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load import (
    BridgeProcess,
    Call,
    FakeAsterisk,
    Swarm,
    clock,
    udp_drops,
    wait_until,
)
from bridge.config import EVENT_LOOPS
from bridge.event_loop import EventLoopUnavailable, choose_event_loop

SMALL_HINTS = [str(1000 + i) for i in range(10)]  # the fan-out and latency PBX
FANOUT_EXTEN, LATENCY_EXTEN = "1000", "1001"
INGEST_RATE = 50_000  # AMI events per second offered in the ingest run
CHANGES_PER_SECOND = 50  # sustained rate: how often the watched extension changes
START_TIMEOUT = 30.0  # the bridge must log in and ask for the resync lists within this
_numbers = itertools.count(1)  # call numbers: every call's channels are new to the bridge


@dataclass(slots=True)
class Row:
    """One line of the table; ``passed`` None for a figure without a target."""

    figure: str
    target: str
    result: str
    passed: bool | None = None


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each run is (full: the targets' sizes)."""

    fanout_watchers: int
    fanout_cycles: int
    latency_cycles: int
    sustained_seconds: float
    memory_subscriptions: int
    resync_extensions: int
    resync_calls: int
    ingest_events: int
    settle: float  # seconds after the memory ramp-up before RSS is read again (0: not at all)


@dataclass(frozen=True, slots=True)
class Options:
    """How the bridge is run: its event loop, sampled by py-spy into a folder or not."""

    event_loop: str = "auto"
    profile: str = ""  # folder for py-spy's raw stacks, one file per group ("": no sampling)

    def bridge(self, group: str, ami_port: int, *settings: str) -> BridgeProcess:
        """The bridge process of one group of targets."""
        profile = f"{self.profile}/{group}.txt" if self.profile else ""
        return BridgeProcess(ami_port, *settings, event_loop=self.event_loop, profile=profile)


# SUBSCRIBE answers are kept 64*T1 = 32 s for retransmissions (RFC 3261 §17.2.2): 33 s after the
# ramp-up, what is left is what the subscriptions cost for good.
FULL = Sizes(2000, 100, 300, 5.0, 50_000, 5000, 500, 200_000, 33.0)
QUICK = Sizes(500, 10, 40, 1.0, 5_000, 1000, 100, 20_000, 0.0)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.4999)))
    return ordered[rank - 1]


async def _started(ami: FakeAsterisk, bridge: BridgeProcess) -> None:
    await bridge.start()
    if not await wait_until(lambda: bool(ami.synced) or not bridge.alive(), START_TIMEOUT, 0.01):
        raise RuntimeError("the bridge did not log in to the fake Asterisk")
    if not bridge.alive():
        raise RuntimeError("the bridge exited at start: " + await bridge.stop())
    await asyncio.sleep(0.2)  # the resync lists are delivered: SUBSCRIBEs get 200, not 503


async def _subscribed(swarm: Swarm, resources: list[str], limit: float) -> None:
    """Subscribe and wait until every watcher has its first NOTIFY answered."""
    got = await swarm.subscribe(resources, window=300, limit=limit)
    if got != len(resources):
        raise RuntimeError(f"only {got} of {len(resources)} SUBSCRIBEs answered 200: "
                           f"{dict(swarm.answers)} {dict(swarm.errors)}")  # fmt: skip
    watchers = list(swarm.watchers.values())
    if not await wait_until(lambda: all(w.last_cseq for w in watchers), 30, 0.01):
        raise RuntimeError("not every watcher got its first NOTIFY")
    await swarm.barrier()


def ms(seconds: float) -> str:
    """Milliseconds, two decimals below 10."""
    value = seconds * 1e3
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


# ---------------------------------------------------------------------------- the small PBX


async def latency(ami: FakeAsterisk, swarm: Swarm, cycles: int) -> list[Row]:
    """One watcher: Newstate (ringing) written → early NOTIFY read, Getvars included."""
    samples: list[float] = []
    asked: list[float] = []  # Newstate written → first Getvar read by the fake Asterisk
    answered: list[float] = []  # last Getvar answer written → NOTIFY read
    for _ in range(cycles):
        call = Call(next(_numbers), "3001", LATENCY_EXTEN)
        ami.send(call.setup())
        await asyncio.sleep(0.003)
        swarm.reset()
        start = ami.send(call.ring())
        if not await wait_until(lambda: swarm.tally.by_state["early"] >= 1, 2.0):
            raise RuntimeError("latency: no early NOTIFY within 2 s")
        samples.append(swarm.tally.last["early"] - start)
        asked.append(ami.getvar_asked.get(call.dest.name, start) - start)
        answered.append(swarm.tally.last["early"] - ami.getvar_answered.get(call.dest.name, 0))
        swarm.reset()
        ami.send(call.hangup())
        if not await wait_until(lambda: swarm.tally.by_state["idle"] >= 1, 2.0):
            raise RuntimeError("latency: no idle NOTIFY within 2 s")
        await asyncio.sleep(0.003)
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    return [
        Row(f"latency, 1 watcher: Newstate → NOTIFY p50 ({cycles} calls)", "< 2 ms", ms(p50),
            p50 < 0.002),
        Row("latency, 1 watcher: Newstate → NOTIFY p99", "< 5 ms", ms(p99), p99 < 0.005),
        Row("latency, 1 watcher: max", "", ms(max(samples))),
        Row("latency: Newstate written → first Getvar read (p50)", "",
            ms(statistics.median(asked))),
        Row("latency: last Getvar answered → NOTIFY read (p50)", "",
            ms(statistics.median(answered))),
    ]  # fmt: skip


async def fanout(ami: FakeAsterisk, swarm: Swarm, watchers: int, cycles: int) -> list[Row]:
    """Every watcher of one extension: Newstate written → the last early NOTIFY read."""
    samples, firsts = [], []
    for _ in range(cycles):
        call = Call(next(_numbers), "3000", FANOUT_EXTEN)
        ami.send(call.setup())
        await asyncio.sleep(0.003)
        await swarm.barrier()  # the 200s of the previous round are handled: the bridge is idle
        swarm.reset()
        start = ami.send(call.ring())
        if not await wait_until(lambda: swarm.tally.by_state["early"] >= watchers, 10.0):
            raise RuntimeError(f"fan-out: {swarm.tally.by_state['early']} of {watchers} "
                               "early NOTIFYs within 10 s")  # fmt: skip
        samples.append(swarm.tally.last["early"] - start)
        firsts.append(swarm.tally.first - start)
        swarm.reset()
        ami.send(call.hangup())
        if not await wait_until(lambda: swarm.tally.by_state["idle"] >= watchers, 10.0):
            raise RuntimeError("fan-out: the idle NOTIFYs did not all come")
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    return [
        Row(f"fan-out, {watchers:,} watchers: Newstate → last NOTIFY p99 ({cycles} calls)",
            "< 100 ms", ms(p99), p99 < 0.1),
        Row("fan-out: Newstate → last NOTIFY p50", "", ms(p50)),
        Row("fan-out: Newstate → first NOTIFY p50", "", ms(statistics.median(firsts))),
        Row("fan-out: NOTIFYs per second within one fan-out (p50)", "",
            f"{watchers / p50:,.0f} /s"),
    ]  # fmt: skip


async def sustained(
    ami: FakeAsterisk, swarm: Swarm, bridge: BridgeProcess, seconds: float
) -> list[Row]:
    """The extension's state changes 50 times a second (the connected line of an answered call),
    more often than one fan-out to every watcher takes: every 200 lets the bridge send that
    watcher the newest state at once, so the bridge runs flat out. NOTIFYs read per second over
    the window."""
    call = Call(next(_numbers), "3000", FANOUT_EXTEN)
    ami.send([*call.setup(), *call.ring(), *call.answer()])
    dest = call.dest
    stop = asyncio.Event()

    async def changes() -> None:
        for n in itertools.count():
            if stop.is_set() or n > 100_000:
                return
            dest.connected = f"{4000 + n % 5000}"
            ami.send([dest.event("NewConnectedLine")])
            await asyncio.sleep(1 / CHANGES_PER_SECOND)

    task = asyncio.create_task(changes())
    try:
        await asyncio.sleep(1.0)  # warm up: every subscription in the loop
        swarm.reset()
        cpu, start, own = bridge.cpu_seconds(), clock(), time.process_time()
        await asyncio.sleep(seconds)
        tally, elapsed = swarm.reset(), clock() - start
        used, own = bridge.cpu_seconds() - cpu, time.process_time() - own
    finally:
        stop.set()
        await task
    ami.send(call.hangup())
    await asyncio.sleep(0.5)
    await swarm.barrier(30)
    rate = tally.notifies / elapsed
    return [
        Row(f"sustained NOTIFY rate, {len(swarm.watchers) - 1:,} watchers, {seconds:g} s",
            ">= 25,000 /s", f"{rate:,.0f} /s", rate >= 25_000),
        Row("sustained: CPU during the window, bridge (harness)", "one core",
            f"{used / elapsed:.0%} ({own / elapsed:.0%}) of a core"),
        Row("sustained: NOTIFY retransmissions seen", "", f"{tally.resent:,}"),
        Row("sustained: datagrams dropped by the kernel (swarm, bridge)", "",
            f"{swarm.drops():,}, {udp_drops(bridge.sip_port):,}"),
    ]  # fmt: skip


async def small_pbx(sizes: Sizes, opts: Options) -> list[Row]:
    """Latency, fan-out and sustained rate on one bridge with ten extensions."""
    ami = FakeAsterisk(SMALL_HINTS)
    await ami.start()
    bridge = opts.bridge("small", ami.port)
    swarm: Swarm | None = None
    try:
        await _started(ami, bridge)
        swarm = Swarm(bridge.address, "s")
        await _subscribed(swarm, [LATENCY_EXTEN] + [FANOUT_EXTEN] * sizes.fanout_watchers, 120)
        rows = await latency(ami, swarm, sizes.latency_cycles)
        rows += await fanout(ami, swarm, sizes.fanout_watchers, sizes.fanout_cycles)
        rows += await sustained(ami, swarm, bridge, sizes.sustained_seconds)
        return rows
    finally:
        if swarm is not None:
            swarm.close()
        await _stop(bridge, ami)


async def _stop(bridge: BridgeProcess, ami: FakeAsterisk) -> None:
    stderr = await bridge.stop()
    await ami.close()
    problems = [line for line in stderr.splitlines() if "ERROR" in line or "Traceback" in line]
    for line in problems[:10]:
        print(f"  bridge stderr: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------- the big PBX


def _calls(hints: list[str], first: int, count: int, answered: bool) -> list[Call]:
    """``count`` calls between neighbouring extensions from ``hints[first]`` on; ringing or
    answered (the channels' states are moved; the events themselves are not sent)."""
    calls = []
    for k in range(count):
        call = Call(next(_numbers), hints[first + 2 * k], hints[first + 2 * k + 1])
        call.setup()
        call.ring()
        if answered:
            call.answer()
        calls.append(call)
    return calls


async def resync(ami: FakeAsterisk, swarm: Swarm, hints: list[str], calls: int) -> list[Row]:
    """Asterisk drops the connection; meanwhile a tenth of the calls end and as many new ones
    ring. Timed from the Login of the reconnect to the last NOTIFY of a key that changed: the
    idle ones only go out once the whole resync is in (stale channels are swept at its end)."""
    ended_calls = [c for c in ami_calls(ami) if c.dest.state == 6][: calls // 10]
    busy = 2 * calls
    new_calls = _calls(hints, busy, calls // 10, answered=False)  # extensions not busy yet
    logins = len(ami.logins)
    ami.drop()
    ami.remove_calls(ended_calls)
    ami.add_calls(new_calls)
    changed: dict[str, str] = {}
    for call in ended_calls:
        changed[call.caller_exten] = changed[call.callee_exten] = "idle"
    for call in new_calls:
        changed[call.caller_exten], changed[call.callee_exten] = "confirmed", "early"
    if not await wait_until(lambda: len(ami.logins) > logins, 15.0, 0.005):
        raise RuntimeError("resync: the bridge did not log in again within 15 s")
    start = ami.logins[-1]
    watchers = [w for w in swarm.watchers.values() if w.resource in changed]

    def done() -> bool:
        return all(w.at > start and w.state == changed[w.resource] for w in watchers)

    if not await wait_until(done, 15.0):
        missing = sum(1 for w in watchers if not (w.at > start and w.state == changed[w.resource]))
        raise RuntimeError(f"resync: {missing} of {len(watchers)} changed keys not told in 15 s")
    took = max(w.at for w in watchers) - start
    lists = ami.synced[-1] - start
    return [
        Row(f"resync: {len(hints):,} extensions, {calls} calls, after reconnect", "< 1 s",
            ms(took), took < 1.0),
        Row(f"resync: Login → lists written by the fake Asterisk ({len(ami.channels)} channels)",
            "", ms(lists)),
        Row(f"resync: keys changed meanwhile, all told ({len(watchers)})", "", "yes"),
    ]  # fmt: skip


def ami_calls(ami: FakeAsterisk) -> list[Call]:
    """The calls whose channels the fake Asterisk lists now."""
    return [c for c in ami.calls if c.dest.uniqueid in ami.channels]


def _ingest_stream(events: int) -> list[bytes]:
    """About ``events`` AMI events of calls between devices without a hint (answered, then hung
    up; eight calls interleaved)."""
    per_call = sum(len(step) for step in _call_steps(Call(0, "50000", "60000")))
    calls = max(8, events // per_call)
    data: list[bytes] = []
    for group in range(0, calls, 8):
        steps = [_call_steps(Call(next(_numbers), f"{50000 + group + i}", f"{60000 + group + i}"))
                 for i in range(8)]  # fmt: skip
        for step in zip(*steps, strict=True):
            data.extend(itertools.chain.from_iterable(step))
    return data


def _call_steps(call: Call) -> list[list[bytes]]:
    hinted = (call.setup(), call.ring(), call.answer(), call.hangup())
    # No ExtensionStatus: Asterisk only sends those for extensions with a hint.
    return [[e for e in step if b"Event: ExtensionStatus\r\n" not in e] for step in hinted]


async def ingest(ami: FakeAsterisk, swarm: Swarm, bridge: BridgeProcess, events: int) -> list[Row]:
    """Calls offered at 50,000 events/s; one more event then changes a watched key, and its
    NOTIFY says every event before it went through (the bridge handles AMI strictly in order).
    The bridge keeps up when the whole stream is through at (nearly) the offered rate."""
    stream = _ingest_stream(events)
    count = len(stream)
    marker_call = next(c for c in ami_calls(ami) if c.dest.state == 6)
    marker_call.dest.connected = "7777"
    marker = marker_call.dest.event("NewConnectedLine")
    watcher = next(w for w in swarm.watchers.values() if w.resource == marker_call.callee_exten)
    getvars = ami.actions["getvar"]
    await swarm.barrier()
    swarm.reset()
    cpu, start = bridge.cpu_seconds(), clock()
    await ami.stream(stream, INGEST_RATE)
    last = ami.send([marker])
    if not await wait_until(lambda: watcher.at > start, 120.0):
        raise RuntimeError("ingest: the marker's NOTIFY did not come within 120 s")
    took = watcher.at - start
    used = bridge.cpu_seconds() - cpu
    rate = (count + 1) / took
    per_event = used / (count + 1)
    return [
        Row(f"AMI ingest: {count + 1:,} events of calls offered at {INGEST_RATE:,}/s, "
            "handled at", f">= {0.95 * INGEST_RATE:,.0f} /s", f"{rate:,.0f} /s",
            rate >= 0.95 * INGEST_RATE),
        Row("AMI ingest: behind after the last event", "", ms(watcher.at - last)),
        Row("AMI ingest: bridge CPU per event (capacity at 100 %)", "",
            f"{per_event * 1e6:.1f} µs ({1 / per_event:,.0f} /s)"),
        Row("AMI ingest: Getvars answered on the way", "",
            f"{ami.actions['getvar'] - getvars:,}"),
    ]  # fmt: skip


async def big_pbx(sizes: Sizes, opts: Options) -> list[Row]:
    """Resync and AMI ingest on one bridge with thousands of extensions, each watched once."""
    hints = [str(10000 + i) for i in range(sizes.resync_extensions)]
    ami = FakeAsterisk(hints)
    half = sizes.resync_calls // 2
    calls = _calls(hints, 0, half, answered=False)
    calls += _calls(hints, 2 * half, sizes.resync_calls - half, answered=True)
    ami.add_calls(calls)
    await ami.start()
    bridge = opts.bridge("big", ami.port, "ami.reconnect_min=0.2")
    swarm: Swarm | None = None
    try:
        await _started(ami, bridge)
        swarm = Swarm(bridge.address, "r")
        await _subscribed(swarm, hints, 120)
        rows = await resync(ami, swarm, hints, sizes.resync_calls)
        await asyncio.sleep(0.5)
        rows += await ingest(ami, swarm, bridge, sizes.ingest_events)
        return rows
    finally:
        if swarm is not None:
            swarm.close()
        await _stop(bridge, ami)


# ---------------------------------------------------------------------------- memory


async def memory(sizes: Sizes, opts: Options) -> list[Row]:
    """RSS of the bridge process with every subscription live and its first NOTIFY answered."""
    hints = [str(20000 + i) for i in range(500)]
    ami = FakeAsterisk(hints)
    await ami.start()
    bridge = opts.bridge("memory", ami.port)
    swarm: Swarm | None = None
    count = sizes.memory_subscriptions
    try:
        await _started(ami, bridge)
        idle = bridge.rss()
        swarm = Swarm(bridge.address, "m")
        cpu, start = bridge.cpu_seconds(), time.perf_counter()
        await _subscribed(swarm, [hints[i % len(hints)] for i in range(count)], 600)
        took, used = time.perf_counter() - start, bridge.cpu_seconds() - cpu
        resent = swarm.tally.resent  # a 200 read too late: its NOTIFY came again
        await asyncio.sleep(1.0)
        rss = settled = bridge.rss()
        if sizes.settle:
            await asyncio.sleep(sizes.settle)
            await swarm.barrier()  # the bridge has run its timers: the old answers are dropped
            settled = bridge.rss()
    finally:
        if swarm is not None:
            swarm.close()
        await _stop(bridge, ami)
    return [
        Row(f"memory: RSS with {count:,} live subscriptions"
            + (f", {sizes.settle:g} s after the ramp-up" if sizes.settle else ""),
            "< 150 MB", f"{settled / 1e6:.1f} MB", settled < 150e6),
        Row("memory: RSS right after the ramp-up (SUBSCRIBE answers still cached)", "",
            f"{rss / 1e6:.1f} MB"),
        Row("memory: RSS of the bridge in sync, before any subscription", "",
            f"{idle / 1e6:.1f} MB"),
        Row("memory: per subscription", "", f"{(settled - idle) / count:,.0f} B"),
        Row(f"SUBSCRIBE → 200 + first NOTIFY answered ({count:,})", "",
            f"{count / took:,.0f} /s, {used / count * 1e6:.0f} µs CPU each"),
        Row("ramp-up: NOTIFYs sent again (their 200s read too late)", "0", f"{resent:,}",
            resent == 0),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- the table


def _loop_name(choice: str) -> str:
    """What the bridge runs on with this choice (the same rule as its own)."""
    try:
        return choose_event_loop(choice)[1]
    except EventLoopUnavailable:
        return "uvloop (not installed: the bridge refuses to start)"


def table(rows: list[Row]) -> str:
    """Rows aligned in columns: figure, target, result, pass/fail."""
    verdict = {True: "pass", False: "FAIL", None: ""}
    cells = [(r.figure, r.target, r.result, verdict[r.passed]) for r in rows]
    header = ("figure", "target", "result", "")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(4)]
    lines = [
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}"
        for a, b, c, d in [header, tuple("-" * w for w in widths), *cells]
    ]
    return "\n".join(line.rstrip() for line in lines)


Run = Callable[[Sizes, Options], Coroutine[Any, Any, list[Row]]]
RUNS: dict[str, Run] = {"small": small_pbx, "big": big_pbx, "memory": memory}


def main() -> int:
    """Run every target, print the table; 1 when a run broke (not when a target is missed)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default="auto",
                        help="the bridge's runtime.event_loop (default: auto)")  # fmt: skip
    parser.add_argument("--profile", metavar="DIR", default="",
                        help="sample the bridge with py-spy into DIR/<group>.txt")  # fmt: skip
    parser.add_argument("--only", choices=sorted(RUNS), action="append",
                        help="run only these groups (repeatable)")  # fmt: skip
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    opts = Options(args.loop, args.profile)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    started, load = time.perf_counter(), os.getloadavg()
    rows: list[Row] = []
    broken = False
    for name, run in RUNS.items():
        if args.only and name not in args.only:
            continue
        try:
            rows += asyncio.run(asyncio.wait_for(run(sizes, opts), 900))
        except (RuntimeError, TimeoutError) as exc:
            print(f"targets: {name}: {exc or 'timed out'}", file=sys.stderr)
            rows.append(Row(f"{name}: run broke", "", str(exc or "timed out")[:60], False))
            broken = True
    loop = _loop_name(args.loop)
    print(f"snom-blf-bridge targets ({'quick' if args.quick else 'full'} sizes), bridge on "
          f"{loop}, Python {platform.python_version()}, {os.cpu_count()} cores; load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine "
          "disturbs the figures)")  # fmt: skip
    print(table(rows))
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
