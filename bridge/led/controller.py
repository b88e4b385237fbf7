"""Which phone must be told which lights, and the MESSAGE transactions that tell them; sans-I/O.

Feed it Asterisk state (device and hint states, every contact of each phone) and MESSAGE
responses, always with the current time; drain ``outgoing()``; call ``handle_timer()`` at
``next_timer()``. Per phone, the lights wanted; per contact of a phone (each registration and
each static ``contact=``, as Asterisk would ring them all):

- the lights that contact has confirmed (a 2xx); a MESSAGE carries every key that differs, so
  several changes make one MESSAGE;
- one MESSAGE in flight, retransmitted over UDP (T1 doubling to T2, given up after 64·T1);
- a contact that answers 4xx/5xx or does not answer is tried again after 5 s, 10 s, 20 s … up
  to 5 minutes: never in a tight loop, and never holding up another contact or phone;
- a new contact, a (re-)registration or the first contact after a restart of the bridge gets
  every light: a phone that rebooted is lit correctly without waiting for the next change.

Where a contact is reached: at its URI, as Asterisk reaches it (res_pjsip sends a contact's
requests to its URI; with ``rewrite_contact`` that URI already holds the address the REGISTER
came from). ``ViaAddr``/``ViaPort`` are the REGISTER's Via sent-by, which Asterisk stores but
never sends to: behind NAT that is the phone's private address. Over the URI's transport too:
``transport=tcp``/``tls`` (or a ``sips:`` URI) is sent over TCP/TLS, without retransmissions;
the glue reuses the phone's open connection where the bridge has one (see
``Destination.phone``), else opens one to the URI's host and port.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.led.buttons import CONTENT_TYPE, KeyLight, body
from bridge.led.rules import HINT_STATES, LedRule
from bridge.sip.client_transaction import ClientTransaction
from bridge.sip.headers import ParseError, parse_uri
from bridge.sip.message import Response
from bridge.sip.timers import NO_TIMER, TimerQueue

log = logging.getLogger("bridge.led")

Address = tuple[str, int]
# Parameters Asterisk adds to a contact's URI for itself (rewrite_contact's x-ast-orig-host,
# symmetric transport's x-ast-txp); it strips them from the requests it sends, and so do we.
_ASTERISK_PARAMS = re.compile(r";x-ast-[^;?>]*", re.IGNORECASE)
TRANSPORTS = ("udp", "tcp", "tls")
_DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}


class Destination(NamedTuple):
    """Where a MESSAGE goes: a contact's host, port and transport, and whose contact it is
    (``phone``, the AOR: over TCP/TLS the glue looks for that phone's open connection)."""

    host: str
    port: int
    transport: str = "udp"
    phone: str = ""


class _Transaction(ClientTransaction):
    """A MESSAGE in flight: the client transaction plus the lights it carries."""

    __slots__ = ("keys", "to")

    def __init__(self, branch: str, data: bytes, now: float, *, to: Destination,
                 keys: dict[int, KeyLight], t1: float, t2: float) -> None:  # fmt: skip
        # Over TCP/TLS the stream delivers it: no retransmissions, Timer F alone (RFC 3261).
        super().__init__(branch, data, now, t1, t2, to.transport != "udp", 64 * t1)
        self.to = to
        self.keys = keys


@dataclass(eq=False, slots=True)
class Phone:
    """What the bridge wants one phone (a PJSIP AOR) to show, and where it can reach it."""

    aor: str
    wanted: dict[int, KeyLight] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)  # by the contact's URI
    warned: bool = False  # "no contact" was logged at warning level once
    # One Call-ID and From tag for all the phone's MESSAGEs, CSeq counting across its
    # contacts: a phone back on a new contact sees the same sender going on.
    cseq: int = 0
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def reachable(self) -> bool:
        """Whether Asterisk knows a contact of this phone to send its lights to."""
        return bool(self.contacts)


@dataclass(eq=False, slots=True)
class Contact:
    """One place a phone is reached (a registration or a static ``contact=``), told every light
    on its own with its own MESSAGE transactions."""

    phone: Phone
    uri: str  # as Asterisk names the contact
    target: str  # Request-URI of our MESSAGEs: the URI without Asterisk's x-ast-* parameters
    address: Address
    transport: str = "udp"  # the URI's: transport=tcp/tls, or tls for a sips: URI
    confirmed: dict[int, KeyLight] = field(default_factory=dict)
    in_flight: _Transaction | None = None
    failures: int = 0
    retry_at: float = 0.0
    listed: bool = True  # named since the last resync started; not: gone from Asterisk
    timer_seq: int = field(default=NO_TIMER, repr=False)  # see TimerQueue


