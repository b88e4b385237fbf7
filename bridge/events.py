"""Normalized Asterisk events: what the source adapters (AMI, ARI) tell the CallTracker.

The adapters are the only code that knows AMI or ARI. Everything they learn is turned into these
few plain, immutable records, so the tracker and everything after it are the same for any source.
Channel identity is Asterisk's ``Uniqueid`` (AMI) / channel ``id`` (ARI); they are the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ChannelState(IntEnum):
    """Asterisk's ``ChannelState`` numbers (``ast_channel_state``)."""

    DOWN = 0
    RESERVED = 1
    OFFHOOK = 2
    DIALING = 3
    RING = 4
    RINGING = 5
    UP = 6
    BUSY = 7
    DIALING_OFFHOOK = 8
    PRERING = 9


@dataclass(frozen=True, slots=True)
class ChannelSeen:
    """A channel appeared or changed (Newchannel, Newstate, NewCallerid, NewConnectedLine,
    CoreShowChannel; ARI ChannelCreated/StateChange/ConnectedLine).

    ``dialed`` is True when the channel is an outgoing leg Asterisk created to reach a device
    (Dial()'s ``AppDial`` leg), False when it is the device's own call into Asterisk, None when
    the event does not say; the tracker remembers the first definite answer.
    """

    uniqueid: str
    name: str  # e.g. "PJSIP/202-00000008"
    state: ChannelState
    caller_num: str = ""
    caller_name: str = ""
    connected_num: str = ""
    connected_name: str = ""
    linkedid: str = ""
    dialed: bool | None = None


@dataclass(frozen=True, slots=True)
class ChannelGone:
    """A channel hung up (Hangup; ARI ChannelDestroyed)."""

    uniqueid: str
    cause: int = 0


@dataclass(frozen=True, slots=True)
class DialBegan:
    """Dial() started ringing ``dest_uniqueid`` on behalf of ``caller_uniqueid`` (DialBegin)."""

    caller_uniqueid: str
    dest_uniqueid: str


@dataclass(frozen=True, slots=True)
class DialEnded:
    """A Dial() attempt finished (DialEnd); ``status`` is ANSWER, CANCEL, BUSY, NOANSWER, …"""

    caller_uniqueid: str
    dest_uniqueid: str
    status: str


@dataclass(frozen=True, slots=True)
class LegIds:
    """The SIP dialog identifiers of a PJSIP leg, read with Getvar / ARI channel variables.

    ``local_tag`` is Asterisk's own tag (``CHANNEL(pjsip,local_tag)``), ``remote_tag`` the
    device's tag (``CHANNEL(pjsip,remote_tag)``). The tracker maps them to RFC 4235's view of
    the watched device (docs/PICKUP.md: the device's local-tag is Asterisk's remote_tag).
    """

    uniqueid: str
    call_id: str
    local_tag: str
    remote_tag: str
    caller_hidden: bool = False  # the caller's presentation is restricted: never show it


@dataclass(frozen=True, slots=True)
class HoldChanged:
    """A channel put its call on hold or resumed it (Hold / Unhold; ARI ChannelHold/Unhold)."""

    uniqueid: str
    on_hold: bool


@dataclass(frozen=True, slots=True)
class DeviceStateChanged:
    """A device's aggregate state (DeviceStateChange; ARI DeviceStateChanged), e.g.
    ``Custom:DND201`` → ``BUSY``: the state of every hint device that is not a channel."""

    device: str
    state: str  # Asterisk's name: NOT_INUSE, INUSE, BUSY, RINGING, RINGINUSE, ONHOLD, …


@dataclass(frozen=True, slots=True)
class CallParked:
    """A call waits in a parking space (ParkedCall, also listed by the ParkedCalls action)."""

    space: str  # e.g. "701", what a ``park:701@<context>`` hint names
    uniqueid: str  # the parked channel
    caller_num: str = ""
    caller_name: str = ""


@dataclass(frozen=True, slots=True)
class CallUnparked:
    """A parked call left its space: retrieved, timed out or hung up (UnParkedCall,
    ParkedCallTimeOut, ParkedCallGiveUp)."""

    space: str
    uniqueid: str


@dataclass(frozen=True, slots=True)
class ExtensionHint:
    """An extension with a hint (ExtensionStatus): tells which devices make up an extension."""

    exten: str
    context: str
    hint: str  # e.g. "PJSIP/202" or "PJSIP/202&Custom:DND202"
    status: int


