"""What a subscription to an RFC 4662 resource list keeps besides the dialog (sans-I/O).

A list subscription is a ``Subscription`` with a ``ListState``: its members (the keys it watches,
each with the RLMI instance id it keeps for the subscription's life), the dialog-info version of
each member's part, and the members changed since its last NOTIFY. Its NOTIFY is the ordinary
per-subscription head plus a body built here from the members' rendered documents
(``SupportsBody``), so whatever sends single-key NOTIFYs carries list NOTIFYs too.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bridge.rlmi import ResourcePart, content_type, list_body, rlmi_document
from bridge.sip.timers import Timed

__all__ = ["EVENTLIST", "ListDefinition", "ListMember", "ListState", "PartBody"]

EVENTLIST = "eventlist"  # the option tag of RFC 4662 (Supported / Require)


class PartBody(Protocol):
    """A member's rendered document (the notifier's ``SupportsBody``)."""

    def body(self, version: int) -> bytes:
        """The document with this version number."""
        ...


class ListDefinition(Protocol):
    """A list as the notifier needs it (``bridge.resource_lists.ResourceList``)."""

    @property
    def name(self) -> str:
        """The list's name: the Request-URI user phones subscribe to."""
        ...

    @property
    def items(self) -> tuple[str, ...]:
        """The extensions it holds, in order."""
        ...

    @property
    def batch_interval(self) -> float:
        """Seconds a change waits for others before the NOTIFY goes."""
        ...

    @property
    def full_state(self) -> bool:
        """Every NOTIFY carries every resource."""
        ...


@dataclass(frozen=True, slots=True)
class ListMember:
    """One key of a list subscription."""

    resource: str  # the key as the notifier knows it (e.g. "202", "berlin:202@tenant-b")
    uri: str  # its URI in the RLMI document (the entity of its dialog-info part)
    name: str  # the list item as written in the list
    instance: str  # RLMI instance id


@dataclass(eq=False, slots=True)
class ListState:
    """The list side of one subscription."""

    name: str
    uri: str  # the list's URI in the RLMI document
    members: tuple[ListMember, ...]
    batch_interval: float
    full_state: bool
    boundary: str
    # Members changed since the last NOTIFY; None: the next NOTIFY carries the full state.
    pending: set[str] | None = None
    versions: dict[str, int] = field(default_factory=dict)  # dialog-info version per member
    batch: Timed | None = None  # the gathering interval's timer entry (see ListBatch)
    _token: str = field(default_factory=lambda: secrets.token_hex(6))
    _sent: int = 0

    def member_resources(self) -> set[str]:
        """The keys this subscription watches."""
        return {m.resource for m in self.members}

    def changed(self, resource: str) -> None:
        """A member's state changed: the next NOTIFY carries it."""
        if self.pending is not None:
            self.pending.add(resource)

    @property
    def has_news(self) -> bool:
        """Whether a NOTIFY has anything to carry."""
        return self.pending is None or bool(self.pending)

    def next_body(
        self, version: int, document: Callable[[str], PartBody | None]
    ) -> tuple[str, bytes]:
        """Content-Type and body of the next NOTIFY (RLMI ``version``), full state when due;
        ``document`` gives a member's rendered body (None: the key is not watchable now)."""
        full = self.pending is None or self.full_state
        pending = self.pending or set()
        self._sent += 1
        prefix = f"{self._token}.{self._sent}"
        host = _host(self.uri)
        parts: list[ResourcePart] = []
        for i, member in enumerate(self.members):
            if not full and member.resource not in pending:
                continue
            doc = document(member.resource)
            if doc is None:
                parts.append(ResourcePart(member.uri, member.name, member.instance, "", b"",
                                          reason="noresource"))  # fmt: skip
                continue
            part_version = self.versions.get(member.resource, 0)
            self.versions[member.resource] = part_version + 1
            cid = f"{prefix}.{i}@{host}"
            parts.append(ResourcePart(member.uri, member.name, member.instance, cid,
                                      doc.body(part_version)))  # fmt: skip
        self.pending = set()
        start = f"{prefix}.rlmi@{host}"
        rlmi = rlmi_document(self.uri, version, full, parts, self.name)  # <name> as Asterisk
        return content_type(self.boundary, start), list_body(self.boundary, start, rlmi, parts)

    @classmethod
    def expand(
        cls,
        definition: ListDefinition,
        uri: str,
        members: list[tuple[str, str, str]],
        boundary: str,
    ) -> ListState:
        """A new list subscription's state: ``members`` are (resource, uri, item) in order."""
        token = secrets.token_hex(4)
        return cls(
            name=definition.name,
            uri=uri,
            members=tuple(
                ListMember(r, u, item, f"{token}{i}") for i, (r, u, item) in enumerate(members)
            ),
            batch_interval=definition.batch_interval,
            full_state=definition.full_state,
            boundary=boundary,
        )


def _host(uri: str) -> str:
    host = uri.partition("@")[2] or "bridge"
    return host.partition(";")[0].partition(">")[0]
