"""What the web endpoint shows, and the protocol the running bridge implements to show it.

The web layer only reads: ``StatusView`` is a snapshot interface over the bridge's entity
states, subscriptions and counters. ``ChangeSignal``, ``Histogram`` and ``entity_status`` are
small building blocks for the bridge's side of it.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from bridge.findings import Finding
from bridge.model import DEVICE_STATE_DIALOG, Dialog, DialogState, Direction, EntityState

KeyState = Literal["idle", "ringing", "busy", "held", "unknown"]
KEY_STATES: tuple[KeyState, ...] = get_args(KeyState)
# What the panel says a key is doing, in more words than its LED: a parked call, do not
# disturb and unavailable light (or darken) a Snom key like any call (or idle).
Activity = Literal[
    "idle", "ringing", "in-call", "on-hold", "dnd", "unavailable", "parked", "unknown"
]
ACTIVITIES: tuple[Activity, ...] = get_args(Activity)
_ACTIVITY_OF: dict[KeyState, Activity] = {
    "idle": "idle", "ringing": "ringing", "busy": "in-call", "held": "on-hold",
    "unknown": "unknown",
}  # fmt: skip

# Upper bounds (seconds) of the event→NOTIFY latency buckets: the bridge aims at milliseconds.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class EntityStatus:
    """One watched extension as its BLF key shows it."""

    exten: str
    state: KeyState
    caller: str = ""  # who rings (or the other party of the call); "" when hidden or idle
    # JSON-ready dicts; never the pickup ids (call-id and tags would let anyone take the call).
    dialogs: tuple[Mapping[str, object], ...] = ()
    activity: Activity = "unknown"  # the panel's word for it (entity_status fills it in)
    # Where it belongs and what it is called, for the panel (BridgeStatus fills these in).
    label: str = ""  # snom.labels, else the caller-id name of its endpoint; "" for none
    number: str = ""  # the extension alone: no PBX name, no context
    pbx: str = ""  # the [[asterisk]] name; "" with one PBX
    context: str = ""  # the dialplan context of its hint (tenant)
    groups: tuple[str, ...] = ()  # the web.groups naming it, in the configuration's order


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    """One phone's subscription to an extension."""

    resource: str  # the watched extension
    watcher: str  # the watcher's URI (From)
    peer: str  # transport and address the NOTIFYs go to, e.g. "udp:192.0.2.7:5060"
    expires_in: float  # seconds left