@dataclass(frozen=True, slots=True)
class ContactChanged:
    """One contact of a phone (a PJSIP AOR): registered, static, changed or gone (AMI
    ContactStatus, PJSIPShowContacts, PJSIPShowAors; ARI ContactStatusChange, the AOR's
    configuration). A phone may have several; each is announced on its own.

    ``reachable`` is False when the contact is removed or unreachable: Asterisk sends it
    nothing then either. ``endpoint`` names the PJSIP endpoint when the event says.
    ``listed`` is True when the contact comes from a listing (a resync) rather than a change:
    a listed contact already known is no news.
    """

    aor: str
    uri: str
    reachable: bool = True
    endpoint: str = ""
    listed: bool = False


@dataclass(frozen=True, slots=True)
class EndpointGroups:
    """A PJSIP endpoint's call and pickup groups (PJSIPShowEndpoint), for the pickup policy."""

    endpoint: str
    call_groups: frozenset[int]
    pickup_groups: frozenset[int]
    subscribe_context: str = ""  # where its SUBSCRIBEs resolve (tenants); "" when not said
    context: str = ""  # its dialplan context: where they resolve without a subscribe_context
    # Its caller id as Asterisk prints it (``"Phone 201" <201>``), for the panel's key names;
    # not compared: the groups are what the policy follows.
    callerid: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class RightsMissing:
    """Asterisk refused an action the bridge needs for lack of rights (``Permission denied``):
    ``right`` is what its user lacks, e.g. ``write = call`` for Getvar."""

    action: str
    right: str
    needed_for: str


@dataclass(frozen=True, slots=True)
class ResourceListsRead:
    """Every ``type = resource_list`` object Asterisk has now (AMI ``PJSIPShowResourceLists``),
    read at each sync: the complete set, so a list not named here is gone."""

    lists: tuple[ResourceListEntry, ...]


@dataclass(frozen=True, slots=True)
class ResourceListEntry:
    """One RFC 4662 resource list as ``pjsip.conf`` declares it."""

    name: str
    event: str  # only "dialog" lists are served
    items: tuple[str, ...]  # list_item, in order: extensions (or other lists' names)
    full_state: bool = False
    batch_interval_ms: int = 0  # notification_batch_interval


@dataclass(frozen=True, slots=True)
class DialplanRead:
    """What of the dialplan decides where a SUBSCRIBE resolves (AMI ShowDialPlan, read at each
    sync and after a ``Reload``), replacing what was known: every context's ``include =>``
    lines in order, and its pattern hints (``_*76X.`` → ``Custom:DEVDND${EXTEN:3}``, which
    ExtensionStateList leaves out)."""

    includes: tuple[tuple[str, tuple[str, ...]], ...]  # (context, its includes in order)
    pattern_hints: tuple[tuple[str, str, str], ...] = ()  # (context, pattern, hint)


@dataclass(frozen=True, slots=True)
class ResyncStarted:
    """The source is about to replay Asterisk's complete current state (after a (re)connect)."""

    # Which of the PBX's endpoints it comes from (failover), as logged; not part of equality:
    # a resync is a resync, wherever it comes from.
    endpoint: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class ResyncFinished:
    """The complete state has been replayed: channels not seen since ResyncStarted are gone."""


@dataclass(frozen=True, slots=True)
class SourceLost:
    """The connection to Asterisk is gone; state is unknown until the next resync."""


AsteriskEvent = (
    ChannelSeen
    | ChannelGone
    | DialBegan
    | DialEnded
    | LegIds
    | HoldChanged
    | DeviceStateChanged
    | CallParked
    | CallUnparked
    | ExtensionHint
    | ContactChanged
    | EndpointGroups
    | RightsMissing
    | ResourceListsRead
    | DialplanRead
    | ResyncStarted
    | ResyncFinished
    | SourceLost
)


def callerid_name(callerid: str) -> str:
    """The name part of a caller id as Asterisk prints it: ``"Phone 201" <201>`` → Phone 201;
    "" when it has none (``<201>``, ``201``)."""
    text = callerid.strip()
    if "<" in text:
        text = text.partition("<")[0].strip()
    elif text.isdigit() or (text.startswith("+") and text[1:].isdigit()):
        return ""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return text.strip()
