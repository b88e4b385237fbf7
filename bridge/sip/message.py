"""SIP message model, parser and serializer (RFC 3261 §7, §18.3, §20), sans-I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from bridge.sip.headers import (
    CSeq,
    EventHeader,
    NameAddr,
    ParseError,
    SipUri,
    Via,
    parse_cseq,
    parse_delta_seconds,
    parse_event,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
    via_branch,
)

__all__ = [
    "REASONS",
    "Headers",
    "Message",
    "MessageTooLarge",
    "ParseError",
    "Request",
    "Response",
    "StreamFramer",
    "build_response",
    "parse_message",
]

# RFC 3261 §7.3.3 compact forms (plus the event-related ones from RFC 6665/3515/4028).
_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "e": "content-encoding", "o": "event", "s": "subject",
    "u": "allow-events", "r": "refer-to", "b": "referred-by", "x": "session-expires",
}  # fmt: skip
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type",
        "Supported", "Content-Encoding", "Event", "Subject", "Allow-Events", "Refer-To",
        "Referred-By", "Session-Expires", "Max-Forwards", "Expires", "Min-Expires", "Accept",
        "Allow", "Require", "Unsupported", "Route", "Record-Route", "Subscription-State",
        "User-Agent", "Server", "WWW-Authenticate", "Retry-After", "MIME-Version",
    )
}  # fmt: skip
REASONS = {
    100: "Trying", 200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 413: "Request Entity Too Large",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout",
    420: "Bad Extension", 423: "Interval Too Brief", 481: "Call/Transaction Does Not Exist",
    489: "Bad Event", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable",
}  # fmt: skip

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)", re.I)
_REQUEST_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/2\.0", re.I)


T = TypeVar("T")


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = _COMPACT.get(key, key) if len(key) == 1 else key
        if len(_KEYS) < _MAX_NAMES:
            _KEYS[name] = key
    return key


# Header names seen in well-formed lines → (lookup key, name as stored). Phones use a handful of
# names, so the parser checks and normalizes each only once; bounded against a flood of made-up
# names (those are then simply checked every time).
_NAMES: dict[str, tuple[str, str]] = {}
_MAX_NAMES = 1024
_KEYS: dict[str, str] = {}  # header name as asked for → its lookup key (same bound)


class Headers:
    """Ordered header fields; lookups ignore case and understand compact forms (`i` = Call-ID)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (lookup key, name as written, value)
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a field; a compact name is stored under its full name."""
        key = _key(name)
        self._items.append((key, _CANONICAL.get(key, name), value))

    def get(self, name: str) -> str | None:
        """The first value of a field, or None."""
        key = _key(name)
        for k, _, value in self._items:
            if k == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a field, in order (a comma-joined line counts as one value)."""
        key = _key(name)
        return [value for k, _, value in self._items if k == key]

    def set(self, name: str, value: str) -> None:
        """Replace every value of a field with one."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Drop every value of a field."""
        key = _key(name)
        self._items = [item for item in self._items if item[0] != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._items)

    def __len__(self) -> int:
        return len(self._items)


