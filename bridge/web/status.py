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
from bridge.model import Dialog, DialogState, Direction, EntityState

KeyState = Literal["idle", "ringing", "busy", "held", "unknown"]
KEY_STATES: tuple[KeyState, ...] = get_args(KeyState)

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


def entity_status(state: EntityState, *, show_caller: bool = True) -> EntityStatus:
    """What a Snom key shows for an entity state: early dialogs blink (ringing), a held call
    blinks slowly, any other call lights steadily."""
    if not state.known and not state.dialogs:
        return EntityStatus(state.exten, "unknown")
    live = [d for d in state.dialogs if d.state is not DialogState.TERMINATED]
    dialogs = tuple(_dialog_dict(d, show_caller) for d in live)
    early = [d for d in live if d.state is DialogState.EARLY]
    if early:
        # The phone blinks for any early dialog; the caller is that of an incoming one.
        ringing = next((d for d in early if d.direction is Direction.RECIPIENT), early[0])
        return EntityStatus(state.exten, "ringing", _party(ringing, show_caller), dialogs)
    if not live:
        return EntityStatus(state.exten, "idle", "", dialogs)
    active = [d for d in live if not (d.local_held or d.remote_held)]
    shown = active[0] if active else live[0]
    key: KeyState = "busy" if active else "held"
    return EntityStatus(state.exten, key, _party(shown, show_caller), dialogs)


def _party(dialog: Dialog, show_caller: bool) -> str:
    if not show_caller or dialog.remote_hidden:
        return ""
    if dialog.remote_name and dialog.remote_num:
        return f"{dialog.remote_name} <{dialog.remote_num}>"
    return dialog.remote_name or dialog.remote_num


def _dialog_dict(dialog: Dialog, show_caller: bool) -> dict[str, object]:
    return {
        "id": dialog.id,
        "direction": dialog.direction.value,
        "state": dialog.state.value,
        "remote": _party(dialog, show_caller),
        "local_held": dialog.local_held,
        "remote_held": dialog.remote_held,
        "pickup_ready": dialog.pickup is not None,
    }
