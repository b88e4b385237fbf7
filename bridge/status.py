"""What the running bridge shows of itself (the web panel, /metrics, /api): the StatusView."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bridge.led.controller import Phone
from bridge.sip.headers import ParseError, parse_name_addr
from bridge.web.status import (
    ChangeSignal,
    Counters,
    EntityStatus,
    Histogram,
    HistogramSnapshot,
    LedPhoneStatus,
    SubscriptionStatus,
    entity_status,
)

if TYPE_CHECKING:
    from bridge.app import Bridge


class BridgeStatus:
    """The StatusView of one Bridge: reads its tracker, notifier and source when asked."""

    def __init__(self, bridge: Bridge, clock: Callable[[], float]) -> None:
        self._bridge = bridge
        self._clock = clock
        self.change = ChangeSignal()
        self.histogram = Histogram()  # event → NOTIFY, seconds
        self.events_total = 0

    def entities(self) -> Sequence[EntityStatus]:
        """Every watchable extension, in order."""
        b = self._bridge
        show = b.config.security.show_caller
        return [entity_status(b.tracker.state(x), show_caller=show)
                for x in sorted(b.tracker.extensions())]  # fmt: skip

    def subscriptions(self) -> Sequence[SubscriptionStatus]:
        """Every active subscription."""
        notifier, now = self._bridge.notifier, self._clock()
        out = []
        for resource in sorted(notifier.resources()):
            for w in notifier.watchers(resource):
                out.append(SubscriptionStatus(resource, _uri(w.remote), str(w.peer),
                                              max(0.0, w.expires_at - now)))  # fmt: skip
        return out

    def counters(self) -> Counters:
        """Totals and the source's health."""
        b = self._bridge
        source = b.source
        return Counters(
            subscriptions=b.notifier.stats().subscriptions,
            notifies_sent=b.notifier.notifies_sent,
            notifies_failed=b.notifier.notifies_failed,
            ami_connected=source is not None and source.connected,
            synced=source is not None and source.synced.is_set(),
            events_total=self.events_total,
        )

    def latency(self) -> HistogramSnapshot:
        """The event→NOTIFY latencies so far."""
        return self.histogram.snapshot()

    def led_phones(self) -> Sequence[LedPhoneStatus]:
        """Every phone of an LED rule: reachable or not, and how each contact is doing."""
        leds = self._bridge.leds
        if leds is None:
            return []
        return [_led_phone(phone) for _, phone in sorted(leds.phones.items())]

    def next_change(self) -> asyncio.Event:
        """Set at the next change of a key, of the subscriptions or of a phone's contacts."""
        return self.change.next()


def _led_phone(phone: Phone) -> LedPhoneStatus:
    contacts = []
    for contact in phone.contacts.values():
        pending = any(contact.confirmed.get(k) != v for k, v in phone.wanted.items())
        state = "failing" if contact.failures else "sending" if pending else "lit"
        host, port = contact.address
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        contacts.append({"uri": contact.uri, "address": address, "state": state})
    return LedPhoneStatus(phone.aor, phone.reachable, tuple(sorted(phone.wanted)), tuple(contacts))


def _uri(name_addr: str) -> str:
    try:
        return parse_name_addr(name_addr).uri.raw
    except ParseError:
        return name_addr
