"""The ``[snom]`` section: how the Snom provisioning documents are written.

Declared like every other section (``bridge/config_schema.py``), kept here beside the renderer
so the provisioning code owns its knobs; ``bridge.config`` only holds it as ``Config.snom``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.config_schema import ConfigError, Text, Whole, setting

TRANSPORTS = ("udp", "tcp", "tls")
MAX_KEY = 999


@dataclass(frozen=True, slots=True)
class SnomAddress:
    """``snom.address``: host or host:port the phones reach the bridge at; "" for automatic."""

    def read(self, value: Any, name: str) -> str:
        address = Text().read(value, name).strip()
        if any(c in address for c in ' <>"@;/'):
            raise ConfigError(f"{name}: {address!r} is not host or host:port")
        return address


@dataclass(frozen=True, slots=True)
class SnomTransport:
    """``snom.transport``: udp, tcp, tls, or "" for the first the bridge listens on."""

    def read(self, value: Any, name: str) -> str:
        transport = Text().read(value, name).strip().lower()
        if transport and transport not in TRANSPORTS:
            raise ConfigError(f"{name}: {transport!r} is not one of {', '.join(TRANSPORTS)}")
        return transport


@dataclass(frozen=True, slots=True)
class Labels:
    """``snom.labels``: extension → the text on its key."""

    def read(self, value: Any, name: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ConfigError(f'{name}: must be a table, e.g. {{ "202" = "Anna" }}')
        labels: dict[str, str] = {}
        for exten, label in value.items():
            if not isinstance(label, str):
                raise ConfigError(f"{name}.{exten}: must be a string")
            if any(ord(c) < 32 for c in label):
                raise ConfigError(f"{name}.{exten}: control characters cannot go on a key")
            labels[str(exten)] = label
        return labels


@dataclass(frozen=True, slots=True)
class DialCode:
    """``snom.pickup_code``: digits, * and #; "" for none."""

    def read(self, value: Any, name: str) -> str:
        code = Text().read(value, name).strip()
        if code and not all(c.isdigit() or c in "*#" for c in code):
            raise ConfigError(f"{name}: {code!r} is not a dial code (digits, * and #)")
        return code


@dataclass(frozen=True, slots=True)
class Identity:
    """``snom.context``: "active" or the number of one of the phone's identities."""

    def read(self, value: Any, name: str) -> str:
        context = Text().read(value, name).strip()
        if context != "active" and not context.isdigit():
            raise ConfigError(f'{name}: {context!r} is not "active" or an identity number')
        return context


@dataclass(frozen=True, slots=True)
class SnomOptions:
    """``[snom]``: how `snom-keys` and ``/snom/<phone>.xml`` write a phone's keys."""

    address: str = setting(
        "", SnomAddress(), "host[:port] the phones reach the bridge at",
        shown="`sip.contact_host` or the first listen address",
    )  # fmt: skip
    transport: str = setting(
        "", SnomTransport(), "`udp`, `tcp` or `tls` in the keys' URIs",
        shown="the first transport the bridge listens on",
    )  # fmt: skip
    labels: Mapping[str, str] = setting(
        {}, Labels(), 'key labels by extension, e.g. `{ "202" = "Anna" }`'
    )
    pickup_code: str = setting(
        "", DialCode(),
        "the pickup code a Snom key dials while its extension rings; written only where the "
        "pickup policy allows it",
    )  # fmt: skip
    first_key: int = setting(0, Whole(0, MAX_KEY), "the fkey index of the first BLF key")
    context: str = setting(
        "active", Identity(), 'which identity of the phone uses the keys ("active" or a number)'
    )


@dataclass(frozen=True, slots=True)
class ListName:
    """``yealink.blf_list`` / ``poly.blf_list``: the user part of a list URI at the bridge."""

    def read(self, value: Any, name: str) -> str:
        text = Text().read(value, name).strip()
        if any(c in text for c in ' <>"@;:/?&=') or any(ord(c) < 32 for c in text):
            raise ConfigError(f"{name}: {text!r} is not a list name (the user part of its URI)")
        return text


@dataclass(frozen=True, slots=True)
class YealinkOptions:
    """``[yealink]``: how ``yealink-keys`` and ``/yealink/<phone>.cfg`` write a phone's keys
    (the bridge's address, transport and labels are ``[snom]``'s)."""

    account: int = setting(1, Whole(1, 16), "the account (`account.X`) whose BLF keys these are")
    first_key: int = setting(1, Whole(1, MAX_KEY), "the `linekey.N` index of the first BLF key")
    blf_list: str = setting(
        "", ListName(),
        "a list at the bridge for `account.X.blf.blf_list_uri` instead of one key per extension",
        shown="none: one key per extension",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PolyOptions:
    """``[poly]``: how ``poly-keys`` and ``/poly/<phone>.xml`` write a phone's BLF resources
    (the bridge's address, transport and labels are ``[snom]``'s)."""

    reg: int = setting(1, Whole(1, 34), "the line (`attendant.reg`) that subscribes")
    blf_list: str = setting(
        "", ListName(),
        "a list at the bridge for `attendant.uri` instead of `attendant.resourceList.N` entries",
        shown="none: one resource per extension",
    )  # fmt: skip
