"""SIP digest authentication for SUBSCRIBE (RFC 3261 §22, RFC 7616 / RFC 8760), sans-I/O.

The algorithms offered and their order are a setting (``security.digest_algorithms``), always
with ``qop=auth``. The default offers MD5 first and SHA-256 second: a client that reads only the
first challenge and knows only MD5 (SIPp does exactly that) can answer, and a client that knows
only SHA-256 finds it. Which one a Snom in the field picks has not been seen on a wire; RFC 7616
§3.7 tells clients to take the first they support, so with MD5 first they use MD5. Only the
offered algorithms are accepted. The ``uri`` of an answer must be the Request-URI of the request
it comes with (RFC 7616 §3.4.6), or name this bridge (``also``, see ``bridge.sip.access``): a
client signs ``sip:<host>:<port>`` (SIPp), a proxy rewrites the Request-URI after the phone
signed it; an answer for another resource (another user part) still cannot open this one.
Nonces carry their own time stamp, a random part and an HMAC over both and the
phone's address, so they need no table to be checked; only the nonce counts seen are kept, to
refuse a replayed answer. A nonce expires after ``nonce_lifetime`` seconds (the phone is then
challenged again with ``stale=true`` and answers without asking its user).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "DigestAuthenticator",
    "Outcome",
    "Verdict",
    "answer",
    "parse_credentials",
]

_ALGORITHMS = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}
WRONG_URI_REASON = "Authorization uri names neither the Request-URI nor this bridge"
ALGORITHMS = tuple(_ALGORITHMS)  # the names security.digest_algorithms may list
DEFAULT_ALGORITHMS = ("MD5", "SHA-256")
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*(?:,|$)')
_MAX_COUNTED = 65536  # nonces whose counts are remembered (oldest forgotten first)


class Verdict(Enum):
    """What an Authorization header is worth."""

    MISSING = "missing"  # no (usable) credentials: challenge
    STALE = "stale"  # right password, old nonce: challenge with stale=true
    OK = "ok"
    FORBIDDEN = "forbidden"  # wrong user or password, or a replayed answer: 403
    WRONG_URI = "wrong-uri"  # the answer is for another Request-URI: 400 (RFC 7616 §3.4.6)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict and, when OK, who the phone is (the digest user name)."""

    verdict: Verdict
    user: str = ""
    reason: str = ""


