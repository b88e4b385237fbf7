"""State of one subscription dialog and of one NOTIFY transaction (RFC 6665, RFC 3261 §17.1.2)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from bridge.sip.client_transaction import ClientTransaction
from bridge.sip.headers import ParseError, parse_name_addr
from bridge.sip.timers import NO_TIMER

if TYPE_CHECKING:
    from bridge.sip.list_subscription import ListState

__all__ = [
    "SEQUENCE_LEASE",
    "STREAMS",
    "DialogKey",
    "ListBatch",
    "NotifierSettings",
    "NotifyTemplate",
    "NotifyTransaction",
    "Peer",
    "Subscription",
    "SubscriptionSnapshot",
    "WatcherKey",
    "contact_uri",
    "notify_template",
]

Transport = Literal["udp", "tcp", "tls"]
STREAMS = ("tcp", "tls")  # connection-oriented: no retransmission, Via/Contact say which


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes to."""

    transport: Transport
    host: str
    port: int
    # Our own address of this flow (the socket or connection the message came in on), so the
    # answer leaves from where the phone sent to and our Contact names an address it can reach.
    # Routing detail, not identity: a peer is its remote address.
    local: tuple[str, int] | None = field(default=None, compare=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    """Protocol settings of the notifier; times in seconds."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600  # RFC 4235 §3.3: the dialog package's default
    # host, port written into Contact and Via per transport; port 0 = fill in once bound.
    contacts: Mapping[str, tuple[str, int]] = field(
        default_factory=lambda: {"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5060)}
    )
    user_agent: str = "snom-blf-bridge"
    t1: float = 0.5  # RFC 3261 timers; tests shrink them to keep retransmission tests short
    t2: float = 4.0
    content_type: str = "application/dialog-info+xml"
    # True: Contact/Via name the local address the request arrived on (Peer.local) when known;
    # False: always the configured contacts (an installer set sip.contact_host).
    contact_from_local: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if not 0 < self.t1 <= self.t2:
            raise ValueError("need 0 < t1 <= t2")
        if not {"udp", "tcp"} <= set(self.contacts) <= {"udp", "tcp", "tls"}:
            raise ValueError("contacts needs the keys 'udp' and 'tcp' (and 'tls' if used)")


class NotifyTemplate:
    """What every NOTIFY sent from one of our addresses has in common: Via sent-by, Contact,
    Event, User-Agent and Content-Type, kept once (as bytes) for all the dialogs that use it.

    A NOTIFY is this template, the dialog's own lines prepared once (``Subscription.request``
    and ``.dialog``), and what each send adds: branch, CSeq, Subscription-State and a body built
    once per change (any body: a dialog-info document, an RFC 4662 multipart one). Measured
    (benchmarks/notifier.py): 0.7 µs per NOTIFY against 1.1 µs for one format call of every
    field and its encode.
    """

    __slots__ = ("_content_type", "_trailer", "_via")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        *,
        event: str,
        user_agent: str,
        content_type: str,
        require: str = "",
    ) -> None:
        self._via = f"SIP/2.0/{transport.upper()} {host}:{port};rport;branch=".encode()
        contact = contact_uri(transport, host, port)
        # A list subscription's NOTIFYs carry Require: eventlist (RFC 4662 §5.1).
        required = f"\r\nRequire: {require}" if require else ""
        self._trailer = (
            f"\r\nMax-Forwards: 70\r\nContact: {contact}\r\nEvent: {event}"
            f"\r\nUser-Agent: {user_agent}{required}\r\nCSeq: "
        ).encode()
        self._content_type = f"\r\nContent-Type: {content_type}".encode()

    def render(
        self, sub: Subscription, branch: str, state: bytes, body: bytes, content_type: str = ""
    ) -> bytes:
        """The NOTIFY's bytes at ``sub.cseq``; Content-Type only when there is a body
        (``content_type``: this body's own, e.g. a list's multipart boundary and start)."""
        if not body:
            ctype = b""
        elif content_type:
            ctype = b"\r\nContent-Type: " + content_type.encode()
        else:
            ctype = self._content_type
        return self._join(sub, branch, state, ctype, len(body), body)

    def splice(  # noqa: PLR0917 (once per watcher of a fan-out: positional is cheaper)
        self, sub: Subscription, branch: str, state: bytes, prefix: bytes, version: bytes,
        suffix: bytes,
    ) -> bytes:  # fmt: skip
        """``render`` of the body ``prefix + version + suffix`` (a dialog-info document)
        without building that body: a fan-out's NOTIFYs differ in the version only."""
        length = len(prefix) + len(version) + len(suffix)
        return self._join(sub, branch, state, self._content_type, length, prefix, version, suffix)

    def _join(  # noqa: PLR0917 (see splice)
        self, sub: Subscription, branch: str, state: bytes, ctype: bytes, length: int,
        body: bytes, version: bytes = b"", suffix: bytes = b"",
    ) -> bytes:  # fmt: skip
        return b"".join((
            sub.request, self._via, branch.encode(), sub.dialog, self._trailer,
            b"%d NOTIFY\r\nSubscription-State: " % sub.cseq, state,
            ctype, b"\r\nContent-Length: %d\r\n\r\n" % length, body, version, suffix,
        ))  # fmt: skip


