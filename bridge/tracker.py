"""CallTracker: Asterisk's channels turned into RFC 4235 dialogs per watched extension.

Pure logic: normalized events in (``bridge.events``), ``EntityState`` out (``bridge.model``). No
I/O, no clock reads; the caller passes ``now``. Every handler touches only the channels an event
names and rebuilds only the extensions those channels belong to, so one event costs a few dict
lookups however many calls are up.

Decisions (see the recordings in ``tests/fixtures/asterisk-22.10.1``):

- A dialog is one channel of one of the extension's devices; its id is the channel's Uniqueid.
- A leg Asterisk dialled that is still Down (no 180 yet, or only 183) is not shown: the phone is
  not ringing and its tag is unknown, so there is nothing to pick up and nothing to blink for.
- Hold: ``Hold`` arrives on the channel of the phone that pressed hold (``answer-hold-resume``:
  201 holds, the Hold event names ``PJSIP/201-…``, while Asterisk reports the *other* device,
  202, as ONHOLD because it hears the music). The holding side gets ``local_held``, every other
  channel of the same call (same linkedid, or linked by Dial) gets ``remote_held``.
  For channel devices DeviceStateChanged is ignored: channel events are the truth. Devices that
  have no channels (``Custom:``, ``park:``, ``Queue:``…) light their keys from their device
  states and parked calls (``bridge.hintstate``), next to the channel dialogs of a composite hint.
- Contexts: a key is (context, extension), named by the bare extension in the naming context
  (``watch.context``, else the context holding the most phone hints) and ``202@tenant-b`` in
  any other. The name is only a name: a watcher's SUBSCRIBE resolves as Asterisk resolves it
  (``resolve``, ``bridge.dialplan``): in its endpoint's ``subscribe_context``, else its
  ``context``, following the includes (FreePBX: from-internal → … → ext-local), so it never
  sees, nor gets the pickup ids of, another context's calls, and a key Asterisk would not find
  is no key.
- Out-of-order events (ARI) converge: a channel's state only moves forward (Down → Ring(ing) →
  Up), identities are only overwritten by known values, a hangup leaves a bounded tombstone so a
  late event for that channel cannot resurrect it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from bridge.devices import (
    device_key,
    device_of_channel,
    hint_devices,
    is_channel_device,
    park_space,
)
from bridge.dialplan import DialplanResolver
from bridge.events import (
    AsteriskEvent,
    CallParked,
    CallUnparked,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    DeviceStateChanged,
    DialBegan,
    DialEnded,
    DialplanRead,
    ExtensionHint,
    HoldChanged,
    LegIds,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)
from bridge.hintstate import HintStates
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds

# Asterisk writes "<unknown>" for an identity nobody has set; it must never reach a display.
_UNSET = frozenset({"", "<unknown>"})
_UNIQUEID = re.compile(r"(\d+)\.(\d+)$")
_MAX_GUESSED = 4096

# Channel states only move forward; a late (reordered) Newchannel must not undo Ringing or Up.
_RANK: dict[ChannelState, int] = {
    ChannelState.RING: 1,
    ChannelState.RINGING: 2,
    ChannelState.BUSY: 2,
    ChannelState.UP: 3,
}


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How the tracker reports calls.

    ``outgoing_blinks``: False reports an entity's own outgoing call as confirmed from the start
    (the Snom key lights steadily instead of blinking like an incoming call); True follows RFC 4235
    (trying, early once the callee rings, confirmed when answered).
    ``watch``: the extensions to report; None means every extension that has a hint.
    ``max_tombstones``: how many hung-up channel ids are remembered against late events.
    ``context``: the context whose keys go by their bare extension, where a watcher that is
    no known endpoint resolves; "": the context holding the most phone hints (decided at the
    end of each sync). A known endpoint always resolves from its own contexts.
    """

    outgoing_blinks: bool = False
    watch: frozenset[str] | None = None
    max_tombstones: int = 4096
    context: str = ""


