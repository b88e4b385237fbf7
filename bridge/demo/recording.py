"""The recordings of a real Asterisk, as the replayed servers (and the tests) read them.

A scenario folder holds what one Asterisk 22 session said: ``ami-wire.jsonl`` (both directions
of the AMI connection, timed), optionally ``replaces.csv`` (the ringing leg's SIP ids, as SIPp
injected them) and ``sip-<ext>….log`` traces of the phones; ``asterisk-etc/pjsip.conf`` next to
the scenarios tells which endpoints and AORs existed. This module turns them into
:class:`Scenario` objects and paces their events; the AMI and ARI demo servers answer from them.
Lenient by design (it reads files we recorded, not a live peer): the bridge itself never uses it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from bridge.demo.contacts import Registrations

_ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")
_FRAME_END = re.compile(r"\r?\n\r?\n")
_LINE_END = re.compile(r"\r?\n")
# SIPp -trace_msg: a dashed line with a time stamp, "UDP message received [n] bytes :", a blank
# line, then the message up to the next dashed line.
_TRACE_BLOCK = re.compile(
    r"^-{20,}[^\n]*\n(?:UDP|TCP) message (received|sent)[^\n]*\n\n(.*?)(?=^-{20,}|\Z)", re.M | re.S
)
_TRACE_HEADER = re.compile(r"^([A-Za-z-]+):[ \t]*(.*)$", re.M)
_TAG = re.compile(r";\s*tag=([^;>\s]+)")

Headers = dict[str, str]
Getvars = dict[tuple[str, str], str]  # (channel name, variable) → value


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One unsolicited event of a recording, at its recorded time (seconds since connect)."""

    t: float
    headers: Headers


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    """Asterisk's complete answer (response plus list events) to one recorded action."""

    t: float
    frames: tuple[Headers, ...]


@dataclass(slots=True)
class Scenario:
    """One recording and how far it has been replayed (``position`` = events already sent)."""

    name: str
    events: list[RecordedEvent]
    answers: dict[str, list[RecordedAnswer]]  # by lower-case action name, in recorded order
    getvars: Getvars
    booted: list[Headers]  # FullyBooted, sent right after a successful login
    position: int = 0

    def registrations(self) -> Registrations:
        """Who was registered as the recording begins: its first ``PJSIPShowContacts`` answer."""
        answers = self.answers.get("pjsipshowcontacts", [])
        return Registrations(answers[0].frames if answers else ())

    def answer_in_place(self, action: str) -> RecordedAnswer | None:
        """The latest recorded answer taken between the last sent and the next unsent event."""
        lo = self.events[self.position - 1].t if self.position else -math.inf
        hi = self.events[self.position].t if self.position < len(self.events) else math.inf
        fits = [a for a in self.answers.get(action, []) if lo <= a.t < hi]
        return fits[-1] if fits else None


class _Timed(Protocol):
    @property
    def t(self) -> float: ...


_E = TypeVar("_E", bound=_Timed)
_E_co = TypeVar("_E_co", bound=_Timed, covariant=True)


class Replay(Protocol[_E_co]):
    """A recording being replayed: its events in recorded order, how many are already sent."""

    position: int

    @property
    def events(self) -> Sequence[_E_co]: ...


async def paced(replay: Replay[_E], speed: float) -> AsyncGenerator[_E, None]:
    """The replay's events from where it stands, each counted as sent when handed out and
    spaced by its recorded gap to the one before, divided by ``speed`` (0: no waiting). The
    position is read afresh for each event, so a rewind meanwhile is followed."""
    previous = replay.events[replay.position - 1].t if replay.position else None
    while replay.position < len(replay.events):
        event = replay.events[replay.position]
        gap = event.t - previous if previous is not None and speed > 0 else 0.0
        await asyncio.sleep(max(gap, 0.0) / (speed or 1.0))
        previous = event.t
        replay.position += 1
        yield event


def bundled_recordings() -> Path:
    """The recordings shipped with the package for the demo mode."""
    return Path(__file__).with_name("recordings")