def request_line(target: str) -> bytes:
    """The start of every NOTIFY of a dialog, up to its Via's value."""
    return f"NOTIFY {target} SIP/2.0\r\nVia: ".encode()


def dialog_lines(local: str, remote: str, call_id: str, route: tuple[str, ...]) -> bytes:
    """The lines every NOTIFY of a dialog carries unchanged, between Via and Max-Forwards."""
    routes = "".join(f"\r\nRoute: {r}" for r in route)
    # Max-Forwards is the template's: a line less kept per subscription (tens of thousands).
    return f"{routes}\r\nFrom: {local}\r\nTo: {remote}\r\nCall-ID: {call_id}".encode()


@functools.lru_cache(maxsize=1024)
def notify_template(
    transport: str,
    host: str,
    port: int,
    *,
    event: str,
    user_agent: str,
    content_type: str,
    require: str = "",
) -> NotifyTemplate:
    """The one template of these parameters (a handful exist: per transport, local address,
    Event id and list or not)."""
    return NotifyTemplate(
        transport, host, port, event=event, user_agent=user_agent, content_type=content_type,
        require=require,
    )  # fmt: skip


def contact_uri(transport: str, host: str, port: int) -> str:
    """Our Contact for a transport; transport=tcp keeps in-dialog requests on TCP."""
    if transport in STREAMS:
        return f"<sip:{host}:{port};transport={transport}>"
    return f"<sip:{host}:{port}>"


DialogKey = tuple[str, str, str]  # Call-ID, remote (From) tag, local (our To) tag
# resource, who (digest user or From user), From URI, Contact URI, Event id
WatcherKey = tuple[str, str, str, bytes, str | None]

# CSeq and version numbers are handed out in blocks: the store only hears of a subscription when
# it starts a new block, and what it holds is an upper bound of every number already sent. After
# a crash the resumed NOTIFY jumps ahead instead of repeating a CSeq the phone has seen.
SEQUENCE_LEASE = 1000


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    """Everything needed to resume a subscription in another process (see the store).

    ``cseq``: no NOTIFY of this dialog was sent with a higher CSeq; the next uses ``cseq + 1``.
    ``version``: the dialog-info version the next NOTIFY may carry (no lower one is unsent).
    ``expires_in``: seconds left when the snapshot was taken.
    """

    key: DialogKey
    resource: str
    peer: Peer
    event: str
    event_id: str | None
    local: str
    remote: str
    target: str
    route: tuple[str, ...]
    remote_cseq: int
    cseq: int
    version: int
    expires_in: float
    watcher: str = ""  # who subscribes (digest user, or From user without authentication)


