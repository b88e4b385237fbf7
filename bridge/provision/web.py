"""``/snom/<phone>.xml``, ``/yealink/<phone>.cfg`` and ``/poly/<phone>.xml`` for a running
bridge: the same documents as ``snom-keys``, ``yealink-keys`` and ``poly-keys``, with the
extensions Asterisk gave the bridge, the pickup groups it learned, and its current
configuration (a reload is taken at the next fetch)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.config import Config
from bridge.pickup import PickupPolicy
from bridge.provision.site import (
    ProvisionError,
    bridge_address,
    freepbx_label,
    known_phones,
    phone_document,
)
from bridge.sip.transport import local_address_towards
from bridge.web.status import StatusView


class RunningBridge(Protocol):
    """What the documents read of the running bridge, at every request."""

    @property
    def config(self) -> Config: ...

    @property
    def policy(self) -> PickupPolicy: ...

    @property
    def status(self) -> StatusView: ...

    def bound(self, transport: str) -> tuple[str, int]:
        """The address a transport's first listener is bound to."""
        ...


@dataclass(frozen=True, slots=True)
class SnomAnswer:
    """What the web side answers: an HTTP status and a body (the XML, or why not)."""

    status: int
    body: bytes


@dataclass(slots=True)
class SnomDocuments:
    """Reads the running bridge at each request, so a reload is seen at once."""

    bridge: RunningBridge

    def answer(self, phone: str, remote: str, vendor: str = "snom") -> SnomAnswer:
        """The ``vendor``'s document for ``phone`` asked from address ``remote``. Only
        addresses in ``security.allow`` get one (the phones, which may talk to the bridge
        anyway)."""
        config = self.bridge.config
        if not _allowed(remote, config.security.allow):
            return SnomAnswer(403, b"not in security.allow\n")
        # A key of another context ("71@park-hints", "*76201@ext-dnd-hints") is subscribed to
        # by its number: Asterisk's and the bridge's resolution find its context from the phone.
        keys = [e.exten for e in self.bridge.status.entities()]
        extensions = list(dict.fromkeys(k.partition("@")[0] for k in keys))
        labels = {k.partition("@")[0]: label for k in keys if (label := freepbx_label(k))}
        if phone not in known_phones(config, extensions):
            return SnomAnswer(404, f"no phone {phone!r} known to the bridge\n".encode())
        try:
            address = bridge_address(config, towards=local_address_towards(remote) or None)
        except ProvisionError as exc:
            return SnomAnswer(500, f"{exc}\n".encode())
        if address.port == 0:  # listening on "any port": the one it got
            address = dataclasses.replace(address, port=self.bridge.bound(address.transport)[1])
        policy = self.bridge.policy
        document = phone_document(config, phone, extensions, policy, address, vendor=vendor,
                                  default_labels=labels)  # fmt: skip
        return SnomAnswer(200, document)


def _allowed(remote: str, networks: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)
