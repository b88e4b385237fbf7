"""The ``[snom]`` section: how the Snom provisioning documents are written.

Kept apart from the renderer so the configuration can read it without importing lxml-heavy
code, and apart from ``bridge.config`` so that module only gains one call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KEYS = frozenset({"address", "transport", "labels", "pickup_code", "first_key", "context"})
TRANSPORTS = ("udp", "tcp", "tls")
MAX_KEY = 999


class SnomOptionError(ValueError):
    """A ``snom.*`` setting is malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class SnomOptions:
    """Validated ``[snom]`` settings (every one optional)."""

    address: str = ""  # host[:port] phones reach the bridge at; "" = from sip.contact_host/listen
    transport: str = ""  # udp, tcp or tls; "" = the first transport the bridge listens on
    labels: Mapping[str, str] = field(default_factory=dict)  # extension -> key label
    pickup_code: str = ""  # Snom's "|code" fallback; "" = never written (see snom.py)
    first_key: int = 0  # the fkey idx of the first BLF key
    context: str = "active"  # which identity of the phone uses the keys


def parse_snom(table: Mapping[str, Any]) -> SnomOptions:
    """Validate the ``[snom]`` table; raises SnomOptionError naming the bad setting."""
    for key in table:
        if key not in KEYS:
            raise SnomOptionError(f"snom.{key}: unknown setting (known: {', '.join(sorted(KEYS))})")
    address = _text(table, "address").strip()
    if any(c in address for c in ' <>"@;/'):
        raise SnomOptionError(f"snom.address: {address!r} is not host or host:port")
    transport = _text(table, "transport").strip().lower()
    if transport and transport not in TRANSPORTS:
        known = ", ".join(TRANSPORTS)
        raise SnomOptionError(f"snom.transport: {transport!r} is not one of {known}")
    labels_raw = table.get("labels", {})
    if not isinstance(labels_raw, dict):
        raise SnomOptionError('snom.labels: must be a table, e.g. { "202" = "Anna" }')
    labels: dict[str, str] = {}
    for exten, label in labels_raw.items():
        if not isinstance(label, str):
            raise SnomOptionError(f"snom.labels.{exten}: must be a string")
        if any(ord(c) < 32 for c in label):
            raise SnomOptionError(f"snom.labels.{exten}: control characters cannot go on a key")
        labels[str(exten)] = label
    code = _text(table, "pickup_code").strip()
    if code and not all(c.isdigit() or c in "*#" for c in code):
        raise SnomOptionError(f"snom.pickup_code: {code!r} is not a dial code (digits, * and #)")
    first = table.get("first_key", 0)
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= MAX_KEY:
        raise SnomOptionError(f"snom.first_key: the fkey index of the first BLF key (0-{MAX_KEY})")
    context = _text(table, "context", "active").strip()
    if context != "active" and not context.isdigit():
        raise SnomOptionError(f'snom.context: {context!r} is not "active" or an identity number')
    return SnomOptions(address, transport, labels, code, first, context)


def _text(table: Mapping[str, Any], key: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise SnomOptionError(f"snom.{key}: must be a string, got {type(value).__name__}")
    return value
