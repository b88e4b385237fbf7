"""A PBX run beside the bridge (the demo) instead of the configured Asterisk: what the glue needs
of one, and which one (or none) a configuration asks for, so a reload moves between it and
Asterisk. ``bridge.app`` never imports the demo; ``bridge.__main__`` hands it the choice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from bridge import settings
from bridge.config import Config


class LocalPbx(Protocol):
    """A PBX run beside the bridge (the demo, ``bridge.demo_pbx``), followed over AMI; its
    ``host``, ``port``, ``username``, ``secret`` are where and how to log in once started."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def username(self) -> str: ...
    @property
    def secret(self) -> str: ...

    async def start(self) -> None: ...
    async def play(self, synced: asyncio.Event) -> None: ...  # calls, once synced, until cancelled
    async def close(self) -> None: ...


# Which local PBX a configuration asks for (the demo: no Asterisk named, demo.enabled, --demo),
# None for the configured Asterisk; asked again on every reload.
LocalPbxChoice = Callable[[Config], "LocalPbx | None"]


def wanted_pbx(choose: LocalPbxChoice | None, running: LocalPbx | None, old: Config, new: Config
               ) -> LocalPbx | None:  # fmt: skip
    """The local PBX the new configuration asks for: the ``running`` one if it still asks for
    one (or no ``choose``: given for good), a new one (not started) if it now does, else None.
    Settings a reload cannot take over (``demo.enabled``) count with their running values."""
    if choose is None:
        return running
    wanted = choose(settings.reloadable(old, new))
    return running if wanted is not None and running is not None else wanted


def not_followed(changed: Iterable[str]) -> list[str]:
    """The changed settings a local PBX does not follow (the configured Asterisk's)."""
    return sorted(name for name in changed if name.startswith(("ami.", "ari.", "asterisk")))
