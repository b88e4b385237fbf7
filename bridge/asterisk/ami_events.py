"""AMI events (header dicts) to normalized :mod:`bridge.events`, plus a tiny AMI wire parser.

Pure: no I/O, no clock. The adapter reads the live stream with :mod:`bridge.asterisk.ami_wire`
and maps what it reads here; the recordings' reader is the demo's (:mod:`bridge.demo.recording`).

How ``ChannelSeen.dialed`` is decided (True = an outgoing leg Asterisk created to reach a device,
the only kind of dialog a ``Replaces`` pickup can take over):

- A listed channel (``CoreShowChannel``; ARI's channel list) running ``AppDial``: Dial()'s
  outgoing leg, by definition; running any other application: the device's own call.
- ``DialBegin``: its ``Dest…`` channel is the leg being dialled.
- ``ChannelState`` 5 (Ringing): only Asterisk's outgoing legs reach it (on the device's 18x);
  an incoming call stays in 4 (Ring) even while Asterisk sends it 180 (see the recordings).
- ``Newchannel`` of a ``PJSIP/`` channel in state 0 (Down): chan_pjsip creates incoming
  channels in Ring, so a Down one was requested by Asterisk (Dial, Originate).
- ``ChannelState`` 4 (Ring): False, the device's own (not yet answered) call into Asterisk.
- Anything else: None, the event does not say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

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
    DialplanRead,
    ExtensionHint,
    HoldChanged,
    ResourceListEntry,
    ResourceListsRead,
)

log = logging.getLogger(__name__)

_CHANNEL_EVENTS = frozenset(
    {"newchannel", "newstate", "newcallerid", "newconnectedline", "coreshowchannel"}
)
# Every event ``to_events`` maps (lower case); any other gives no events.
MAPPED_EVENTS = _CHANNEL_EVENTS | {
    "hangup", "dialbegin", "dialend", "hold", "unhold", "devicestatechange", "extensionstatus",
    "contactstatus", "contactlist", "aorlist", "parkedcall", "unparkedcall", "parkedcalltimeout",
    "parkedcallgiveup", "reload",
}  # fmt: skip
_UNPARKED = frozenset({"unparkedcall", "parkedcalltimeout", "parkedcallgiveup"})
# ContactStatus values (Asterisk 22: NonQualified, Reachable, Unreachable, Unknown, Removed)
# after which Asterisk sends the contact nothing.
_CONTACT_GONE = frozenset({"removed", "unreachable"})


class _Malformed(Exception):
    """A required header is missing or unusable; the whole event is dropped."""


def to_events(msg: Mapping[str, str]) -> list[AsteriskEvent]:
    """Map one AMI event to normalized events; unknown or malformed events give ``[]``."""
    try:
        headers = {str(k).lower(): v for k, v in msg.items() if isinstance(v, str)}
    except Exception:  # bad input must never take the adapter down
        log.debug("dropping unreadable AMI event %r", msg, exc_info=True)
        return []
    return events_of(headers)


def events_of(headers: dict[str, str]) -> list[AsteriskEvent]:
    """``to_events`` for headers already named in lower case (``parse_message``'s)."""
    try:
        return _map(headers)
    except _Malformed as exc:
        log.debug("dropping malformed AMI event %s: %s", headers.get("event", "?"), exc)
    except Exception:  # bad input must never take the adapter down
        log.debug("dropping unreadable AMI event %r", headers, exc_info=True)
    return []


def dialplan_of(items: Iterable[Mapping[str, str]]) -> DialplanRead:
    """ShowDialPlan's ListDialplan items (header names in lower case) as one DialplanRead: each
    context's includes in the order listed, and the pattern hints (ExtensionStateList leaves
    them out: FreePBX's ``_*76X.`` DND keys). Other priorities are not needed."""
    includes: dict[str, list[str]] = {}
    patterns: list[tuple[str, str, str]] = []
    for h in items:
        context = h.get("context", "")
        if not context:
            continue
        if "includecontext" in h:
            includes.setdefault(context, []).append(h["includecontext"])
        elif h.get("priority") == "hint" and h.get("extension", "").startswith("_"):
            patterns.append((context, h["extension"], h.get("application", "")))
    return DialplanRead(tuple((c, tuple(i)) for c, i in includes.items()), tuple(patterns))


def needs_ids(ev: ChannelSeen) -> bool:
    """True for a ringing PJSIP leg Asterisk dialled: the leg whose SIP ids allow pickup."""
    ringing = ev.state is ChannelState.RINGING and ev.dialed is True
    return ringing and ev.name.upper().startswith("PJSIP/")


def _map(h: dict[str, str]) -> list[AsteriskEvent]:
    event = h.get("event", "").lower()
    if event in _CHANNEL_EVENTS:
        return [_channel(h, event)]
    if event == "hangup":
        return [ChannelGone(_need(h, "uniqueid"), _int_or_zero(h.get("cause", "0")))]
    if event == "devicestatechange":
        return [DeviceStateChanged(_need(h, "device"), _need(h, "state"))]
    if event == "dialbegin":
        began = DialBegan(_need(h, "uniqueid"), _need(h, "destuniqueid"))
        try:
            return [_channel(h, event, prefix="dest"), began]
        except _Malformed as exc:
            log.debug("DialBegin without a usable Dest channel block: %s", exc)
            return [began]
    if event == "dialend":
        return [DialEnded(_need(h, "uniqueid"), _need(h, "destuniqueid"), _need(h, "dialstatus"))]
    if event in ("hold", "unhold"):
        return [HoldChanged(_need(h, "uniqueid"), on_hold=event == "hold")]
    if event == "extensionstatus":
        status = _need(h, "status")
        if not status.lstrip("-").isdigit():
            raise _Malformed(f"Status {status!r} is not a number")
        exten, context, hint = _need(h, "exten"), h.get("context", ""), h.get("hint", "")
        return [ExtensionHint(exten, context, hint, int(status))]
    if event == "parkedcall":  # also the items of the ParkedCalls action
        space, uniqueid = _need(h, "parkingspace"), _need(h, "parkeeuniqueid")
        num, name = h.get("parkeecalleridnum", ""), h.get("parkeecalleridname", "")
        return [CallParked(space, uniqueid, _known(num), _known(name))]
    if event in _UNPARKED:
        return [CallUnparked(_need(h, "parkingspace"), _need(h, "parkeeuniqueid"))]
    if event == "contactstatus":
        live = h.get("contactstatus", "").lower() not in _CONTACT_GONE
        return [ContactChanged(_need(h, "aor"), _need(h, "uri"), live, h.get("endpointname", ""))]
    if event == "contactlist":
        return [_listed_contact(h)]
    if event == "aorlist":
        return _aor_contacts(h)
    return []


def _listed_contact(h: dict[str, str]) -> ContactChanged:
    """A ContactList item (PJSIPShowContacts): a registered contact. Asterisk 22 names its AOR
    only in ``ObjectName`` (``203;@<hash>``), and its endpoint in ``Endpoint``."""
    aor = h.get("aor") or _need(h, "objectname").partition(";@")[0]
    if not aor:
        raise _Malformed("no AOR in ObjectName")
    live = h.get("status", "").lower() not in _CONTACT_GONE
    return ContactChanged(aor, _need(h, "uri"), live, h.get("endpoint", ""), listed=True)


def _aor_contacts(h: dict[str, str]) -> list[AsteriskEvent]:
    """An AorList item (PJSIPShowAors): every contact of the AOR, static ``contact=`` lines and
    registrations alike, as ``Contacts: <aor>/<uri>,<aor>/<uri>``."""
    aor = _need(h, "objectname")
    out: list[AsteriskEvent] = []
    for item in h.get("contacts", "").split(","):
        owner, slash, uri = item.strip().partition("/")
        uri = uri if slash else owner
        if uri:
            out.append(ContactChanged(aor, uri, listed=True))
    return out


# The channel block's header names, plain and as the Dest… block of a Dial event.
_BLOCK = {
    prefix: tuple(prefix + name for name in (
        "channelstate", "channel", "uniqueid", "calleridnum", "calleridname",
        "connectedlinenum", "connectedlinename", "linkedid",
    ))
    for prefix in ("", "dest")
}  # fmt: skip
_STATES = {str(state.value): state for state in ChannelState}
_HOW = {"coreshowchannel": "listed", "newchannel": "created"}


def _channel(h: dict[str, str], event: str, prefix: str = "") -> ChannelSeen:
    """Build a ChannelSeen from the standard channel block (optionally the ``Dest…`` one)."""
    state_key, channel, uniqueid, cid_num, cid_name, line_num, line_name, linkedid = _BLOCK[prefix]
    state = _STATES.get(h.get(state_key, ""))
    if state is None:  # not one of the plain numbers: say what is wrong with it
        state = _odd_state(_need(h, state_key))
    name = _need(h, channel)
    dialed = True if prefix else leg_origin(_HOW.get(event, event), state, name,
                                            h.get("application", ""))  # fmt: skip
    return ChannelSeen(
        _need(h, uniqueid),
        name,
        state,
        _known(h.get(cid_num, "")),
        _known(h.get(cid_name, "")),
        _known(h.get(line_num, "")),
        _known(h.get(line_name, "")),
        h.get(linkedid, ""),
        dialed,
    )


def _odd_state(raw_state: str) -> ChannelState:
    if not raw_state.isdigit():
        raise _Malformed(f"ChannelState {raw_state!r} is not a number")
    try:
        return ChannelState(int(raw_state))
    except ValueError:
        raise _Malformed(f"unknown ChannelState {raw_state}") from None


def leg_origin(how: str, state: ChannelState, name: str, application: str) -> bool | None:
    """What one event proves about a channel's origin, for both sources (rules in the module
    docstring). ``how``: "listed" (a resync's channel list), "created" (a new channel), or
    anything else for a change of a known channel."""
    pjsip_down = state is ChannelState.DOWN and name.upper().startswith("PJSIP/")
    if (
        (how == "listed" and application.startswith("AppDial"))
        or state is ChannelState.RINGING
        or (how == "created" and pjsip_down)
    ):
        return True
    if state is ChannelState.RING or (how == "listed" and application):
        return False
    return None


def _need(h: dict[str, str], key: str) -> str:
    value = h.get(key, "")
    if not value:
        raise _Malformed(f"missing {key}")
    return value


def _known(value: str) -> str:
    return "" if value == "<unknown>" else value


def _int_or_zero(value: str) -> int:
    # A Hangup must never be lost over an odd Cause: the channel would stay up forever.
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else 0


NO_LISTS = "No resource lists found"  # Asterisk's error when pjsip.conf has no resource_list
_TRUE = frozenset({"yes", "true", "on", "1", "y", "t"})


def resource_lists(frames: Iterable[Mapping[str, object]]) -> ResourceListsRead | None:
    """The answer to ``PJSIPShowResourceLists`` as the complete set of lists; None when it is
    an error other than "none configured" (the lists known stay as they were).

    Each ``ResourceListDetail`` carries the list's own ``event`` under a second ``Event``
    header (Asterisk names every field of the object as it is called in pjsip.conf, after the
    event's own name); the live reader renames it ``ListEvent`` (``ami_wire``). A reader that
    keeps only the first of a repeated header (the recordings') cannot see it: such a list is
    taken as a dialog list, the only kind a BLF phone subscribes to.
    """
    entries: list[ResourceListEntry] = []
    for i, frame in enumerate(frames):
        if i == 0 and _one(frame.get("Response")) == "Error":
            return ResourceListsRead(()) if NO_LISTS in _one(frame.get("Message")) else None
        events = frame.get("Event")
        names = events if isinstance(events, list) else [events]
        if not names or _one(names[0]) != "ResourceListDetail":
            continue
        if "ListEvent" in frame:
            names = [names[0], frame["ListEvent"]]
        name = _one(frame.get("ObjectName")).strip()
        if not name:
            continue
        items = tuple(
            item.strip() for item in _one(frame.get("ListItem")).split(",") if item.strip()
        )
        interval = _one(frame.get("NotificationBatchInterval")).strip()
        entries.append(
            ResourceListEntry(
                name,
                _one(names[1]).strip() if len(names) > 1 else "dialog",
                items,
                full_state=_one(frame.get("FullState")).strip().lower() in _TRUE,
                batch_interval_ms=int(interval) if interval.isdigit() else 0,
            )
        )
    return ResourceListsRead(tuple(entries))


def _one(value: object) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)
