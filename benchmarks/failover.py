"""``python -m benchmarks.failover``: how long a watcher's key is wrong when the primary PBX dies.

The bridge runs as a real process with ``ami.standby``; the primary and the standby are two
replayed Asterisks, the primary behind a relay (bridge.demo.relay) that dies on cue. A phone
(a plain UDP socket) watches 202 while a call rings at the primary; then the primary dies,
loudly (connections closed) or silently (nothing forwarded, nothing closed: only
``ami.keepalive`` can tell). The figure is the time from that death to the first NOTIFY that
shows the standby's state (202 idle: the primary's call died with it). Silent deaths take
between one and two keepalive intervals (a Ping is sent every interval and given as long to
answer); the rest is the connect, login and resync.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.attacks import Phone
from benchmarks.soak import free_port
from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.demo.recording import bundled_recordings
from bridge.demo.relay import TcpRelay

ROOT = Path(__file__).parent.parent
RINGING_202 = event_matches(Event="Newstate", ChannelState="5")


async def _bridge(workdir: Path, sip_port: int, primary: int, standby: int,
                  keepalive: float) -> tuple[asyncio.subprocess.Process, list[str]]:  # fmt: skip
    config = workdir / "bridge.toml"
    config.write_text("", encoding="utf-8")
    settings = [
        f"ami.port={primary}", f'ami.standby=["127.0.0.1:{standby}"]', f"ami.keepalive={keepalive}",
        "ami.username=bridge", "ami.secret=bridgesecret", f'sip.udp=["127.0.0.1:{sip_port}"]',
        f'sip.tcp=["127.0.0.1:{sip_port}"]', "sip.domain=pbx.test", 'web.listen=""',
        f"store.path={workdir / 'subs.sqlite3'}",
    ]  # fmt: skip
    args = [a for s in settings for a in ("--set", s)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config), *args, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode(errors="replace"))

    asyncio.get_running_loop().create_task(read())
    deadline = time.monotonic() + 20
    while not any("in sync with Asterisk" in line for line in lines):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("the bridge did not start:\n" + "".join(lines[-20:]))
        await asyncio.sleep(0.05)
    return proc, lines


async def _notify_until(phone: Phone, shows: bytes | None, limit: float) -> float:
    """Answer NOTIFYs until one whose body has ``shows`` (None: no early dialog); its time."""
    until = time.monotonic() + limit
    seen = len(phone.notifies)
    while time.monotonic() < until:
        await phone.recv(until, notify=True)
        for notify in phone.notifies[seen:]:
            body = notify.partition(b"\r\n\r\n")[2]
            if (shows in body) if shows is not None else (b"<state>early" not in body):
                return time.monotonic()
        seen = len(phone.notifies)
    raise RuntimeError(f"no NOTIFY showing {shows!r} within {limit} s")


async def one_failover(death: str, keepalive: float) -> float:
    """Seconds from the primary's death to the first NOTIFY with the standby's state."""
    recordings = bundled_recordings()
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        async with (
            RecordedAmiServer(recordings, speed=0) as primary,
            RecordedAmiServer(recordings, speed=0) as standby,
            TcpRelay("127.0.0.1", primary.port) as relay,
        ):
            sip_port = free_port()
            proc, lines = await _bridge(Path(tmp), sip_port, relay.port, standby.port, keepalive)
            phone = Phone(("127.0.0.1", sip_port))
            try:
                if await phone.subscribe(wait=2.0) != 200:
                    raise RuntimeError("the subscription was refused:\n" + "".join(lines[-20:]))
                ringing = asyncio.create_task(_notify_until(phone, b"<state>early", 10))
                await primary.play("ring-cancel", until=RINGING_202)
                await ringing
                died = time.monotonic()
                if death == "closed":
                    await relay.cut()
                else:
                    relay.freeze()
                shown = await _notify_until(phone, None, 4 * keepalive + 10)
                if not any("lost; following" in line for line in lines):
                    raise RuntimeError("the NOTIFY came before the switch:\n" + "".join(lines))
                figure = shown - died
            finally:
                phone.close()
                proc.terminate()
                await proc.wait()
    await asyncio.sleep(0.1)  # the servers' connection tasks end before the loop closes
    return figure


def main() -> None:
    """Parse the arguments, run the failovers, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="failovers of each kind")
    parser.add_argument("--keepalive", type=float, default=5.0, help="ami.keepalive, seconds")
    args = parser.parse_args()
    print(f"failover to the standby, ami.keepalive = {args.keepalive:g} s, "
          f"{args.rounds} rounds each (seconds from the death to the right NOTIFY)")  # fmt: skip
    for death in ("closed", "silent"):
        figures = [asyncio.run(one_failover(death, args.keepalive)) for _ in range(args.rounds)]
        print(f"{death:>6}: median {statistics.median(figures):.3f}  min {min(figures):.3f}  "
              f"max {max(figures):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
