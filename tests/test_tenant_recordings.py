"""The two-tenant recording (tests/fixtures/asterisk-22.10.1/tenants), read by the project's own
AMI recording reader and replaying server: the material the hint-context work of step 12 will be
tested with. Checked here: it parses, and it shows what that work must keep apart.

Tenant A is the lab PBX's context ``internal`` (endpoints 201-206); tenant B is the context
``tenant-b`` with endpoints b201-b203 whose extensions are 201-203 too. 202 rings in both
tenants at once, each called by a "201" of its own tenant.
"""

from __future__ import annotations

import json
from pathlib import Path

from lxml import etree
from sipp import TracedMessage, parse_trace

from bridge.asterisk.ami_events import to_events
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.recording import load_recordings, offered_calls, parse_frames
from bridge.events import ChannelGone, ChannelSeen, ChannelState, ExtensionHint

TENANTS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1" / "tenants"
SCENARIO = TENANTS / "two-tenants-ring-202"
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")


def asterisk_frames() -> list[tuple[float, dict[str, str]]]:
    """What Asterisk said, reassembled from the wire log, with the time of the read."""
    out: list[tuple[float, dict[str, str]]] = []
    pending = ""
    for line in (SCENARIO / "ami-wire.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == "asterisk":
            frames, pending = parse_frames(pending + record["data"])
            out += [(float(record["t"]), f) for f in frames]
    assert pending.strip() == ""
    return out


def test_both_tenants_ring_their_own_202_at_the_same_time() -> None:
    frames = asterisk_frames()
    ringing = {
        f["Channel"]: (t, f["Context"], f["CallerIDNum"])
        for t, f in frames
        if f.get("Event") == "Newstate" and f.get("ChannelState") == "5"
    }
    legs = {name.rpartition("-")[0]: value for name, value in ringing.items()}
    assert set(legs) == {"PJSIP/202", "PJSIP/b202"}
    assert legs["PJSIP/202"][1:] == ("internal", "202")
    assert legs["PJSIP/b202"][1:] == ("tenant-b", "202")  # same number, other tenant
    hangups = [t for t, f in frames if f.get("Event") == "Hangup"]
    assert max(t for t, _, _ in legs.values()) < min(hangups)  # both rang at once
    # Each caller is a "201" of its own tenant: the number alone cannot tell them apart.
    callers = {
        f["Channel"].rpartition("-")[0]: (f["CallerIDNum"], f["Context"])
        for _, f in frames
        if f.get("Event") == "DialBegin"
    }
    assert callers == {"PJSIP/201": ("201", "internal"), "PJSIP/b201": ("201", "tenant-b")}


def test_every_event_maps_and_the_hints_carry_their_context() -> None:
    events = [e for _, f in asterisk_frames() for e in to_events(f)]
    seen = {e.uniqueid for e in events if isinstance(e, ChannelSeen)}
    gone = {e.uniqueid for e in events if isinstance(e, ChannelGone)}
    assert len(seen) == 4 and gone == seen  # four legs, all ended
    ringing = {
        e.name.rpartition("-")[0]
        for e in events
        if isinstance(e, ChannelSeen) and e.state is ChannelState.RINGING
    }
    assert ringing == {"PJSIP/202", "PJSIP/b202"}
    hints = {(e.exten, e.context): e.hint for e in events if isinstance(e, ExtensionHint)}
    for exten in ("201", "202", "203"):
        assert hints[(exten, "internal")] == f"PJSIP/{exten}"
        assert hints[(exten, "tenant-b")] == f"PJSIP/b{exten}"
    states = [(e.context, e.status) for e in events if isinstance(e, ExtensionHint)]
    assert ("internal", 8) in states and ("tenant-b", 8) in states


def test_the_replaying_server_knows_both_tenants_and_both_ringing_legs() -> None:
    scenario = load_recordings(TENANTS)["two-tenants-ring-202"]
    ringing = sorted(
        {
            e.headers["Channel"]
            for e in scenario.events
            if e.headers.get("Event") == "Newstate" and e.headers.get("ChannelState") == "5"
        }
    )
    assert [name.rpartition("-")[0] for name in ringing] == ["PJSIP/202", "PJSIP/b202"]
    # Tenant A's ids were read with Getvar (replaces.csv), tenant B's come from b202's trace.
    csv = (SCENARIO / "replaces.csv").read_text().splitlines()[1].split(";")
    a_leg, b_leg = ringing
    assert [scenario.getvars[(a_leg, v)] for v in ID_VARIABLES] == csv
    offered = offered_calls((SCENARIO / "sip-b202.log").read_text())
    assert [scenario.getvars[(b_leg, v)] for v in ID_VARIABLES] == list(offered[0])
    assert scenario.getvars[(b_leg, ID_VARIABLES[0])] != csv[0]
    endpoints = RecordedAmiServer(TENANTS).endpoints
    assert endpoints["202"]["context"] == endpoints["202"]["subscribe_context"] == "internal"
    assert endpoints["b202"]["context"] == endpoints["b202"]["subscribe_context"] == "tenant-b"
    assert endpoints["b202"]["call_group"] != endpoints["202"]["call_group"]


def early_callers(log: str) -> list[str | None]:
    """Caller display of each ringing (early) dialog Asterisk's own BLF sent the watcher."""
    notifies = [m for m in parse_trace((SCENARIO / log).read_bytes()) if m.method == "NOTIFY"]
    states = [_states(m) for m in notifies]
    assert states == [["terminated"], ["early"], ["terminated"]], states
    early = [
        d
        for m in notifies
        for d in etree.fromstring(m.body).findall("d:dialog", NS)
        if d.findtext("d:state", namespaces=NS) == "early"
    ]
    identities = [d.find("d:remote/d:identity", NS) for d in early]
    return [None if i is None else i.get("display") for i in identities]


def _states(notify: TracedMessage) -> list[str | None]:
    return [d.findtext("d:state", namespaces=NS) for d in etree.fromstring(notify.body)]


def test_asterisks_own_blf_kept_the_tenants_apart() -> None:
    """The reference for the bridge: a watcher of "202" in each tenant saw only its own 202
    ring, called by its own tenant's 201."""
    assert early_callers("own-blf-202-tenant-a.log") == ["Phone 201"]
    assert early_callers("own-blf-202-tenant-b.log") == ["Tenant B 201"]
