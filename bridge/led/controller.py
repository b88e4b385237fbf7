"""Which phone must be told which lights, and the MESSAGE transactions that tell them; sans-I/O.

Feed it Asterisk state (device and hint states, where each phone is registered) and MESSAGE
responses, always with the current time; drain ``outgoing()``; call ``handle_timer()`` at
``next_timer()``. Per phone:

- the lights wanted and the lights the phone has confirmed (a 2xx); a MESSAGE carries every key
  that differs, so several changes make one MESSAGE;
- one MESSAGE in flight, retransmitted over UDP (T1 doubling to T2, given up after 64·T1);
- a phone that answers 4xx/5xx or does not answer is tried again after 5 s, 10 s, 20 s … up to
  5 minutes: never in a tight loop, and never holding up another phone;
- a (re-)registration, or the first contact after a restart of the bridge, sends every light
  again: a phone that rebooted is lit correctly without waiting for the next change.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge.led.buttons import CONTENT_TYPE, KeyLight, body
from bridge.led.rules import HINT_STATES, LedRule
from bridge.sip.headers import ParseError, parse_uri
from bridge.sip.message import Response
from bridge.sip.timers import NO_TIMER, TimerQueue

log = logging.getLogger("bridge.led")

Address = tuple[str, int]


@dataclass(eq=False, slots=True)
class _Transaction:
    branch: str
    data: bytes
    to: Address
    keys: dict[int, KeyLight]
    deadline: float
    interval: float


@dataclass(eq=False, slots=True)
class Phone:
    """What the bridge knows and wants of one phone."""

    aor: str
    uri: str = ""  # the registered contact, Request-URI of our MESSAGEs
    address: Address | None = None
    wanted: dict[int, KeyLight] = field(default_factory=dict)
    confirmed: dict[int, KeyLight] = field(default_factory=dict)
    in_flight: _Transaction | None = None
    failures: int = 0
    retry_at: float = 0.0
    cseq: int = 0
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    timer_seq: int = field(default=NO_TIMER, repr=False)  # see TimerQueue


class LedController:
    """Keeps every ruled key on every phone lit as Asterisk says."""

    def __init__(
        self,
        rules: Iterable[LedRule],
        *,
        domain: str,
        local: Callable[[str], Address],
        user_agent: str = "snom-blf-bridge",
        t1: float = 0.5,
        t2: float = 4.0,
        retry_min: float = 5.0,
        retry_max: float = 300.0,
    ) -> None:
        self.rules = list(rules)
        self.domain = domain
        self._local = local  # our address towards a phone's host (Via)
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
        self._by_branch: dict[str, Phone] = {}
        self._timers: TimerQueue[Phone] = TimerQueue()
        self._out: list[tuple[bytes, Address]] = []
        self._branches = itertools.count(1)
        self._branch_prefix = f"z9hG4bK{secrets.token_hex(4)}.led."

    # ----------------------------------------------------------------- inputs

    def device_state(self, device: str, state: str, now: float) -> None:
        """A device's state (DeviceStateChange), e.g. ``Custom:DND201`` → ``INUSE``."""
        for rule in self._by_device.get(device.lower(), ()):
            self._want(rule, rule.light(state), now)

    def hint_state(self, exten: str, status: int, now: float) -> None:
        """An extension's hint state (ExtensionStatus numbers)."""
        for rule in self._by_hint.get(exten, ()):
            self._want(rule, rule.light(HINT_STATES.get(status, "unknown")), now)

    def contact(self, aor: str, uri: str, now: float) -> None:
        """Where a phone is registered now (``uri`` empty: unregistered or unreachable)."""
        phone = self.phones.get(aor)
        if phone is None:
            return
        address = _address(uri) if uri else None
        if (uri, address) == (phone.uri, phone.address):
            return
        phone.uri, phone.address = uri, address
        # A new registration may be a rebooted phone: everything is sent again, at once.
        phone.confirmed.clear()
        phone.failures, phone.retry_at = 0, 0.0
        self._abandon(phone)
        if address is not None:
            log.info("phone %s is at %s:%d; sending its %d lights", aor, *address,
                     len(phone.wanted))  # fmt: skip
        self._pump(phone, now)

    def receive_response(self, response: Response, now: float) -> bool:
        """A response to one of our MESSAGEs; False when it is not ours."""
        try:
            branch = response.vias()[0].branch or ""
        except ParseError:
            return False
        phone = self._by_branch.get(branch)
        if phone is None or phone.in_flight is None or phone.in_flight.branch != branch:
            return branch.startswith(self._branch_prefix)  # ours, but already finished
        if response.status < 200:
            return True
        tx = phone.in_flight
        self._abandon(phone)
        if response.status < 300:
            phone.confirmed.update(tx.keys)
            phone.failures = 0
        else:
            self._failed(phone, now, f"answered {response.status} {response.reason}")
        self._pump(phone, now)
        return True

    # ----------------------------------------------------------------- outputs and timers

    def outgoing(self) -> list[tuple[bytes, Address]]:
        """Take the datagrams to send."""
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        """When ``handle_timer()`` next has work."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Retransmit, give up on silent phones, retry the ones that failed."""
        while (phone := self._timers.pop_due(now)) is not None:
            tx = phone.in_flight
            if tx is None:
                self._pump(phone, now)  # a retry is due
            elif now >= tx.deadline:
                self._abandon(phone)
                self._failed(phone, now, "did not answer")
                self._pump(phone, now)
            else:
                self._out.append((tx.data, tx.to))
                tx.interval = min(2 * tx.interval, self._t2)
                self._timers.schedule(phone, min(now + tx.interval, tx.deadline))

    # ----------------------------------------------------------------- internals

    def _want(self, rule: LedRule, light: KeyLight, now: float) -> None:
        phone = self.phones[rule.phone]
        if phone.wanted.get(rule.key) != light:
            phone.wanted[rule.key] = light
            self._pump(phone, now)

    def _pump(self, phone: Phone, now: float) -> None:
        """Send what the phone has not confirmed yet, if it can be sent now."""
        if phone.address is None or phone.in_flight is not None or phone.retry_at > now:
            return
        pending = {k: v for k, v in phone.wanted.items() if phone.confirmed.get(k) != v}
        if not pending:
            return
        phone.cseq += 1
        branch = f"{self._branch_prefix}{next(self._branches):x}"
        data = self._message(phone, branch, pending.values())
        tx = _Transaction(branch, data, phone.address, pending, now + 64 * self._t1, self._t1)
        phone.in_flight = tx
        self._by_branch[branch] = phone
        self._out.append((data, tx.to))
        self._timers.schedule(phone, now + tx.interval)

    def _abandon(self, phone: Phone) -> None:
        if phone.in_flight is not None:
            self._by_branch.pop(phone.in_flight.branch, None)
            phone.in_flight = None
        self._timers.cancel(phone)

    def _failed(self, phone: Phone, now: float, why: str) -> None:
        phone.failures += 1
        low, high = self._retry
        delay = min(high, low * 2 ** min(phone.failures - 1, 20))
        phone.retry_at = now + delay
        self._timers.schedule(phone, phone.retry_at)
        level = logging.WARNING if phone.failures == 1 else logging.DEBUG
        log.log(level, "phone %s %s; trying again in %g s", phone.aor, why, delay)

    def _message(self, phone: Phone, branch: str, keys: Iterable[KeyLight]) -> bytes:
        assert phone.address is not None
        host, port = self._local(phone.address[0])
        payload = body(keys)
        lines = [
            f"MESSAGE {phone.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
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


def _address(uri: str) -> Address | None:
    try:
        parsed = parse_uri(uri.strip().strip("<>"))
    except ParseError:
        log.warning("cannot send to the contact %r: not a SIP URI", uri)
        return None
    if not parsed.host:
        return None
    return parsed.host.strip("[]"), parsed.port or 5060