class Message:
    """Common part of requests and responses: headers, body and typed header accessors."""

    __slots__ = ("body", "headers")

    def __init__(
        self, headers: Headers | Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    @staticmethod
    def _parse(name: str, parse: Callable[[str], T], value: str) -> T:
        """Errors name the field ("bad Contact: ...") so a 400 can say what is wrong."""
        try:
            return parse(value)
        except ParseError as exc:
            reason = exc.reason if name in exc.reason else f"bad {name}: {exc.reason}"
            raise ParseError(reason) from None

    def _optional(self, name: str, parse: Callable[[str], T]) -> T | None:
        value = self.headers.get(name)
        return None if value is None else self._parse(name, parse, value)

    def _required(self, name: str, parse: Callable[[str], T]) -> T:
        value = self.headers.get(name)
        if value is None or not value.strip():
            raise ParseError(f"missing {name}")
        return self._parse(name, parse, value)

    def call_id(self) -> str:
        """Call-ID (required)."""
        return self._required("Call-ID", str.strip)

    def cseq(self) -> CSeq:
        """CSeq (required)."""
        return self._required("CSeq", parse_cseq)

    def vias(self) -> list[Via]:
        """Every Via, topmost first (at least one required)."""
        values = self.headers.get_all("Via")
        if not values:
            raise ParseError("missing Via")
        return [via for value in values for via in self._parse("Via", parse_via, value)]

    def from_addr(self) -> NameAddr:
        """From (required)."""
        return self._required("From", parse_name_addr)

    def to_addr(self) -> NameAddr:
        """To (required)."""
        return self._required("To", parse_name_addr)

    def contact(self) -> NameAddr | None:
        """First Contact, or None when absent."""
        values = self.list_values("Contact")
        return self._parse("Contact", parse_name_addr, values[0]) if values else None

    def expires(self) -> int | None:
        """Expires in seconds, or None when absent."""
        return self._optional("Expires", lambda v: parse_delta_seconds(v, "Expires"))

    def event(self) -> EventHeader | None:
        """Event, or None when absent."""
        return self._optional("Event", parse_event)

    def list_values(self, name: str) -> list[str]:
        """A list-valued field (Accept, Allow, Require, ...) split into its items."""
        return [p for v in self.headers.get_all(name) for p in self._parse(name, split_list, v)]

    def _serialize(self, start: str) -> bytes:
        lines = [start]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(lines).encode() + self.body


class Request(Message):
    """A SIP request."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def request_uri(self) -> SipUri:
        """The parsed Request-URI."""
        return self._parse("Request-URI", parse_uri, self.uri)

    def to_bytes(self) -> bytes:
        """Wire form; Content-Length is always written from the body."""
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def to_bytes(self) -> bytes:
        """Wire form; Content-Length is always written from the body."""
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _parse_head(head: bytes) -> Request | Response:
    """Parse start line and headers (no body). Errors after a request line carry the request.

    A plain head (UTF-8, CRLF line ends, no control character, no continuation line, every
    header line well-formed: nearly every message) is read in one pass; anything else goes to
    the careful line-by-line reader, which also words the error.
    """
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return _parse_head_carefully(head)
    message = _parse_plain_head(text)
    return message if message is not None else _parse_head_carefully(head)


def _parse_plain_head(text: str) -> Request | Response | None:
    """The one-pass reader of ``_parse_head``; None when the head is not plain after all.

    Plain: every line printable (so no control character, no stray CR or LF; a tab or an odd
    Unicode character sends the head to the careful reader, which is exact, only slower) and
    none a continuation line.
    """
    lines = text.split("\r\n")
    start = lines[0]
    if not start.isprintable():
        return None
    message: Request | Response
    if m := _STATUS_RE.fullmatch(start):
        message = Response(int(m.group(1)), m.group(2))
    elif m := _REQUEST_RE.fullmatch(start):
        message = Request(m.group(1), m.group(2))
    else:
        return None
    items = message.headers._items
    names = _NAMES
    for line in lines[1:]:
        if not line.isprintable() or line[:1] == " ":
            return None
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None:
            bare = name.rstrip(" \t")
            if not colon or _TOKEN_RE.fullmatch(bare) is None:
                return None
            key = _key(bare)
            known = (key, _CANONICAL.get(key, bare))
            if len(names) < _MAX_NAMES:
                names[name] = known
        elif not colon:
            return None
        items.append((known[0], known[1], value.strip(" \t")))
    return message


def _parse_head_carefully(head: bytes) -> Request | Response:
    """Line by line, for heads that are not plain: continuation lines, stray control characters,
    bad UTF-8 or malformed lines (the first problem is reported, the rest still read)."""
    lines = head.split(b"\n")
    try:
        start = lines[0].rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("start line is not UTF-8") from None
    message: Request | Response
    if m := _STATUS_RE.fullmatch(start):
        message = Response(int(m.group(1)), m.group(2))
        partial = None
    elif m := _REQUEST_RE.fullmatch(start):
        message = Request(m.group(1), m.group(2))  # methods are case-sensitive (§7.1)
        partial = message
    else:
        raise ParseError("bad start line")
    if _CONTROL_RE.search(start):
        raise ParseError("control character in start line", partial)
    # Unfold continuation lines first (RFC 3261 §7.3.1), then read each field;
    # on a bad field keep reading so a 400 can still copy Via, From, To, ...
    fields: list[str] = []
    error: str | None = None
    for raw in lines[1:]:
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            error = error or "header is not UTF-8"
            continue
        if line[:1] in (" ", "\t"):
            if not fields:
                error = error or "continuation line without a header"
            else:
                fields[-1] += " " + line.strip()
        else:
            fields.append(line)
    for field in fields:
        name, colon, value = field.partition(":")
        name = name.rstrip(" \t")
        if not colon or _TOKEN_RE.fullmatch(name) is None:
            error = error or f"malformed header line {field[:30]!r}"
        elif _CONTROL_RE.search(value):
            error = error or f"control character in {name}"
        else:
            message.headers.add(name, value.strip(" \t"))
    if error is not None:
        raise ParseError(error, partial)
    return message


def _as_request(message: Message) -> Request | None:
    return message if isinstance(message, Request) else None


def _content_length(message: Message) -> int | None:
    values = {v.strip() for v in message.headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise ParseError("conflicting Content-Length", _as_request(message))
    try:
        return parse_delta_seconds(values.pop(), "Content-Length")
    except ParseError as exc:
        exc.request = _as_request(message)
        raise


def _head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Index of the empty line ending the headers and the index of the body (-1, -1 if none)."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    return (crlf, crlf + 4) if crlf >= 0 else (-1, -1)


def parse_message(data: bytes) -> Request | Response:
    """Parse one datagram. Content-Length is optional here, and bytes past it are ignored."""
    offset = 0
    if data[:1] in (b"\r", b"\n"):  # RFC 3261 §7.5: skip leading empty lines
        offset = len(data) - len(data.lstrip(b"\r\n"))
    end, body_start = _head_end(data, offset)
    if end < 0:
        head = _parse_head(data[offset:].rstrip(b"\r\n"))  # a more precise error if it has one
        raise ParseError("no empty line after the headers", _as_request(head))
    message = _parse_head(data[offset:end])
    length = _content_length(message)
    body = data[body_start:]
    if length is not None:
        if length > len(body):
            raise ParseError("body shorter than Content-Length", _as_request(message))
        body = body[:length]
    message.body = bytes(body)
    return message


def response_ids(data: bytes) -> tuple[int, str | None, str] | None:
    """(status, top Via branch, CSeq method) of a datagram that is a plain, well-formed response,
    read without building a message; None for anything else, which ``parse_message`` then reads
    in full (so a response is accepted or refused exactly as ``parse_message`` + ``vias()`` +
    ``cseq()`` would: this is only the quick way to the same answer for the 200s to NOTIFYs).
    """
    if data[:1] in (b"", b"\r", b"\n"):
        return None
    end, body_start = _head_end(data)
    if end < 0:
        return None
    try:
        lines = data[:end].decode("utf-8").split("\r\n")
    except UnicodeDecodeError:
        return None
    start = lines[0]
    m = _STATUS_RE.fullmatch(start) if start.isprintable() else None
    if m is None:
        return None
    vias: list[str] = []
    cseq: str | None = None
    lengths: set[str] = set()
    names = _NAMES
    for line in lines[1:]:
        if not line.isprintable() or line[:1] == " ":
            return None
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None or not colon:
            return None  # a name not met yet (or no colon): the full reader decides
        key = known[0]
        if key == "via":
            vias.append(value.strip(" \t"))
        elif key == "cseq":
            if cseq is None:
                cseq = value.strip(" \t")
        elif key == "content-length":
            lengths.add(value.strip())
    if not vias or not cseq or not cseq.strip() or len(lengths) > 1:
        return None
    try:
        if lengths and parse_delta_seconds(lengths.pop(), "") > len(data) - body_start:
            return None
        branch = via_branch(vias[0])
        for value in vias[1:]:
            parse_via(value)
        number, _, method = cseq.partition(" ")
        if not (number.isascii() and number.isdigit() and len(number) <= 10
                and int(number) < 2**31 and method == "NOTIFY"):  # fmt: skip
            method = parse_cseq(cseq).method
    except ParseError:
        return None
    return int(m.group(1)), branch, method


class MessageTooLarge(ParseError):
    """A message on a stream is larger than the limit (answered 413, RFC 3261 §21.4.11)."""


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    After a ParseError the stream cannot be resynchronised: the caller should close it.
    """

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self.pings = 0  # RFC 5626 CRLFCRLF keep-alives seen; the caller answers each with CRLF
        self._buffer = bytearray()
        self._scanned = 0  # bytes of an unfinished head already searched for its end
        self._crlfs = 0
        self._head: tuple[int, int, Request | Response, int] | None = None
        self._error: ParseError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held (0 between messages)."""
        return len(self._buffer)

    def release(self) -> None:
        """Drop whatever is buffered, memory included (the connection is gone)."""
        self._buffer = bytearray()
        self._head = None
        self._scanned = 0

    def feed(self, data: bytes) -> list[Request | Response]:
        """Add received bytes; return every message now complete."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[Request | Response] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except ParseError as exc:
            self._error = exc
            self.release()
            raise
        if not self._buffer:
            # A bytearray keeps its largest size: hand a big message's memory back now.
            self._buffer = bytearray()
        return messages

    def _next(self) -> Request | Response | None:
        buf = self._buffer
        if self._head is None:
            while buf[:2] == b"\r\n":
                del buf[:2]
                self._crlfs += 1
                if self._crlfs == 2:
                    self.pings += 1
                    self._crlfs = 0
            if not buf or buf == b"\r":
                return None
            self._crlfs = 0
            # Search only what is new (less the 3 bytes an end split across reads may hide):
            # a head arriving a byte at a time must not be scanned again from its start.
            end, body_start = _head_end(buf, max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_size:
                    raise MessageTooLarge("headers exceed the size limit", _readable_part(buf))
                return None
            self._scanned = 0
            message = _parse_head(bytes(buf[:end]))
            length = _content_length(message)
            partial = _as_request(message)
            if length is None:
                raise ParseError("missing Content-Length on a stream", partial)
            if body_start + length > self.max_size:
                raise MessageTooLarge("message exceeds the size limit", partial)
            self._head = (end, body_start, message, length)
        _, body_start, message, length = self._head
        if len(buf) < body_start + length:
            return None
        message.body = bytes(buf[body_start : body_start + length])
        del buf[: body_start + length]
        self._head = None
        return message


def _readable_part(buf: bytearray) -> Request | None:
    """The request whose head is cut off by the size limit, read up to its last whole line,
    so the 413 can still be addressed (Via, From, To, Call-ID, CSeq come first in practice)."""
    cut = buf.rfind(b"\r\n")
    if cut <= 0:
        return None
    try:
        return _as_request(_parse_head(bytes(buf[:cut])))
    except ParseError as exc:
        return exc.request if isinstance(exc.request, Request) else None


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    source: tuple[str, int] | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response copying Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6.2).

    `to_tag` is added to To unless it already has one; `source` (host, port the request came
    from) stamps `received`/`rport` on the top Via (RFC 3261 §18.2.1, RFC 3581).
    """
    response = Response(status, reason or REASONS.get(status, "Unknown"))
    out = response.headers
    vias = request.list_values("Via")
    if vias and source is not None:
        vias[0] = str(parse_via(vias[0])[0].with_source(*source))
    for via in vias:
        out.add("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is not None and name == "To" and to_tag is not None and _tag_of(value) is None:
            value = f"{value};tag={to_tag}"
        if value is not None:
            out.add(name, value)
    for name, value in headers:
        out.add(name, value)
    response.body = body
    return response


def _tag_of(value: str) -> str | None:
    try:
        return parse_name_addr(value).tag
    except ParseError:
        return "?"  # unreadable To (answered with a 4xx): copy it as it is, add nothing
