"""Who may talk to the notifier at all: address allow-list and per-source limits, sans-I/O.

Checked before anything else is parsed or computed, so a flood costs little. An address outside
the allow-list is never answered. A source over a limit is told once a second (503 with
Retry-After) and otherwise ignored. Every log line a request causes goes through the gate's
``LogLimiter`` (bridge.sip.log_limit), which the TCP/TLS connections share: a refusal is
logged once per source per minute, and all such lines together at most a few a second, so no
sender can flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.sip.headers import ParseError, parse_uri
from bridge.sip.log_limit import LogLimiter

__all__ = ["AccessLimits", "Admission", "BridgeNames", "SourceGate"]

log = logging.getLogger("bridge.sip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_SOURCES = 65536  # sources whose rate is tracked (the least recently seen forgotten first)


@dataclass(frozen=True, slots=True)
class AccessLimits:
    """Limits per source address and in total; 0 means no limit."""

    allow: tuple[Network, ...] = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    requests_per_second: float = 0.0  # sustained, per source
    burst: int = 50  # requests a source may send at once before the rate applies
    subscriptions_per_source: int = 0
    subscriptions_total: int = 0
    retry_after: int = 10


@dataclass(frozen=True, slots=True)
class BridgeNames:
    """What names this bridge in a digest answer's ``uri`` besides the Request-URI itself: its
    SIP domain(s) (``sip.domain``, each ``[[asterisk]]`` domain) and the hosts and ports it
    listens on, sip or sips, with or without a user part (which must then be the Request-URI's
    user, so an answer for one key never opens another; a refresh to our Contact has none).
    Pjsip compares no URI at all."""

    domains: frozenset[str] = frozenset()  # host or host:port, lower case
    hosts: frozenset[str] = frozenset()  # listening or Contact hosts, lower case, no brackets
    ports: frozenset[int] = frozenset()

    def named(self, text: str, request_user: str | None,
              here: tuple[str, int] | None = None) -> bool:  # fmt: skip
        """Whether the URI ``text`` names this bridge; ``here``: the local address the request
        came to (a wildcard listener's real address, a port bound at start)."""
        try:
            uri = parse_uri(text)
        except ParseError:
            return False
        if uri.scheme not in ("sip", "sips"):
            return False
        # A refresh goes to our Contact (no user): its dialog, not its URI, names the key.
        if uri.user is not None and request_user is not None and uri.user != request_user:
            return False
        host = uri.host.lower().strip("[]")
        where = host if uri.port is None else f"{host}:{uri.port}"
        if host in self.domains or where in self.domains:
            return True
        hosts, ports = self.hosts, self.ports
        if here is not None:
            hosts, ports = hosts | {here[0].lower().strip("[]")}, ports | {here[1]}
        return host in hosts and (uri.port is None or uri.port in ports)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    throttled: bool = False
    told: float = -1e18  # when it last got a 503
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """The gate's word on one request: pass, answer (status, headers), or drop silently."""

    status: int = 0  # 0: let it through
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


PASS = Admission()


@dataclass(slots=True)
class SourceGate:
    """Address allow-list and per-source token buckets."""

    limits: AccessLimits = field(default_factory=AccessLimits)
    logs: LogLimiter = field(default_factory=lambda: LogLimiter(log, burst=20.0))
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _told_full: OrderedDict[str, float] = field(default_factory=OrderedDict)  # see over_cap

    def admit(self, host: str, now: float) -> Admission:
        """Judge one request from ``host`` (well-formed or not: this comes first)."""
        if not self.allowed(host):
            # Silence: an answer would go to an address that may be forged.
            self.logs.log(logging.WARNING, ("allow", host), now,
                          "ignoring %s: not in security.allow", host)  # fmt: skip
            return Admission(drop=True)
        rate = self.limits.requests_per_second
        if rate <= 0:
            return PASS
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = _Bucket(float(self.limits.burst), now)
            while len(self._buckets) > _MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
            bucket.tokens = min(
                float(self.limits.burst), bucket.tokens + (now - bucket.stamp) * rate
            )
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            if bucket.throttled:
                bucket.throttled = False
                self.logs.log(logging.WARNING, ("unthrottled", host), now,
                              "%s is below the request limit again (%d requests ignored)",
                              host, bucket.dropped)  # fmt: skip
            return PASS
        if not bucket.throttled:
            bucket.throttled, bucket.dropped = True, 0
            self.logs.log(logging.WARNING, ("throttled", host), now,
                          "throttling %s: more than %g requests/s (security.requests_per_second)",
                          host, rate)  # fmt: skip
        if now - bucket.told >= 1.0:
            bucket.told = now
            return self.busy()
        bucket.dropped += 1
        return Admission(drop=True)

    def failed(self, host: str, now: float) -> Admission | None:
        """A failed authentication costs a source ten requests' worth of its allowance: a
        password guesser is throttled long before a phone with a typo would be. Returns the
        503 to answer instead of the 403 once the source is throttled."""
        bucket = self._buckets.get(host)
        if self.limits.requests_per_second <= 0 or bucket is None:
            return None
        bucket.tokens -= 10.0
        if bucket.tokens < 0:
            if not bucket.throttled:
                bucket.throttled, bucket.dropped = True, 0
                self.logs.log(logging.WARNING, ("throttled", host), now,
                              "throttling %s: repeated failed authentications", host)  # fmt: skip
            return self.busy()
        return None

    def over_cap(self, host: str, now: float) -> Admission:
        """A new subscription from ``host`` would pass security.max_subscriptions(_per_source):
        503 at most once a second per source, otherwise silence; logged once a minute."""
        self.logs.log(logging.WARNING, ("full", host), now, "refusing more subscriptions from "
                      "%s: security.max_subscriptions(_per_source) reached", host)  # fmt: skip
        told = self._told_full.get(host)
        if told is not None and now - told < 1.0:
            return Admission(drop=True)
        self._told_full[host] = now
        self._told_full.move_to_end(host)
        while len(self._told_full) > _MAX_SOURCES:
            self._told_full.popitem(last=False)
        return self.busy()

    def allowed(self, host: str) -> bool:
        """Whether the address is in the allow-list."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.limits.allow)

    def busy(self) -> Admission:
        """503 with the configured Retry-After."""
        return Admission(503, (("Retry-After", str(self.limits.retry_after)),))


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Limits on SIP over TCP and TLS (``sip.max_connections`` ...); 0 turns one off."""

    max_connections: int = 4096  # open connections in all, accepted and dialed
    max_connections_per_source: int = 32
    idle_timeout: float = 3700.0  # seconds without a byte between two messages
    # Seconds a message may take to arrive whole from its first byte; also the time a new
    # connection has for its TLS handshake and its first whole message.
    header_timeout: float = 10.0