@dataclass(eq=False, slots=True)
class Subscription:
    """One RFC 6665 subscription; it is the only usage of its dialog."""

    key: DialogKey
    resource: str
    peer: Peer  # source of the last SUBSCRIBE: NOTIFYs go there (rport-style, NAT-safe)
    event: str  # Event header value for NOTIFYs, id parameter echoed
    event_id: str | None
    # The NOTIFYs' own lines (start line; Route, From, To, Call-ID), prepared once (see
    # NotifyTemplate); From (``local``: the SUBSCRIBE's To plus our tag), To (``remote``: the
    # SUBSCRIBE's From) and the Request-URI (``target``: its Contact) are read back from them.
    request: bytes
    dialog: bytes
    route: tuple[str, ...]  # Record-Route of the SUBSCRIBE, in order
    expires_at: float
    remote_cseq: int
    template: NotifyTemplate | None = None
    cseq: int = 0  # CSeq of the last NOTIFY sent
    version: int = 0  # dialog-info version of the next NOTIFY body
    in_flight: NotifyTransaction | None = None
    dirty: bool = False  # state changed while a NOTIFY was in flight: send one more after it
    told: int = 0  # the resource's change counter when a NOTIFY last carried its state
    # "active" while in the indexes; "terminating" = final NOTIFY owed once in_flight completes;
    # "gone" = nothing more to send.
    state: Literal["active", "terminating", "gone"] = "active"
    final_reason: str = ""
    watcher: str = ""  # who subscribes: decides what the body may show (pickup ids, caller)
    source: str = ""  # the address it was counted under (per-source limits)
    remote_aor: str = ""  # the From URI without tag, parsed once (see watcher_key)
    cseq_bound: int = 0  # end of the current CSeq lease (what the store was last told)
    version_bound: int = 0  # end of the current version lease
    timer_seq: int = field(default=NO_TIMER, repr=False)  # see TimerQueue
    # A subscription to an RFC 4662 resource list: its members and what they last sent.
    rlist: ListState | None = None

    @classmethod
    def create(
        cls,
        *,
        key: DialogKey,
        resource: str,
        peer: Peer,
        event: str,
        event_id: str | None,
        local: str,
        remote: str,
        target: str,
        route: tuple[str, ...],
        expires_at: float,
        remote_cseq: int,
        watcher: str = "",
        cseq: int = 0,
        version: int = 0,
        rlist: ListState | None = None,
    ) -> Subscription:
        """A subscription, its NOTIFYs' dialog lines prepared; ``rlist``: to a resource list."""
        return cls(
            key=key,
            resource=resource,
            peer=peer,
            event=event,
            event_id=event_id,
            request=request_line(target),
            dialog=dialog_lines(local, remote, key[0], route),
            route=route,
            expires_at=expires_at,
            remote_cseq=remote_cseq,
            watcher=watcher,
            cseq=cseq,
            version=version,
            rlist=rlist,
        )

    @property
    def target(self) -> str:
        """Request-URI of our NOTIFYs: the subscriber's Contact URI."""
        return self.request[7:-15].decode()

    @target.setter
    def target(self, uri: str) -> None:
        self.request = request_line(uri)

    @property
    def local(self) -> str:
        """From of our NOTIFYs: the SUBSCRIBE's To plus our tag (RFC 3261 §12.1.1)."""
        return self._line(b"\r\nFrom: ", b"\r\nTo: ")

    @property
    def remote(self) -> str:
        """To of our NOTIFYs: the SUBSCRIBE's From."""
        return self._line(b"\r\nTo: ", b"\r\nCall-ID: ")

    def _line(self, name: bytes, following: bytes) -> str:
        # Header values hold no CR LF: the first match after the name is the next line.
        start = self.dialog.index(name) + len(name)
        return self.dialog[start : self.dialog.index(following, start)].decode()

    def watcher_key(self) -> WatcherKey:
        """Who watches what: the same phone (address of record and contact) on the same
        resource, as the same (authenticated) user: one user copying another's From and Contact
        gets a key of its own. From tags and Call-IDs change when a phone starts a new dialog."""
        if not self.remote_aor:
            self.remote_aor = self.remote  # unreadable From kept whole: only matches itself
            with contextlib.suppress(ParseError):
                self.remote_aor = parse_name_addr(self.remote).uri.raw
        # The contact as the NOTIFYs' start line holds it: the same object, not a copy per key.
        return (self.resource, self.watcher, self.remote_aor, self.request, self.event_id)

    def lease_ran_out(self) -> bool:
        """Start new leases when half of the current ones is used; True when it did (the store
        must hear of this subscription)."""
        half = SEQUENCE_LEASE // 2
        if self.cseq + half <= self.cseq_bound and self.version + half <= self.version_bound:
            return False
        self.cseq_bound = self.cseq + SEQUENCE_LEASE
        self.version_bound = self.version + SEQUENCE_LEASE
        return True

    def snapshot(self, now: float, *, exact: bool = False) -> SubscriptionSnapshot:
        """This subscription for the store: the lease bounds, or with ``exact`` the numbers in
        use (only when no NOTIFY can follow before the process ends)."""
        return SubscriptionSnapshot(
            key=self.key,
            resource=self.resource,
            peer=self.peer,
            event=self.event,
            event_id=self.event_id,
            local=self.local,
            remote=self.remote,
            target=self.target,
            route=self.route,
            remote_cseq=self.remote_cseq,
            cseq=self.cseq if exact else self.cseq_bound,
            version=self.version if exact else self.version_bound,
            expires_in=max(0.0, self.expires_at - now),
            watcher=self.watcher,
        )

    @classmethod
    def resume(cls, snap: SubscriptionSnapshot, now: float) -> Subscription:
        """A subscription continued from a snapshot taken by an earlier process."""
        sub = cls.create(
            key=snap.key,
            resource=snap.resource,
            peer=snap.peer,
            event=snap.event,
            event_id=snap.event_id,
            local=snap.local,
            remote=snap.remote,
            target=snap.target,
            route=snap.route,
            expires_at=now + snap.expires_in,
            remote_cseq=snap.remote_cseq,
            cseq=snap.cseq,
            version=snap.version,
            watcher=snap.watcher,
        )
        sub.lease_ran_out()  # a fresh lease, stored before anything is sent under it
        return sub

    def build_template(self, host: str, port: int, user_agent: str, content_type: str) -> None:
        """Pick the NOTIFY template after the peer's transport or our address changed."""
        self.template = notify_template(
            self.peer.transport,
            host,
            port,
            event=self.event,
            user_agent=user_agent,
            content_type=content_type,
            require="eventlist" if self.rlist is not None else "",
        )


