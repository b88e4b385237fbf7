"""ARI events (decoded JSON) to normalized :mod:`bridge.events`.

Pure: no I/O, no clock. What the ARI adapter, the replayed ARI server and the tests need to
understand what Asterisk says on the ``/ari/events`` websocket and in its REST answers.

``ChannelSeen.dialed`` follows the rules of :mod:`bridge.asterisk.ami_events`, event for event:

- a listed channel (``GET /ari/channels``, AMI's CoreShowChannel) whose ``dialplan.app_name`` is
  ``AppDial``: Dial()'s outgoing leg. ``AppDial2`` (``ast_dial``: Page, ARI dial) is not counted,
  as on AMI; the recordings only show ``AppDial``.
- ``Dial`` (AMI DialBegin): its ``peer`` is the leg being dialled.
- state ``Ringing``: True; ``ChannelCreated`` of a ``PJSIP/`` channel in ``Down``: True.
- state ``Ring``: False. Anything else: None.
- ARI only: a listed channel running any other dialplan application is False. ARI's channel has
  no ``linkedid``, from which the tracker tells, on AMI, that such a channel started its call.

``ChannelSeen.linkedid``: Asterisk 22's ARI channel has none. What the tracker needs it for,
grouping the channels of one call (a hold shows on the other side), comes from bridges instead:
a channel's ``linkedid`` is the id of the bridge it entered (``ChannelEnteredBridge``; in the
resync ``GET /ari/bridges``). A ``linkedid`` the channel itself carries would win.

Parked calls: ARI has no ParkedCall event. A parked channel enters its lot's holding bridge
(``bridge_class`` "parking", named after the lot, not the space) and the space's device
(``park:<space>@<context>``) turns INUSE at the same moment (recording ``park-retrieve``; on the
lab Asterisk the two came in either order). ``ParkedChannels`` pairs the two, whichever comes
first, oldest waiting first; leaving the parking bridge unparks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from bridge.asterisk.ami_events import leg_origin
from bridge.devices import device_key, park_space
from bridge.events import (
    AsteriskEvent,
    CallParked,
    CallUnparked,
    ChannelGone,
    ChannelSeen,
    ChannelState,
    ContactChanged,
    DeviceStateChanged,
    DialBegan,
    DialEnded,
    ExtensionHint,
    HoldChanged,
)

log = logging.getLogger(__name__)

STATE_NAMES: dict[str, ChannelState] = {
    "down": ChannelState.DOWN,
    "rsrvd": ChannelState.RESERVED,
    "offhook": ChannelState.OFFHOOK,
    "dialing": ChannelState.DIALING,
    "ring": ChannelState.RING,
    "ringing": ChannelState.RINGING,
    "up": ChannelState.UP,
    "busy": ChannelState.BUSY,
    "dialing offhook": ChannelState.DIALING_OFFHOOK,
    "pre-ring": ChannelState.PRERING,
}
# Dial statuses while the attempt is still going (AMI: DialBegin, DialState); any other ends it.
DIALING = frozenset({"", "RINGING", "PROCEEDING", "PROGRESS"})
# contact_status values after which Asterisk sends the contact nothing (as on AMI).
CONTACT_GONE = frozenset({"removed", "unreachable"})
_CHANNEL_EVENTS = frozenset({"ChannelStateChange", "ChannelConnectedLine", "ChannelCallerId"})


class _Malformed(Exception):
    """A required field is missing or unusable; the whole event is dropped."""


class DialPairs:
    """The (caller, peer) pairs already announced, so that DialBegan goes out once per pair."""

    def __init__(self, limit: int = 4096) -> None:
        self._pairs: dict[tuple[str, str], None] = {}  # insertion-ordered: oldest evicted first
        self._limit = limit

    def __len__(self) -> int:
        return len(self._pairs)

    def begin(self, caller: str, peer: str) -> bool:
        """Remember the pair; True if it is new."""
        if (caller, peer) in self._pairs:
            return False
        self._pairs[(caller, peer)] = None
        while len(self._pairs) > self._limit:
            del self._pairs[next(iter(self._pairs))]
        return True

    def end(self, caller: str, peer: str) -> None:
        """The attempt is over; a new Dial of the same pair is news again."""
        self._pairs.pop((caller, peer), None)

    def forget(self, uniqueid: str) -> None:
        """A channel hung up: drop every pair it was in."""
        for pair in [p for p in self._pairs if uniqueid in p]:
            del self._pairs[pair]


class ParkedChannels:
    """Which parking space each parked channel is on, told from ARI events (module docstring).
    Bounded: at most ``limit`` channels are remembered, the oldest dropped first."""

    _IDLE = frozenset({"NOT_INUSE", "UNKNOWN", "UNAVAILABLE", "INVALID"})

    def __init__(self, limit: int = 1024) -> None:
        self._waiting: dict[str, tuple[str, str]] = {}  # in a parking bridge, space not known
        self._spaces: dict[str, str] = {}  # channel id → its space
        # Spaces that turned busy before their channel entered the parking bridge: Asterisk
        # stamps both events with the same moment and sends them in either order.
        self._vacant_busy: dict[str, None] = {}
        self._limit = limit

    def events(self, msg: Mapping[object, object]) -> list[AsteriskEvent]:
        """The CallParked / CallUnparked an ARI event implies (usually none)."""
        kind = msg.get("type")
        if kind == "DeviceStateChanged":
            return self._space_in_use(msg.get("device_state"))
        channel = msg.get("channel")
        uid = channel.get("id") if isinstance(channel, Mapping) else None
        if not isinstance(channel, Mapping) or not isinstance(uid, str) or not uid:
            return []
        if kind == "ChannelDestroyed":
            self._waiting.pop(uid, None)
            self._spaces.pop(uid, None)  # the tracker unparks a channel that hangs up
            return []
        bridge = msg.get("bridge")
        parking = isinstance(bridge, Mapping) and bridge.get("bridge_class") == "parking"
        if kind == "ChannelEnteredBridge" and parking:
            party = _party(channel.get("caller"))
            if self._vacant_busy:
                vacant = next(iter(self._vacant_busy))
                del self._vacant_busy[vacant]
                return [self._park(uid, vacant, party)]
            self._waiting[uid] = party
            _trim(self._waiting, self._limit)
        elif kind == "ChannelLeftBridge" and parking:
            self._waiting.pop(uid, None)
            space = self._spaces.pop(uid, None)
            return [CallUnparked(space, uid)] if space else []
        return []

    def _space_in_use(self, obj: object) -> list[AsteriskEvent]:
        if not isinstance(obj, Mapping):
            return []
        space = park_space(device_key(_text(obj, "name")))
        if space is None:
            return []
        if _text(obj, "state").upper() in self._IDLE:
            self._vacant_busy.pop(space, None)
            return []
        if not self._waiting:
            if space not in self._spaces.values():  # not a parked call's space telling again
                self._vacant_busy[space] = None
                _trim(self._vacant_busy, self._limit)
            return []
        uid = next(iter(self._waiting))
        return [self._park(uid, space, self._waiting.pop(uid))]

    def _park(self, uid: str, space: str, party: tuple[str, str]) -> CallParked:
        self._spaces[uid] = space
        _trim(self._spaces, self._limit)
        return CallParked(space, uid, *party)


def _trim(oldest_first: dict[str, Any], limit: int) -> None:
    """Drop the oldest entries of an insertion-ordered dict beyond ``limit``."""
    while len(oldest_first) > limit:
        del oldest_first[next(iter(oldest_first))]


def to_events(
    msg: object, dials: DialPairs | None = None, parked: ParkedChannels | None = None
) -> list[AsteriskEvent]:
    """Map one ARI event to normalized events; unknown or malformed events give ``[]``.

    With ``dials``, a Dial still in progress is reported only the first time for its pair.
    With ``parked``, parked calls are told (before the device state that reveals their space).
    """
    try:
        if not isinstance(msg, Mapping):
            raise _Malformed("not a JSON object")
        if parked is not None:
            return parked.events(msg) + _map(msg, dials)
        return _map(msg, dials)
    except _Malformed as exc:
        log.debug("dropping malformed ARI event %s: %s", _type_of(msg), exc)
    except Exception:  # bad input must never take the adapter down
        log.debug("dropping unreadable ARI event %r", msg, exc_info=True)
    return []


def listed_channel(obj: object, bridge: str = "") -> list[AsteriskEvent]:
    """One channel of ``GET /ari/channels`` (the resync) as a ChannelSeen; ``[]`` if unusable.

    ``bridge``: the id of the bridge the channel is in (see ``bridged``), its call's group.
    """
    return _safely(lambda: [_seen(obj, "listed", bridge)], "listed channel", obj)


def bridged(bridges: object) -> dict[str, str]:
    """Channel id → bridge id, from the answer of ``GET /ari/bridges``."""
    out: dict[str, str] = {}
    for bridge in bridges if isinstance(bridges, list) else []:
        if not isinstance(bridge, Mapping) or not isinstance(bridge.get("id"), str):
            continue
        channels = bridge.get("channels")
        for uid in channels if isinstance(channels, list) else []:
            if isinstance(uid, str) and uid:
                out[uid] = str(bridge["id"])
    return out


def listed_device(obj: object) -> list[AsteriskEvent]:
    """One entry of ``GET /ari/deviceStates`` as a DeviceStateChanged; ``[]`` if unusable."""
    return _safely(lambda: [_device(obj)], "device state", obj)


def listed_endpoint(obj: object) -> list[AsteriskEvent]:
    """A PJSIP endpoint (``GET /ari/endpoints``) as the extension watching it would be hinted.

    ARI lists no hints: over ARI the watchable extensions are the PJSIP endpoints, each hinted
    ``PJSIP/<resource>`` under its own name. Other technologies give ``[]``.
    """
    return _safely(lambda: _endpoint(obj), "endpoint", obj)


def aor_contacts(aor: str, tuples: object) -> list[AsteriskEvent]:
    """Every contact of an AOR from its configuration (``GET /ari/asterisk/config/dynamic/
    res_pjsip/aor/<aor>``: ConfigTuples, one ``contact`` per contact, static and registered
    alike) as listed ContactChanged events."""
    out: list[AsteriskEvent] = []
    for entry in tuples if isinstance(tuples, list) else []:
        if isinstance(entry, Mapping) and entry.get("attribute") == "contact":
            value = entry.get("value")
            # Asterisk may print several in one value, comma separated (as AMI's AorList).
            for uri in value.split(",") if isinstance(value, str) else []:
                if uri.strip():
                    out.append(ContactChanged(aor, uri.strip(), listed=True))
    return out


def protocol_ids(msg: object) -> dict[str, str]:
    """Channel id → ``protocol_id`` (the SIP Call-ID on PJSIP) of every channel an event names."""
    out: dict[str, str] = {}
    if not isinstance(msg, Mapping):
        return out
    for key in ("channel", "peer", "caller"):
        ch = msg.get(key)
        if isinstance(ch, Mapping):
            uid, pid = ch.get("id"), ch.get("protocol_id")
            if isinstance(uid, str) and uid and isinstance(pid, str) and pid:
                out[uid] = pid
    return out


def _map(msg: Mapping[object, object], dials: DialPairs | None) -> list[AsteriskEvent]:
    kind = msg.get("type")
    if kind == "ChannelCreated":
        return [_seen(msg.get("channel"), "created")]
    if kind in _CHANNEL_EVENTS:
        return [_seen(msg.get("channel"), "changed")]
    if kind == "ChannelEnteredBridge":
        bridge = msg.get("bridge")
        bridge_id = _text(bridge, "id") if isinstance(bridge, Mapping) else ""
        if not bridge_id:
            raise _Malformed("bridge without an id")
        return [_seen(msg.get("channel"), "changed", bridge_id)]
    if kind == "ChannelDestroyed":
        uniqueid = _id(msg.get("channel"))
        if dials is not None:
            dials.forget(uniqueid)
        return [ChannelGone(uniqueid, _cause(msg.get("cause")))]
    if kind == "Dial":
        return _dial(msg, dials)
    if kind in ("ChannelHold", "ChannelUnhold"):
        return [HoldChanged(_id(msg.get("channel")), on_hold=kind == "ChannelHold")]
    if kind == "DeviceStateChanged":
        return [_device(msg.get("device_state"))]
    if kind == "EndpointStateChange":
        return _endpoint(msg.get("endpoint"))
    if kind == "ContactStatusChange":
        return [_contact(msg)]
    return []


def _contact(msg: Mapping[object, object]) -> ContactChanged:
    info, endpoint = msg.get("contact_info"), msg.get("endpoint")
    if not isinstance(info, Mapping):
        raise _Malformed("no contact_info object")
    aor, uri = _text(info, "aor"), _text(info, "uri")
    if not aor or not uri:
        raise _Malformed("contact without aor or uri")
    live = _text(info, "contact_status").lower() not in CONTACT_GONE
    resource = _text(endpoint, "resource") if isinstance(endpoint, Mapping) else ""
    return ContactChanged(aor, uri, live, resource)


def _dial(msg: Mapping[object, object], dials: DialPairs | None) -> list[AsteriskEvent]:
    status = msg.get("dialstatus", "")
    if not isinstance(status, str):
        raise _Malformed("dialstatus is not a string")
    peer = _id(msg.get("peer"))
    caller = msg.get("caller")
    # An originated leg has no caller: nothing links it, but it is still a leg being dialled.
    caller_id = _id(caller) if caller is not None else ""
    if status.upper() not in DIALING:
        if dials is not None and caller_id:
            dials.end(caller_id, peer)
        return [DialEnded(caller_id, peer, status)] if caller_id else []
    if dials is not None and not dials.begin(caller_id, peer):
        return []  # the same attempt again (RINGING after ''): nothing new
    events: list[AsteriskEvent] = []
    try:
        events.append(_seen(msg.get("peer"), "dialed"))
    except _Malformed as exc:
        log.debug("Dial without a usable peer channel: %s", exc)
    if caller_id:
        events.append(DialBegan(caller_id, peer))
    return events


def _seen(ch: object, how: str, bridge: str = "") -> ChannelSeen:
    """A channel object as ChannelSeen; ``how`` is where it came from (for ``dialed``)."""
    if not isinstance(ch, Mapping):
        raise _Malformed("no channel object")
    raw_state = ch.get("state")
    if not isinstance(raw_state, str) or raw_state.lower() not in STATE_NAMES:
        raise _Malformed(f"unknown channel state {raw_state!r}")
    state = STATE_NAMES[raw_state.lower()]
    name = _text(ch, "name")
    if not name:
        raise _Malformed("channel without a name")
    caller, connected = _party(ch.get("caller")), _party(ch.get("connected"))
    dialplan = ch.get("dialplan")
    app = _text(dialplan, "app_name") if isinstance(dialplan, Mapping) else ""
    return ChannelSeen(
        uniqueid=_id(ch),
        name=name,
        state=state,
        caller_num=caller[0],
        caller_name=caller[1],
        connected_num=connected[0],
        connected_name=connected[1],
        linkedid=_text(ch, "linkedid") or bridge,  # module docstring
        dialed=True if how == "dialed" else leg_origin(how, state, name, app),
    )


def _device(obj: object) -> DeviceStateChanged:
    if not isinstance(obj, Mapping):
        raise _Malformed("no device_state object")
    name, state = _text(obj, "name"), _text(obj, "state")
    if not name or not state:
        raise _Malformed("device state without name or state")
    return DeviceStateChanged(name, state)


def _endpoint(obj: object) -> list[AsteriskEvent]:
    if not isinstance(obj, Mapping):
        raise _Malformed("no endpoint object")
    tech, resource = _text(obj, "technology"), _text(obj, "resource")
    if tech.upper() != "PJSIP" or not resource:
        return []
    return [ExtensionHint(resource, "", f"PJSIP/{resource}", 0)]


Build = Callable[[], list[AsteriskEvent]]


def _safely(build: Build, what: str, obj: object) -> list[AsteriskEvent]:
    try:
        return build()
    except _Malformed as exc:
        log.debug("dropping malformed ARI %s: %s", what, exc)
    except Exception:  # bad input must never take the adapter down
        log.debug("dropping unreadable ARI %s %r", what, obj, exc_info=True)
    return []


def _id(ch: object) -> str:
    uniqueid = ch.get("id") if isinstance(ch, Mapping) else None
    if not isinstance(uniqueid, str) or not uniqueid:
        raise _Malformed("channel without an id")
    return uniqueid


def _party(obj: object) -> tuple[str, str]:
    if not isinstance(obj, Mapping):
        return "", ""
    return _known(_text(obj, "number")), _known(_text(obj, "name"))


def _text(obj: Mapping[object, object], key: str) -> str:
    value = obj.get(key, "")
    return value if isinstance(value, str) else ""


def _known(value: str) -> str:
    return "" if value == "<unknown>" else value


def _cause(value: object) -> int:
    # A hangup must never be lost over an odd cause: the channel would stay up forever.
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return 0


def _type_of(msg: object) -> str:
    kind = msg.get("type") if isinstance(msg, Mapping) else None
    return kind if isinstance(kind, str) else "?"
