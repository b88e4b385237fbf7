"""The whole bridge as one sans-I/O state machine (h11 and aioquic style).

It owns the call tracker, the bodies cache, the pickup policy, the SIP notifier, the LED
controller and the stale-ring deadline. Everything enters as a call with ``now``: an Asterisk
event (``asterisk_event``), a SIP message from a peer (``receive``), a due timer
(``handle_timer``), a new configuration (``reconfigure``). What it wants done leaves as data:
``outgoing()`` (messages to send, each with its peer), ``store_changes()`` (what the
subscription store must write), ``Reconfigured`` (what the source must do), ``next_timer()``
(when to call ``handle_timer`` again). No asyncio, no sockets, no clock: ``bridge.app`` carries
all that out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bridge import settings
from bridge.config import Config
from bridge.dialoginfo import RenderSettings, sip_uri
from bridge.documents import Documents
from bridge.events import (
    AsteriskEvent,
    ContactChanged,
    DeviceStateChanged,
    DialplanRead,
    EndpointGroups,
    ExtensionHint,
    ResourceListsRead,
    ResyncFinished,
    ResyncStarted,
    RightsMissing,
    SourceLost,
    callerid_name,
)
from bridge.findings import Finding, pickup_group_finding
from bridge.led.controller import Destination, LedController
from bridge.model import EntityState
from bridge.pbxs import PbxRouter, PbxState
from bridge.pickup import PickupPolicy
from bridge.resource_lists import ListDirectory, ResourceList
from bridge.sip.access import SourceGate
from bridge.sip.message import ParseError, Request, Response, parse_message, response_ids
from bridge.sip.notifier import Notifier
from bridge.sip.subscription import (
    DialogKey,
    NotifierSettings,
    Peer,
    SubscriptionSnapshot,
    Transport,
)
from bridge.tracker import CallTracker

__all__ = ["BridgeCore", "Reconfigured"]

log = logging.getLogger("bridge")

Address = tuple[str, int]
# Events the core itself acts on besides handing them to the tracker (kept short: every event
# of every call is checked against it).
_SOURCE_NEWS = (EndpointGroups, DialplanRead, ResourceListsRead, SourceLost, ResyncStarted,
                ResyncFinished, RightsMissing)
HINT_UNAVAILABLE = 4  # ExtensionStatus: no device of the hint can be reached
_LED_INPUTS = (DeviceStateChanged, ExtensionHint, ContactChanged, ResyncStarted, ResyncFinished)


@dataclass(frozen=True, slots=True)
class Reconfigured:
    """What a new configuration means for the parts outside the core."""

    config: Config  # now in force: settings that need a restart keep their old values
    changed: frozenset[str]  # dotted names of the settings that differ
    kept: tuple[str, ...]  # changed, but only taken over on a restart
    restart_source: bool  # follow Asterisk anew (its settings changed, or the tracker did)
    relearned: tuple[str, ...] = ()  # PBXs followed at another endpoint: keys learned anew


RELOAD_FINDING = "reload"  # the subject of the finding "changed, but only on a restart"


class BridgeCore:
    """The bridge without I/O: feed it, drain it, wake it at ``next_timer()``."""

    def __init__(self, config: Config, now: float = 0.0) -> None:
        self.config = config
        # One per [[asterisk]] entry, or the one PBX (named ""): keys, bodies, pickup groups.
        self.pbxs = [_new_pbx(config, name, domain, now)
                     for name, domain in _pbx_names(config)]  # fmt: skip
        self.by_name = {pbx.name: pbx for pbx in self.pbxs}
        self.router = PbxRouter(self.pbxs) if config.pbxs else None
        # RFC 4662 lists: [[lists]] of the configuration, and each PBX's resource_list objects.
        self.lists = ListDirectory(config.lists)
        self.notifier = Notifier(
            self.router or self.pbxs[0].documents,
            settings.notifier_settings(config),
            gate=SourceGate(settings.access_limits(config)),
            auth=settings.authenticator(config),
            lists=self,
        )
        # Without a fixed watch list nobody knows which extensions exist before the first sync:
        # a key not known yet is pending until its PBX has told its keys.
        self.notifier.settled = self._settled
        self.notifier.names = settings.bridge_names(config)
        # Our address as a phone's host sees it (the Via of a MESSAGE): the glue knows the
        # routes; until it says, the configured UDP contact.
        self.local_towards: Callable[[str], Address] = lambda host: self.notifier.contact("udp")
        self.leds: LedController | None = None
        if config.leds:
            self.leds = LedController(
                config.leds,
                domain=settings.domain(config),
                local=self._led_via,
                user_agent=config.sip.user_agent,
            )
        # The states LED keys follow, as the core last learned them (device key → state,
        # extension → hint status): a key is told only when its state really changes.
        self.device_states: dict[str, str] = {}
        self.hint_states: dict[str, int] = {}
        self.events_total = 0
        # What the bridge found wrong with the site while running (the panel shows them).
        self.findings: list[Finding] = []
        self._status_changed = False
        self._timer_moved = False  # the stale-ring deadline was set or cleared

    # ----------------------------------------------------------------- the PBX(s) followed

    @property
    def tracker(self) -> CallTracker:
        """The (first) PBX's call tracker."""
        return self.pbxs[0].tracker

    @property
    def documents(self) -> Documents:
        """The (first) PBX's bodies cache."""
        return self.pbxs[0].documents

    @property
    def policy(self) -> PickupPolicy:
        """The (first) PBX's pickup policy."""
        return self.pbxs[0].policy

    @property
    def asterisk_connected(self) -> bool:
        """Every PBX's source is logged in."""
        return all(pbx.connected for pbx in self.pbxs)

    @property
    def asterisk_synced(self) -> bool:
        """Every PBX's last resync finished and nothing was lost since."""
        return all(pbx.synced for pbx in self.pbxs)

    @property
    def stale_ring_at(self) -> float | None:
        """The earliest stale-ring deadline of a lost PBX, or None."""
        # Read by next_timer() after every datagram: a plain loop, no generator per call (a
        # GC-tracked allocation per NOTIFY answer made the cyclic collector run that much more
        # often over 2,000 watchers' subscriptions; benchmarks.targets' latency rose by a fifth).
        when = None
        for pbx in self.pbxs:
            at = pbx.stale_ring_at
            if at is not None and (when is None or at < when):
                when = at
        return when

    # ----------------------------------------------------------------- what a SIP side needs

    @property
    def gate(self) -> SourceGate:
        """Who may talk to the SIP side, and how often (shared with the stream connections)."""
        return self.notifier.gate

    @property
    def settings(self) -> NotifierSettings:
        """The SIP protocol settings (the stream side reads the User-Agent)."""
        return self.notifier.settings

    def contact(self, transport: str) -> tuple[str, int]:
        """The host/port written into Contact and Via for a transport."""
        return self.notifier.contact(transport)

    def set_contact(self, transport: str, host: str, port: int) -> None:
        """Set the Contact/Via address of a transport (once its port is bound)."""
        self.notifier.set_contact(transport, host, port)

    # ----------------------------------------------------------------- lists (ListSource)

    def find_list(self, user: str, watcher: str, domain: str) -> ResourceList | None:
        """The list a SUBSCRIBE names (the notifier's ListSource): configured, or its PBX's."""
        pbx = self._pbx_at(domain)
        return None if pbx is None else self.lists.find(user, pbx.name)

    def list_uri(self, name: str, domain: str) -> str:
        """A list's URI in its RLMI documents, in its PBX's SIP domain."""
        pbx = self._pbx_at(domain) or self.pbxs[0]
        return sip_uri(name, pbx.documents.settings.domain)

    def resource_uri(self, resource: str) -> str:
        """A list member's URI: the entity of its dialog-info part."""
        pbx = self._pbx_of(resource) or self.pbxs[0]
        user = pbx.key(resource).partition("@")[0]
        return sip_uri(user, pbx.documents.settings.domain)

    def _pbx_at(self, domain: str) -> PbxState | None:
        if self.router is None:
            return self.pbxs[0]
        return self.router.by_host.get(domain.lower())

    # ----------------------------------------------------------------- inputs

    def asterisk_event(self, event: AsteriskEvent, now: float, pbx: str = "") -> bool:
        """One normalized Asterisk event of the PBX named ``pbx`` ("" with one PBX), in order;
        True when a watched key changed."""
        self.events_total += 1
        followed = self.by_name[pbx]
        followed.events += 1
        changed = False
        if isinstance(event, ExtensionHint):  # unavailable is no dialog: only the panel shows it
            key = followed.tracker.key(event.exten, event.context)
            was = followed.tracker.hint_status(key)
            if (was == HINT_UNAVAILABLE) != (event.status == HINT_UNAVAILABLE):
                self._status_changed = True
        dirty = followed.tracker.apply(event, now)  # mostly empty: keep that path short
        for exten in sorted(dirty) if dirty else ():
            if followed.documents.changed(exten):
                changed = True
                resource = followed.resource(exten)
                state = followed.tracker.state(exten)
                log.info("%s: %s", resource, state.summary())
                self.notifier.resource_changed(resource, now, ringing=_pickable(state))
        if changed or followed.tracker.panel_news:  # the panel also shows answers and times
            followed.tracker.panel_news = False
            self._status_changed = True
        if self.leds is not None and isinstance(event, _LED_INPUTS):
            self._led_input(event, now)
        if isinstance(event, _SOURCE_NEWS):
            self._source_news(followed, event, now)
        return changed

    def receive(self, message: Request | Response | bytes, peer: Peer, now: float) -> None:
        """A datagram (bytes) or a framed message from a peer: answers to our MESSAGEs go to
        the LED controller, everything else to the notifier."""
        if (
            isinstance(message, bytes)
            and message[:9] == b"SIP/2.0 2"
            and self.notifier.answered(message, now)
        ):
            return  # a 200 to a NOTIFY: by far the most common datagram, not parsed
        if self.leds is not None and (
            isinstance(message, Response)
            or (isinstance(message, bytes | bytearray) and message[:8] == b"SIP/2.0 ")
        ):
            left = self._led_response(message, now)
            if left is None:
                return
            message = left
        self.notifier.receive(message, peer, now)

    def resource_changed(self, resource: str, now: float) -> None:
        """Tell the watchers of ``resource`` its state again, if it changed since the last time."""
        pbx = self._pbx_of(resource)
        if pbx is None:
            self.notifier.resource_changed(resource, now)
        elif pbx.documents.changed(key := pbx.key(resource)):
            self.notifier.resource_changed(resource, now, ringing=_pickable(pbx.tracker.state(key)))

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now``: retransmissions, timeouts, expiries, LED retries and
        the stale-ring deadline."""
        self.notifier.handle_timer(now)
        if self.leds is not None:
            self.leds.handle_timer(now)
        for pbx in self.pbxs:
            if pbx.stale_ring_at is not None and now >= pbx.stale_ring_at:
                pbx.stale_ring_at = None
                self._timer_moved = True
                self._expire_rings(pbx, now)

    def source_restarting(self, now: float) -> None:
        """The glue follows Asterisk anew after a reload: nothing is known until the resync,
        but Asterisk was not lost (no warning, no stale-ring deadline; keys keep their state)."""
        for pbx in self.pbxs:
            pbx.tracker.apply(SourceLost(), now)
            pbx.connected = pbx.synced = False
        self._status_changed = True

    def reconfigure(self, config: Config, now: float, *, can_restart_source: bool = True,
                    new_pbx: bool = False) -> Reconfigured:  # fmt: skip
        """Take over a new configuration without dropping a subscription. Settings that need
        a restart keep their old values (and are kept as a finding until then). When the source
        is not restarted, watchers whose bodies differ now (domain, policy, privacy) are told at
        once. ``can_restart_source``: False while the glue follows a PBX of its own (the demo)
        and goes on doing so; ``new_pbx``: the glue follows another PBX from now on (the demo
        and Asterisk, either way), whose keys are learned anew."""
        changed = frozenset(settings.changed_settings(self.config, config))
        kept = tuple(sorted(name for name in changed if settings.needs_restart(name)
                            and not _store_moves(name, self.config, config)))  # fmt: skip
        self._keep_finding(kept)
        if not changed and not new_pbx:
            return Reconfigured(self.config, changed, (), False)
        if kept:
            config = settings.keep_old_values(config, self.config, kept)
        old, self.config = self.config, config
        notifier = self.notifier
        notifier.settings = settings.notifier_settings(config)
        restart = new_pbx or any(  # a new source also takes the new [hints] keys
            name.startswith(("ami.", "ari.", "asterisk", "hints.")) for name in changed
        )
        restart = restart and (can_restart_source or new_pbx)
        moved = [pbx for pbx in self.pbxs if new_pbx or (
            restart and _endpoint(old, pbx.name) != _endpoint(config, pbx.name))]  # fmt: skip
        if settings.tracker_settings(config) != settings.tracker_settings(old):
            moved = self.pbxs
        for pbx in moved:
            # Another PBX (or another tracker): what the old one said is no key of the new one.
            # Until its first sync a key not known yet is pending, as at a start.
            pbx.tracker = pbx.documents.tracker = _new_tracker(config, now)
            pbx.ever_synced = False
            pbx.default_context = pbx.endpoint = ""  # a move by reload is no failover
        restart = restart or bool(moved)  # the new tracker learns everything from a fresh sync
        for pbx in self.pbxs:
            pbx.documents.settings = _render_settings(config, pbx.domain)
            pbx.policy = pbx.documents.policy = settings.pickup_policy(config, pbx.policy)
        notifier.gate.limits = settings.access_limits(config)
        notifier.names = settings.bridge_names(config)
        sec, old_sec = config.security, old.security
        same_digest = sec.auth == old_sec.auth and sec.realm == old_sec.realm
        if not same_digest or sec.digest_algorithms != old_sec.digest_algorithms:
            notifier.auth = settings.authenticator(config)
        elif notifier.auth is not None:
            notifier.auth.set_users(dict(sec.users))
        self._end_unauthorized(old_sec.auth, now)
        if lists := self.lists.set_configured(config.lists):
            self._lists_changed(lists, now, "the configuration")
        for pbx in self.pbxs:
            pbx.documents.forget_all()
        if not restart:
            for resource in notifier.resources():
                self.resource_changed(resource, now)
        return Reconfigured(config, changed, kept, restart, tuple(p.name for p in moved))

    def _keep_finding(self, kept: tuple[str, ...]) -> None:
        """The settings a reload could not take over stay in view (panel, API, ``status``)
        until a restart or a file that matches the running values again."""
        self.findings = [f for f in self.findings if f.subject != RELOAD_FINDING]
        if kept:
            self.findings.append(Finding(
                "warn", RELOAD_FINDING,
                f"changed in the file but running with the old value(s) until a restart: "
                f"{', '.join(kept)}", "systemctl restart snom-blf-bridge",
            ))  # fmt: skip
        self._status_changed = True

    # ----------------------------------------------------------------- outputs

    def outgoing(self) -> list[tuple[bytes, Peer]]:
        """Take every message to send, in order, each with where it goes."""
        out = self.notifier.outgoing()
        if self.leds is not None:
            # Over UDP, MESSAGEs go from the first UDP socket (no ``local``: they start no
            # dialog); over TCP/TLS on the phone's own connection when it has one open.
            out.extend((data, self._led_peer(to)) for data, to in self.leds.outgoing())
        return out

    def drain(self, now: float, budget: int, *, ringing_only: bool = False
              ) -> Iterator[tuple[bytes, Peer]]:  # fmt: skip
        """What is to be sent, each message built just before it is handed out: everything
        urgent, then at most ``budget`` NOTIFYs of pending fan-outs (ringing keys first;
        ``ringing_only``: no other), then the LED controller's MESSAGEs. Call again while
        ``fanout_pending``: the glue sends a slice, lets other input in, and goes on."""
        yield from self.notifier.drain(now, budget, ringing_only=ringing_only)
        if self.leds is not None and self.leds.has_outgoing:
            for data, to in self.leds.outgoing():
                yield data, self._led_peer(to)

    @property
    def fanout_pending(self) -> bool:
        """Whether a fan-out still has watchers to tell (``drain()`` again)."""
        return self.notifier.fanout_pending

    def _led_peer(self, to: Destination) -> Peer:
        """Where an LED MESSAGE goes: as Asterisk sends a contact's requests, over the
        contact's transport, on the connection the phone keeps open to us (its subscription's,
        from the contact's host), else a new one to the contact's host and port."""
        transport: Transport = "tls" if to.transport == "tls" else "tcp"
        if to.transport == "udp":
            return Peer("udp", to.host, to.port)
        flow = self.notifier.flow_of(to.phone, transport, to.host)
        return flow if flow is not None else Peer(transport, to.host, to.port)

    def _led_via(self, host: str, transport: str) -> Address:
        """Our address in an LED MESSAGE's Via: towards the phone's host over UDP, our
        listening port of that transport over TCP/TLS (where the phone may connect back)."""
        local = self.local_towards(host)
        if transport == "udp":
            return local
        try:
            return local[0], self.notifier.contact(transport)[1]
        except KeyError:  # no listener of that transport: the connection is ours alone
            return local

    def next_timer(self) -> float | None:
        """When ``handle_timer()`` next has work, or None."""
        when = self.notifier.next_timer()
        if self.leds is not None:
            other = self.leds.next_timer()
            if other is not None and (when is None or other < when):
                when = other
        other = self.stale_ring_at
        if other is not None and (when is None or other < when):
            when = other
        return when

    def wants_flush(self) -> bool:
        """Whether something waits to be sent or ``next_timer()`` may have moved since the last
        ``outgoing()`` (most Asterisk events change nothing: the glue skips its flush then)."""
        moved, self._timer_moved = self._timer_moved, False
        moved = self.notifier.take_timer_moved() or moved
        return moved or self.notifier.has_outgoing or (
            self.leds is not None and self.leds.has_outgoing
        )

    def take_status_change(self) -> bool:
        """Whether a key, a phone's contacts or the source's health changed since last asked."""
        changed, self._status_changed = self._status_changed, False
        return changed

    # ----------------------------------------------------------------- the store

    def restore(self, snapshots: list[SubscriptionSnapshot], now: float) -> int:
        """Take over stored subscriptions; returns how many were resumed."""
        return self.notifier.restore(snapshots, now)

    @property
    def has_store_changes(self) -> bool:
        """Whether ``store_changes()`` has anything."""
        return self.notifier.has_changes

    def store_changes(self, now: float) -> tuple[list[SubscriptionSnapshot], list[DialogKey]]:
        """What the store must write since the last call: snapshots, and dialogs to delete."""
        return self.notifier.take_changes(now)

    def snapshot_all(self, now: float, *, exact: bool = False) -> list[SubscriptionSnapshot]:
        """Every subscription, for a whole rewrite of the store (``exact``: a clean stop)."""
        return self.notifier.snapshot_all(now, exact=exact)

    # ----------------------------------------------------------------- internals

    def _led_response(self, message: Request | Response | bytes, now: float
                      ) -> Request | Response | bytes | None:  # fmt: skip
        """Hand an answer to one of our MESSAGEs to the LED controller (None: it took it);
        anything else comes back for the notifier, parsed when it had to be read."""
        assert self.leds is not None
        if isinstance(message, bytes | bytearray):
            ids = response_ids(bytes(message))
            if ids is not None and ids[2] != "MESSAGE":
                return message  # most often a 200 to a NOTIFY: the notifier's quick path
            try:
                parsed = parse_message(bytes(message))
            except ParseError:
                return message  # the notifier says why, rationed
            if not isinstance(parsed, Response):
                return parsed
            message = parsed
        if not isinstance(message, Response):
            return message
        try:
            method = message.cseq().method
        except ParseError:
            return message
        if method == "MESSAGE" and self.leds.receive_response(message, now):
            return None
        return message

    def _led_input(self, event: AsteriskEvent, now: float) -> None:
        """LED keys follow the device and hint states the core keeps, and phones' contacts."""
        leds = self.leds
        assert leds is not None
        match event:
            case DeviceStateChanged():
                key = event.device.lower()
                if self.device_states.get(key) != event.state:
                    self.device_states[key] = event.state
                    leds.device_state(event.device, event.state, now)
            case ExtensionHint():
                key = self.tracker.key(event.exten, event.context)  # tenants: 202@tenant-b
                if self.hint_states.get(key) != event.status:
                    self.hint_states[key] = event.status
                    leds.hint_state(key, event.status, now)
            case ContactChanged():
                leds.contact(event.aor, event.uri, now, reachable=event.reachable,
                             endpoint=event.endpoint, listed=event.listed)  # fmt: skip
                self._status_changed = True  # the panel shows which phones are reachable
            case ResyncStarted():
                leds.sync_started()
            case ResyncFinished():
                leds.sync_finished(now)

    def _lists_changed(self, names: set[str], now: float, where: str) -> None:
        """Lists whose definition changed: their subscribers subscribe again (deactivated,
        RFC 6665 §4.1.3) and get the new members."""
        ended = self.notifier.end_list_subscriptions(names, now, "deactivated")
        log.info("lists changed in %s: %s%s", where, ", ".join(sorted(names)),
                 f"; {ended} list subscription(s) renewed" if ended else "")  # fmt: skip
        self._status_changed = True

    def _source_news(self, pbx: PbxState, event: AsteriskEvent, now: float) -> None:
        match event:
            case ResourceListsRead():
                if names := self.lists.set_from_asterisk(pbx.name, event.lists):
                    self._lists_changed(names, now, f"Asterisk{_of(pbx)}")
            case EndpointGroups():
                endpoint = event.endpoint
                context = event.subscribe_context or event.context
                if pbx.tracker.set_endpoint_contexts(
                    endpoint, event.subscribe_context, event.context
                ) and (ended := self._rehome(pbx, endpoint, now)):
                    log.info("%s watches from context %s: %d subscription(s) made before that "
                             "was known ended (the phone subscribes again)", endpoint,
                             context or "(none)", ended)  # fmt: skip
                name = callerid_name(event.callerid)
                if pbx.names.get(endpoint, "") != name:
                    pbx.names[endpoint] = name
                    self._status_changed = True  # the panel names keys by it
                if pbx.policy.set_groups(endpoint, event.call_groups, event.pickup_groups):
                    self._policy_changed(pbx, now)
                self._groups_finding(pbx, event)
            case RightsMissing():
                self._set_finding(Finding(
                    "fail", f"manager rights{_of(pbx)}: {event.action}",
                    f"Asterisk refused {event.action} (Permission denied): no {event.needed_for}",
                    f"add `{event.right}` to the bridge's user in manager.conf, then "
                    "`asterisk -rx 'manager reload'`"))  # fmt: skip
            case DialplanRead():
                # A dialplan reload: a watcher's key may now be found elsewhere, or nowhere.
                if pbx.tracker.set_dialplan(event) and pbx.synced and (
                    ended := self._rehome(pbx, None, now)
                ):
                    log.info("the dialplan's includes or pattern hints changed: %d "
                             "subscription(s) now meaning another key ended (the phones "
                             "subscribe again)", ended)  # fmt: skip
            case ResyncStarted():
                pbx.connected = True
                self._status_changed = True
                if event.endpoint:
                    if pbx.endpoint and event.endpoint != pbx.endpoint:
                        pbx.failovers += 1
                    pbx.endpoint = event.endpoint
            case SourceLost():
                pbx.connected = pbx.synced = False
                self._status_changed = True
                self._asterisk_lost(pbx, now)
            case ResyncFinished():
                pbx.synced = pbx.connected = True
                self._status_changed = True
                self._timer_moved = pbx.stale_ring_at is not None
                pbx.stale_ring_at = None
                pbx.ever_synced = True  # from now on an unknown key of this PBX is no key
                tracker = pbx.tracker
                pbx.default_context = tracker.default_context
                # What the sync read (hints, includes, a new naming context) may resolve a
                # watcher's SUBSCRIBE to another key than before, as Asterisk now would.
                if ended := self._rehome(pbx, None, now):
                    log.warning("%d subscription(s) now meaning another key (the dialplan or "
                                "the keys' names changed) ended: the phones subscribe again",
                                ended)  # fmt: skip
                # Watchers of extensions that lost their hint (or were resumed for one) are told.
                for resource in self._resources_of(pbx):
                    if not tracker.watchable(pbx.key(resource)):
                        self.resource_changed(resource, now)
                extensions = sorted(tracker.extensions())
                log.info("in sync with Asterisk%s; %d watchable extensions: %s", _of(pbx),
                         len(extensions), ", ".join(extensions) or "none (no hints?)")  # fmt: skip

    def _set_finding(self, finding: Finding) -> None:
        """Keep one finding per subject: a newer one replaces the older."""
        kept = [f for f in self.findings if f.subject != finding.subject]
        self.findings = [*kept, finding]
        self._status_changed = True

    def _groups_finding(self, pbx: PbxState, event: EndpointGroups) -> None:
        """Under ``security.pickup = "group"``, an endpoint without groups is a finding (its
        watchers never get pickup ids), until Asterisk says it has them."""
        subject = f"endpoint {event.endpoint}{_of(pbx)}"
        finding = None
        if self.config.security.pickup == "group":
            finding = pickup_group_finding(event.endpoint, event.call_groups, event.pickup_groups)
        if finding is not None:
            self._set_finding(dataclasses.replace(finding, subject=subject))
        elif any(f.subject == subject for f in self.findings):
            self.findings = [f for f in self.findings if f.subject != subject]
            self._status_changed = True

    def _settled(self, resource: str) -> bool:
        """Whether it is known yet if ``resource`` exists: a fixed watch list says it at once,
        else its PBX's first sync (each PBX for its own keys)."""
        if self.config.watch.extensions is not None:
            return True
        pbx = self._pbx_of(resource)
        return pbx is None or pbx.ever_synced

    def _pbx_of(self, resource: str) -> PbxState | None:
        return self.pbxs[0] if self.router is None else self.router.pbx_of(resource)

    def _resources_of(self, pbx: PbxState) -> list[str]:
        """The watched resources of one PBX (all of them with one PBX)."""
        return [r for r in self.notifier.resources() if self._pbx_of(r) is pbx]

    def _rehome(self, pbx: PbxState, endpoint: str | None, now: float) -> int:
        """Subscriptions that name another key than their watcher's SUBSCRIBE means now (it
        subscribed before its endpoint's contexts were read, the includes or the naming
        context changed) end as ``deactivated``: the phone subscribes again at once (RFC 6665),
        to the key Asterisk would give it. ``endpoint``: only that watcher's. Returns how many
        ended."""
        tracker = pbx.tracker

        def misrouted(watcher: str, resource: str) -> bool:
            if (endpoint is not None and watcher != endpoint) or self._pbx_of(resource) is not pbx:
                return False
            key = pbx.key(resource)
            now_means = tracker.resolve(key.partition("@")[0], watcher)
            # A key not known yet (before the first sync) that turns out to mean nothing is no
            # move: it ends as noresource once its PBX has synced (Notifier's pending keys).
            return now_means != key and (now_means is not None or tracker.watchable(key))

        return self.notifier.end_subscriptions(misrouted, now, "deactivated")

    def _policy_changed(self, pbx: PbxState, now: float) -> None:
        """Who may pick up changed: watchers of ringing extensions get their bodies again."""
        pbx.documents.forget_all()
        for resource in self._resources_of(pbx):
            if any(d.pickup is not None for d in pbx.tracker.state(pbx.key(resource)).dialogs):
                self.resource_changed(resource, now)

    def _asterisk_lost(self, pbx: PbxState, now: float) -> None:
        timeout = self.config.watch.stale_ring_timeout
        log.warning(
            "Asterisk%s is unreachable: keys keep their last known state until it is back%s",
            _of(pbx), f"; ringing keys stop blinking after {timeout:g} s" if timeout else "",
        )  # fmt: skip
        if timeout and pbx.stale_ring_at is None:
            pbx.stale_ring_at = now + timeout
            self._timer_moved = True

    def _expire_rings(self, pbx: PbxState, now: float) -> None:
        changed = pbx.tracker.expire_rings()
        if changed:
            log.warning("no word from Asterisk%s for %g s: %d ringing keys stop blinking", _of(pbx),
                        self.config.watch.stale_ring_timeout, len(changed))  # fmt: skip
            self._status_changed = True
        for exten in sorted(changed):
            self.resource_changed(pbx.resource(exten), now)

    def _end_unauthorized(self, old_auth: str, now: float) -> None:
        """After a reload with digest on: subscriptions of users no longer in users_file end
        (final NOTIFY, reason=rejected); when digest was just turned on, every subscription made
        without it ends (reason=deactivated: the phone subscribes again, and is challenged)."""
        auth = self.notifier.auth
        if auth is None:
            return
        if old_auth != "digest":
            ended = self.notifier.end_watchers(lambda user: False, now, "deactivated")
            why = "security.auth is now digest"
        else:
            ended = self.notifier.end_watchers(auth.knows, now, "rejected")
            why = "their users are no longer in security.users_file"
        if ended:
            log.warning("reload: ended %d subscription(s): %s", ended, why)


