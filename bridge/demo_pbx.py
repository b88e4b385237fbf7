"""The demo PBX as a source the command line picks: recorded Asterisk 22 calls replayed over a
local AMI server, so the bridge can be tried without an Asterisk. ``bridge.app`` never imports
the demo; it is handed a ``LocalPbx`` (see there) by ``bridge.__main__``."""

from __future__ import annotations

import asyncio
import secrets

from bridge.demo.ami_server import RecordedAmiServer, bundled_recordings

__all__ = ["DEMO_KEYS_LAST", "DEMO_PAUSE", "DemoPbx"]

DEMO_PAUSE = 3.0  # seconds of quiet between two replayed calls in the demo loop
# The recordings of keys that follow device states (DND, FreePBX hint, park slot): after the calls.
DEMO_KEYS_LAST = frozenset({"device-states", "park-retrieve"})


class DemoPbx:
    """The bundled recordings on a local AMI server with a throwaway secret, played in a loop."""

    def __init__(self) -> None:
        self.server = RecordedAmiServer(
            bundled_recordings(), username="demo", secret=secrets.token_hex(16)
        )
        self.server.select_fullest()  # the panel shows every key from the start

    @property
    def host(self) -> str:
        """Where its AMI listens."""
        return self.server.host

    @property
    def port(self) -> int:
        """Its AMI port (once started)."""
        return self.server.port

    @property
    def username(self) -> str:
        """The AMI user to log in as."""
        return self.server.username

    @property
    def secret(self) -> str:
        """The AMI secret to log in with."""
        return self.server.secret

    async def start(self) -> None:
        """Listen for the bridge's AMI connection."""
        await self.server.start()

    async def play(self, synced: asyncio.Event) -> None:
        """Once the bridge knows every key, replay the calls (then the device keys) forever."""
        await synced.wait()
        names = sorted(self.server.scenarios, key=lambda name: name in DEMO_KEYS_LAST)
        await self.server.loop_forever(names, pause=DEMO_PAUSE)

    async def close(self) -> None:
        """Stop listening and drop the bridge's connection."""
        await self.server.close()
