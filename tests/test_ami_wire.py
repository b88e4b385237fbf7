"""The AMI stream reader: framing across reads, and every message read as panoramisk reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from panoramisk.message import Message
from releases import RELEASES, recordings

from bridge.asterisk import ami_wire
from bridge.asterisk.ami_wire import MessageSplitter, parse_message

FIXTURES = recordings()  # 22.10.1
SCENARIOS = sorted(p.parent.name for p in FIXTURES.glob("*/ami-wire.jsonl"))
# Every recording of every release: how Asterisk writes AMI is what may differ between them.
EVERY_RECORDING = [(r, p.parent.name) for r in RELEASES
                   for p in sorted(recordings(r).glob("*/ami-wire.jsonl"))]  # fmt: skip
BANNER = "Asterisk Call Manager/11.0.0\r\n"
HANGUP = "Event: Hangup\r\nPrivilege: call,all\r\nUniqueid: 1.2\r\nCause: 16\r\n\r\n"
NEWSTATE = "Event: Newstate\r\nChannel: PJSIP/202-00000008\r\nCallerIDName: Jürgen\r\n\r\n"


@pytest.fixture(autouse=True, scope="module")
def own_layouts() -> Iterator[None]:
    """The made-up layouts learnt here stay here (the cache is bounded, and shared)."""
    kept = ami_wire._layouts
    ami_wire._layouts = ami_wire._Layouts()
    yield
    ami_wire._layouts = kept


def asterisk_wire(scenario: str, folder: Path = FIXTURES) -> bytes:
    """Everything Asterisk wrote in a recording, as one byte string."""
    lines = (folder / scenario / "ami-wire.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return "".join(r["data"] for r in records if r["dir"] == "asterisk").encode()


def panoramisk_reads(block: str) -> dict[str, str] | type[ValueError] | None:
    """What the adapter made of a message before: panoramisk's Message, a repeated header's
    first value, names in lower case (as the event mapping saw them). ValueError where
    panoramisk tripped over it (a repeated Event, ActionID or CommandID)."""
    message: Any = Message.from_line(block)
    if message is None:
        return None
    if any(isinstance(message.get(name), list) for name in ("event", "actionid", "commandid")):
        return ValueError
    return {
        str(name).lower(): str((value[0] if value else "") if isinstance(value, list) else value)
        for name, value in message.items()
        if name != "content"  # panoramisk's body of a Follows answer, not a header
    }


def reads(block: str) -> dict[str, str] | type[ValueError] | None:
    try:
        return parse_message(block)
    except ValueError:
        return ValueError


def split(data: bytes, cuts: list[int]) -> list[str]:
    splitter = MessageSplitter()
    out: list[str] = []
    start = 0
    for cut in [*cuts, len(data)]:
        out += splitter.feed(data[start:cut])
        start = cut
    assert splitter.pending == 0
    return out


# --- framing ------------------------------------------------------------------------------


def test_messages_come_out_whole_and_in_order() -> None:
    blocks = MessageSplitter().feed((BANNER + HANGUP + NEWSTATE).encode())
    assert blocks == [BANNER + HANGUP.strip(), NEWSTATE.strip()]


@pytest.mark.parametrize("offset", range(len(HANGUP) - 6, len(HANGUP) + 1))
def test_a_read_may_end_anywhere_in_the_blank_line(offset: int) -> None:
    data = (HANGUP + NEWSTATE).encode()
    assert split(data, [offset]) == [HANGUP.strip(), NEWSTATE.strip()]


def test_a_read_may_end_in_the_middle_of_a_line() -> None:
    data = (HANGUP + NEWSTATE).encode()
    assert split(data, [5, 30, 31, len(HANGUP) + 9]) == [HANGUP.strip(), NEWSTATE.strip()]


def test_a_character_cut_by_a_read_is_kept() -> None:
    data = NEWSTATE.encode()
    middle = data.index("ü".encode()) + 1  # between the two bytes of the ü
    (block,) = split(data, [middle])
    headers = parse_message(block)
    assert headers is not None and headers["calleridname"] == "Jürgen"


def test_undecodable_bytes_are_dropped_as_panoramisk_drops_them() -> None:
    (block,) = MessageSplitter().feed(b"Event: Hangup\r\nUniqueid: 1.\xff\xfe2\r\n\r\n")
    assert parse_message(block) == {"event": "Hangup", "uniqueid": "1.2"}


def test_an_unfinished_message_waits_and_is_counted() -> None:
    splitter = MessageSplitter()
    assert splitter.feed(b"x" * 1000) == []
    assert splitter.feed(b"y" * 1000) == []
    assert splitter.pending == 2000
    assert splitter.feed(b"\r\n\r\nEvent: Hang") == ["x" * 1000 + "y" * 1000]
    assert splitter.pending == len(b"Event: Hang")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("step", [1, 3, 7, 500, 1 << 20])
def test_reads_of_any_size_give_the_recorded_messages(scenario: str, step: int) -> None:
    wire = asterisk_wire(scenario)
    expected = [block.strip() for block in wire.decode().split("\r\n\r\n")[:-1]]
    assert split(wire, list(range(step, len(wire), step))) == expected


# --- reading one message ------------------------------------------------------------------


def test_the_banner_on_top_of_the_first_message_is_skipped() -> None:
    block = BANNER + "Response: Success\r\nMessage: Authentication accepted"
    assert parse_message(block) == {"response": "Success", "message": "Authentication accepted"}


def test_the_first_of_a_repeated_header_wins() -> None:
    block = "Event: VarSet\r\nVariable: a\r\nValue: first\r\nValue: second"
    assert parse_message(block) == {"event": "VarSet", "variable": "a", "value": "first"}


def test_empty_values_and_values_with_colons() -> None:
    # Stripped, the empty last value loses its space and with it its ": ": not a header.
    block = "Event: Newstate\r\nAccountCode: \r\nAppData: a: b:c\r\nLanguage:"
    assert parse_message(block) == {"event": "Newstate", "accountcode": "", "appdata": "a: b:c"}


def test_names_in_lower_case_the_later_spelling_wins() -> None:
    block = "Event: ContactStatus\r\nAOR: 201\r\nUri: sip:a\r\nURI: sip:b"
    assert parse_message(block) == {"event": "ContactStatus", "aor": "201", "uri": "sip:b"}


def test_text_without_event_or_response_is_no_message() -> None:
    assert parse_message("Asterisk Call Manager/11.0.0") is None
    assert parse_message("Channel: PJSIP/1\r\nevent: Hangup") is None  # panoramisk: exact case
    assert parse_message("") is None


@pytest.mark.parametrize("name", ["Event", "ActionID", "CommandID"])
def test_a_repeated_routing_header_is_garbage(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} twice"):
        parse_message(f"Event: Hangup\r\n{name}: 1\r\n{name}: 2")


def test_answers_with_a_body_and_quoted_results() -> None:
    follows = "Response: Follows\r\nActionID: 7\r\nOutput line\r\n--END COMMAND--"
    assert parse_message(follows) == {"response": "Follows", "actionid": "7"}
    agi = "Event: AGIExec\r\nResult: 200%20result%3D1 "
    assert parse_message(agi) == {"event": "AGIExec", "result": "200 result=1"}


def test_a_learnt_layout_reads_the_next_message_of_that_kind() -> None:
    first = "Event: LayoutTest\r\nUniqueid: 1.1\r\nChannel: PJSIP/1-1"
    assert parse_message(first) == {
        "event": "LayoutTest",
        "uniqueid": "1.1",
        "channel": "PJSIP/1-1",
    }
    assert "Event: LayoutTest" in ami_wire._layouts.by_start
    # Same layout; a value with ": " in it, then one with a lone CR that only lines can read.
    second = "Event: LayoutTest\r\nUniqueid: 1.2\r\nChannel: a: b"
    assert parse_message(second) == {"event": "LayoutTest", "uniqueid": "1.2", "channel": "a: b"}
    third = "Event: LayoutTest\r\nUniqueid: 1.3\rX: y\r\nChannel: c"
    assert parse_message(third) == {"event": "LayoutTest", "uniqueid": "1.3\rX: y", "channel": "c"}
    other = "Event: LayoutTest\r\nChannel: d\r\nUniqueid: 1.4"  # another order: another layout
    assert parse_message(other) == {"event": "LayoutTest", "channel": "d", "uniqueid": "1.4"}


def test_layouts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ami_wire, "_layouts", ami_wire._Layouts())
    for n in range(ami_wire._LAYOUTS + 10):
        assert parse_message(f"Event: Bound{n}\r\nA{n}: x") == {"event": f"Bound{n}", f"a{n}": "x"}
    assert ami_wire._layouts.count <= ami_wire._LAYOUTS
    assert all(
        len(known) <= ami_wire._LAYOUTS_PER_START for known in ami_wire._layouts.by_start.values()
    )


@pytest.mark.parametrize(("release", "scenario"), EVERY_RECORDING)
def test_every_recorded_message_reads_as_panoramisk_reads_it(release: str, scenario: str) -> None:
    for block in MessageSplitter().feed(asterisk_wire(scenario, recordings(release))):
        assert reads(block) == panoramisk_reads(block), block
        assert reads(block) == panoramisk_reads(block), block  # again, by its learnt layout


_PIECES = st.sampled_from([
    "Event", "event", "EVENT", "ActionID", "actionid", "CommandID", "Response", "Result",
    "Message", "Uniqueid", ": ", ": ", ": ", "\r\n", "\r\n", "\r\n", "\r", "\n", " ", ":",
    "Response: Follows", "Response: Fail", "Response: Success", "Event: Newstate", "%41",
    "x", "é", "1.2", "",
])  # fmt: skip


@given(st.lists(_PIECES, max_size=16).map(lambda pieces: "".join(pieces).strip()))
def test_any_text_reads_as_panoramisk_reads_it(block: str) -> None:
    assert reads(block) == panoramisk_reads(block)
    assert reads(block) == panoramisk_reads(block)


_NAMES = st.sampled_from(["Event", "Uniqueid", "Channel", "ActionID", "Result", "event", "A"])
_VALUES = st.lists(st.sampled_from(["x", "", ": ", "\r", "\n", " ", "é", "%20"]), max_size=3)


@given(
    st.sampled_from(["Event: Newstate", "Response: Success", "Event: Hangup"]),
    st.lists(st.tuples(_NAMES, _VALUES.map("".join)), max_size=5),
)
def test_any_headers_read_as_panoramisk_reads_them(first: str, headers: list[Any]) -> None:
    block = "\r\n".join([first, *(f"{name}: {value}" for name, value in headers)]).strip()
    assert reads(block) == panoramisk_reads(block)
    assert reads(block) == panoramisk_reads(block)
