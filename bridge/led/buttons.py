"""The ``application/x-buttons`` body Snom phones take in a SIP MESSAGE (docs/SNOM.md, LED).

One block of ``name=value`` lines per key, CRLF separated, an empty line before the next key:
``k`` key number, ``c`` light, ``n`` what the key dials, ``a`` the action (invite), ``l`` label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CONTENT_TYPE = "application/x-buttons"
LIGHTS = frozenset({
    "on", "off", "hold", "pickup", "park", "message", "offline", "seized", "record", "error",
    "local", "remote", "red", "green", "orange",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeyLight:
    """What one key should show and do."""

    key: int
    light: str
    dial: str = ""
    action: str = ""
    label: str = ""


def _line(name: str, value: str) -> str:
    # A line break inside a value would start a new field (or a new key) on the phone.
    return f"{name}={' '.join(value.split())}"


def body(keys: Iterable[KeyLight]) -> bytes:
    """The x-buttons body for these keys, in key order."""
    blocks = []
    for k in sorted(keys, key=lambda k: k.key):
        lines = [_line("k", str(k.key)), _line("c", k.light)]
        if k.dial:
            lines.append(_line("n", k.dial))
            lines.append(_line("a", k.action or "invite"))
        if k.label:
            lines.append(_line("l", k.label))
        blocks.append("\r\n".join(lines))
    return ("\r\n\r\n".join(blocks) + "\r\n").encode("utf-8")
