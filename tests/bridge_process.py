"""``python -m bridge run`` as a child process: the bridge as it runs on a server, for the tests
that must reach it only through its CLI and its sockets (restarts, transports, pickup)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


class BridgeProcess:
    """``python -m bridge run`` with its stderr collected line by line."""

    def __init__(self, config: Path, sip_port: int, ami_port: int, store: Path) -> None:
        listen = f'["127.0.0.1:{sip_port}"]'
        self.args = [
            "-m", "bridge", "run", "--config", str(config),
            "--set", f"ami.port={ami_port}", "--set", "ami.username=bridge",
            "--set", "ami.secret=bridgesecret", "--set", f"sip.udp={listen}",
            "--set", f"sip.tcp={listen}", "--set", "sip.domain=pbx.test",
            "--set", f"store.path={store}", "--set", "store.flush_interval=0.1",
            "--set", "log.level=debug", "--set", "web.listen=",
        ]  # fmt: skip
        self.lines: list[str] = []
        self.env: dict[str, str] = {}
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        await self.wait_for("in sync with Asterisk")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode())
            self._tick.set()
            self._tick = asyncio.Event()

    async def wait_for(self, text: str, count: int = 1) -> None:
        async with asyncio.timeout(10):
            while sum(text in line for line in self.lines) < count:
                assert self._reader is not None
                if self._reader.done():
                    raise AssertionError("the bridge ended:\n" + "".join(self.lines))
                await self._tick.wait()

    async def end(self, sig: signal.Signals) -> int:
        assert self.process is not None and self._reader is not None
        self.process.send_signal(sig)
        async with asyncio.timeout(10):
            code = await self.process.wait()
            await self._reader
        return code

    async def close(self) -> None:
        """Kill it if still running and collect it (no process or pipe left behind)."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        if self._reader is not None:
            await self._reader

    @property
    def log(self) -> str:
        return "".join(self.lines)