def parse_credentials(value: str) -> dict[str, str] | None:
    """The parameters of ``Digest k=v, k="v", …`` (names lower-cased), or None."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        quoted, bare = m.group(2), m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        pos = m.end()
    return params


class DigestAuthenticator:
    """Issues challenges and checks answers against a user → password table."""

    def __init__(
        self,
        realm: str,
        users: dict[str, str],
        *,
        nonce_lifetime: float = 300.0,
        key: bytes | None = None,
        algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
    ) -> None:
        if not algorithms or any(a not in _ALGORITHMS for a in algorithms):
            raise ValueError(f"algorithms: a non-empty list of {', '.join(_ALGORITHMS)}")
        self.realm = realm
        self.algorithms = algorithms
        self._users = users
        self._lifetime = nonce_lifetime
        self._key = key or secrets.token_bytes(32)
        self._counts: OrderedDict[str, int] = OrderedDict()  # nonce → highest nc accepted

    def set_users(self, users: dict[str, str]) -> None:
        """Take over a new credentials table (on reload)."""
        self._users = users

    def knows(self, user: str) -> bool:
        """Whether the user is in the credentials table."""
        return user in self._users

    def challenges(self, host: str, now: float, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values, one per algorithm, in the configured order."""
        nonce = self._nonce(host, now)
        extra = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={name}, qop="auth"{extra}'
            for name in self.algorithms
        ]

    def check(
        self,
        authorization: str | None,
        method: str,
        host: str,
        now: float,
        uri: str | None = None,
        *,
        also: Callable[[str], bool] | None = None,
    ) -> Outcome:
        """Judge one request's Authorization header (``host``: where it came from; ``uri``: its
        Request-URI, which the answer's ``uri`` must equal, unless ``also`` accepts it)."""
        if authorization is None:
            return Outcome(Verdict.MISSING)
        p = parse_credentials(authorization)
        if p is None:
            return Outcome(Verdict.MISSING, reason="not a Digest answer")
        algorithm = p.get("algorithm", "MD5").upper()
        needed = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        if algorithm not in self.algorithms or any(k not in p for k in needed):
            return Outcome(Verdict.MISSING, reason="incomplete or unsupported Digest answer")
        if p["realm"] != self.realm or p["qop"].lower() != "auth":
            return Outcome(Verdict.MISSING, reason="answer for another realm or qop")
        issued = self._issued(p["nonce"], host)
        if issued is None:
            return Outcome(Verdict.MISSING, reason="nonce not issued to this address")
        if uri is not None and p["uri"] != uri and (also is None or not also(p["uri"])):
            return Outcome(Verdict.WRONG_URI, p["username"], WRONG_URI_REASON)
        user, password = p["username"], self._users.get(p["username"])
        expected = _response(algorithm, (user, self.realm, password or ""), method, p)
        if password is None or not hmac.compare_digest(expected, p["response"].lower()):
            return Outcome(Verdict.FORBIDDEN, user, "wrong user name or password")
        if now - issued > self._lifetime:
            return Outcome(Verdict.STALE, user, "nonce expired")
        try:
            nc = int(p["nc"], 16)
        except ValueError:
            return Outcome(Verdict.FORBIDDEN, user, "nonce count is not a number")
        if nc <= self._counts.get(p["nonce"], 0):
            return Outcome(Verdict.FORBIDDEN, user, "replayed answer (nonce count reused)")
        self._counts[p["nonce"]] = nc
        self._counts.move_to_end(p["nonce"])
        while len(self._counts) > _MAX_COUNTED:
            self._counts.popitem(last=False)
        return Outcome(Verdict.OK, user)

    def _nonce(self, host: str, now: float) -> str:
        # A random part: phones behind one NAT share the address, and two of them challenged
        # within the same millisecond must not get the same nonce (the second one's nc=1
        # would be refused as a replay).
        stamp = f"{int(now * 1000):x}-{secrets.token_hex(4)}"
        return f"{stamp}.{self._mac(stamp, host)}"

    def _issued(self, nonce: str, host: str) -> float | None:
        stamp, _, mac = nonce.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(stamp, host)):
            return None
        try:
            return int(stamp.partition("-")[0], 16) / 1000
        except ValueError:
            return None

    def _mac(self, stamp: str, host: str) -> str:
        return hmac.new(self._key, f"{stamp}|{host}".encode(), hashlib.sha256).hexdigest()[:32]


def _response(algorithm: str, account: tuple[str, str, str], method: str, p: dict[str, str]) -> str:
    """The expected ``response`` for (user, realm, password) answering with parameters ``p``."""

    def h(text: str) -> str:
        return _ALGORITHMS[algorithm](text.encode()).hexdigest()

    ha1 = h(":".join(account))
    ha2 = h(f"{method}:{p['uri']}")
    return h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")


def answer(  # used by the tests and the soak tools to play an authenticating phone
    challenge: str, user: str, password: str, method: str, uri: str, *, nc: int = 1
) -> str:
    """The Authorization value a phone sends for one challenge."""
    p = parse_credentials(challenge) or {}
    algorithm = p.get("algorithm", "MD5").upper()
    fields = {"nonce": p.get("nonce", ""), "uri": uri, "nc": f"{nc:08x}",
              "cnonce": secrets.token_hex(8), "qop": "auth"}  # fmt: skip
    response = _response(algorithm, (user, p.get("realm", ""), password), method, fields)
    return (
        f'Digest username="{user}", realm="{p.get("realm", "")}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, '
        f'nc={fields["nc"]}, cnonce="{fields["cnonce"]}"'
    )
