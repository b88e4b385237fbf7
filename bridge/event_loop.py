"""Which asyncio event loop the bridge runs on (``runtime.event_loop``).

uvloop, when installed, is the default: on the benchmark targets it cut the one-watcher latency
and the resync time by about a quarter and raised the sustained NOTIFY rate by a fifth. It is an
optional dependency (``pip install 'snom-blf-bridge[fast]'``); without it the standard loop runs.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

__all__ = ["EventLoopUnavailable", "LoopFactory", "choose_event_loop"]


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``runtime.event_loop = "uvloop"`` asked for a loop that cannot be imported."""


def choose_event_loop(choice: str) -> tuple[LoopFactory | None, str]:
    """The loop factory for ``asyncio.Runner`` (None: the standard loop) and its name.

    "auto" takes uvloop when it imports and falls back quietly; "uvloop" insists on it.
    """
    if choice == "asyncio":
        return None, "asyncio"
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                f"runtime.event_loop: uvloop is not installed ({exc}); install it with "
                "pip install 'snom-blf-bridge[fast]' or set event_loop = \"auto\""
            ) from exc
        return None, "asyncio (uvloop is not installed)"
    factory: LoopFactory = uvloop.new_event_loop
    return factory, f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