@dataclass(eq=False, slots=True)
class ListBatch:
    """The timer entry of a list subscription's gathering interval (RFC 4662 lists)."""

    subscription: Subscription
    timer_seq: int = field(default=NO_TIMER, repr=False)  # see TimerQueue
    ringing: bool = False  # it gathered a ringing change: its NOTIFY goes with ringing keys'


class NotifyTransaction(ClientTransaction):
    """A NOTIFY in flight: the client transaction plus the subscription it belongs to."""

    __slots__ = ("final", "peer", "subscription", "timer_seq")

    def __init__(  # noqa: PLR0917 (one per watcher of a fan-out: positional is cheaper)
        self,
        branch: str,
        subscription: Subscription,
        data: bytes,
        peer: Peer,
        now: float,
        t1: float,
        t2: float,
        timeout: float,
        final: bool,
    ) -> None:
        # ClientTransaction.__init__ written out: one of these is built per watcher of a
        # fan-out, and the call cost a third of it (tests/test_sip_notifier.py checks the two
        # start alike).
        self.branch = branch
        self.data = data
        self.t2 = t2
        self.timeout_at = now + timeout
        self.interval = interval = 0.0 if peer.transport != "udp" else t1
        self.due_at = now + interval if interval else self.timeout_at
        self.proceeding = False
        self.subscription = subscription
        self.peer = peer
        self.final = final  # carries Subscription-State: terminated
        self.timer_seq = NO_TIMER  # see TimerQueue