@dataclass(slots=True, eq=False)
class _Channel:
    uniqueid: str
    order: tuple[int, float, int]
    epoch: int
    created: float = 0.0  # ``now`` when first heard of (the panel's call timer)
    answered: float = 0.0  # ``now`` when first seen Up; 0.0: not yet
    name: str = ""
    device: str = ""  # normalized device key, "" while only a Dial event has named the channel
    state: ChannelState | None = None
    stated_direction: Direction | None = None  # from `dialed` or DialBegan: first answer kept
    seen_ring: bool = False  # was in Ring (4): the phone's own call into Asterisk
    seen_ringing: bool = False  # was in Ringing (5): a leg Asterisk called out on
    dialer: bool = False  # was the caller of a Dial()
    linkedid: str = ""
    caller_num: str = ""
    caller_name: str = ""
    connected_num: str = ""
    connected_name: str = ""
    on_hold: bool = False
    ids: LegIds | None = None
    dial_ended: bool = False  # Dial() gave up on this leg (CANCEL, BUSY, NOANSWER, …)
    ring_expired: bool = False  # rang for too long without word from Asterisk: not shown
    peers: dict[str, None] = field(default_factory=dict)  # linked by Dial, either side
    dests: dict[str, None] = field(default_factory=dict)  # legs this channel's Dial() rings


