"""Parsers for the SIP header values the bridge needs (RFC 3261 §20, §25): URIs, name-addr, Via.

Every parser here raises only ParseError, whatever the input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from urllib.parse import unquote

__all__ = [
    "CSeq",
    "EventHeader",
    "NameAddr",
    "ParseError",
    "SipUri",
    "Via",
    "parse_cseq",
    "parse_delta_seconds",
    "parse_event",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
    "via_branch",
]

Params = tuple[tuple[str, str | None], ...]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOST_RE = re.compile(r"[A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\]")
_VIA_RE = re.compile(rf"SIP\s*/\s*2\.0\s*/\s*({_TOKEN})\s+([^;\s]+)\s*(.*)", re.DOTALL | re.I)
_PLAIN_PARAMS_RE = re.compile(rf"(?:;{_TOKEN}(?:=[^;\s\"]+)?)+")
_PLAIN_VIA_RE = re.compile(
    rf"SIP/2\.0/({_TOKEN}) ([A-Za-z0-9\-.]+)(?::([0-9]{{1,5}}))?((?:;{_TOKEN}(?:=[^;\s\",<>]+)?)*)"
)
_SPACE_RE = re.compile(r"\s")
# URIs, name-addrs and Event values already parsed (the results are immutable): a SUBSCRIBE's
# From and To are read several times while it is screened, and a phone sends the same ones on
# every refresh. Failures are not kept: they raise again, with the same reason.
_PARSED = 4096
_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})\s+({_TOKEN})")
_MAX_DELTA = 2**32 - 1  # RFC 3261 §20.19: larger Expires values are taken as this


class ParseError(ValueError):
    """Malformed SIP input. `reason` says what is wrong; `request` is what could be read of it."""

    def __init__(self, reason: str, request: object | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Set by the message parser when a request line was readable, so a 400 can be answered.
        self.request = request


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _has_param(params: Params, name: str) -> bool:
    return any(key == name for key, _ in params)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quotes and <...>."""
    if '"' not in value:
        if "<" not in value:  # nothing can hide a comma: the common case
            return [part for part in map(str.strip, value.split(",")) if part]
        if "," not in value:  # one <uri> (a Contact): only an unclosed "<" is wrong
            if value.rfind("<") > value.rfind(">"):
                raise ParseError("unterminated quote or <...> in list")
            part = value.strip()
            return [part] if part else []
    parts: list[str] = []
    start = 0
    quoted = angle = escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
    if quoted or angle:
        raise ParseError("unterminated quote or <...> in list")
    parts.append(value[start:].strip())
    return [part for part in parts if part]


def _parse_params(text: str, what: str) -> Params:
    """Parse `;name=value;flag` (values may be quoted strings); names are lower-cased."""
    text = text.strip()
    if not text:
        return ()
    if _PLAIN_PARAMS_RE.fullmatch(text) is not None:  # no blank, no quote: split and done
        out: list[tuple[str, str | None]] = []
        for piece in text[1:].split(";"):
            key, eq, given = piece.partition("=")
            out.append((key.lower(), given if eq else None))
        return tuple(out)
    params: list[tuple[str, str | None]] = []
    while text:
        if text[0] != ";":
            raise ParseError(f"bad parameter in {what}")
        text = text[1:].lstrip()
        m = _TOKEN_RE.match(text)
        if m is None:
            raise ParseError(f"bad parameter name in {what}")
        name = m.group().lower()
        text = text[m.end() :].lstrip()
        value: str | None = None
        if text.startswith("="):
            text = text[1:].lstrip()
            if text.startswith('"'):
                value, text = _quoted(text, what)
            else:
                m = re.match(r"[^;\s]+", text)
                if m is None:
                    raise ParseError(f"empty value for {name} in {what}")
                value, text = m.group(), text[m.end() :]
            text = text.lstrip()
        params.append((name, value))
    return tuple(params)


def _quoted(text: str, what: str) -> tuple[str, str]:
    """Read a quoted-string at the start of text; return (unquoted, rest)."""
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), text[i + 1 :]
        else:
            out.append(ch)
            i += 1
    raise ParseError(f"unterminated quoted string in {what}")


