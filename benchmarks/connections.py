"""``python -m benchmarks.connections``: what 1,000 TCP connections cost the real bridge.

The bridge runs as its own process (``python -m bridge run``, demo PBX, default limits) started
with a soft descriptor limit of 1,024, as a shell gives it. This process opens ``--connections``
TCP connections to it from several loopback addresses (32 each: the per-source cap), first
silent, then each holding an unfinished 8 KB message, and closes them. Printed per event loop:
the bridge's resident memory (VmRSS) and open descriptors at each step, and how long a new
connection waits for an OPTIONS answer while the others are held.

Nothing passes or fails; the exit status is 1 only when the run itself broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.soak import free_port, rss_mib

ROOT = Path(__file__).resolve().parent.parent
PER_SOURCE = 32  # sip.max_connections_per_source's default
HALF = b"SUBSCRIBE sip:202@127.0.0.1 SIP/2.0\r\n" + b"X-Pad: y\r\n" * 800  # 8 KB, no end
OPTIONS = (
    b"OPTIONS sip:202@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-b1\r\n"
    b"From: <sip:bench@127.0.0.1>;tag=b\r\nTo: <sip:202@127.0.0.1>\r\nCall-ID: bench-1\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def shell_limit() -> None:
    """In the bridge's process before exec: the 1,024 descriptors a login shell hands out."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


async def open_many(port: int, count: int, payload: bytes) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.0.{2 + i // PER_SOURCE}", 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if payload:
            await loop.sock_sendall(sock, payload)
        socks.append(sock)
    return socks


async def answer_time(port: int) -> float:
    """Seconds from connecting to an OPTIONS answer on a fresh connection (-1: none in 5 s)."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        writer.write(OPTIONS)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    except (OSError, TimeoutError):
        return -1.0
    return time.perf_counter() - started


async def measure(loop_name: str, count: int) -> list[tuple[str, float, str]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text("# everything comes from --set\n")
        listen = f'["127.0.0.1:{port}"]'
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "--config", str(config),
            "--set", f"sip.udp={listen}", "--set", f"sip.tcp={listen}", "--set", "web.listen=",
            "--set", f"store.path={Path(tmp) / 's.sqlite3'}",
            "--set", f"runtime.event_loop={loop_name}",
            cwd=ROOT, stderr=asyncio.subprocess.PIPE, preexec_fn=shell_limit,
        )  # fmt: skip
        assert process.stderr is not None
        rows: list[tuple[str, float, str]] = []
        try:
            async with asyncio.timeout(20):
                while b"listening for SUBSCRIBEs" not in await process.stderr.readline():
                    pass
            drain = asyncio.ensure_future(process.stderr.read())
            await asyncio.sleep(0.5)
            pid, name = process.pid, f"connections[{loop_name}]"
            rows.append((f"{name}: RSS at start", rss_mib(pid), "MiB"))
            for what, payload in (("silent", b""), ("8 KB unfinished", HALF)):
                socks = await open_many(port, count, payload)
                await asyncio.sleep(1.0)  # the bridge reads what was sent
                rows.append((f"{name}: RSS with {count} {what}", rss_mib(pid), "MiB"))
                rows.append((f"{name}: descriptors with {count} {what}", descriptors(pid), ""))
                rows.append((f"{name}: OPTIONS answer meanwhile", 1000 * await answer_time(port),
                             "ms"))  # fmt: skip
                for sock in socks:
                    sock.close()
                await asyncio.sleep(1.0)
                rows.append((f"{name}: RSS after they closed", rss_mib(pid), "MiB"))
            rows.append((f"{name}: descriptors at the end", descriptors(pid), ""))
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()
        log = (await drain).decode()
        if "Traceback" in log:
            raise RuntimeError(f"the bridge logged a traceback:\n{log}")
    return rows


def main() -> None:
    """Parse the arguments, measure on each loop, print the table."""
    from benchmarks.__main__ import table  # noqa: PLC0415 (the table printer of the suite)

    parser = argparse.ArgumentParser(prog="python -m benchmarks.connections", description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for loop_name in ("uvloop", "asyncio"):
        rows += asyncio.run(measure(loop_name, args.connections))
    print(table(rows))


if __name__ == "__main__":
    main()
