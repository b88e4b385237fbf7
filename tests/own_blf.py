"""What Asterisk's own BLF showed: the ``own-blf-<ext>.log`` traces of the recordings, read as key
states, to compare the bridge's keys with (see tests/fixtures/asterisk-22.10.1/README.md).

A key state here is what a Snom LED can tell apart: ``idle``, or the sorted set of the live dialog
states (``early``, ``confirmed``) joined by ``+``; ``lit`` is anything but idle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from lxml import etree
from releases import recordings
from sipp import parse_trace

RECORDINGS = recordings()
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
_LIVE = ("early", "confirmed")


def key_state(body: bytes) -> str:
    """A dialog-info body as the key state it lights."""
    doc = etree.fromstring(body)
    states = {d.findtext("d:state", namespaces=NS) for d in doc.findall("d:dialog", NS)}
    return "+".join(sorted(s for s in states if s in _LIVE)) or "idle"


def lit(state: str) -> str:
    """A key state as lit or unlit, the one thing every key must agree on."""
    return "unlit" if state == "idle" else "lit"


def collapsed(states: Iterable[str]) -> list[str]:
    """Repeats removed: a NOTIFY that changes nothing the key shows is no step."""
    out: list[str] = []
    for state in states:
        if not out or out[-1] != state:
            out.append(state)
    return out


def own_blf(
    scenario: str, exten: str, until: float | None = None, folder: Path = RECORDINGS
) -> list[str]:
    """The key states Asterisk's own BLF sent a watcher of ``exten``, in order, from NOTIFYs
    sent before ``until`` (epoch seconds; None: all of them), in the recordings in ``folder``."""
    trace = (folder / scenario / f"own-blf-{exten}.log").read_bytes()
    notifies = [m for m in parse_trace(trace) if m.method == "NOTIFY"]
    assert notifies, f"no NOTIFY in own-blf-{exten}.log"
    return [
        key_state(m.body)
        for m in notifies
        if until is None or (m.time is not None and m.time < until)
    ]


def ami_recording_end(scenario: str, folder: Path = RECORDINGS) -> float:
    """When (epoch seconds) the AMI recording's client logged off. Its clock comes from the
    Timestamp of Asterisk's first Pong, which the own-blf logs share."""
    offset: float | None = None
    logoff: float | None = None
    for line in (folder / scenario / "ami-wire.jsonl").read_text().splitlines():
        record = json.loads(line)
        stamp = re.search(r"Ping: Pong\r\nTimestamp: ([0-9.]+)", record["data"])
        if offset is None and record["dir"] == "asterisk" and stamp:
            offset = float(stamp[1]) - record["t"]
        if record["dir"] == "client" and record["data"].startswith("Action: Logoff"):
            logoff = record["t"]
    assert offset is not None and logoff is not None, "no Pong or no Logoff in the recording"
    return offset + logoff
