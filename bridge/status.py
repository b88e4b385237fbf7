"""What the running bridge shows of itself (the web panel, /metrics, /api): the StatusView of
the core. It reads the core only (never the app), so the web side needs nothing else."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence

from bridge.core import BridgeCore
from bridge.findings import Finding
from bridge.led.controller import Phone
from bridge.pbxs import PbxState
from bridge.sip.headers import ParseError, parse_name_addr
from bridge.web.status import (
    ChangeSignal,
    Counters,
    EntityStatus,
    Histogram,
    HistogramSnapshot,
    LedPhoneStatus,
    PbxHealth,
    SubscriptionStatus,
    entity_status,
    panel_activity,
)


class BridgeStatus:
    """The StatusView of one BridgeCore: reads its tracker, notifier and LED controller when
    asked. The glue fills in the latencies and fires ``change``."""

    def __init__(self, core: BridgeCore, clock: Callable[[], float]) -> None:
        self.core = core
        self._clock = clock
        self.change = ChangeSignal()
        self.histogram = Histogram()  # event → NOTIFY, seconds

    def entities(self) -> Sequence[EntityStatus]:
        """Every watchable extension, in order, with what the panel shows of it: its label,
        PBX, context, groups, activity and the age of its calls."""
        core, now = self.core, self._clock()
        show = core.config.security.show_caller
        labels = core.config.snom.labels
        groups = _groups_by_key(core.config.web_groups)
        out = []
        for pbx in core.pbxs:  # with several PBXs each key is named berlin:202
            tracker = pbx.tracker
            for exten in sorted(tracker.extensions()):
                entity = entity_status(tracker.state(exten), show_caller=show, now=now)
                resource = pbx.resource(exten)
                number, _, context = exten.partition("@")
                activity = panel_activity(
                    entity, tracker.hint_status(exten), tracker.device_states(exten)
                )
                out.append(dataclasses.replace(
                    entity, exten=resource, activity=activity,
                    label=labels.get(resource) or labels.get(exten) or _name(pbx, exten),
                    number=number, pbx=pbx.name, context=context or tracker.default_context,
                    groups=groups.get(resource) or groups.get(exten, ()),
                ))  # fmt: skip
        return out

    def attention(self) -> Sequence[Finding]:
        """The findings of the live check that need attention: fail first, then warn."""
        found = [f for f in self.core.findings if f.level in ("warn", "fail")]
        found.sort(key=lambda f: f.level != "fail")
        return found

    def subscriptions(self) -> Sequence[SubscriptionStatus]:
        """Every active subscription."""
        notifier, now = self.core.notifier, self._clock()
        out = []
        for resource in sorted(notifier.resources()):
            for w in notifier.watchers(resource):
                out.append(SubscriptionStatus(resource, _uri(w.remote), str(w.peer),
                                              max(0.0, w.expires_at - now)))  # fmt: skip
        return out

    def counters(self) -> Counters:
        """Totals and the source's health."""
        core = self.core
        return Counters(
            subscriptions=core.notifier.stats().subscriptions,
            notifies_sent=core.notifier.notifies_sent,
            notifies_failed=core.notifier.notifies_failed,
            ami_connected=core.asterisk_connected,
            synced=core.asterisk_synced,
            events_total=core.events_total,
            pbxs=tuple(
                PbxHealth(p.name, p.connected, p.synced, p.events, p.endpoint, p.failovers)
                for p in core.pbxs if p.name
            ),
            endpoint=core.pbxs[0].endpoint if len(core.pbxs) == 1 else "",
            failovers=sum(p.failovers for p in core.pbxs),
        )

    def findings(self) -> Sequence[Finding]:
        """What the bridge found wrong with the site while running (empty when all is well)."""
        return tuple(self.core.findings)

    def latency(self) -> HistogramSnapshot:
        """The event→NOTIFY latencies so far."""
        return self.histogram.snapshot()

    def led_phones(self) -> Sequence[LedPhoneStatus]:
        """Every phone of an LED rule: reachable or not, and how each contact is doing."""
        leds = self.core.leds
        if leds is None:
            return []
        return [_led_phone(phone) for _, phone in sorted(leds.phones.items())]

    def next_change(self) -> asyncio.Event:
        """Set at the next change of a key, of the subscriptions or of a phone's contacts."""
        return self.change.next()


def _name(pbx: PbxState, exten: str) -> str:
    """The caller-id name Asterisk has for the key's first PJSIP endpoint ("" if none)."""
    for device in pbx.tracker.devices(exten):
        tech, _, endpoint = device.partition("/")
        if tech == "pjsip" and (name := pbx.names.get(endpoint)):
            return name
    return ""


def _groups_by_key(groups: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """web.groups turned around: each key → the groups naming it, in the file's order."""
    by_key: dict[str, tuple[str, ...]] = {}
    for group, keys in groups.items():
        for key in keys:
            if group not in by_key.get(key, ()):
                by_key[key] = (*by_key.get(key, ()), group)
    return by_key


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
