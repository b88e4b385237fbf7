"""The subscription core: RFC 6665 notifier for Event: dialog, sans-I/O (h11/aioquic style).

Feed it messages with `receive()` and resource changes with `resource_changed()`, always with
the current time; drain `outgoing()`; call `handle_timer()` at `next_timer()`. It never reads a
clock and never touches a socket.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bridge.sip.access import BridgeNames, SourceGate
from bridge.sip.digest import DigestAuthenticator, Verdict
from bridge.sip.list_subscription import EVENTLIST, ListDefinition, ListState
from bridge.sip.message import (
    ParseError,
    Request,
    Response,
    build_response,
    parse_message,
    response_ids,
)
from bridge.sip.subscription import (
    DialogKey,
    ListBatch,
    NotifierSettings,
    NotifyTransaction,
    Peer,
    Subscription,
    SubscriptionSnapshot,
    Transport,
    WatcherKey,
    contact_uri,
)
from bridge.sip.timers import NO_TIMER, TimerQueue
from bridge.sip.uas import (
    EVENT_PACKAGE,
    Answer,
    ResponseCache,
    SentAnswer,
    screen_request,
    screen_subscribe,
    supports_eventlist,
)

__all__ = [
    "DocumentSource",
    "ListSource",
    "Notifier",
    "NotifierSettings",
    "NotifierStats",
    "Peer",
    "SupportsBody",
    "WatcherInfo",
]

logger = logging.getLogger("bridge.sip")

# Before the first sync with Asterisk nobody knows which extensions exist: a SUBSCRIBE for one
# not known yet is accepted (a neutral NOTIFY, then the state once known, or a final NOTIFY with
# reason=noresource once the sync says there is no such key). A phone that ignores Retry-After
# (a Snom waits retry_after_failed_subscribe, often 600 s) would leave its key dark otherwise.
# Keys being waited for are bounded (a source that never syncs, From users anyone may choose):
# past MAX_PENDING_RESOURCES distinct ones, a new one is told to come back (503 + Retry-After).
MAX_PENDING_RESOURCES = 1000
NOT_READY_RETRY_AFTER = 5
# A NOTIFY to a UDP address that has never answered one is sent twice (at 0 and T1) and given
# up at 3*T1, not retransmitted for 32 s: the source of a SUBSCRIBE may be forged, and what an
# unverified address receives must stay a small multiple of what was sent in its name.
UNVERIFIED_TIMEOUT_T1 = 3
_MAX_VERIFIED = 65536  # addresses known to receive our NOTIFYs (least recently used forgotten)
LIST_LABEL = "list:"  # a list subscription's resource label (not a key: never in _by_resource)


class SupportsBody(Protocol):
    """A rendered document; only the version differs between watchers: the body is
    ``prefix``, the version's digits, ``suffix`` (a fan-out splices them into each NOTIFY
    without building the body first)."""

    @property
    def prefix(self) -> bytes:
        """The body up to the version number."""
        ...

    @property
    def suffix(self) -> bytes:
        """The body after the version number."""
        ...

    def body(self, version: int) -> bytes:
        """The NOTIFY body carrying this version number."""
        ...


class DocumentSource(Protocol):
    """Where resource state comes from."""

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        """The resource a SUBSCRIBE for ``user`` (a Request-URI user part) at ``domain`` (its
        host) from ``watcher`` means (tenants: the same number is another key in another
        context; several PBXs: another key at another domain); None: none."""
        ...

    def knows(self, resource: str) -> bool:
        """Whether the resource can be watched."""
        ...

    def document(self, resource: str, watcher: str) -> SupportsBody:
        """The current state of a known resource, as this watcher may see it."""
        ...


class ListSource(Protocol):
    """Where RFC 4662 resource lists come from (the core's list directory)."""

    def find_list(self, user: str, watcher: str, domain: str) -> ListDefinition | None:
        """The list a SUBSCRIBE's Request-URI user names at ``domain``, or None (no list)."""
        ...

    def list_uri(self, name: str, domain: str) -> str:
        """The list's URI written into its RLMI documents."""
        ...

    def resource_uri(self, resource: str) -> str:
        """A member key's URI in the RLMI document (its dialog-info entity)."""
        ...


@dataclass(frozen=True, slots=True)
class NotifierStats:
    """Counts for introspection and metrics."""

    subscriptions: int
    watchers: dict[str, int]  # resource -> active subscriptions
    notifies_in_flight: int
    server_transactions: int
    timer_entries: int  # heap size, stale entries included


@dataclass(frozen=True, slots=True)
class WatcherInfo:
    """One active subscription, as seen from outside."""

    peer: Peer
    call_id: str
    remote: str
    expires_at: float
    version: int


@dataclass(eq=False, slots=True)
class _FanOut:
    """One change of a resource still to be told to its watchers, walked a slice at a time.

    ``generation`` is the resource's change counter when it was made: a watcher already told
    that generation (a refresh or a 200 sent it the newest state meanwhile) is skipped. List
    subscriptions ride along (those of the resource's lists that send at once, or, under
    ``LIST_LABEL``, those whose gathering interval ended): one is skipped once it has nothing
    left to carry (``ListState.has_news``).
    """

    resource: str
    watchers: list[Subscription]
    generation: int
    now: float
    at: int = 0  # the next watcher to look at


class _TimerBatch:
    """NOTIFY transactions started together, with the same first deadline: one timer entry
    for them all instead of a heap push each (a fan-out's slice shares ``now``). When it comes,
    those still unanswered go on, each on a timer of its own."""

    __slots__ = ("due_at", "members", "timer_seq", "unanswered")

    def __init__(self, due_at: float) -> None:
        self.due_at = due_at
        self.members: list[NotifyTransaction] = []
        self.unanswered = 0  # when it drops to 0 the entry is cancelled: nothing left to time
        self.timer_seq = NO_TIMER


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A request being answered; key is None when it must not be cached."""

    req: Request
    peer: Peer
    now: float
    key: int | None


class Notifier:
    """Answers SUBSCRIBEs and keeps every subscriber's NOTIFYs flowing."""

    def __init__(
        self,
        source: DocumentSource,
        settings: NotifierSettings | None = None,
        *,
        gate: SourceGate | None = None,
        auth: DigestAuthenticator | None = None,
        lists: ListSource | None = None,
    ) -> None:
        self.settings = settings = settings or NotifierSettings()
        self._source = source
        self.lists = lists  # None: no resource lists (every SUBSCRIBE names one key)
        self.gate = gate or SourceGate()
        self.auth = auth  # None: phones are known by the user part of their From URI
        self.names = BridgeNames()  # what a digest answer's uri may name besides the Request-URI
        self._contacts = dict(settings.contacts)
        self._subs: dict[DialogKey, Subscription] = {}
        self._by_resource: dict[str, dict[DialogKey, Subscription]] = {}
        # List subscriptions by each of their member keys (they are not in _by_resource).
        self._by_member: dict[str, dict[DialogKey, Subscription]] = {}
        self._boundary = f"blf-list-{secrets.token_hex(8)}"  # of every list body (RFC 2046)
        # One subscription per watcher: a phone that re-subscribes under a new Call-ID without
        # ending the old dialog (a reboot, a lost 200) replaces it instead of doubling up.
        self._by_watcher: dict[WatcherKey, Subscription] = {}
        self._client_tx: dict[str, NotifyTransaction] = {}  # by Via branch
        self._answers = ResponseCache(64 * settings.t1)
        self._timers: TimerQueue[Subscription | NotifyTransaction | _TimerBatch | ListBatch] = (
            TimerQueue()
        )
        self._batches: dict[float, _TimerBatch] = {}  # by deadline, until it comes
        self._active: dict[int, bytes] = {}  # Subscription-State by seconds left
        self._out: list[tuple[bytes, Peer]] = []  # urgent: answers, single NOTIFYs, resends
        # Fan-outs not yet walked to the end, ringing (pickup-capable) states first; the
        # pending one of each resource, and each resource's change counter.
        self._ringing: deque[_FanOut] = deque()
        self._rest: deque[_FanOut] = deque()
        self._fanouts: dict[str, _FanOut] = {}
        self._generation: dict[str, int] = {}
        self._served: _FanOut | None = None  # the one the last slice went to
        self._branch_prefix = f"z9hG4bK{secrets.token_hex(4)}."
        # Our branches in an answer's Via (the quick path of the 200s, see answered()).
        self._our_branch = re.compile(rb";branch=(" + re.escape(self._branch_prefix.encode())
                                      + rb"[0-9a-f]+)(?=[;,\s])")  # fmt: skip
        self._branch_counter = itertools.count(1)
        # What the store has not heard yet: subscriptions to (re)write, dialogs to delete.
        self._changed: dict[DialogKey, Subscription] = {}
        self._removed: set[DialogKey] = set()
        # Whether the document source can tell yet if a resource exists (False for a PBX that
        # has not finished its first sync): an unknown one is then pending, not a 404.
        self.settled: Callable[[str], bool] = _always
        self._pending: set[str] = set()  # watched resources not known yet (bounded, see above)
        # A deadline was set by a resource change (a list's gathering interval): the glue, which
        # re-arms its one timer only after sending something, must re-arm it now.
        self._timer_moved = False
        self.notifies_sent = 0  # NOTIFY transactions started (retransmissions not counted)
        self.notifies_failed = 0  # ended by a failure response or a timeout
        self._per_source: dict[str, int] = {}  # active subscriptions per source address
        # UDP addresses that answered a NOTIFY (proof they receive what we send there).
        self._verified: OrderedDict[tuple[str, int], None] = OrderedDict()

    # ----------------------------------------------------------------- public API

    def set_contact(self, transport: str, host: str, port: int) -> None:
        """Set the host/port written into Contact and Via for a transport (e.g. once bound)."""
        self._contacts[transport] = (host, port)

    def contact(self, transport: str) -> tuple[str, int]:
        """The host/port used in Contact and Via for a transport."""
        return self._contacts[transport]

    def contact_for(self, peer: Peer) -> tuple[str, int]:
        """The host/port written into Contact and Via of what goes to this peer."""
        if self.settings.contact_from_local and peer.local is not None:
            return peer.local
        return self._contacts[peer.transport]

    def receive(self, message: Request | Response | bytes, peer: Peer, now: float) -> None:
        """Handle a datagram (bytes) or an already framed message from peer."""
        try:
            if isinstance(message, bytes | bytearray):
                if message[:1] in (b"", b"\r", b"\n") and not message.strip(b"\r\n"):
                    return  # CRLF keep-alive
                if message[:9] == b"SIP/2.0 2" and self.answered(message, now):
                    return  # a 200 to a NOTIFY of ours: the most common datagram by far
                if message.startswith(b"SIP/2.0 ") and (ids := response_ids(message)):
                    # A 200 to a NOTIFY of ours (the most common datagram): no full parse.
                    tx = self._client_tx.get(ids[1] or "")
                    if tx is not None and ids[2] == "NOTIFY" and ids[0] >= 200:
                        self._finish(tx, now, ids[0])
                        return
                try:
                    message = parse_message(bytes(message))
                except ParseError as exc:
                    self._malformed(exc, peer, now)
                    return
            if isinstance(message, Request):
                self._on_request(message, peer, now)
            else:
                self._on_response(message, peer, now)
        except Exception:  # a bug must not take the listener down; tests assert none is logged
            logger.exception("internal error handling a message from %s", peer)

    def answered(self, data: bytes, now: float) -> bool:
        """Take a datagram that is a 2xx to one of our NOTIFYs (True), without parsing it: our
        branch, unguessable, in its Via and NOTIFY in its CSeq are all it needs to be matched
        (RFC 3261 §17.1.3). Anything else (False) goes the long way, through the parser."""
        found = self._our_branch.search(data)
        if found is None or b" NOTIFY\r\n" not in data or not data[8:11].isdigit():
            return False
        tx = self._client_tx.get(found.group(1).decode())
        if tx is None:
            return False  # a retransmitted answer, or one for a transaction timed out
        self._finish(tx, now, int(data[8:11]))
        return True

    def resource_changed(self, resource: str, now: float, *, ringing: bool = False) -> None:
        """The resource's state changed: its watchers are told, coalesced per subscription.

        Nothing is built here: the NOTIFYs are made one by one as ``drain()`` hands them out, so
        the first leaves before the last is built. ``ringing``: a state a watcher may pick up,
        told before the other changes waiting. Its watchers through a list are told in the
        same walk, or when the list's gathering interval ends (``batch_interval``).
        """
        walk: list[Subscription] = []
        subs = self._by_resource.get(resource)
        if subs:
            if self._source.knows(resource):
                self._pending.discard(resource)
                walk.extend(subs.values())
            elif self.settled(resource):
                self._pending.discard(resource)
                for sub in list(subs.values()):
                    self._terminate(sub, now, "noresource")
            # else still not known: its watchers keep their neutral state
        members = self._by_member.get(resource)
        if members:
            for sub in members.values():
                if self._list_member_changed(sub, resource, now, ringing=ringing):
                    walk.append(sub)
        if not walk:
            return
        generation = self._generation[resource] = self._generation.get(resource, 0) + 1
        older = self._fanouts.get(resource)
        if older is not None:
            older.at = len(older.watchers)  # ends: the new walk tells everyone the newest state
        fanout = self._fanouts[resource] = _FanOut(resource, walk, generation, now)
        (self._ringing if ringing else self._rest).append(fanout)

    def outgoing(self) -> list[tuple[bytes, Peer]]:
        """Take everything to send, in order (every pending fan-out walked to its end)."""
        if not (self._ringing or self._rest):
            out, self._out = self._out, []
            return out
        return list(self.drain())

    def drain(
        self, now: float | None = None, budget: int | None = None, *, ringing_only: bool = False
    ) -> Iterator[tuple[bytes, Peer]]:
        """Hand out what is to be sent: every urgent message (answers, single NOTIFYs,
        retransmissions), then up to ``budget`` NOTIFYs of pending fan-outs (None: all), ringing
        ones first (``ringing_only``: no other). Each NOTIFY is built just before it is handed
        out, so the caller sends it before the next is built; ``now`` is when (default: when the
        change came)."""
        while self._out:
            out, self._out = self._out, []
            yield from out
        left = -1 if budget is None else budget
        while left:
            queue = self._ringing or (None if ringing_only else self._rest)
            if not queue:
                return
            fanout = queue[0]
            if fanout is self._served and len(queue) > 1:
                queue.rotate(-1)  # a slice each in turn: no change waits for a whole burst
                fanout = queue[0]
            self._served = fanout
            watchers, generation = fanout.watchers, fanout.generation
            resource, document = fanout.resource, self._source.document
            when = fanout.now if now is None else now
            end = len(watchers)
            while fanout.at < end and left:
                sub = watchers[fanout.at]
                fanout.at += 1
                if sub.rlist is not None:  # a list: its body is built here, for this NOTIFY
                    if sub.state != "active" or not sub.rlist.has_news:
                        continue  # ended, or a NOTIFY has carried what it gathered already
                    if sub.in_flight is not None:
                        sub.dirty = True
                        continue
                    left -= 1
                    yield self._notify(sub, when)
                    continue
                if sub.state != "active" or sub.told >= generation:
                    continue  # ended, or told this state already
                if sub.in_flight is not None:
                    sub.dirty = True  # one NOTIFY with the newest state once its 200 is in
                    continue
                left -= 1
                yield self._fanout_notify(sub, when, document(resource, sub.watcher), generation)
            if fanout.at >= end:
                if queue and queue[0] is fanout:
                    queue.popleft()
                if self._fanouts.get(resource) is fanout:
                    del self._fanouts[resource]

    def take_timer_moved(self) -> bool:
        """Whether ``next_timer()`` moved without anything to send (since last asked)."""
        moved, self._timer_moved = self._timer_moved, False
        return moved

    @property
    def has_outgoing(self) -> bool:
        """Whether drain() has anything."""
        return bool(self._out or self._ringing or self._rest)

    @property
    def fanout_pending(self) -> bool:
        """Whether a fan-out still has watchers to tell (drain() again, a slice at a time)."""
        return bool(self._ringing or self._rest)

    def next_timer(self) -> float | None:
        """When handle_timer() next has work, or None."""
        timer, answers = self._timers.next_deadline(), self._answers.next_deadline()
        if timer is None or answers is None:
            return answers if timer is None else timer
        return min(timer, answers)

    def handle_timer(self, now: float) -> None:
        """Run every timer due at `now`: retransmissions, transaction timeouts, expiries, and
        lists' gathering intervals (their NOTIFYs go out through ``drain()``, like a fan-out's)."""
        due: list[Subscription] = []
        due_ringing: list[Subscription] = []
        while (obj := self._timers.pop_due(now)) is not None:
            if isinstance(obj, _TimerBatch):
                if self._batches.get(obj.due_at) is obj:
                    del self._batches[obj.due_at]
                client_tx = self._client_tx
                for tx in obj.members:  # answered ones are gone from client_tx
                    if client_tx.get(tx.branch) is tx and tx.timer_seq == NO_TIMER:
                        self._on_transaction_timer(tx, now)
            elif isinstance(obj, NotifyTransaction):
                self._on_transaction_timer(obj, now)
            elif isinstance(obj, ListBatch):
                if self._list_batch_due(obj.subscription):
                    (due_ringing if obj.ringing else due).append(obj.subscription)
            else:
                self._log(now, logging.INFO, None, "subscription %s to %s expired",
                          obj.key[0], obj.resource)  # fmt: skip
                self._terminate(obj, now, "timeout")
        if due_ringing:
            self._ringing.append(_FanOut(LIST_LABEL, due_ringing, 0, now))
        if due:
            self._rest.append(_FanOut(LIST_LABEL, due, 0, now))
        self._answers.expire(now)

    def stats(self) -> NotifierStats:
        """Current counts."""
        return NotifierStats(
            subscriptions=len(self._subs),
            watchers={r: len(s) for r, s in self._by_resource.items()},
            notifies_in_flight=len(self._client_tx),
            server_transactions=len(self._answers),
            timer_entries=self._timers.heap_size,
        )

    # ----------------------------------------------------------------- persistence

    def take_changes(self, now: float) -> tuple[list[SubscriptionSnapshot], list[DialogKey]]:
        """What changed for the store since the last call: snapshots to write, keys to delete."""
        # List subscriptions are not stored: after a restart their phones subscribe anew (a
        # refresh gets 481), since the lists themselves are read again from Asterisk first.
        changed = [sub.snapshot(now) for sub in self._changed.values() if sub.rlist is None]
        removed = list(self._removed)
        self._changed.clear()
        self._removed.clear()
        return changed, removed

    @property
    def has_changes(self) -> bool:
        """Whether take_changes() has anything."""
        return bool(self._changed or self._removed)

    def snapshot_all(self, now: float, *, exact: bool = False) -> list[SubscriptionSnapshot]:
        """Every active subscription (and no pending change: this is all the store needs).

        ``exact``: with the CSeq and version in use instead of the lease bounds, for a clean
        stop; no NOTIFY may be sent after such a snapshot.
        """
        self._changed.clear()
        self._removed.clear()
        return [sub.snapshot(now, exact=exact) for sub in self._subs.values() if sub.rlist is None]

    def resources(self) -> list[str]:
        """Resources that have watchers now (keys watched through a list included)."""
        if not self._by_member:
            return list(self._by_resource)
        return list(dict.fromkeys([*self._by_resource, *self._by_member]))

    def restore(self, snapshots: list[SubscriptionSnapshot], now: float) -> int:
        """Take over subscriptions of an earlier process; returns how many were resumed.

        No NOTIFY goes out here: the next state change of each resource (the first sync with
        Asterisk changes every one) sends it, continuing CSeq and version.
        """
        resumed = 0
        for snap in snapshots:
            if (
                snap.expires_in <= 0
                or snap.key in self._subs
                or snap.peer.transport not in self._contacts
            ):
                continue
            sub = Subscription.resume(snap, now)
            if snap.peer.transport == "udp":
                # It lived past 3*T1, so its address answered a NOTIFY: no need to prove it again.
                self._verified[(snap.peer.host, snap.peer.port)] = None
            self._build_template(sub)
            self._index(sub, now)
            self._changed[sub.key] = sub  # its new lease must reach the store
            resumed += 1
        return resumed

    def watchers(self, resource: str) -> list[WatcherInfo]:
        """The active subscriptions to one resource."""
        return [
            WatcherInfo(s.peer, s.key[0], s.remote, s.expires_at, s.version)
            for s in self._by_resource.get(resource, {}).values()
        ]

    def flow_of(self, watcher: str, transport: Transport, host: str) -> Peer | None:
        """The connection an active subscription of ``watcher`` came over, by ``transport``
        from ``host``: where a request to that phone goes first (the LED MESSAGEs)."""
        for sub in self._subs.values():
            peer = sub.peer
            if (sub.watcher == watcher and sub.state == "active" and peer.transport == transport
                    and peer.host == host):  # fmt: skip
                return peer
        return None

    def end_watchers(self, keep: Callable[[str], bool], now: float, reason: str) -> int:
        """End (with a final NOTIFY saying ``reason``) every subscription whose watcher ``keep``
        refuses, e.g. a user removed from the credentials table; returns how many."""
        gone = [sub for sub in self._subs.values() if not keep(sub.watcher)]
        for sub in gone:
            self._terminate(sub, now, reason)
        return len(gone)

    def end_subscriptions(self, ends: Callable[[str, str], bool], now: float, reason: str
                          ) -> int:  # fmt: skip
        """End (final NOTIFY saying ``reason``) every subscription for which
        ``ends(watcher, resource)`` holds; returns how many."""
        gone = [sub for sub in self._subs.values()
                if sub.rlist is None and ends(sub.watcher, sub.resource)]  # fmt: skip
        for sub in gone:
            self._terminate(sub, now, reason)
        return len(gone)

    def end_list_subscriptions(self, names: set[str], now: float, reason: str) -> int:
        """End (final NOTIFY saying ``reason``) the subscriptions to the lists named, e.g. a
        list Asterisk changed: with ``deactivated`` the phones subscribe again at once and
        get the new list. Returns how many ended."""
        gone = [sub for sub in self._subs.values()
                if sub.rlist is not None and sub.rlist.name in names]  # fmt: skip
        for sub in gone:
            self._terminate(sub, now, reason)
        return len(gone)

    # ----------------------------------------------------------------- requests

    def _log(self, now: float, level: int, key: tuple[str, str] | None, msg: str,
             *args: object) -> None:  # fmt: skip
        """A log line caused by what a peer sent: rationed (see ``LogLimiter``)."""
        self.gate.logs.log(level, key, now, msg, *args)

    def _malformed(self, exc: ParseError, peer: Peer, now: float) -> None:
        # The allow-list and the rate limit come before any answer, a 400 included.
        admission = self.gate.admit(peer.host, now)
        if admission.drop:
            return
        req = exc.request
        if isinstance(req, Request):
            try:
                req.vias()
            except ParseError:
                pass
            else:
                answer = Answer(admission.status, admission.headers) if admission.status else (
                    Answer(400, problem=exc.reason))  # fmt: skip
                self._answer(_Exchange(req, peer, now, None), answer)
                return
        self._log(now, logging.INFO, ("unreadable", peer.host),
                  "dropped unreadable message from %s: %s", peer, exc.reason)  # fmt: skip

    def _on_request(self, req: Request, peer: Peer, now: float) -> None:
        if req.method == "ACK":
            return  # only ever acknowledges a final non-2xx we sent to an INVITE
        admission = self.gate.admit(peer.host, now)
        if admission.drop:
            return
        try:
            top = req.vias()[0]
        except ParseError as exc:
            self._log(now, logging.INFO, ("unreadable", peer.host), "dropped %s from %s: %s",
                      req.method, peer, exc.reason)  # fmt: skip
            return  # without a Via there is nowhere to send a response
        key = ResponseCache.key(req, top)
        x = _Exchange(req, peer, now, key)
        if admission.status:
            self._answer(_Exchange(req, peer, now, None), Answer(admission.status,
                                                                 admission.headers))  # fmt: skip
            return
        sent = self._answers.get(key, req.headers.get("i") or "")
        if sent is not None:  # a retransmission: the same answer again, nothing new
            if sent.data:
                self._out.append((sent.data, peer))
            else:
                self._accept(_Exchange(req, peer, now, None), sent.to_tag, sent.expires,
                             eventlist=sent.eventlist)  # fmt: skip
            return
        answer = screen_request(req)
        if answer is not None:
            self._answer(x, answer)
            return
        from_tag, to_tag = req.from_addr().tag, req.to_addr().tag
        assert from_tag is not None  # screen_request checked it
        sub = self._subs.get((req.call_id(), from_tag, to_tag)) if to_tag is not None else None
        if to_tag is not None and sub is None:
            self._answer(x, Answer(481))
            return
        expires = screen_subscribe(req, self.settings, new=sub is None)
        if isinstance(expires, Answer):
            self._answer(x, expires)
        elif sub is None:
            watcher = self._identify(x)
            if watcher is not None:
                self._new_subscription(x, from_tag, expires, watcher)
        else:
            self._refresh(x, sub, expires)

    def _identify(self, x: _Exchange) -> str | None:
        """Who subscribes: the digest user (after a challenge), or without authentication the
        user part of the From URI. None when the request has been answered (401/403/503)."""
        if self.auth is None:
            return x.req.from_addr().uri.user or ""
        authorization, also = x.req.headers.get("Authorization"), self._names_us
        outcome = self.auth.check(
            authorization, x.req.method, x.peer.host, x.now, x.req.uri, also=lambda u: also(u, x)
        )
        if outcome.verdict is Verdict.OK:
            return outcome.user
        if outcome.verdict is Verdict.WRONG_URI:
            self._log(x.now, logging.WARNING, ("auth uri", x.peer.host), "refusing a digest answer "
                      "from %s signed for another URI than %s or this bridge (%s)", x.peer,
                      x.req.uri, ", ".join(sorted(self.names.domains)) or "no sip.domain set"
                      )  # fmt: skip
            self._answer(x, Answer(400, problem=outcome.reason))
            return None
        if outcome.verdict is Verdict.FORBIDDEN:
            self._log(x.now, logging.WARNING, ("auth", x.peer.host),
                      "authentication of %r from %s failed: %s", outcome.user, x.peer,
                      outcome.reason)  # fmt: skip
            throttled = self.gate.failed(x.peer.host, x.now)
            self._answer(
                x, Answer(throttled.status, throttled.headers) if throttled else Answer(403)
            )
            return None
        if outcome.reason:
            self._log(x.now, logging.INFO, ("challenge", x.peer.host),
                      "challenging %s again: %s", x.peer, outcome.reason)  # fmt: skip
        stale = outcome.verdict is Verdict.STALE
        challenges = self.auth.challenges(x.peer.host, x.now, stale=stale)
        # Not cached: a retransmission must not be handed the same nonce twice.
        x = _Exchange(x.req, x.peer, x.now, None)
        self._answer(x, Answer(401, tuple(("WWW-Authenticate", c) for c in challenges)))
        return None

    def _answer(
        self,
        x: _Exchange,
        answer: Answer,
        to_tag: str = "",
        expires: int | None = None,
        eventlist: bool = False,
    ) -> None:
        """Send (and cache, for retransmissions) the answer to a request; ``expires`` when it
        accepts a SUBSCRIBE (the cache then keeps how to build it again, not its bytes)."""
        reason = f"Bad Request ({answer.problem})" if answer.problem is not None else None
        response = build_response(
            x.req,
            answer.status,
            reason,
            # RFC 3261 §8.2.6.2: a To tag on every final answer; a throwaway one outside dialogs.
            to_tag=to_tag or secrets.token_hex(6),
            source=(x.peer.host, x.peer.port),
            headers=[*answer.headers, ("Server", self.settings.user_agent)],
        )
        data = response.to_bytes()
        self._out.append((data, x.peer))
        if x.key is not None:
            call_id = x.req.headers.get("i") or ""
            if expires is None:
                self._answers.put(x.key, SentAnswer(call_id, data), x.now)
            else:
                sent = SentAnswer(call_id, to_tag=to_tag, expires=expires, eventlist=eventlist)
                self._answers.put(x.key, sent, x.now)
        if answer.status >= 300:
            self._log(x.now, logging.INFO, (f"answer {answer.status}", x.peer.host), "%s from %s: "
                      "%d %s", x.req.method, x.peer, answer.status, response.reason)  # fmt: skip

    def _accept(self, x: _Exchange, to_tag: str, expires: int, *, eventlist: bool = False
                ) -> None:  # fmt: skip
        """Send the 200 for a SUBSCRIBE (the NOTIFY must follow it, never precede it);
        ``eventlist``: it subscribes to a list (RFC 4662 §5.1: Require: eventlist)."""
        host, port = self.contact_for(x.peer)
        headers = [
            ("Expires", str(expires)),
            ("Contact", contact_uri(x.peer.transport, host, port)),
        ]
        if eventlist:
            headers.append(("Require", EVENTLIST))
        # RFC 3261 §12.1.1: Record-Route is copied into the answer that creates the dialog.
        headers += [("Record-Route", r) for r in x.req.list_values("Record-Route")]
        self._answer(x, Answer(200, tuple(headers)), to_tag, expires, eventlist)

    def _new_subscription(self, x: _Exchange, from_tag: str, expires: int, watcher: str) -> None:
        req, now = x.req, x.now
        limits, host = self.gate.limits, x.peer.host
        over = (limits.subscriptions_total and len(self._subs) >= limits.subscriptions_total) or (
            limits.subscriptions_per_source
            and self._per_source.get(host, 0) >= limits.subscriptions_per_source
        )
        if over:  # fetches count too: each costs a NOTIFY
            refusal = self.gate.over_cap(host, now)
            if not refusal.drop:
                self._answer(x, Answer(refusal.status, refusal.headers))
            return
        uri = req.request_uri()
        user = uri.user
        rlist = None
        resource = None if user is None else self._source.resolve(user, watcher, uri.host)
        if user is not None and self.lists is not None:
            definition = self.lists.find_list(user, watcher, uri.host)
            if definition is not None and supports_eventlist(req):
                rlist = self._expand(definition, watcher, uri.host)
                resource = LIST_LABEL + rlist.name
            elif definition is not None and not (resource and self._source.knows(resource)):
                # RFC 4662 §5.1: a list is only served to who says it understands lists. (A
                # key of the same name is served as a key, as Asterisk does.)
                self._answer(x, Answer(421, (("Require", EVENTLIST),)))
                return
        if resource is not None:
            resource = sys.intern(resource)  # one copy per extension, not per subscription
        pending = False
        if resource is None or (rlist is None and not self._source.knows(resource)):
            if resource is None or self.settled(resource):
                self._answer(x, Answer(404))
                return
            # Not known yet: accepted, told a neutral state now and the real one (or its end,
            # noresource) once the PBX has told its keys.
            if resource not in self._pending and len(self._pending) >= MAX_PENDING_RESOURCES:
                self._answer(x, Answer(503, (("Retry-After", str(NOT_READY_RETRY_AFTER)),)))
                return
            pending = True
        event, contact = req.event(), req.contact()
        assert event is not None and contact is not None  # screen_subscribe checked them
        local_tag = secrets.token_hex(8)
        sub = Subscription.create(
            key=(req.call_id(), from_tag, local_tag),
            resource=resource,
            peer=x.peer,
            event=EVENT_PACKAGE + (f";id={event.id}" if event.id is not None else ""),
            event_id=event.id,
            local=f"{req.headers.get('To')};tag={local_tag}",
            remote=req.headers.get("From") or "",
            target=contact.uri.raw,
            route=tuple(req.list_values("Record-Route")),
            expires_at=now + expires,
            remote_cseq=req.cseq().seq,
            watcher=watcher,
            rlist=rlist,
        )
        self._build_template(sub)
        self._accept(x, sub.key[2], expires, eventlist=rlist is not None)
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): one NOTIFY with the state, then done. Sent once and
            # forgotten, never retransmitted: nothing is kept per fetch but the cached 200, and
            # a forged source receives two packets per request, not twelve.
            sub.state, sub.final_reason = "terminating", "timeout"
            self._send_notify(sub, now, once=True)
            return
        self._index(sub, now)
        if pending:
            self._pending.add(resource)
        self._log(now, logging.INFO, None, "%s subscribed to %s for %d s%s", x.peer, resource,
                  expires, " (not known yet: waiting for the sync)" if pending else "")  # fmt: skip
        self._send_notify(sub, now)

    def _index(self, sub: Subscription, now: float) -> None:
        """Make an active subscription findable; it replaces an older one of the same watcher."""
        older = self._by_watcher.get(sub.watcher_key())
        if older is not None and older is not sub:
            self._log(now, logging.INFO, None, "%s re-subscribed to %s in a new dialog; the old "
                      "one is dropped", sub.peer, sub.resource)  # fmt: skip
            self._terminate(older, now, "", notify=False)  # the phone has forgotten it
        self._subs[sub.key] = sub
        if sub.rlist is None:
            self._by_resource.setdefault(sub.resource, {})[sub.key] = sub
        else:
            for member in sub.rlist.member_resources():
                self._by_member.setdefault(member, {})[sub.key] = sub
        self._by_watcher[sub.watcher_key()] = sub
        sub.source = sub.peer.host
        self._per_source[sub.source] = self._per_source.get(sub.source, 0) + 1
        self._timers.schedule(sub, sub.expires_at)

    def _refresh(self, x: _Exchange, sub: Subscription, expires: int) -> None:
        event, cseq = x.req.event(), x.req.cseq().seq
        if event is None or event.id != sub.event_id:  # would be a 2nd subscription in the dialog
            self._answer(x, Answer(481))
            return
        if not self._from_owner(x, sub):
            return
        if cseq <= sub.remote_cseq:  # RFC 3261 §12.2.2: out of order
            self._answer(x, Answer(500))
            return
        sub.remote_cseq = cseq
        sub.peer = x.peer  # with digest the port may have changed (NAT rebinding): follow it
        contact = x.req.contact()
        if contact is not None and contact.uri.raw != sub.target:
            if self._by_watcher.get(sub.watcher_key()) is sub:
                del self._by_watcher[sub.watcher_key()]
            sub.target = contact.uri.raw  # SUBSCRIBE is a target refresh request (RFC 6665)
            self._by_watcher[sub.watcher_key()] = sub
        self._build_template(sub)
        self._accept(x, sub.key[2], expires, eventlist=sub.rlist is not None)
        if sub.rlist is not None:
            sub.rlist.pending = None  # a refresh is answered with the full state
        if expires == 0:
            self._log(x.now, logging.INFO, None, "%s unsubscribed from %s", x.peer, sub.resource)
            self._terminate(sub, x.now, "timeout")
            return
        sub.expires_at = x.now + expires
        self._timers.schedule(sub, sub.expires_at)
        self._changed[sub.key] = sub  # new expiry, maybe a new address or Contact
        if sub.in_flight is not None:
            sub.dirty = True  # coalesce: one NOTIFY with the newest state after the current one
        else:
            self._send_notify(sub, x.now)

    def _names_us(self, uri: str, x: _Exchange) -> bool:
        """Whether a digest answer's ``uri`` names this bridge (its domain or an address it
        listens on, as configured, bound, or as this request reached it)."""
        names = self.names
        bound = self._contacts.values()
        names = BridgeNames(names.domains, names.hosts | {h.lower() for h, _ in bound},
                            names.ports | {p for _, p in bound})  # fmt: skip
        return names.named(uri, x.req.request_uri().user, x.peer.local)

    def _from_owner(self, x: _Exchange, sub: Subscription) -> bool:
        """Whether a refresh may touch this subscription; if not, it has been answered.

        A subscription stays on the transport and host that made it, and with digest with the
        user that made it: the refresh must authenticate again, as that user. Without digest the
        port must not change either, since nothing else tells the phone from a neighbour behind
        the same NAT; a phone whose port did change gets 481 and starts a new dialog from where
        it is now (RFC 6665 §4.1.2.2), which always works. With digest the credentials prove
        who it is, so a new port (NAT rebinding) is followed.
        """
        here, there = x.peer, sub.peer
        same_port = here.port == there.port or self.auth is not None
        if here.transport != there.transport or here.host != there.host or not same_port:
            self._log(x.now, logging.WARNING, ("moved", here.host), "refusing a refresh from %s "
                      "of a subscription to %s made from %s: a subscription stays where it was "
                      "made", here, sub.resource, there)  # fmt: skip
            self._answer(x, Answer(481))
            return False
        if self.auth is None:
            return True
        user = self._identify(x)  # a challenge, 403 or 400 has been answered when None
        if user is None:
            return False
        if user != sub.watcher:
            self._log(x.now, logging.WARNING, ("other user", here.host), "refusing a refresh by "
                      "%r from %s of %r's subscription to %s", user, here, sub.watcher,
                      sub.resource)  # fmt: skip
            self._answer(x, Answer(403))
            return False
        return True

    def _build_template(self, sub: Subscription) -> None:
        host, port = self.contact_for(sub.peer)
        sub.build_template(host, port, self.settings.user_agent, self.settings.content_type)

    # ----------------------------------------------------------------- NOTIFY

    def _send_notify(
        self, sub: Subscription, now: float, doc: SupportsBody | None = None, *, once: bool = False
    ) -> None:
        """Send the next NOTIFY of ``sub``; ``once``: no transaction, no retransmission."""
        self._out.append(self._notify(sub, now, doc, once=once))

    def _notify(
        self, sub: Subscription, now: float, doc: SupportsBody | None = None, *, once: bool = False
    ) -> tuple[bytes, Peer]:
        """The next NOTIFY of ``sub`` and where it goes, its transaction started."""
        body, ctype = b"", ""
        resource = sub.resource
        if sub.rlist is not None:
            rlist = sub.rlist
            ctype, body = rlist.next_body(sub.version, lambda r: self._member_document(sub, r))
            sub.version += 1
            if isinstance(rlist.batch, ListBatch):
                self._timers.cancel(rlist.batch)  # what it gathered goes now
                rlist.batch.ringing = False
        # A key not known yet gets its neutral (no dialogs) body; a gone one's final NOTIFY none.
        elif doc is not None or self._source.knows(resource) or not self.settled(resource):
            body = (doc or self._source.document(sub.resource, sub.watcher)).body(sub.version)
            sub.version += 1
        final = sub.state != "active"
        if final:
            state = f"terminated;reason={sub.final_reason}".encode()
            sub.state = "gone"
        else:
            # + 1 µs: (now + 600) - now is 599.99999999999 when the sum crosses a power of two
            # (the clock near 8192 s, 16384 s, ...), and a fresh grant must say 600.
            left = int(sub.expires_at - now + 1e-6)
            state = self._active.get(left) or self._active_state(left)
            sub.told = self._generation.get(sub.resource, 0)
        sub.cseq += 1
        sub.dirty = False
        if sub.lease_ran_out() and not final:
            self._changed[sub.key] = sub
        branch = f"{self._branch_prefix}{next(self._branch_counter):x}"
        assert sub.template is not None
        data = sub.template.render(sub, branch, state, body, ctype)
        self.notifies_sent += 1
        peer = sub.peer
        if once:
            return data, peer
        self._start(sub, branch, data, now, final)
        return data, peer

    def _start(self, sub: Subscription, branch: str, data: bytes, now: float, final: bool) -> None:
        """Start the NOTIFY's client transaction, in the timer batch of its first deadline."""
        t1, peer = self.settings.t1, sub.peer
        timeout = 64 * t1
        if peer.transport == "udp" and (peer.host, peer.port) not in self._verified:
            timeout = UNVERIFIED_TIMEOUT_T1 * t1
        tx = NotifyTransaction(branch, sub, data, peer, now, t1, self.settings.t2, timeout, final)
        sub.in_flight = tx
        self._client_tx[branch] = tx
        batch = self._batches.get(tx.due_at)
        if batch is None:
            batch = self._batches[tx.due_at] = _TimerBatch(tx.due_at)
            self._timers.schedule(batch, tx.due_at)
        batch.members.append(tx)
        batch.unanswered += 1

    def _fanout_notify(
        self, sub: Subscription, now: float, doc: SupportsBody, generation: int
    ) -> tuple[bytes, Peer]:
        """``_notify`` for the watchers of a fan-out, the one path run thousands of times in a
        row: an active subscription, one document, nothing in flight. Same bytes, same state
        afterwards (tests/test_sip_notifier.py compares the two); the body's version is spliced
        straight into the message instead of a body being built per watcher."""
        version = sub.version
        sub.version = version + 1
        left = int(sub.expires_at - now + 1e-6)  # + 1 µs: see _notify
        state = self._active.get(left) or self._active_state(left)
        sub.told = generation  # the newest: resource_changed ends an older walk
        sub.cseq += 1
        sub.dirty = False
        if sub.lease_ran_out():
            self._changed[sub.key] = sub
        branch = f"{self._branch_prefix}{next(self._branch_counter):x}"
        assert sub.template is not None
        data = sub.template.splice(sub, branch, state, doc.prefix, b"%d" % version, doc.suffix)
        self.notifies_sent += 1
        self._start(sub, branch, data, now, False)
        return data, sub.peer

    def _active_state(self, left: int) -> bytes:
        """``active;expires=N``, formatted once per N (a fan-out's watchers share a handful)."""
        left = max(0, left)
        state = self._active[left] = b"active;expires=%d" % left
        if len(self._active) > 2 * self.settings.max_expires + 2:  # a bound whatever happens
            self._active.clear()
        return state

    def _terminate(self, sub: Subscription, now: float, reason: str, notify: bool = True) -> None:
        """End a subscription; with notify, a final NOTIFY goes out (after any in flight)."""
        if sub.state != "active":
            return
        self._subs.pop(sub.key, None)
        self._changed.pop(sub.key, None)
        self._removed.add(sub.key)
        if self._by_watcher.get(sub.watcher_key()) is sub:
            del self._by_watcher[sub.watcher_key()]
        if sub.rlist is not None:
            self._unindex_list(sub)
        left = self._per_source.get(sub.source, 0) - 1
        if left > 0:
            self._per_source[sub.source] = left
        else:
            self._per_source.pop(sub.source, None)
        watchers = self._by_resource.get(sub.resource, {})
        watchers.pop(sub.key, None)
        if not watchers:
            self._by_resource.pop(sub.resource, None)
            self._pending.discard(sub.resource)
        self._timers.cancel(sub)
        if not notify:
            sub.state = "gone"
            return
        sub.state = "terminating"
        sub.final_reason = reason
        if sub.in_flight is None:
            self._send_notify(sub, now)

    def _on_response(self, resp: Response, peer: Peer, now: float) -> None:
        try:
            branch = resp.vias()[0].branch
            method = resp.cseq().method
        except ParseError as exc:
            self._log(now, logging.INFO, ("unreadable", peer.host),
                      "dropped response from %s: %s", peer, exc.reason)  # fmt: skip
            return
        tx = self._client_tx.get(branch or "") if method == "NOTIFY" else None
        if tx is None:
            logger.debug("stray %d response from %s", resp.status, peer)
            return
        if resp.status < 200:
            tx.provisional()
            return
        self._finish(tx, now, resp.status)

    def _on_transaction_timer(self, tx: NotifyTransaction, now: float) -> None:
        if tx.fire(now):
            self._finish(tx, now, None)
            return
        self._out.append((tx.data, tx.peer))
        self._timers.schedule(tx, tx.due_at)

    def _finish(self, tx: NotifyTransaction, now: float, status: int | None) -> None:
        """A NOTIFY transaction ended: with a final status, or timed out (None)."""
        del self._client_tx[tx.branch]
        if tx.timer_seq == NO_TIMER:  # still in the batch it started in
            batch = self._batches.get(tx.due_at)
            if batch is not None:
                batch.unanswered -= 1
                if not batch.unanswered:
                    del self._batches[tx.due_at]
                    self._timers.cancel(batch)
        else:
            self._timers.cancel(tx)
        # The timer heap keeps a cancelled entry until it surfaces: not the NOTIFY's bytes too.
        tx.data = b""
        sub = tx.subscription
        sub.in_flight = None
        if status is not None and tx.peer.transport == "udp":
            # An answer proves the address receives what we send there (the branch is ours).
            address = (tx.peer.host, tx.peer.port)
            self._verified[address] = None
            self._verified.move_to_end(address)
            if len(self._verified) > _MAX_VERIFIED:
                self._verified.popitem(last=False)
        if status is not None and status < 300:
            if sub.state == "terminating" or (sub.state == "active" and sub.dirty):
                if sub.rlist is not None and sub.state == "active" and sub.rlist.batch_interval:
                    if self._list_member_changed(sub, None, now):  # gathers again, then sends
                        self._send_notify(sub, now)
                elif sub.rlist is None or sub.state != "active" or sub.rlist.has_news:
                    self._send_notify(sub, now)
            return
        self.notifies_failed += 1
        # RFC 6665 §4.2.2: a NOTIFY that times out or gets a failure response ends the
        # subscription. RFC 5057 would keep the dialog on a few codes (e.g. 491, 500 with
        # Retry-After), but a phone that refuses a NOTIFY gains nothing from more of them, and a
        # live phone re-SUBSCRIBEs anyway: every failure removes it, with no final NOTIFY.
        outcome = "timed out" if status is None else f"answered {status}"
        self._log(now, logging.INFO, None, "NOTIFY to %s for %s %s; subscription removed",
                  tx.peer, sub.resource, outcome)  # fmt: skip
        self._terminate(sub, now, "", notify=False)
        sub.state = "gone"

    # ----------------------------------------------------------------- resource lists

    def _expand(self, definition: ListDefinition, watcher: str, domain: str) -> ListState:
        """A list subscription's members: each item as this watcher's SUBSCRIBE for it would
        name it (tenants, several PBXs); items that name no key are left out, logged. A key
        that cannot be watched now is listed as a terminated instance until it can."""
        assert self.lists is not None
        members: list[tuple[str, str, str]] = []
        for item in definition.items:
            resource = self._source.resolve(item, watcher, domain)
            if resource is None:
                logger.info("list %s: item %s names no key for %s; left out", definition.name,
                            item, watcher or "anyone")  # fmt: skip
                continue
            resource = sys.intern(resource)
            members.append((resource, self.lists.resource_uri(resource), item))
        uri = self.lists.list_uri(definition.name, domain)
        return ListState.expand(definition, uri, members, self._boundary)

    def _member_document(self, sub: Subscription, resource: str) -> SupportsBody | None:
        if not self._source.knows(resource):
            return None
        return self._source.document(resource, sub.watcher)

    def _list_member_changed(
        self, sub: Subscription, resource: str | None, now: float, *, ringing: bool = False
    ) -> bool:
        """A member of a list subscription changed (None: its last NOTIFY was answered while
        more changes waited): gather for the list's interval, then one NOTIFY carries them.
        True: the list sends at once (no interval), in the walk of the change's fan-out."""
        rlist = sub.rlist
        assert rlist is not None
        if resource is not None:
            rlist.changed(resource)
        if sub.state != "active":
            return False
        if rlist.batch_interval <= 0:
            if sub.in_flight is not None:
                sub.dirty = True  # sent once the NOTIFY in flight is answered
                return False
            return True
        batch = rlist.batch
        if not isinstance(batch, ListBatch):
            batch = rlist.batch = ListBatch(sub)
        batch.ringing = batch.ringing or ringing  # what it gathers goes out with ringing keys
        if sub.in_flight is not None:
            sub.dirty = True  # sent (after gathering) once the NOTIFY in flight is answered
            return False
        if batch.timer_seq == NO_TIMER:  # not gathering yet: the first change starts it
            self._timers.schedule(batch, now + rlist.batch_interval)
            self._timer_moved = True
        return False

    def _list_batch_due(self, sub: Subscription) -> bool:
        """A list's gathering interval ended: True when its NOTIFY is to go out now (in a walk
        of the lists due, see ``handle_timer``)."""
        rlist = sub.rlist
        if rlist is None or sub.state != "active" or not rlist.has_news:
            return False
        if sub.in_flight is not None:
            sub.dirty = True
            return False
        return True

    def _unindex_list(self, sub: Subscription) -> None:
        assert sub.rlist is not None
        for member in sub.rlist.member_resources():
            subs = self._by_member.get(member)
            if subs is not None:
                subs.pop(sub.key, None)
                if not subs:
                    del self._by_member[member]
        if isinstance(sub.rlist.batch, ListBatch):
            self._timers.cancel(sub.rlist.batch)


def _always(resource: str) -> bool:
    return True
