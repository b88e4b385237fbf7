"""Several PBXs in one bridge (``[[asterisk]]``): what the core keeps per PBX, and the
notifier's document source that routes a SUBSCRIBE to its PBX by the Request-URI's domain.

With several PBXs a key is named ``<pbx>:<key>`` inside the bridge (``berlin:202``,
``hamburg:202@tenant-b``): the notifier, the store and the panel keep treating it as one opaque
resource name, while each PBX's tracker, bodies cache and pickup policy only ever see their own
keys, so callers, keys and pickup ids never cross PBXs. With one PBX nothing is qualified (its
name is ""), and the notifier talks to that PBX's ``Documents`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.documents import Documents
from bridge.pickup import PickupPolicy
from bridge.sip.notifier import SupportsBody
from bridge.tracker import CallTracker

SEPARATOR = ":"  # between a PBX's name and its key (neither a name nor an extension holds one)


@dataclass(slots=True)
class PbxState:
    """One PBX as the core follows it: its keys, bodies, pickup groups and source health."""

    name: str  # "" for the one-PBX form
    domain: str  # its phones' SIP domain, lower case ("" for the one-PBX form: any)
    tracker: CallTracker
    documents: Documents
    policy: PickupPolicy
    connected: bool = False  # logged in, since the last ResyncStarted
    synced: bool = False  # the last resync finished and nothing was lost since
    ever_synced: bool = False  # it finished one resync: it knows which keys exist
    stale_ring_at: float | None = None  # lost: its ringing keys stop blinking then
    default_context: str = ""  # its tracker's, as of the last sync (tenants)
    events: int = 0  # Asterisk events handled from it
    endpoint: str = ""  # the AMI/ARI endpoint its state comes from, as of the last resync
    failovers: int = 0  # resyncs from another endpoint than the one before (standby taken)
    # endpoint → the name of its caller id, as read at sync (the panel names keys with it)
    names: dict[str, str] = field(default_factory=dict)

    def resource(self, key: str) -> str:
        """The bridge-wide name of one of its keys."""
        return f"{self.name}{SEPARATOR}{key}" if self.name else key

    def key(self, resource: str) -> str:
        """Its own key of a bridge-wide resource name (which must be one of its own)."""
        return resource[len(self.name) + 1 :] if self.name else resource


class PbxRouter:
    """The notifier's document source with several PBXs: a SUBSCRIBE goes to the PBX whose
    ``domain`` (or ``name``) is its Request-URI's host, case-insensitive; any other host finds
    nothing (404)."""

    def __init__(self, pbxs: list[PbxState]) -> None:
        self.by_name = {p.name: p for p in pbxs}
        self.by_host = {p.name.lower(): p for p in pbxs}
        for p in pbxs:  # "pbx-a.example:5060" is also reached as "pbx-a.example"
            self.by_host[p.domain] = self.by_host[_without_port(p.domain)] = p

    def pbx_of(self, resource: str) -> PbxState | None:
        """The PBX a bridge-wide resource name belongs to."""
        name, sep, _ = resource.partition(SEPARATOR)
        return self.by_name.get(name) if sep else None

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        """The key a SUBSCRIBE for ``user`` at ``domain`` from ``watcher`` means."""
        pbx = self.by_host.get(domain.lower())
        if pbx is None:
            return None
        key = pbx.documents.resolve(user, watcher)
        return None if key is None else pbx.resource(key)

    def knows(self, resource: str) -> bool:
        """Whether phones may watch this resource."""
        pbx = self.pbx_of(resource)
        return pbx is not None and pbx.documents.knows(pbx.key(resource))

    def document(self, resource: str, watcher: str) -> SupportsBody:
        """The body of a resource as this watcher may see it (its PBX's pickup groups)."""
        pbx = self.pbx_of(resource)
        assert pbx is not None, resource
        return pbx.documents.document(pbx.key(resource), watcher)


def _without_port(domain: str) -> str:
    host, colon, port = domain.rpartition(":")
    return host if colon and port.isdigit() and not host.endswith(":") else domain
