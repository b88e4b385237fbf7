"""Who may talk to the notifier at all: address allow-list and per-source limits, sans-I/O.

Checked before anything else is parsed or computed, so a flood costs little. A source over a
limit is told once a second (503 with Retry-After) and otherwise ignored; entering and leaving
that state is logged once, never per packet.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["AccessLimits", "Admission", "SourceGate"]

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
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _refused: set[str] = field(default_factory=set)  # outside the allow-list, logged once

    def admit(self, host: str, now: float) -> Admission:
        """Judge one request from ``host``."""
        if not self.allowed(host):
            if host not in self._refused and len(self._refused) < _MAX_SOURCES:
                self._refused.add(host)
                log.warning("refusing %s: not in security.allow", host)
            return Admission(403)
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
                log.warning("%s is below the request limit again (%d requests ignored)",
                            host, bucket.dropped)  # fmt: skip
            return PASS
        if not bucket.throttled:
            bucket.throttled, bucket.dropped = True, 0
            log.warning("throttling %s: more than %g requests/s (security.requests_per_second)",
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
                log.warning("throttling %s: repeated failed authentications", host)
            return self.busy()
        return None

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