@dataclass(frozen=True, slots=True)
class LedPhoneStatus:
    """A phone that ``[[led]]`` rules light: whether the bridge can reach it, and where."""

    phone: str  # the PJSIP AOR the rules name
    reachable: bool  # Asterisk knows a contact of it (registered or static)
    keys: tuple[int, ...]  # the keys the rules light
    # Each contact: {"uri", "address" ("host:port"), "state": "lit" | "sending" | "failing"}.
    contacts: tuple[Mapping[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class PbxHealth:
    """One PBX of several (``[[asterisk]]``): its source's health and its events."""

    name: str
    connected: bool
    synced: bool
    events_total: int
    endpoint: str = ""  # the AMI/ARI endpoint followed (failover: ami.standby, ari.standby)
    failovers: int = 0  # times it moved to another endpoint


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals since start, and the Asterisk source's health."""

    subscriptions: int
    notifies_sent: int
    notifies_failed: int
    ami_connected: bool  # the Asterisk source (AMI, or ARI) is connected
    synced: bool  # it finished a full resync since it (re)connected: the states are current
    events_total: int  # Asterisk events handled
    pbxs: tuple[PbxHealth, ...] = ()  # each PBX apart, with several ([[asterisk]]); else none
    endpoint: str = ""  # one PBX: the endpoint followed; several: see pbxs
    failovers: int = 0  # moves to another endpoint, all PBXs together


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A latency histogram as Prometheus wants it; ``counts[i]`` is the number of observations
    in ``(bounds[i-1], bounds[i]]`` (not cumulative); ``count`` includes those above the last
    bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int


class StatusView(Protocol):
    """The bridge as the web endpoint sees it. Every method is cheap and never blocks."""

    def entities(self) -> Sequence[EntityStatus]:
        """Every watchable extension, sorted for display."""
        ...

    def subscriptions(self) -> Sequence[SubscriptionStatus]:
        """Every live subscription."""
        ...

    def counters(self) -> Counters:
        """Totals and health."""
        ...

    def latency(self) -> HistogramSnapshot:
        """Seconds from an Asterisk event to the NOTIFYs it caused."""
        ...

    def led_phones(self) -> Sequence[LedPhoneStatus]:
        """Every phone of an ``[[led]]`` rule, sorted; empty without rules."""
        ...

    def findings(self) -> Sequence[Finding]:
        """What the bridge found wrong while running (settings a reload could not take over)."""
        ...

    def next_change(self) -> asyncio.Event:
        """An event set at the next change of an entity or a subscription (``ChangeSignal``)."""
        ...

    def attention(self) -> Sequence[Finding]:
        """The site findings that need attention (warn, fail), worst first."""
        ...


class ChangeSignal:
    """Tells any number of waiters that something changed: take ``next()``, read the state, then
    wait on the event; a change between the read and the wait is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def next(self) -> asyncio.Event:
        """The event the next ``fire()`` sets."""
        return self._event

    def fire(self) -> None:
        """Wake every waiter; callable from plain (non-async) code on the loop."""
        event, self._event = self._event, asyncio.Event()
        event.set()


@dataclass(slots=True)
class Histogram:
    """Counts observations into fixed buckets (upper bounds inclusive, like Prometheus' ``le``)."""

    bounds: tuple[float, ...] = DEFAULT_BUCKETS
    _counts: list[int] = field(init=False)
    _sum: float = field(init=False, default=0.0)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound

    def observe(self, value: float) -> None:
        """Count one observation."""
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        """The current figures."""
        return HistogramSnapshot(self.bounds, tuple(self._counts[:-1]), self._sum, self._count)


def entity_status(
    state: EntityState, *, show_caller: bool = True, now: float | None = None
) -> EntityStatus:
    """What a Snom key shows for an entity state: early dialogs blink (ringing), a held call
    blinks slowly, any other call lights steadily. With ``now`` (the clock the tracker was
    fed), each dialog says for how many seconds it has been going on."""
    if not state.known and not state.dialogs:
        return EntityStatus(state.exten, "unknown")
    live = [d for d in state.dialogs if d.state is not DialogState.TERMINATED]
    dialogs = tuple(_dialog_dict(d, show_caller, now) for d in live)
    early = [d for d in live if d.state is DialogState.EARLY]
    if early:
        # The phone blinks for any early dialog; the caller is that of an incoming one.
        ringing = next((d for d in early if d.direction is Direction.RECIPIENT), early[0])
        return EntityStatus(state.exten, "ringing", _party(ringing, show_caller), dialogs,
                            "ringing")  # fmt: skip
    if not live:
        return EntityStatus(state.exten, "idle", "", dialogs, "idle")
    active = [d for d in live if not (d.local_held or d.remote_held)]
    shown = active[0] if active else live[0]
    key: KeyState = "busy" if active else "held"
    activity: Activity = "parked" if all(d.parked for d in live) else _ACTIVITY_OF[key]
    return EntityStatus(state.exten, key, _party(shown, show_caller), dialogs, activity)


DND_STATES = frozenset({"BUSY", "INUSE"})  # FreePBX sets Custom:DND<ext> to BUSY while on
HINT_UNAVAILABLE = 4  # ExtensionStatus: no device of the hint can be reached


def panel_activity(
    entity: EntityStatus, hint_status: int | None, device_states: Mapping[str, str]
) -> Activity:
    """The entity's activity once the hint's word is heard: a key lit only by a ``Custom:DND…``
    device is on do not disturb; a dark key whose hint Asterisk calls unavailable is that."""
    if entity.activity in ("in-call", "on-hold", "ringing") and all(
        d.get("id") == DEVICE_STATE_DIALOG for d in entity.dialogs
    ) and any(
        device.startswith("custom:dnd") and state in DND_STATES
        for device, state in device_states.items()
    ):
        return "dnd"
    if entity.activity == "idle" and hint_status == HINT_UNAVAILABLE:
        return "unavailable"
    return entity.activity


def _party(dialog: Dialog, show_caller: bool) -> str:
    if not show_caller or dialog.remote_hidden:
        return ""
    if dialog.remote_name and dialog.remote_num:
        return f"{dialog.remote_name} <{dialog.remote_num}>"
    return dialog.remote_name or dialog.remote_num


def _dialog_dict(dialog: Dialog, show_caller: bool, now: float | None) -> dict[str, object]:
    shown = show_caller and not dialog.remote_hidden
    out: dict[str, object] = {
        "id": dialog.id,
        "direction": dialog.direction.value,
        "state": dialog.state.value,
        "remote": _party(dialog, show_caller),
        "local_held": dialog.local_held,
        "remote_held": dialog.remote_held,
        "pickup_ready": dialog.pickup is not None,
    }
    # The panel's: the other party by name (else number) and by number, and how long (with
    # ``now``); never the pickup ids either.
    out["party"] = (dialog.remote_name or dialog.remote_num) if shown else ""
    out["party_number"] = dialog.remote_num if shown else ""
    out["hidden"] = dialog.remote_hidden
    out["parked"] = dialog.parked
    out["answered"] = dialog.answered
    if now is not None:
        out["seconds"] = round(max(0.0, now - dialog.since), 1) if dialog.since else None
    return out