class LedController:
    """Keeps every ruled key on every phone lit as Asterisk says."""

    def __init__(
        self,
        rules: Iterable[LedRule],
        *,
        domain: str,
        local: Callable[[str, str], Address],
        user_agent: str = "snom-blf-bridge",
        t1: float = 0.5,
        t2: float = 4.0,
        retry_min: float = 5.0,
        retry_max: float = 300.0,
    ) -> None:
        self.rules = list(rules)
        self.domain = domain
        self._local = local  # our address towards a phone's host over a transport (Via)
        self._user_agent = user_agent
        self._t1, self._t2 = t1, t2
        self._retry = (retry_min, retry_max)
        self.phones: dict[str, Phone] = {}
        self._by_device: dict[str, list[LedRule]] = {}
        self._by_hint: dict[str, list[LedRule]] = {}
        for rule in self.rules:
            phone = self.phones.setdefault(rule.phone, Phone(rule.phone))
            phone.wanted[rule.key] = rule.light("unknown")
            if rule.device:
                self._by_device.setdefault(rule.device.lower(), []).append(rule)
            if rule.hint:
                self._by_hint.setdefault(rule.hint, []).append(rule)
        self._by_branch: dict[str, Contact] = {}
        self._timers: TimerQueue[Contact] = TimerQueue()
        self._out: list[tuple[bytes, Destination]] = []
        self._branches = itertools.count(1)
        self._branch_prefix = f"z9hG4bK{secrets.token_hex(4)}.led."
        # Between sync_started and sync_finished: contacts listed are sent to once the listing
        # is complete (a contact the AOR lists may turn out unreachable in the next list).
        self._syncing = False

    # ----------------------------------------------------------------- inputs

    def device_state(self, device: str, state: str, now: float) -> None:
        """A device's state (DeviceStateChange), e.g. ``Custom:DND201`` → ``INUSE``."""
        for rule in self._by_device.get(device.lower(), ()):
            self._want(rule, rule.light(state), now)

    def hint_state(self, exten: str, status: int, now: float) -> None:
        """An extension's hint state (ExtensionStatus numbers)."""
        for rule in self._by_hint.get(exten, ()):
            self._want(rule, rule.light(HINT_STATES.get(status, "unknown")), now)

    def contact(
        self,
        aor: str,
        uri: str,
        now: float,
        *,
        reachable: bool = True,
        endpoint: str = "",
        listed: bool = False,
    ) -> None:
        """A contact of a phone appeared, changed (``listed``: named again by a resync) or went
        (``reachable`` False: removed or unreachable). The phone is found by its AOR, else by
        its endpoint's name."""
        phone = self.phones.get(aor) or self.phones.get(endpoint)
        uri = uri.strip().strip("<>")
        if phone is None or not uri:
            return
        known = phone.contacts.get(uri)
        if not reachable:
            if known is not None:
                self._drop(known, "unreachable or unregistered")
                self._report_unreachable(phone)
            return
        if known is not None:
            known.listed = True
            if listed:
                return  # nothing new: it has what it confirmed
            # Registered again: maybe a rebooted phone, so everything is sent again, at once.
            self._abandon(known)
            known.confirmed.clear()
            known.failures, known.retry_at = 0, 0.0
            self._pump(known, now)
            return
        target = _ASTERISK_PARAMS.sub("", uri)
        found = _address(target)
        if found is None:
            return
        address, transport = found
        added = phone.contacts[uri] = Contact(phone, uri, target, address, transport)
        log.info("phone %s is at %s (%s %s:%d); %d lights to send", phone.aor, uri,
                 transport.upper(), *address, len(phone.wanted))  # fmt: skip
        if not self._syncing:
            self._pump(added, now)

    def sync_started(self) -> None:
        """Asterisk is about to list every contact again (a resync)."""
        self._syncing = True
        for phone in self.phones.values():
            for contact in phone.contacts.values():
                contact.listed = False

    def sync_finished(self, now: float) -> None:
        """The resync is over: contacts it did not name are gone, the others get what they
        lack; phones left without any are logged (at warning level the first time)."""
        self._syncing = False
        for phone in self.phones.values():
            for contact in [c for c in phone.contacts.values() if not c.listed]:
                self._drop(contact, "no longer known to Asterisk")
            for contact in phone.contacts.values():
                self._pump(contact, now)
            self._report_unreachable(phone)

    def receive_response(self, response: Response, now: float) -> bool:
        """A response to one of our MESSAGEs; False when it is not ours."""
        try:
            branch = response.vias()[0].branch or ""
        except ParseError:
            return False
        contact = self._by_branch.get(branch)
        if contact is None or contact.in_flight is None or contact.in_flight.branch != branch:
            return branch.startswith(self._branch_prefix)  # ours, but already finished
        if response.status < 200:
            contact.in_flight.provisional()
            return True
        tx = contact.in_flight
        self._abandon(contact)
        if response.status < 300:
            contact.confirmed.update(tx.keys)
            contact.failures = 0
        else:
            self._failed(contact, now, f"answered {response.status} {response.reason}")
        self._pump(contact, now)
        return True

    # ----------------------------------------------------------------- outputs and timers

    def outgoing(self) -> list[tuple[bytes, Destination]]:
        """Take the messages to send, each with where it goes."""
        out, self._out = self._out, []
        return out

    @property
    def has_outgoing(self) -> bool:
        """Whether ``outgoing()`` has anything."""
        return bool(self._out)

    def next_timer(self) -> float | None:
        """When ``handle_timer()`` next has work."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Retransmit, give up on silent contacts, retry the ones that failed."""
        while (contact := self._timers.pop_due(now)) is not None:
            tx = contact.in_flight
            if tx is None:
                self._pump(contact, now)  # a retry is due
            elif tx.fire(now):
                self._abandon(contact)
                self._failed(contact, now, "did not answer")
                self._pump(contact, now)
            else:
                self._out.append((tx.data, tx.to))
                self._timers.schedule(contact, tx.due_at)

    # ----------------------------------------------------------------- internals

    def _want(self, rule: LedRule, light: KeyLight, now: float) -> None:
        phone = self.phones[rule.phone]
        if phone.wanted.get(rule.key) != light:
            phone.wanted[rule.key] = light
            for contact in phone.contacts.values():
                self._pump(contact, now)

    def _drop(self, contact: Contact, why: str) -> None:
        phone = contact.phone
        if phone.contacts.get(contact.uri) is not contact:
            return
        self._abandon(contact)
        del phone.contacts[contact.uri]
        log.info("phone %s: contact %s is %s", phone.aor, contact.uri, why)

    def _report_unreachable(self, phone: Phone) -> None:
        if phone.reachable:
            return
        keys = ", ".join(str(k) for k in sorted(phone.wanted))
        level = logging.INFO if phone.warned else logging.WARNING
        phone.warned = True
        log.log(level, "led: phone %s has no contact Asterisk knows of (not registered, no "
                "static contact=): its keys %s cannot be lit until it registers", phone.aor,
                keys)  # fmt: skip

    def _pump(self, contact: Contact, now: float) -> None:
        """Send what the contact has not confirmed yet, if it can be sent now."""
        if contact.in_flight is not None or contact.retry_at > now:
            return
        wanted = contact.phone.wanted
        pending = {k: v for k, v in wanted.items() if contact.confirmed.get(k) != v}
        if not pending:
            return
        contact.phone.cseq += 1
        branch = f"{self._branch_prefix}{next(self._branches):x}"
        data = self._message(contact, branch, pending.values())
        to = Destination(*contact.address, contact.transport, contact.phone.aor)
        tx = _Transaction(branch, data, now, to=to, keys=pending, t1=self._t1,
                          t2=self._t2)  # fmt: skip
        contact.in_flight = tx
        self._by_branch[branch] = contact
        self._out.append((data, tx.to))
        self._timers.schedule(contact, tx.due_at)

    def _abandon(self, contact: Contact) -> None:
        if contact.in_flight is not None:
            self._by_branch.pop(contact.in_flight.branch, None)
            contact.in_flight = None
        self._timers.cancel(contact)

    def _failed(self, contact: Contact, now: float, why: str) -> None:
        contact.failures += 1
        low, high = self._retry
        delay = min(high, low * 2 ** min(contact.failures - 1, 20))
        contact.retry_at = now + delay
        self._timers.schedule(contact, contact.retry_at)
        level = logging.WARNING if contact.failures == 1 else logging.DEBUG
        log.log(level, "phone %s at %s %s; trying again in %g s", contact.phone.aor,
                contact.uri, why, delay)  # fmt: skip

    def _message(self, contact: Contact, branch: str, keys: Iterable[KeyLight]) -> bytes:
        host, port = self._local(contact.address[0], contact.transport)
        payload, phone = body(keys), contact.phone
        lines = [
            f"MESSAGE {contact.target} SIP/2.0",
            f"Via: SIP/2.0/{contact.transport.upper()} {_bracketed(host)}:{port}"
            f";branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:snom-blf-bridge@{self.domain}>;tag={phone.from_tag}",
            f"To: <sip:{phone.aor}@{self.domain}>",
            f"Call-ID: {phone.call_id}",
            f"CSeq: {phone.cseq} MESSAGE",
            f"User-Agent: {self._user_agent}",
            f"Content-Type: {CONTENT_TYPE}",
            f"Content-Length: {len(payload)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _address(uri: str) -> tuple[Address, str] | None:
    """A contact's host and port, and the transport its URI names (Asterisk's choice too)."""
    try:
        parsed = parse_uri(uri)
    except ParseError:
        log.warning("cannot send to the contact %r: not a SIP URI", uri)
        return None
    if not parsed.host:
        return None
    named = (parsed.param("transport") or "").lower()
    transport = named or ("tls" if parsed.scheme == "sips" else "udp")
    if transport not in TRANSPORTS:
        log.warning("cannot send to the contact %r: the bridge speaks no %s", uri, transport)
        return None
    return (parsed.host.strip("[]"), parsed.port or _DEFAULT_PORT[transport]), transport


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
