"""The demo's reader of the Asterisk recordings: AMI text split into messages."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bridge.demo.recording import parse_frames

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"


def test_banner_sits_on_top_of_first_message_and_is_skipped() -> None:
    wire = (
        "Asterisk Call Manager/11.0.0\r\n"
        "Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
    )
    frames, rest = parse_frames(wire)
    assert frames == [{"Response": "Success", "Message": "Authentication accepted"}]
    assert rest == ""


def test_banner_alone_stays_in_the_remainder() -> None:
    assert parse_frames("Asterisk Call Manager/11.0.0\r\n") == (
        [],
        "Asterisk Call Manager/11.0.0\r\n",
    )


def test_remainder_is_kept_verbatim_and_completed_later() -> None:
    frames, rest = parse_frames("Event: Hangup\r\nUniqueid: 1.2\r\n\r\nEvent: Newst")
    assert frames == [{"Event": "Hangup", "Uniqueid": "1.2"}]
    assert rest == "Event: Newst"
    frames, rest = parse_frames(rest + "ate\r\nAccountCode: \r\n\r")
    assert frames == [] and rest.endswith("\r")
    frames, rest = parse_frames(rest + "\n")
    assert frames == [{"Event": "Newstate", "AccountCode": ""}] and rest == ""


def test_values_keep_colons_and_first_repeated_header_wins() -> None:
    frames, _ = parse_frames("Event: X\nValue: a:b: c\nValue: second\n\n")
    assert frames == [{"Event": "X", "Value": "a:b: c"}]


def test_split_reads_give_the_same_messages_as_one_read() -> None:
    wire = "".join(
        json.loads(line)["data"]
        for line in (FIXTURES / "ring-cancel" / "ami-wire.jsonl").read_text().splitlines()
        if json.loads(line)["dir"] == "asterisk"
    )
    whole, _ = parse_frames(wire)
    for step in (1, 7, 500):
        frames: list[dict[str, str]] = []
        pending = ""
        for i in range(0, len(wire), step):
            new, pending = parse_frames(pending + wire[i : i + step])
            frames += new
        assert frames == whole


@given(st.text())
def test_parse_frames_never_raises(text: str) -> None:
    frames, rest = parse_frames(text)
    assert all(frames)
    assert text.endswith(rest)
