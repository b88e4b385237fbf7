"""The live AMI stream read the way panoramisk reads it, at a fraction of the cost.

Pure: bytes in, header dicts out. panoramisk turns every message into a case-insensitive dict
of its own, which cost the bridge more than everything else together; the AMI adapter reads the
stream here and hands panoramisk only what it must see (answers to its actions, Shutdown).

What panoramisk does, and so what this does: messages end at a blank line ("\\r\\n\\r\\n"),
lines at "\\r\\n"; the text is UTF-8 with undecodable bytes dropped; a message is stripped, its
"Name: value" lines are headers (the name ends at the first ": ", the value is kept as it is) and
other lines are skipped, such as the banner ``Asterisk Call Manager/x.y`` that Asterisk puts on
top of the first message; a message with neither an Event nor a Response header is no message.
The first of a repeated header wins, as in the adapter before; of one name spelt in two cases
the later wins, as in panoramisk's dict. Header names come out in lower case.

Most messages of one kind carry the same headers in the same order (every Newstate of an
Asterisk has the same channel block), so each layout is learnt once as a regular expression
and later messages of that layout are read by one match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

_MESSAGE_END = b"\r\n\r\n"
# panoramisk takes the last line of these answers as their body, not as a header.
_HAS_BODY = ("Response: Follows", "Response: Fail")
# Headers panoramisk routes a message by: given twice, they turn into a list it trips over, so
# such a message means the stream is not AMI any more.
_ROUTING = ("event", "actionid", "commandid")
_LAYOUTS_PER_START = 8  # layouts learnt per first line ("Event: Newstate", "Response: Success")
_LAYOUTS = 512  # layouts learnt in all: a bound against a stream that keeps making up new ones

_Match = Callable[[str], "re.Match[str] | None"]


class MessageSplitter:
    """Cuts the AMI byte stream into messages at each blank line, whatever the reads."""

    def __init__(self) -> None:
        self._rest = bytearray()

    @property
    def pending(self) -> int:
        """Bytes read that do not end a message yet."""
        return len(self._rest)

    def feed(self, data: bytes) -> list[str]:
        """The messages ``data`` completes, in order, as stripped text for ``parse_message``."""
        rest = self._rest
        # Only the new bytes (and the three before them) can hold the end of a message.
        start = max(len(rest) - 3, 0)
        rest += data
        end = rest.rfind(_MESSAGE_END, start)
        if end < 0:
            return []
        # Decoded once the messages are whole, so a character cut by a read is not lost.
        text = rest[:end].decode("utf-8", "ignore")
        del rest[: end + 4]
        return [block.strip() for block in text.split("\r\n\r\n")]


class _Layouts:
    """The header layouts seen so far, by the message's first line."""

    def __init__(self) -> None:
        self.by_start: dict[str, list[tuple[_Match, tuple[str, ...]]]] = {}
        self.count = 0

    def learn(self, start: str, names: list[str], lower: tuple[str, ...]) -> None:
        known = self.by_start.setdefault(start, [])
        if len(known) >= _LAYOUTS_PER_START or self.count >= _LAYOUTS:
            return
        # Every value runs to its line's end; a value holding a lone CR or LF does not match
        # and is read line by line, as it must be.
        pattern = "\r\n".join(f"{re.escape(name)}: ([^\r\n]*)" for name in names)
        known.append((re.compile(pattern).fullmatch, lower))
        self.count += 1


_layouts = _Layouts()

# PJSIPShowResourceLists answers one "Event: ResourceListDetail" per list that names the list's
# own event package under a second "Event" header (every field of the object is written as
# pjsip.conf calls it). A repeated Event is otherwise a broken stream (see _ROUTING).
LIST_DETAIL = "Event: ResourceListDetail\r\n"
LIST_EVENT = "ListEvent"


def renamed_list_event(block: str) -> str:
    """A ResourceListDetail message with its list's event renamed ``ListEvent``, so that the
    message has one Event header like every other."""
    head, sep, rest = block.partition("\r\nEvent: ")
    return f"{head}\r\n{LIST_EVENT}: {rest}" if sep else block


def parse_message(block: str) -> dict[str, str] | None:
    """One message from ``MessageSplitter`` as headers named in lower case (rules in the
    module docstring); None for text that is no message. Raises ValueError for a message with
    two Event, ActionID or CommandID headers."""
    end = block.find("\r\n")
    start = block if end < 0 else block[:end]
    for match, names in _layouts.by_start.get(start, ()):
        if (found := match(block)) is not None:
            return dict(zip(names, found.groups(), strict=True))
    lines = block.split("\r\n")
    if block.startswith(_HAS_BODY):
        return _parse_slowly(lines)
    try:
        exact = dict([line.split(": ", 1) for line in lines])
    except ValueError:  # a line without ": ", such as the banner on the first message
        return _parse_slowly(lines)
    # Anything unusual (a repeated header, a name in two cases, a quoted Result) is left to
    # the slow path; what is left is a layout worth learning.
    if len(exact) != len(lines) or ("Event" not in exact and "Response" not in exact):
        return _parse_slowly(lines)
    lower = tuple(name.lower() for name in exact)
    headers = dict(zip(lower, exact.values(), strict=True))
    if len(headers) != len(exact) or "result" in headers:
        return _parse_slowly(lines)
    _layouts.learn(start, list(exact), lower)
    return headers


def _parse_slowly(lines: list[str]) -> dict[str, str] | None:
    if lines[0].startswith(_HAS_BODY):
        body = lines.pop()
        while not body and lines:
            body = lines.pop()
    exact: dict[str, str] = {}
    twice: set[str] = set()
    for line in lines:
        name, colon, value = line.partition(": ")
        if not colon:
            continue
        if name not in exact:
            exact[name] = unquote(value).strip() if name.lower() == "result" else value
        else:
            twice.add(name)
    if "Event" not in exact and "Response" not in exact:
        return None
    spelling = {name.lower(): name for name in exact}  # the later spelling wins
    for lower in _ROUTING:
        if spelling.get(lower) in twice:
            raise ValueError(f"{spelling[lower]} twice in one AMI message")
    return {lower: exact[name] for lower, name in spelling.items()}