def load_scenario(directory: Path) -> Scenario:
    """Read one scenario folder: reassemble both directions and sort out what Asterisk said."""
    buffers = {"client": "", "asterisk": ""}
    actions: dict[str, Headers] = {}
    replies: dict[str, tuple[float, list[Headers]]] = {}
    events: list[RecordedEvent] = []
    booted: list[Headers] = []
    for line in (directory / "ami-wire.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        side, t = str(record["dir"]), float(record["t"])
        frames, buffers[side] = parse_frames(buffers.get(side, "") + str(record["data"]))
        for frame in frames:
            action_id = frame.get("ActionID")
            if side == "client":
                actions[action_id or ""] = frame
            elif action_id is not None:
                replies.setdefault(action_id, (t, []))[1].append(frame)
            elif frame.get("Event") == "FullyBooted":
                booted.append(frame)
            elif "Event" in frame:
                events.append(RecordedEvent(t, frame))
    answers: dict[str, list[RecordedAnswer]] = {}
    getvars: Getvars = {}
    for action_id, (t, frames) in replies.items():
        action = actions.get(action_id, {})
        name = action.get("Action", "").lower()
        answers.setdefault(name, []).append(RecordedAnswer(t, tuple(frames)))
        if name == "getvar" and frames[0].get("Response") == "Success":
            key = (action.get("Channel", ""), action.get("Variable", ""))
            getvars[key] = frames[0].get("Value", "")
    _add_replaces(directory / "replaces.csv", getvars, events)
    _add_sip_traces(directory, getvars, events)
    return Scenario(directory.name, events, answers, getvars, booted)


def _add_replaces(path: Path, getvars: Getvars, events: list[RecordedEvent]) -> None:
    """replaces.csv (SIPp inject file: ``call-id;local_tag;remote_tag``) names no channel: it is
    the channel whose recorded call-id it repeats, else the first ringing PJSIP leg."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:] if path.exists() else []
    ringing = [
        e.headers["Channel"]
        for e in events
        if e.headers.get("ChannelState") == "5"
        and e.headers.get("Channel", "").startswith("PJSIP/")
    ]
    for values in (line.strip().split(";") for line in lines):
        asked = [
            ch for (ch, var), v in getvars.items() if (var, v) == (_ID_VARIABLES[0], values[0])
        ]
        channel = (asked or ringing or [""])[0]
        if channel and len(values) == len(_ID_VARIABLES):
            for variable, value in zip(_ID_VARIABLES, values, strict=True):
                getvars.setdefault((channel, variable), value)


def _add_sip_traces(directory: Path, getvars: Getvars, events: list[RecordedEvent]) -> None:
    """Ids of ringing legs nobody asked Getvar for, from the phones' own SIP traces.

    ``sip-<ext>….log`` shows every call Asterisk offered that phone: the INVITE it received
    (Call-ID, Asterisk's From tag) and the 18x it answered (its own To tag). They are exactly what
    ``CHANNEL(pjsip,call-id|local_tag|remote_tag)`` of Asterisk's leg to the phone return, so the
    n-th offered call of a trace is the n-th leg to that phone that went Ringing.
    """
    offered: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(directory.glob("sip-*.log")):
        exten = path.stem.split("-")[1]
        offered.setdefault(exten, []).extend(offered_calls(path.read_text(encoding="utf-8")))
    legs: dict[str, list[str]] = {}
    for event in events:
        channel = event.headers.get("Channel", "")
        if event.headers.get("ChannelState") == "5" and channel.startswith("PJSIP/"):
            exten = channel[len("PJSIP/") :].rpartition("-")[0]
            if channel not in legs.setdefault(exten, []):
                legs[exten].append(channel)
    for exten, channels in legs.items():
        for channel, ids in zip(channels, offered.get(exten, []), strict=False):
            for variable, value in zip(_ID_VARIABLES, ids, strict=True):
                getvars.setdefault((channel, variable), value)


def offered_calls(trace: str) -> list[tuple[str, str, str]]:
    """(Call-ID, Asterisk's tag, the phone's tag) of each call offered to the traced phone."""
    asterisk_tags: dict[str, str] = {}
    phone_tags: dict[str, str] = {}
    for direction, message in _TRACE_BLOCK.findall(trace):
        start, _, rest = message.replace("\r\n", "\n").partition("\n")
        head = rest.partition("\n\n")[0]
        headers = {name.lower(): value for name, value in _TRACE_HEADER.findall(head)}
        call_id = headers.get("call-id", "").strip()
        to_tag, from_tag = _tag(headers.get("to", "")), _tag(headers.get("from", ""))
        if direction == "received" and start.startswith("INVITE ") and not to_tag and from_tag:
            asterisk_tags.setdefault(call_id, from_tag)
        elif direction == "sent" and start.startswith("SIP/2.0 18") and to_tag:
            phone_tags.setdefault(call_id, to_tag)
    return [(cid, tag, phone_tags[cid]) for cid, tag in asterisk_tags.items() if cid in phone_tags]


def _tag(value: str) -> str:
    match = _TAG.search(value)
    return match[1] if match else ""


Sections = list[tuple[str, dict[str, str]]]  # (name, options) in file order


def _pjsip_sections(conf: Path) -> tuple[Sections, set[str]]:
    """A pjsip.conf's sections with their templates applied, and the templates' names."""
    sections: Sections = []
    templates: dict[str, dict[str, str]] = {}
    for raw in conf.read_text(encoding="utf-8").splitlines() if conf.exists() else []:
        line = raw.split(";", 1)[0].strip()
        if line.startswith("["):
            name, _, rest = line[1:].partition("]")
            bases = [b.strip() for b in rest.strip("()").split(",") if b.strip() and b != "!"]
            options: dict[str, str] = {}
            for base in bases:
                options.update(templates.get(base, {}))
            sections.append((name, options))
            if rest.startswith("(!"):
                templates[name] = options
        elif "=" in line and sections:
            key, _, value = line.partition("=")
            sections[-1][1][key.strip()] = value.strip()
    return sections, set(templates)


def load_objects(conf: Path, kind: str) -> dict[str, dict[str, str]]:
    """The objects of one type (``endpoint``, ``aor``) of a pjsip.conf as option → value, for
    answering the PJSIPShow… actions the way the recorded Asterisk would have."""
    sections, templates = _pjsip_sections(conf)
    return {
        name: opts
        for name, opts in sections
        if opts.get("type") == kind and name not in templates
    }


def load_endpoints(conf: Path) -> dict[str, dict[str, str]]:
    """The endpoints of a pjsip.conf."""
    return load_objects(conf, "endpoint")


def load_dialplan(conf: Path) -> list[Headers]:
    """The ListDialplan items of an extensions.conf as AMI's ShowDialPlan lists them: every
    hint (``Priority: hint``, its devices as ``Application``) and every include, context by
    context; the other priorities are left out (the bridge reads none). Empty without it."""
    if not conf.exists():
        return []
    items: list[Headers] = []
    context = ""
    for raw in conf.read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("[") and "]" in line:
            context = line[1 : line.index("]")]
            continue
        key, arrow, value = line.partition("=>")
        key, value = key.strip().lower(), value.strip()
        if not arrow or not context or context == "general":
            continue
        if key == "include":
            items.append({"Event": "ListDialplan", "Context": context, "IncludeContext": value,
                          "Registrar": "pbx_config"})  # fmt: skip
        elif key == "exten":
            exten, _, rest = value.partition(",")
            priority, _, application = rest.partition(",")
            if priority.strip().lower() == "hint":
                items.append({"Event": "ListDialplan", "Context": context,
                              "Extension": exten.strip(), "Priority": "hint",
                              "Application": application.strip(),
                              "Registrar": "pbx_config"})  # fmt: skip
    return items


def load_recordings(directory: Path) -> dict[str, Scenario]:
    """All scenarios under ``directory`` (or the one scenario that ``directory`` is)."""
    if (directory / "ami-wire.jsonl").exists():
        return {directory.name: load_scenario(directory)}
    folders = sorted(p for p in directory.iterdir() if (p / "ami-wire.jsonl").exists())
    return {p.name: load_scenario(p) for p in folders}


def parse_frames(buffer: str) -> tuple[list[dict[str, str]], str]:
    """Split AMI text into complete messages (header dicts) and the unfinished remainder.

    Lines without a colon are skipped: that covers the banner ``Asterisk Call Manager/x.y.z``,
    which Asterisk ends with a single line break, so it sits on top of the first message.
    A repeated header keeps its first value, as Asterisk's own ``astman_get_header`` does.
    """
    pieces = _FRAME_END.split(buffer)
    remainder = pieces.pop()
    frames: list[dict[str, str]] = []
    for piece in pieces:
        headers: dict[str, str] = {}
        for line in _LINE_END.split(piece):
            key, colon, value = line.partition(":")
            key = key.strip()
            if colon and key and key not in headers:
                headers[key] = value.lstrip(" ")
        if headers:
            frames.append(headers)
    return frames, remainder