def _store_moves(name: str, old: Config, new: Config) -> bool:
    """A store path changed between two real files: the glue moves the subscriptions on the
    reload (StoreKeeper.move); to or from memory only waits for a restart."""
    return name == "store.path" and bool(old.store.path) and bool(new.store.path)


def _pbx_names(config: Config) -> list[tuple[str, str]]:
    """Each PBX's name and SIP domain; the one-PBX form is one PBX named "" (any domain)."""
    return [(p.name, p.domain) for p in config.pbxs] or [("", "")]


def _pickable(state: EntityState) -> bool:
    """Whether a key's state has a call a watcher may pick up (told before the others)."""
    return any(d.pickup is not None for d in state.dialogs)


def _endpoint(config: Config, name: str) -> tuple[str, str, int, str]:
    """Which Asterisk a PBX's settings point at (a change of anything else reconnects to the
    same one, whose keys stay as they were until its resync)."""
    own = next((p for p in config.pbxs if p.name == name), None)
    source, ami, ari = (config.source, config.ami, config.ari) if own is None else (
        own.source, own.ami, own.ari)  # fmt: skip
    return (source, ami.host, ami.port, "") if source != "ari" else (source, "", 0, ari.url)


def _of(pbx: PbxState) -> str:
    return f" {pbx.name}" if pbx.name else ""


def _render_settings(config: Config, domain: str) -> RenderSettings:
    """The bodies' settings; a PBX of several names its own domain in every URI."""
    rendering = settings.render_settings(config)
    return dataclasses.replace(rendering, domain=domain) if domain else rendering


def _new_pbx(config: Config, name: str, domain: str, now: float) -> PbxState:
    tracker = _new_tracker(config, now)
    policy = settings.pickup_policy(config)
    documents = Documents(tracker, _render_settings(config, domain), policy)
    return PbxState(name, domain, tracker, documents, policy)


def _new_tracker(config: Config, now: float) -> CallTracker:
    tracker = CallTracker(settings.tracker_settings(config))
    # Nothing is known before the first sync; the sync then reports every extension as
    # changed, which sends resumed subscriptions their first NOTIFY.
    tracker.apply(SourceLost(), now)
    return tracker