class CallTracker:
    """Turns normalized Asterisk events into one ``EntityState`` per watched extension."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self._settings = settings or TrackerSettings()
        self._channels: dict[str, _Channel] = {}
        self._device_channels: dict[str, set[str]] = {}
        self._linked: dict[str, set[str]] = {}  # linkedid → uniqueids
        self._tombstones: dict[str, None] = {}  # insertion-ordered: oldest evicted first
        self._hints: dict[str, tuple[str, ...]] = {}  # watchable key → device keys
        self._context_hints: dict[tuple[str, str], tuple[str, ...]] = {}  # every hint, by
        # (context, exten), watched or not: the default context is counted from it
        self._default_context: str | None = self._settings.context or None  # None: not yet
        self._start_contexts: dict[str, str] = {}  # endpoint → where its SUBSCRIBEs resolve
        self._dialplan = DialplanResolver()  # includes and hint holders, to resolve as Asterisk
        self._synced = False  # a sync has finished: the hints and includes are known
        self._expanded = 0  # exact hints made from pattern hints (bounded)
        self._guessed: set[str] = set()  # watchers resolved before their context was known
        self._device_extens: dict[str, set[str]] = {}  # device key → watchable extens
        self._states: dict[str, EntityState] = {}  # only entities that differ from idle
        self._stateful = HintStates()  # devices without channels, parked calls
        self._hint_status: dict[str, int] = {}  # key → Asterisk's last ExtensionStatus of it
        # Set when a key changed only in what the panel shows (Dialog.since, .answered); the
        # core clears it.
        self.panel_news = False
        self._needing_ids: set[str] = set()
        self._held = 0  # channels on hold; lets the common case skip the partner scan
        self._known = True
        self._epoch = 0
        self._resyncing = False
        self._counter = 0

    # -- queries ---------------------------------------------------------------------------

    def state(self, exten: str) -> EntityState:
        """The current state of one extension (no dialogs if nothing is going on)."""
        found = self._states.get(exten)
        return found if found is not None else EntityState(exten, (), self._known)

    def hint_status(self, exten: str) -> int | None:
        """Asterisk's last status of the key's hint (4: unavailable, …); None when unsaid."""
        return self._hint_status.get(exten)

    def devices(self, exten: str) -> tuple[str, ...]:
        """The key's devices (normalized: ``pjsip/201``, ``custom:dnd201``), hint order."""
        return self._devices_of(exten)

    def device_states(self, exten: str) -> dict[str, str]:
        """The last known state of each of the key's devices that has no channels."""
        return self._stateful.states(self._devices_of(exten))

    def extensions(self) -> frozenset[str]:
        """Watchable extensions: the configured watch list, else every extension with a hint."""
        if self._settings.watch is not None:
            return self._settings.watch
        return frozenset(self._hints)

    def watchable(self, exten: str) -> bool:
        """Whether a phone may watch this extension (O(1); ``extensions()`` builds a set)."""
        if self._settings.watch is not None:
            return exten in self._settings.watch
        return exten in self._hints

    @property
    def default_context(self) -> str:
        """The context whose keys go by their bare extension ("": none named, or not yet)."""
        return self._default_context or ""

    def key(self, exten: str, context: str) -> str:
        """The name of an extension's key: bare in the default context, else exten@context."""
        if not context or context == self._default_context:
            return exten
        return f"{exten}@{context}"

    def resolve(self, user: str, watcher: str) -> str | None:
        """The key a SUBSCRIBE for ``user`` (its Request-URI user part) from ``watcher`` (an
        endpoint name) means, as Asterisk resolves it: the hint found from the endpoint's
        ``subscribe_context``, else its ``context``, through the includes
        (``bridge.dialplan``). None: Asterisk would find no hint (a 404), or the name tries to
        say a context itself. A watcher that is no known endpoint (not read yet, or no
        Asterisk phone) resolves from the naming context (``watch.context`` when set)."""
        if "@" in user:
            return None
        start = self._start_contexts.get(watcher)
        if start is None:
            start = self._default_context or ""
            if len(self._guessed) < _MAX_GUESSED:  # bounded: From users are anyone's to choose
                self._guessed.add(watcher)
        dialplan = self._dialplan
        if not self._synced:  # nothing read yet: the name is a guess, the sync rehomes it
            return self.key(user, start)
        found = dialplan.find(start, user)
        if found is None and not dialplan.includes_known and not dialplan.holds_hints(start):
            # ARI lists no includes: its configured bare hints ("202") and the naming
            # context's serve every endpoint whose own context holds no hint at all.
            found = next((c for c in ("", self._default_context or "")
                          if dialplan.has_hint(c, user)), None)  # fmt: skip
        if found is None:
            # An explicitly watched extension without a hint is the PJSIP endpoint of that name.
            watch = self._settings.watch
            return user if watch is not None and user in watch else None
        if (found, user) not in self._context_hints:
            # A pattern hint (FreePBX's *76<ext>): Asterisk adds the exact hint on the first
            # SUBSCRIBE, and so does the bridge; bounded, the names are the phones' to choose.
            hint = dialplan.pattern_hint(found, user)
            if hint is None or self._expanded >= _MAX_GUESSED:
                return None
            self._expanded += 1
            self._refresh(self._on_hint(ExtensionHint(user, found, hint, -1)))
        return self.key(user, found)

    def knows_watcher(self, endpoint: str) -> bool:
        """Whether the endpoint's contexts have been read."""
        return endpoint in self._start_contexts

    def set_endpoint_contexts(self, endpoint: str, subscribe_context: str, context: str) -> bool:
        """Learn where an endpoint's SUBSCRIBEs resolve (``subscribe_context``, else
        ``context``); True when that moved or it already watched before it was known (its
        subscriptions may name other keys than Asterisk would)."""
        start = subscribe_context or context
        moved = self._start_contexts.get(endpoint, start) != start
        self._start_contexts[endpoint] = start
        if endpoint in self._guessed:
            self._guessed.discard(endpoint)
            return True
        return moved

    def set_dialplan(self, dialplan: DialplanRead) -> bool:
        """Take the dialplan's includes and pattern hints (every sync, every reload); True
        when they changed, so subscriptions may now mean other keys."""
        return self._dialplan.set_dialplan(dialplan.includes, dialplan.pattern_hints)

    def channels_needing_ids(self) -> frozenset[str]:
        """Uniqueids of ringing incoming PJSIP legs of watched extensions still without LegIds."""
        return frozenset(self._needing_ids)

    # -- events ----------------------------------------------------------------------------

    def apply(self, event: AsteriskEvent, now: float) -> set[str]:
        """Apply one event; return the extensions whose EntityState changed."""
        match event:
            case ChannelSeen():
                dirty = self._on_seen(event, now)
            case DeviceStateChanged():
                dirty = self._on_device_state(event)
            case CallParked():
                dirty = self._on_parked(event, now)
            case CallUnparked():
                dirty = self._extens_of_spaces(self._stateful.unpark(event.uniqueid, event.space))
            case ChannelGone():
                dirty = self._on_gone(event.uniqueid)
            case DialBegan():
                dirty = self._on_dial_began(event, now)
            case DialEnded():
                dirty = self._on_dial_ended(event)
            case LegIds():
                dirty = self._on_leg_ids(event, now)
            case HoldChanged():
                dirty = self._on_hold(event, now)
            case ExtensionHint():
                dirty = self._on_hint(event)
            case ResyncStarted():
                self._epoch += 1
                self._resyncing = True
                return set()
            case ResyncFinished():
                return self._on_resync_finished()
            case SourceLost():
                self._resyncing = False
                return self._set_known(False)
            case _:
                return set()
        return self._refresh(dirty)

    # -- handlers --------------------------------------------------------------------------

    def _on_seen(self, ev: ChannelSeen, now: float) -> set[str]:
        if ev.uniqueid in self._tombstones:
            return set()
        ch = self._channels.get(ev.uniqueid) or self._create(ev.uniqueid, now)
        dirty: set[str] = set()
        ch.epoch = self._epoch
        ch.ring_expired = False  # Asterisk speaks of it: its word counts again
        if ev.name and ev.name != ch.name:
            device = device_of_channel(ev.name)
            if device != ch.device:
                dirty |= self._extens_of(ch.device)
                self._index_device(ch, device)
            ch.name = ev.name
        if ch.state is None or _RANK.get(ev.state, 0) >= _RANK.get(ch.state, 0):
            ch.state = ev.state
        if ev.state is ChannelState.UP and not ch.answered:
            ch.answered = now
        if ev.state is ChannelState.RING:
            ch.seen_ring = True
        elif ev.state is ChannelState.RINGING:
            ch.seen_ringing = True
        if ev.dialed is not None and ch.stated_direction is None:
            ch.stated_direction = Direction.RECIPIENT if ev.dialed else Direction.INITIATOR
        if ev.linkedid and ev.linkedid != ch.linkedid:
            self._index_linkedid(ch, ev.linkedid)
        # A number replaces the whole identity (a new party); a name alone only the name.
        if ev.caller_num not in _UNSET:
            ch.caller_num, ch.caller_name = ev.caller_num, _known_or_empty(ev.caller_name)
        elif ev.caller_name not in _UNSET:
            ch.caller_name = ev.caller_name
        if ev.connected_num not in _UNSET:
            ch.connected_num = ev.connected_num
            ch.connected_name = _known_or_empty(ev.connected_name)
        elif ev.connected_name not in _UNSET:
            ch.connected_name = ev.connected_name
        # Peers show this channel's state (an outgoing call turns early when its callee rings)
        # and may borrow its caller id.
        return dirty | self._extens_with_peers(ch)

    def _on_device_state(self, ev: DeviceStateChanged) -> set[str]:
        # A channel device's state says nothing about which call rings; its channels do.
        device = device_key(ev.device)
        if not self._stateful.set_state(device, ev.state):
            return set()
        return self._extens_of(device)

    def _on_parked(self, ev: CallParked, now: float) -> set[str]:
        if ev.uniqueid in self._tombstones:
            return set()  # a late word about a call that has hung up
        num, name = _known_or_empty(ev.caller_num), _known_or_empty(ev.caller_name)
        if not self._stateful.park(ev.space, ev.uniqueid, num, name, self._epoch, now=now):
            return set()
        return self._extens_of_spaces({ev.space})

    def _extens_of_spaces(self, spaces: set[str]) -> set[str]:
        if not spaces:
            return set()
        return {
            exten
            for device, extens in self._device_extens.items()
            if park_space(device) in spaces
            for exten in extens
        }

    def _on_gone(self, uniqueid: str) -> set[str]:
        self._bury(uniqueid)
        # A parked call that hangs up leaves its space even if Asterisk's word on it is lost.
        parked_dirty = self._extens_of_spaces(self._stateful.unpark(uniqueid))
        ch = self._channels.pop(uniqueid, None)
        if ch is None:
            return parked_dirty
        dirty = parked_dirty | self._extens_with_peers(ch)
        if ch.on_hold:
            self._held -= 1
            for partner in self._partners(ch):
                dirty |= self._extens_of(partner.device)
        self._index_device(ch, "")
        self._index_linkedid(ch, "")
        for peer in self._existing(ch.peers):
            peer.peers.pop(uniqueid, None)
            peer.dests.pop(uniqueid, None)
        self._needing_ids.discard(uniqueid)
        return dirty

    def _on_dial_began(self, ev: DialBegan, now: float) -> set[str]:
        caller = self._get_or_placeholder(ev.caller_uniqueid, now)
        dest = self._get_or_placeholder(ev.dest_uniqueid, now)
        dirty: set[str] = set()
        if dest is not None:
            if dest.stated_direction is None:
                dest.stated_direction = Direction.RECIPIENT
            dirty |= self._extens_of(dest.device)
        if caller is not None:
            caller.dialer = True
            dirty |= self._extens_of(caller.device)
            if dest is not None:
                caller.dests[dest.uniqueid] = None
                _link(caller, dest)
        return dirty

    def _on_dial_ended(self, ev: DialEnded) -> set[str]:
        dest = self._channels.get(ev.dest_uniqueid)
        if dest is None:
            return set()
        caller = self._channels.get(ev.caller_uniqueid)
        if ev.status.upper() == "ANSWER":
            # A Replaces pickup names the picker here, not the leg that rang: link them.
            if caller is not None:
                _link(caller, dest)
        else:
            dest.dial_ended = True
        dirty = self._extens_of(dest.device)
        if caller is not None:
            dirty |= self._extens_of(caller.device)
        return dirty

    def _on_leg_ids(self, ev: LegIds, now: float) -> set[str]:
        # The AMI source delivers a leg's ids just before the event that made it ask; in a
        # resync that event is the first word about the channel, so keep the ids for it.
        if (ch := self._get_or_placeholder(ev.uniqueid, now)) is None:
            return set()
        ch.ids = ev
        return self._extens_of(ch.device)

    def _on_hold(self, ev: HoldChanged, now: float) -> set[str]:
        # Kept even before the channel is seen, so a reordered Hold is not lost.
        ch = self._get_or_placeholder(ev.uniqueid, now)
        if ch is None or ch.on_hold == ev.on_hold:
            return set()
        ch.on_hold = ev.on_hold
        self._held += 1 if ev.on_hold else -1
        dirty = self._extens_of(ch.device)
        for partner in self._partners(ch):
            dirty |= self._extens_of(partner.device)
        return dirty

    def _on_hint(self, ev: ExtensionHint) -> set[str]:
        devices = hint_devices(ev.hint)
        self._context_hints[(ev.context, ev.exten)] = devices  # "": ARI's bare [hints]
        self._dialplan.add_hint(ev.context, ev.exten)
        if self._default_context is None:  # until the sync's end counts them
            self._default_context = ev.context
        key = self.key(ev.exten, ev.context)
        if self._watchable(key):
            self._hint_status[key] = ev.status
        return self._set_hint(key, devices)

    def _set_hint(self, exten: str, devices: tuple[str, ...]) -> set[str]:
        if not self._watchable(exten):
            return set()
        old = self._hints.get(exten, ())
        if exten in self._hints and old == devices:
            return set()
        for device in old:
            _reindex(self._device_extens, exten, device, "")
        for device in devices:
            _reindex(self._device_extens, exten, "", device)
        self._hints[exten] = devices
        return {exten}

    def _on_resync_finished(self) -> set[str]:
        dirty: set[str] = set()
        if self._resyncing:
            stale = [uid for uid, ch in self._channels.items() if ch.epoch != self._epoch]
            for uid in stale:
                dirty |= self._on_gone(uid)
            dirty |= self._extens_of_spaces(self._stateful.sweep(self._epoch))
            self._resyncing = False
        self._synced = True
        if not self._settings.context:
            dirty |= self._settle_default_context()
        return self._refresh(dirty) | self._set_known(True)

    def _settle_default_context(self) -> set[str]:
        """Name the keys of the context holding the most phone hints (naming a channel device,
        as ext-local's do on FreePBX, not park-hints') bare (ties: the first by name); when
        that moves, every key of the old and the new one is renamed. Naming only: where a
        watcher's SUBSCRIBE resolves does not depend on it."""
        counts: dict[str, int] = {}
        for (context, _), devices in self._context_hints.items():
            phones = any(is_channel_device(d) for d in devices)
            counts[context] = counts.get(context, 0) + (1 << 20 if phones else 1)
        if not counts:
            return set()
        best = min(counts, key=lambda c: (-counts[c], c))
        if best == self._default_context:
            return set()
        self._default_context = best
        renamed = set(self._hints)
        for exten in renamed:
            for device in self._hints[exten]:
                _reindex(self._device_extens, exten, device, "")
        self._hints.clear()
        for (context, exten), devices in self._context_hints.items():
            renamed |= self._set_hint(self.key(exten, context), devices)
        return renamed

    def expire_rings(self) -> set[str]:
        """While Asterisk is unreachable, stop showing calls that are still ringing (no ring
        lasts that long, and none can be picked up meanwhile); answered calls stay. Returns the
        extensions that changed. A resync shows whatever is really going on."""
        if self._known:
            return set()
        dirty: set[str] = set()
        for ch in self._channels.values():
            if ch.state is not ChannelState.UP and not ch.ring_expired:
                ch.ring_expired = True
                dirty |= self._extens_of(ch.device)
        return self._refresh(dirty)

    def _set_known(self, known: bool) -> set[str]:
        if known == self._known:
            return set()
        self._known = known
        changed = set(self.extensions()) | set(self._states)
        self._states = {
            exten: replace(st, known=known)
            for exten, st in self._states.items()
            if st.dialogs or not known
        }
        return changed

    # -- derived state ---------------------------------------------------------------------

    def _refresh(self, dirty: set[str]) -> set[str]:
        changed: set[str] = set()
        for exten in dirty:
            new, old = self._build(exten), self.state(exten)
            if new != old or _timings(new) != _timings(old):
                if new != old:
                    changed.add(exten)
                else:  # the phones see no change; the panel does (an answer, its time)
                    self.panel_news = True
                if new.dialogs or not new.known:
                    self._states[exten] = new
                else:
                    self._states.pop(exten, None)
        return changed

    def _build(self, exten: str) -> EntityState:
        devices = self._devices_of(exten)
        channels = [
            self._channels[uid]
            for device in devices
            for uid in self._device_channels.get(device, ())
        ]
        if len(channels) > 1:
            channels.sort(key=_order)
        dialogs = tuple(d for c in channels if (d := self._dialog(c)) is not None)
        if not all(map(is_channel_device, devices)):
            dialogs += self._stateful.dialogs(devices)
        return EntityState(exten, dialogs, self._known)

    def _dialog(self, ch: _Channel) -> Dialog | None:
        # Also keeps the set of legs whose pickup ids the source adapter should fetch.
        self._needing_ids.discard(ch.uniqueid)
        if ch.state is None or ch.dial_ended:
            return None
        if ch.ring_expired and ch.state is not ChannelState.UP:
            return None
        direction = self._direction(ch)
        if ch.state is ChannelState.UP:
            state = DialogState.CONFIRMED
        elif direction is Direction.RECIPIENT:
            if ch.state is not ChannelState.RINGING:
                return None  # dialled but not ringing yet: nothing to show or pick up
            state = DialogState.EARLY
        elif not self._settings.outgoing_blinks:
            state = DialogState.CONFIRMED
        else:
            state = self._outgoing_state(ch)
        pickup = None
        if (
            state is DialogState.EARLY
            and direction is Direction.RECIPIENT
            and ch.device.startswith("pjsip/")
        ):
            ids = ch.ids
            if ids is not None and ids.call_id and ids.local_tag and ids.remote_tag:
                # docs/PICKUP.md: the ringing phone's tag is its local-tag, Asterisk's its remote.
                endpoint = ch.device.partition("/")[2]
                pickup = PickupIds(ids.call_id, ids.remote_tag, ids.local_tag, endpoint)
            else:
                self._needing_ids.add(ch.uniqueid)
        num, name = self._remote_identity(ch)
        remote_held = self._held > 0 and any(p.on_hold for p in self._partners(ch))
        hidden = ch.ids is not None and ch.ids.caller_hidden
        if hidden:
            num, name = "", ""  # restricted presentation: not even in the log
        since = ch.answered if state is DialogState.CONFIRMED and ch.answered else ch.created
        return Dialog(
            ch.uniqueid, direction, state, num, name, pickup, ch.on_hold, remote_held, hidden,
            since, answered=ch.state is ChannelState.UP,
        )

    def _direction(self, ch: _Channel) -> Direction:
        if ch.stated_direction is not None:
            return ch.stated_direction
        if ch.seen_ring:
            return Direction.INITIATOR
        if ch.seen_ringing:
            return Direction.RECIPIENT
        if ch.dialer:
            return Direction.INITIATOR
        # Nothing said (a channel first met Up in a resync): the call's first channel started it.
        return Direction.INITIATOR if ch.uniqueid == ch.linkedid else Direction.RECIPIENT

    def _remote_identity(self, ch: _Channel) -> tuple[str, str]:
        if ch.connected_num or ch.connected_name:
            return ch.connected_num, ch.connected_name
        # No connected line yet (or a picker, whose leg never gets one): the Dial peer's own
        # caller id is the other party (the caller for a rung leg, the callee for a dialler).
        for peer in sorted(self._existing(ch.peers), key=_order):
            if peer.caller_num or peer.caller_name:
                return peer.caller_num, peer.caller_name
        return "", ""

    def _outgoing_state(self, ch: _Channel) -> DialogState:
        # RFC 4235 for the caller: trying, early once a callee rings, confirmed once one answers
        # (a moment before Asterisk moves the caller's own channel to Up).
        dests = [d.state for d in self._existing(ch.dests) if not d.dial_ended]
        if ChannelState.UP in dests:
            return DialogState.CONFIRMED
        return DialogState.EARLY if ChannelState.RINGING in dests else DialogState.TRYING

    def _partners(self, ch: _Channel) -> list[_Channel]:
        ids = set(ch.peers).union(self._linked.get(ch.linkedid, ()))
        ids.discard(ch.uniqueid)
        return self._existing(ids)

    # -- indexes ---------------------------------------------------------------------------

    def _watchable(self, exten: str) -> bool:
        return self._settings.watch is None or exten in self._settings.watch

    def _stands_for_endpoint(self, exten: str) -> bool:
        # Without a hint, an explicitly watched extension is the PJSIP endpoint of that name.
        watch = self._settings.watch
        return watch is not None and exten in watch and exten not in self._hints

    def _devices_of(self, exten: str) -> tuple[str, ...]:
        devices = self._hints.get(exten)
        if devices is not None:
            return devices
        return (f"pjsip/{exten}",) if self._stands_for_endpoint(exten) else ()

    def _extens_of(self, device: str) -> set[str]:
        extens = set(self._device_extens.get(device, ()))
        if self._settings.watch is not None:
            tech, _, resource = device.partition("/")
            if tech == "pjsip" and self._stands_for_endpoint(resource):
                extens.add(resource)
        return extens

    def _extens_with_peers(self, ch: _Channel) -> set[str]:
        dirty = self._extens_of(ch.device)
        for peer in self._existing(ch.peers):
            dirty |= self._extens_of(peer.device)
        return dirty

    def _existing(self, uniqueids: Iterable[str]) -> list[_Channel]:
        return [c for u in uniqueids if (c := self._channels.get(u)) is not None]

    def _create(self, uniqueid: str, now: float) -> _Channel:
        self._counter += 1
        # Asterisk's uniqueid is "<creation epoch>.<sequence>": ordering by it is ordering by
        # first-seen time at the source, whatever order the events arrived in.
        m = _UNIQUEID.search(uniqueid)
        order = (0, float(m[1]), int(m[2])) if m else (1, now, self._counter)
        ch = self._channels[uniqueid] = _Channel(uniqueid, order, self._epoch, now)
        return ch

    def _get_or_placeholder(self, uniqueid: str, now: float) -> _Channel | None:
        if not uniqueid or uniqueid in self._tombstones:
            return None
        return self._channels.get(uniqueid) or self._create(uniqueid, now)

    def _index_device(self, ch: _Channel, device: str) -> None:
        _reindex(self._device_channels, ch.uniqueid, ch.device, device)
        ch.device = device

    def _index_linkedid(self, ch: _Channel, linkedid: str) -> None:
        _reindex(self._linked, ch.uniqueid, ch.linkedid, linkedid)
        ch.linkedid = linkedid

    def _bury(self, uniqueid: str) -> None:
        self._tombstones[uniqueid] = None
        while len(self._tombstones) > self._settings.max_tombstones:
            del self._tombstones[next(iter(self._tombstones))]


def _timings(state: EntityState) -> list[tuple[float, bool]]:
    """What the panel shows of a state's dialogs that their equality leaves out."""
    return [(d.since, d.answered) for d in state.dialogs]


def _order(ch: _Channel) -> tuple[int, float, int]:
    return ch.order


def _known_or_empty(value: str) -> str:
    return "" if value in _UNSET else value


def _reindex(index: dict[str, set[str]], member: str, old: str, new: str) -> None:
    # Empty sets are dropped so that nothing grows with keys of calls long gone.
    if old and (members := index.get(old)) is not None:
        members.discard(member)
        if not members:
            del index[old]
    if new:
        index.setdefault(new, set()).add(member)


def _link(a: _Channel, b: _Channel) -> None:
    a.peers[b.uniqueid] = None
    b.peers[a.uniqueid] = None