def _host_port(text: str, what: str) -> tuple[str, int | None]:
    m = _HOST_RE.fullmatch(text) or _HOST_RE.match(text)
    if m is None:
        raise ParseError(f"bad host in {what}")
    host, rest = m.group(), text[m.end() :]
    if not rest:
        return host.lower(), None
    if (
        not rest.startswith(":")
        or not rest[1:].isascii()
        or not rest[1:].isdigit()
        or len(rest) > 6
    ):
        raise ParseError(f"bad port in {what}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise ParseError(f"port out of range in {what}")
    return host.lower(), port


@dataclass(frozen=True, slots=True)
class SipUri:
    """A parsed URI; user/host/port are only filled for sip: and sips: URIs."""

    raw: str
    scheme: str
    user: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (None when absent or a flag)."""
        return _param(self.params, name)


@functools.lru_cache(maxsize=_PARSED)
def parse_uri(text: str) -> SipUri:
    """Parse a Request-URI or the URI of a name-addr."""
    raw = text.strip()
    scheme, colon, rest = raw.partition(":")
    if (
        not colon
        or not rest
        or _SCHEME_RE.fullmatch(scheme) is None
        or _SPACE_RE.search(raw) is not None  # the same test as str.isspace(), in C
    ):
        raise ParseError(f"bad URI {raw[:40]!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return SipUri(raw, scheme)
    rest = rest.partition("?")[0]
    user: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        user = unquote(userinfo.partition(":")[0], errors="replace")
        if not user:
            raise ParseError("empty user part in URI")
    hostport, _, params = rest.partition(";")
    host, port = _host_port(hostport, "URI")
    return SipUri(
        raw, scheme, user, host, port, _parse_params(";" + params if params else "", "URI")
    )


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    raw: str
    display: str | None
    uri: SipUri
    params: Params = ()

    @property
    def tag(self) -> str | None:
        """The `tag` parameter (dialog identifier part), if any."""
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        """Value of a header parameter (None when absent or a flag)."""
        return _param(self.params, name)


@functools.lru_cache(maxsize=_PARSED)
def parse_name_addr(text: str) -> NameAddr:
    """Parse `"Name" <uri>;params`, `Name <uri>;params` or `uri;params`."""
    raw = text.strip()
    rest = raw
    display: str | None = None
    if rest.startswith('"'):
        display, rest = _quoted(rest, "name-addr")
        rest = rest.lstrip()
        if not rest.startswith("<"):
            raise ParseError("expected <URI> after display name")
    elif "<" in rest:
        display = rest[: rest.index("<")].strip() or None
        rest = rest[rest.index("<") :]
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            raise ParseError("missing '>' in name-addr")
        uri, params = rest[1:end], rest[end + 1 :]
    else:
        # addr-spec form: parameters after the URI belong to the header (RFC 3261 §20.10).
        uri, semi, params = rest.partition(";")
        params = semi + params
    if not uri:
        raise ParseError("empty URI in name-addr")
    return NameAddr(raw, display, parse_uri(uri), _parse_params(params, "name-addr"))


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: transport, sent-by and parameters (branch, rport, received)."""

    transport: str
    host: str
    port: int | None
    params: Params = ()

    @property
    def branch(self) -> str | None:
        """Transaction id (RFC 3261 §17.2.3); starts with z9hG4bK for RFC 3261 clients."""
        return _param(self.params, "branch")

    @property
    def rport(self) -> bool:
        """Whether the client asked for symmetric response routing (RFC 3581)."""
        return _has_param(self.params, "rport")

    @property
    def received(self) -> str | None:
        """The `received` parameter a server stamped onto this Via."""
        return _param(self.params, "received")

    def with_source(self, host: str, port: int) -> Via:
        """This Via as a server stamps it: `received` always, `rport` filled when asked for."""
        params = [(k, v) for k, v in self.params if k not in ("received", "rport")]
        params.append(("received", host))
        if self.rport:
            params.append(("rport", str(port)))
        return replace(self, params=tuple(params))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"SIP/2.0/{self.transport} {self.host}{port}{params}"


def parse_via(value: str) -> list[Via]:
    """Parse one Via header value (which may hold several comma-separated Vias)."""
    m = _PLAIN_VIA_RE.fullmatch(value)
    if m is not None:  # one Via, host name or IPv4, plain parameters: nearly every one
        port = None if m.group(3) is None else int(m.group(3))
        if port is None or 0 < port < 65536:
            params = _parse_params(m.group(4), "Via")
            return [Via(m.group(1).upper(), m.group(2).lower(), port, params)]
    vias = []
    for part in split_list(value):
        m = _VIA_RE.fullmatch(part)
        if m is None:
            raise ParseError("malformed Via")
        host, port = _host_port(m.group(2), "Via")
        vias.append(Via(m.group(1).upper(), host, port, _parse_params(m.group(3), "Via")))
    if not vias:
        raise ParseError("empty Via")
    return vias


def via_branch(value: str) -> str | None:
    """The branch of the first Via in one Via header value; raises ParseError exactly when
    ``parse_via(value)`` does (the quick way to the transaction a response belongs to)."""
    m = _PLAIN_VIA_RE.fullmatch(value)
    if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
        return parse_via(value)[0].branch
    # The pattern has checked the parameters already: splitting them is all that is left.
    for piece in m.group(4).split(";")[1:]:
        key, eq, given = piece.partition("=")
        if key.lower() == "branch":
            return given if eq else None
    return None


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq: sequence number and method."""

    seq: int
    method: str


def parse_cseq(value: str) -> CSeq:
    """Parse `1234 METHOD`."""
    m = _CSEQ_RE.fullmatch(value.strip())
    if m is None or int(m.group(1)) >= 2**31:
        raise ParseError("malformed CSeq")
    return CSeq(int(m.group(1)), m.group(2))


@dataclass(frozen=True, slots=True)
class EventHeader:
    """Event: package name and parameters (the `id` tells subscriptions in one dialog apart)."""

    package: str
    params: Params = ()

    @property
    def id(self) -> str | None:
        """The `id` parameter, if any."""
        return _param(self.params, "id")


@functools.lru_cache(maxsize=_PARSED)
def parse_event(value: str) -> EventHeader:
    """Parse `dialog;id=1`."""
    text = value.strip()
    m = _TOKEN_RE.match(text)
    if m is None:
        raise ParseError("malformed Event")
    return EventHeader(m.group(), _parse_params(text[m.end() :], "Event"))


def parse_delta_seconds(value: str, what: str) -> int:
    """Parse Expires-like delta-seconds; very large values are capped, not rejected."""
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"malformed {what}")
    # Cut before int(): huge digit strings are slow to convert (and raise past 4300 digits).
    return min(int(text.lstrip("0")[:11] or "0"), _MAX_DELTA)
