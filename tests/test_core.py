"""The whole bridge without sockets: ``bridge.core.BridgeCore`` driven with a fake clock.

Every recording of Asterisk 22.10.1 in tests/fixtures goes in as the sources hand it over (the
AMI and ARI event mappers over the recorded frames, the pickup ids where the sources would read
them), at its recorded times on a millisecond clock. Phones are plain SIP text: a SUBSCRIBE in,
the NOTIFYs out read here with a parser of the test's own, every body checked against the RFC 4235
schema. What the glue does over sockets is left to tests/test_app.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lxml import etree
from own_blf import ami_recording_end, lit, own_blf
from own_blf import collapsed as own_collapsed
from own_blf import key_state as own_key_state
from releases import recordings, release_cases, releases_with
from sipp import parse_trace

from bridge.asterisk import ami_events, ari_events
from bridge.config import load
from bridge.core import BridgeCore, Reconfigured
from bridge.demo.recording import load_endpoints, load_scenario
from bridge.devices import parse_groups
from bridge.events import (
    AsteriskEvent,
    ChannelSeen,
    ContactChanged,
    DeviceStateChanged,
    EndpointGroups,
    ExtensionHint,
    LegIds,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)
from bridge.sip import notifier as notifier_module
from bridge.sip.subscription import Peer

FIXTURES = Path(__file__).parent / "fixtures"
RECORDINGS = recordings()  # 22.10.1, the reference; tests of what Asterisk does take each release
SCHEMA = etree.XMLSchema(etree.parse(str(FIXTURES / "schemas" / "dialog-info.xsd")))
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
DOMAIN = "pbx.example.test"
PHONE = Peer("udp", "10.0.0.20", 5062)  # the watching Snom (From user 203)
ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")
RESYNC_ANSWERS = ("devicestatelist", "extensionstatelist", "coreshowchannels", "parkedcalls",
                  "pjsipshowcontacts")  # fmt: skip
CALLS = ["answer-hold-resume", "outbound-from-202", "pickup-replaces", "ring-answer-hangup",
         "ring-cancel", "ring-while-busy"]  # fmt: skip
# What 202's key goes through in each call recording (the fixtures' README, written out by hand).
EXPECTED = {
    "ring-cancel": ["idle", "early/recipient", "idle"],
    "ring-answer-hangup": ["idle", "early/recipient", "confirmed/recipient", "idle"],
    "pickup-replaces": ["idle", "early/recipient", "idle"],
    "outbound-from-202": ["idle", "confirmed/initiator", "idle"],
    "answer-hold-resume": ["idle", "early/recipient", "confirmed/recipient",
                           "confirmed/recipient/held", "confirmed/recipient", "idle"],
    "ring-while-busy": ["idle", "confirmed/initiator", "early/recipient+confirmed/initiator",
                        "confirmed/initiator", "idle"],
}  # fmt: skip
Timed = list[tuple[int, AsteriskEvent]]  # (milliseconds since the recording began, event)


# --- Asterisk, as the sources hand it over -----------------------------------------------------


def groups(folder: Path = RECORDINGS) -> list[AsteriskEvent]:
    """Every endpoint's call and pickup groups, as the sources read them after a sync."""
    conf = load_endpoints(folder / "asterisk-etc" / "pjsip.conf")
    return [
        EndpointGroups(
            name, parse_groups(v.get("call_group", "")), parse_groups(v.get("pickup_group", ""))
        )
        for name, v in sorted(conf.items())
    ]


def with_ids(events: Iterable[AsteriskEvent], getvars: dict[tuple[str, str], str]
             ) -> Iterator[AsteriskEvent]:  # fmt: skip
    """LegIds just before each ChannelSeen that needs them, as both sources deliver them."""
    for event in events:
        if isinstance(event, ChannelSeen) and ami_events.needs_ids(event):
            values = [getvars.get((event.name, v), "") for v in ID_VARIABLES]
            if all(values):
                yield LegIds(event.uniqueid, *values)
        yield event


def over_ami(scenario: str, folder: Path = RECORDINGS) -> tuple[list[AsteriskEvent], Timed]:
    """The login-time resync, and the call/system events at their recorded times."""
    s = load_scenario(folder / scenario)
    listed = [ev for name in RESYNC_ANSWERS for answer in s.answers.get(name, [])[:1]
              for frame in answer.frames for ev in ami_events.to_events(frame)]  # fmt: skip
    resync = [ResyncStarted(), *listed, ResyncFinished(), *groups(folder)]
    timed: Timed = []
    for recorded in s.events:
        if {"call", "system"} & set(recorded.headers.get("Privilege", "").split(",")):
            for event in with_ids(ami_events.to_events(recorded.headers), s.getvars):
                timed.append((round(recorded.t * 1000), event))
    return resync, timed


def over_ari(scenario: str, folder: Path = RECORDINGS) -> tuple[list[AsteriskEvent], Timed]:
    """The same call as the ARI source tells it (hints from the configuration)."""
    hints = [ExtensionHint(e, "internal", f"PJSIP/{e}", 0) for e in
             ("201", "202", "203", "204", "205", "206")]  # fmt: skip
    dials = ari_events.DialPairs()
    getvars = load_scenario(folder / scenario).getvars
    timed: Timed = []
    lines = (folder / scenario / "ari-events.jsonl").read_text().splitlines()
    for i, line in enumerate(filter(None, lines)):
        record = json.loads(line)
        for event in with_ids(ari_events.to_events(record["event"], dials), getvars):
            timed.append((1000 + 10 * i, event))  # ARI recordings keep order, not time
    return [ResyncStarted(), *hints, ResyncFinished(), *groups(folder)], timed


# --- the phone: SIP as text ---------------------------------------------------------------------


@dataclass
class Sip:
    """One message as a phone reads it: start line, headers (lower-case names), body."""

    start: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def read(cls, data: bytes) -> Sip:
        head, _, body = data.partition(b"\r\n\r\n")
        start, *lines = head.decode().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        assert int(headers["content-length"]) == len(body)
        return cls(start, headers, body)

    @property
    def method(self) -> str:
        return "" if self.start.startswith("SIP/2.0") else self.start.split()[0]

    @property
    def status(self) -> int:
        return int(self.start.split()[1]) if self.start.startswith("SIP/2.0") else 0


@dataclass
class Clock:
    """Milliseconds; the core is told seconds."""

    ms: int = 0

    @property
    def now(self) -> float:
        return self.ms / 1000


@dataclass
class Lab:
    """A core, a fake clock and the messages it sent, by where they went."""

    core: BridgeCore
    clock: Clock = field(default_factory=Clock)
    sent: list[tuple[int, Peer, Sip]] = field(default_factory=list)
    answering: bool = True  # the phone answers every NOTIFY with 200
    branches = 0

    def drain(self) -> list[Sip]:
        out = []
        for data, peer in self.core.outgoing():
            message = Sip.read(data)
            self.sent.append((self.clock.ms, peer, message))
            out.append(message)
            if message.method == "NOTIFY" and peer == PHONE and self.answering:
                self.core.receive(answer(message), PHONE, self.clock.now)
                out += self.drain()
        return out

    def advance(self, ms: int) -> None:
        """Let the clock run to ``ms``, firing every timer due on the way, at its time."""
        while (when := self.core.next_timer()) is not None and when * 1000 <= ms:
            # ceil, not +0.999: a deadline such as 2.26 + 2e-16 must be reached, not missed.
            self.clock.ms = max(self.clock.ms, math.ceil(when * 1000))
            self.core.handle_timer(self.clock.now)
            self.drain()
        self.clock.ms = max(self.clock.ms, ms)

    def feed(self, events: Iterable[AsteriskEvent], pbx: str = "") -> None:
        for event in events:
            self.core.asterisk_event(event, self.clock.now, pbx)
            self.drain()

    def play(self, timed: Timed, start: int = 0, pbx: str = "") -> None:
        for ms, event in timed:
            self.advance(start + ms)
            self.feed([event], pbx)

    def subscribe(self, exten: str, *, expires: int = 600, user: str = "203",
                  domain: str = DOMAIN) -> Sip:  # fmt: skip
        self.branches += 1
        request = "\r\n".join([
            f"SUBSCRIBE sip:{exten}@{domain} SIP/2.0",
            f"Via: SIP/2.0/UDP {PHONE.host}:{PHONE.port};branch=z9hG4bK-{self.branches}",
            f"From: <sip:{user}@{DOMAIN}>;tag=phone{self.branches}",
            f"To: <sip:{exten}@{DOMAIN}>",
            f"Call-ID: watch-{exten}-{self.branches}@{PHONE.host}",
            "CSeq: 1 SUBSCRIBE",
            f"Contact: <sip:{user}@{PHONE.host}:{PHONE.port}>",
            "Event: dialog",
            "Accept: application/dialog-info+xml",
            f"Expires: {expires}",
            "Content-Length: 0",
        ]) + "\r\n\r\n"  # fmt: skip
        self.core.receive(request.encode(), PHONE, self.clock.now)
        (reply, *_) = self.drain()
        return reply

    def notifies(self, exten: str | None = None) -> list[Sip]:
        """NOTIFYs to the phone (of one extension), retransmissions left out."""
        seen, out = set(), []
        for _, peer, message in self.sent:
            if message.method != "NOTIFY" or peer != PHONE:
                continue
            ident = (message.headers["call-id"], message.headers["cseq"])
            if ident not in seen and (exten is None or entity(message) == exten):
                seen.add(ident)
                out.append(message)
        return out

    def notifies_of(self, reply: Sip) -> list[Sip]:
        """The NOTIFYs of the subscription ``reply`` accepted (by its Call-ID, to whichever
        phone), retransmissions left out."""
        seen, out = set(), []
        call_id = reply.headers["call-id"]
        for _, _, message in self.sent:
            ours = message.method == "NOTIFY" and message.headers["call-id"] == call_id
            if ours and message.headers["cseq"] not in seen:
                seen.add(message.headers["cseq"])
                out.append(message)
        return out


def answer(request: Sip, status: int = 200) -> bytes:
    h = request.headers
    lines = [f"SIP/2.0 {status} OK", f"Via: {h['via']}", f"From: {h['from']}",
             f"To: {h['to']}", f"Call-ID: {h['call-id']}", f"CSeq: {h['cseq']}",
             "Content-Length: 0"]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def entity(notify: Sip) -> str:
    doc = etree.fromstring(notify.body)
    return str(doc.get("entity")).removeprefix("sip:").partition("@")[0]


def dialogs(notify: Sip) -> list[etree._Element]:
    """The <dialog> elements of a NOTIFY body, after checking it against the XSD."""
    doc = etree.fromstring(notify.body)
    SCHEMA.assertValid(doc)
    return list(doc.findall("d:dialog", NS))


def key_state(notify: Sip) -> str:
    parts = []
    for d in dialogs(notify):
        if d.findtext("d:state", namespaces=NS) == "terminated":
            continue  # an idle key's one terminated dialog (watch.idle_dialog) lights nothing
        held = d.find("d:*/d:target/d:param[@pname='+sip.rendering'][@pval='no']", NS) is not None
        parts.append(f"{d.findtext('d:state', namespaces=NS)}/{d.get('direction')}"
                     + "/held" * held)  # fmt: skip
    return "+".join(parts) or "idle"


def collapsed(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


def check_sequence(notifies: list[Sip], exten: str = "202") -> None:
    """CSeq +1 and version +1 per NOTIFY of one subscription, the headers RFC 6665 asks for."""
    cseqs = [int(n.headers["cseq"].split()[0]) for n in notifies]
    assert cseqs == list(range(cseqs[0], cseqs[0] + len(cseqs)))
    versions = [int(etree.fromstring(n.body).get("version")) for n in notifies]
    assert versions == list(range(len(notifies)))
    for n in notifies:
        assert n.headers["event"] == "dialog"
        assert n.headers["content-type"] == "application/dialog-info+xml"
        assert n.headers["subscription-state"].startswith("active;expires=")
        assert etree.fromstring(n.body).get("entity") == f"sip:{exten}@{DOMAIN}"


def lab(*extra: str, path: Path | None = None) -> Lab:
    config = load(path, [f"sip.domain={DOMAIN}", 'sip.udp=["127.0.0.1:5090"]', "store.path=",
                         "web.listen=", "security.requests_per_second=0", *extra])  # fmt: skip
    return Lab(BridgeCore(config))


def watched(scenario: str, source: str = "ami", *extra: str, exten: str = "202",
            release: str = "22.10.1") -> Lab:  # fmt: skip
    """A phone watching ``exten`` while a recording (of ``release``) plays, every NOTIFY
    answered."""
    resync, timed = (over_ami if source == "ami" else over_ari)(scenario, recordings(release))
    lb = lab(*extra)
    lb.feed(resync)
    assert lb.subscribe(exten).status == 200
    lb.play(timed, start=lb.clock.ms)
    return lb


# --- every recording -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["ami", "ari"])
@pytest.mark.parametrize(("release", "scenario"), release_cases(*CALLS))
def test_each_call_recording_gives_the_right_key_states(
    release: str, scenario: str, source: str
) -> None:
    lb = watched(scenario, source, release=release)
    notifies = lb.notifies("202")
    check_sequence(notifies)
    assert collapsed([key_state(n) for n in notifies]) == EXPECTED[scenario]


@pytest.mark.parametrize("source", ["ami", "ari"])
@pytest.mark.parametrize("release", releases_with("pickup-replaces"))
def test_pickup_ids_are_those_of_the_ringing_leg(release: str, source: str) -> None:
    ringing = [d for n in watched("pickup-replaces", source, release=release).notifies("202")
               for d in dialogs(n) if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip
    assert ringing
    # replaces.csv: call-id;local_tag;remote_tag as Asterisk read them on its leg to 202.
    folder = recordings(release)
    lines = (folder / "pickup-replaces" / "replaces.csv").read_text().splitlines()
    call_id, asterisk_tag, phone_tag = lines[1].split(";")
    for d in ringing:
        assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == (
            call_id, asterisk_tag, phone_tag)  # fmt: skip
        identity = d.find("d:remote/d:identity", NS)
        assert identity is not None
        assert (identity.text, identity.get("display")) == (f"sip:201@{DOMAIN}", "Phone 201")
        target = d.find("d:remote/d:target", NS)
        assert target is not None and target.get("uri") == f"sip:202@{DOMAIN}"
    # The Replaces a Snom builds from it is the one that took the call on that release.
    d = ringing[0]
    built = f"{d.get('call-id')};to-tag={d.get('remote-tag')};from-tag={d.get('local-tag')}"
    picker = (folder / "pickup-replaces" / "sip-203-picker.log").read_text()
    match = re.search(r"^Replaces: (.+?)\r?$", picker, re.M)
    assert match is not None and match[1] == built


@pytest.mark.parametrize(("mode", "shown"), [("group", True), ("everyone", True),
                                             ("nobody", False)])  # fmt: skip
def test_the_pickup_policy_decides_who_gets_the_ids(mode: str, shown: bool) -> None:
    lb = watched("pickup-replaces", "ami", f"security.pickup={mode}")
    early = [d for n in lb.notifies("202") for d in dialogs(n)
             if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip
    assert early and all((d.get("call-id") is not None) == shown for d in early)


def test_without_the_groups_nobody_gets_the_ids_under_the_group_policy() -> None:
    resync, timed = over_ami("pickup-replaces")
    lb = lab()
    lb.feed(e for e in resync if not isinstance(e, EndpointGroups))
    lb.subscribe("202")
    lb.play(timed, start=lb.clock.ms)
    early = [d for n in lb.notifies("202") for d in dialogs(n)
             if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip
    assert early and all(d.get("call-id") is None for d in early)


def test_the_watcher_of_the_caller_sees_the_callee_without_ids() -> None:
    lb = watched("ring-answer-hangup", exten="201")
    notifies = lb.notifies("201")
    check_sequence(notifies, "201")
    assert collapsed([key_state(n) for n in notifies]) == ["idle", "confirmed/initiator", "idle"]
    assert all(d.get("call-id") is None for n in notifies for d in dialogs(n))


def test_an_outgoing_call_blinks_only_when_configured() -> None:
    lb = watched("outbound-from-202", "ami", "watch.outgoing_blinks=true")
    assert collapsed([key_state(n) for n in lb.notifies("202")]) == [
        "idle", "trying/initiator", "early/initiator", "confirmed/initiator", "idle"]  # fmt: skip


DEVICE_KEYS = {"device-states": ("210", "211"), "park-retrieve": ("701",)}
CHANNEL_FREE = {"210", "701"}  # no channel device: the key shows exactly Asterisk's state


@pytest.mark.parametrize(("release", "scenario"), release_cases(*sorted(DEVICE_KEYS)))
def test_device_and_park_keys_light_when_asterisks_own_blf_did(release: str, scenario: str) -> None:
    folder = recordings(release)
    resync, timed = over_ami(scenario, folder)
    lb = lab()
    lb.feed(resync)
    for exten in DEVICE_KEYS[scenario]:
        assert lb.subscribe(exten).status == 200
    lb.play(timed, start=lb.clock.ms)
    # The AMI recording ends a moment before Asterisk's last word (its client logged off).
    until = ami_recording_end(scenario, folder)
    for exten in DEVICE_KEYS[scenario]:
        notifies = lb.notifies(exten)
        check_sequence(notifies, exten)
        got = [own_key_state(n.body) for n in notifies if dialogs(n) is not None]  # XSD-valid
        expected = own_blf(scenario, exten, until, folder)
        assert own_collapsed(map(lit, got)) == own_collapsed(map(lit, expected)), exten
        if exten in CHANNEL_FREE:
            assert own_collapsed(got) == own_collapsed(expected), exten


# --- the SIP side on the fake clock --------------------------------------------------------------


def test_a_notify_nobody_answers_is_retransmitted_on_timer_e_and_the_subscription_ends() -> None:
    resync, timed = over_ami("ring-cancel")
    lb = lab()
    lb.feed(resync)
    lb.subscribe("202")  # answered: the address is proven to receive what is sent there
    lb.answering = False
    start, before = lb.clock.ms, len(lb.sent)
    lb.feed(event for _, event in timed)  # the whole call at once: one NOTIFY, then coalesced
    first = lb.sent[before][2]
    assert first.method == "NOTIFY"
    lb.advance(start + 40_000)
    times = [ms - start for ms, _, m in lb.sent
             if m.method == "NOTIFY" and m.headers["via"] == first.headers["via"]]  # fmt: skip
    # T1 = 500 ms doubling up to T2 = 4 s, given up at 64*T1 = 32 s (RFC 3261 §17.1.2.2).
    assert times == [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    assert lb.core.notifier.stats().subscriptions == 0
    assert lb.core.notifier.notifies_failed == 1


def test_an_address_that_never_answered_gets_the_first_notify_twice_then_is_dropped() -> None:
    lb = lab()
    lb.feed(over_ami("ring-cancel")[0])
    lb.answering = False
    assert lb.subscribe("202").status == 200
    lb.advance(10_000)
    sent = [ms for ms, _, m in lb.sent if m.method == "NOTIFY"]
    assert sent == [0, 500]  # the forged-source guard: 3*T1, not 32 s
    assert lb.core.notifier.stats().subscriptions == 0


def test_a_subscription_expires_on_the_fake_clock_with_a_final_notify() -> None:
    lb = lab()
    lb.feed(over_ami("ring-cancel")[0])
    lb.subscribe("202", expires=60)
    lb.advance(59_999)
    assert lb.core.notifier.stats().subscriptions == 1
    lb.advance(60_000)
    assert lb.core.notifier.stats().subscriptions == 0
    assert lb.sent[-1][2].headers["subscription-state"] == "terminated;reason=timeout"


def test_before_the_first_sync_a_key_is_accepted_and_told_its_state_once_known() -> None:
    """A Snom that ignores Retry-After (retry_after_failed_subscribe = 600) would leave a key
    dark for ten minutes after a 503: it is accepted, told a neutral state at once (RFC 6665
    §4.2.1: an immediate NOTIFY), then the real one, or its end (noresource) if there is none."""
    lb = lab()
    waiting = lb.subscribe("202")
    gone = lb.subscribe("999", user="204")
    assert (waiting.status, gone.status) == (200, 200)
    first, other = lb.notifies_of(waiting), lb.notifies_of(gone)
    # Neutral: no dialogs, valid dialog-info (checked against the XSD by key_state).
    assert [key_state(n) for n in first + other] == ["idle", "idle"]
    assert first[0].headers["subscription-state"].startswith("active;expires=")
    resync, timed = over_ami("ring-cancel")
    lb.feed(resync)
    lb.play(timed, start=lb.clock.ms)
    states = [key_state(n) for n in lb.notifies_of(waiting)]
    assert collapsed(states) == ["idle", "early/recipient", "idle"]
    check_sequence(lb.notifies_of(waiting))
    ended = lb.notifies_of(gone)
    assert [n.headers["subscription-state"] for n in ended[1:]] == ["terminated;reason=noresource"]
    assert len(ended) == 2 and ended[1].body == b""
    assert lb.core.notifier.stats().subscriptions == 1
    assert lb.subscribe("999", user="205").status == 404  # after the sync: no such key


def test_keys_being_waited_for_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that never syncs: at most MAX_PENDING_RESOURCES distinct unknown keys are
    held; the next one is told to come back; one already waited for is still accepted."""
    monkeypatch.setattr(notifier_module, "MAX_PENDING_RESOURCES", 2)
    lb = lab()
    assert [lb.subscribe(e, user=f"2{i}").status for i, e in enumerate(["201", "202"])] == [200] * 2
    refused = lb.subscribe("203", user="30")
    assert (refused.status, refused.headers["retry-after"]) == (503, "5")
    assert lb.subscribe("202", user="31").status == 200


def test_a_setting_only_a_restart_takes_over_stays_a_finding_until_then() -> None:
    lb = lab()
    base = lb.core.config
    moved = load(None, [f"sip.domain={DOMAIN}", 'sip.udp=["127.0.0.1:5091"]', "store.path=",
                        "web.listen=", "security.requests_per_second=0"])  # fmt: skip
    done = lb.core.reconfigure(moved, 0.0)
    assert done.kept == ("sip.udp",) and done.config.sip.udp == base.sip.udp
    (finding,) = lb.core.findings
    assert (finding.level, finding.subject) == ("warn", "reload") and "sip.udp" in finding.text
    lb.core.reconfigure(moved, 1.0)  # the file still differs: still said
    assert len(lb.core.findings) == 1
    lb.core.reconfigure(base, 2.0)  # back to the running value: nothing waits for a restart
    assert lb.core.findings == []


def test_a_fixed_watch_list_knows_its_keys_before_the_sync() -> None:
    lb = lab('watch.extensions=["202"]')
    assert lb.subscribe("202").status == 200
    assert lb.subscribe("999", user="204").status == 404


# --- Asterisk going away --------------------------------------------------------------------------


def ringing_then_lost(timeout: str) -> tuple[Lab, int]:
    resync, timed = over_ami("ring-cancel")
    lb = lab(f"watch.stale_ring_timeout={timeout}")
    lb.feed(resync)
    lb.subscribe("202")
    start = lb.clock.ms
    ring_at = next(i for i, (_, e) in enumerate(timed)
                   if isinstance(e, ChannelSeen) and e.state == 5)  # fmt: skip
    lb.play(timed[: ring_at + 1], start=start)
    assert key_state(lb.notifies("202")[-1]) == "early/recipient"
    lb.feed([SourceLost()])
    return lb, lb.clock.ms


def test_a_ringing_key_stops_blinking_when_asterisk_stays_away() -> None:
    lb, lost = ringing_then_lost("20")
    assert lb.core.next_timer() == pytest.approx((lost + 20_000) / 1000)
    lb.advance(lost + 19_999)
    assert key_state(lb.notifies("202")[-1]) == "early/recipient"
    assert not lb.core.asterisk_synced
    lb.advance(lost + 20_000)
    assert key_state(lb.notifies("202")[-1]) == "idle"
    assert lb.core.stale_ring_at is None


def test_a_resync_in_time_cancels_the_stale_ring_deadline() -> None:
    lb, lost = ringing_then_lost("20")
    lb.advance(lost + 5_000)
    resync, _ = over_ami("ring-cancel")
    lb.feed(resync)
    assert lb.core.stale_ring_at is None and lb.core.asterisk_synced
    lb.advance(lost + 60_000)
    assert key_state(lb.notifies("202")[-1]) == "idle"  # the resync found no such call


def test_no_stale_ring_deadline_when_the_timeout_is_off() -> None:
    lb, lost = ringing_then_lost("0")
    assert lb.core.stale_ring_at is None
    lb.advance(lost + 600_000)
    assert key_state(lb.notifies("202")[-1]) == "early/recipient"


# --- LEDs ---------------------------------------------------------------------------------------

LEDS = """
[[led]]
phone = "203"
key = 2
device = "Custom:DND201"
lights = { inuse = "on", not_inuse = "off" }

[[led]]
phone = "203"
key = 3
hint = "202"
lights = { ringing = "pickup", inuse = "on" }
"""
CONTACT_203 = "sip:203@10.0.0.23:5062"


def led_lab(tmp_path: Path) -> Lab:
    path = tmp_path / "bridge.toml"
    path.write_text(LEDS)
    lb = lab(path=path)
    lb.core.local_towards = lambda host: ("192.0.2.1", 5090)
    return lb


def messages(lb: Lab) -> list[tuple[int, Sip]]:
    return [(ms, m) for ms, peer, m in lb.sent
            if m.method == "MESSAGE" and (peer.host, peer.port) == ("10.0.0.23", 5062)]  # fmt: skip


def test_led_keys_follow_device_and_hint_states_with_one_message_each(tmp_path: Path) -> None:
    lb = led_lab(tmp_path)
    lb.feed([ResyncStarted(), ContactChanged("203", CONTACT_203, endpoint="203", listed=True),
             ResyncFinished()])  # fmt: skip
    ((_, first),) = messages(lb)
    assert first.headers["content-type"] == "application/x-buttons"
    assert first.start == f"MESSAGE {CONTACT_203} SIP/2.0"
    assert "SIP/2.0/UDP 192.0.2.1:5090" in first.headers["via"]
    assert sorted(first.body.decode().strip().split("\r\n\r\n")) == ["k=2\r\nc=off", "k=3\r\nc=off"]
    lb.core.receive(answer(first), Peer("udp", "10.0.0.23", 5062), lb.clock.now)
    lb.feed([DeviceStateChanged("Custom:DND201", "INUSE")])
    lb.feed([DeviceStateChanged("Custom:DND201", "INUSE")])  # the same state: no new MESSAGE
    lb.feed([ExtensionHint("202", "internal", "PJSIP/202", 8)])
    sent = messages(lb)
    assert [m.body.decode() for _, m in sent[1:]] == ["k=2\r\nc=on\r\n"]  # 202's: the next
    lb.core.receive(answer(sent[1][1]), Peer("udp", "10.0.0.23", 5062), lb.clock.now)
    lb.drain()
    assert [m.body.decode() for _, m in messages(lb)[2:]] == ["k=3\r\nc=pickup\r\n"]


def test_an_led_message_nobody_answers_is_retransmitted_then_retried(tmp_path: Path) -> None:
    lb = led_lab(tmp_path)
    lb.feed([ContactChanged("203", CONTACT_203, endpoint="203")])
    lb.advance(40_000)
    times = [ms for ms, _ in messages(lb)]
    # Timer E from T1 doubling to T2, given up at 64*T1 = 32 s; tried again 5 s later.
    assert times == [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
                     37000, 37500, 38500]  # fmt: skip
    assert messages(lb)[-1][1].headers["call-id"] == messages(lb)[0][1].headers["call-id"]
    assert lb.core.notifier.stats().subscriptions == 0  # the MESSAGE side owns its own failures


def test_answers_to_led_messages_never_reach_the_notifier(tmp_path: Path) -> None:
    lb = led_lab(tmp_path)
    lb.feed([ContactChanged("203", CONTACT_203, endpoint="203")])
    ((_, message),) = messages(lb)
    lb.core.receive(answer(message), Peer("udp", "10.0.0.23", 5062), lb.clock.now)
    lb.advance(60_000)
    assert len(messages(lb)) == 1  # confirmed: no retransmission, no retry
    assert lb.core.leds is not None
    (contact,) = lb.core.leds.phones["203"].contacts.values()
    assert contact.in_flight is None and contact.confirmed


@pytest.mark.parametrize("release", releases_with("registrations"))
def test_the_registrations_recording_lights_the_phones_it_registers(
    tmp_path: Path, release: str
) -> None:
    lb = led_lab(tmp_path)
    resync, timed = over_ami("registrations", recordings(release))
    lb.feed(resync)  # 22.10.1's recording begins with 203 registered at 127.0.0.1:5083
    start = lb.clock.ms
    lb.play(timed, start=start)  # 203 (re)registers, nobody answers, 203 unregisters
    assert lb.core.leds is not None and not lb.core.leds.phones["203"].reachable
    lb.advance(lb.clock.ms + 600_000)
    to_203 = [(ms, m) for ms, peer, m in lb.sent if (peer.host, peer.port) == ("127.0.0.1", 5083)]
    assert {m.start for _, m in to_203} == {"MESSAGE sip:203@127.0.0.1:5083 SIP/2.0"}
    # The first MESSAGE once 203 is known, retried on its back-off until 203 unregisters.
    first = to_203[0][0]
    times = [ms - first for ms, _ in to_203]
    backoff = [0, 500, 1500, 3500, 7500]
    assert 3 <= len(times) <= len(backoff)  # the clock is in whole ms: 1 ms either way
    assert all(abs(t - b) <= 1 for t, b in zip(times, backoff, strict=False)), times
    if release == "22.10.1":
        assert first == start  # ... and stopped by the unregistration at 8.04 s
        assert times == [0, 500, 1500, 3500, 7500]


def test_a_status_view_reads_the_core_only() -> None:
    lb = watched("ring-cancel")
    assert lb.core.asterisk_connected and lb.core.asterisk_synced
    assert lb.core.events_total > 10
    assert lb.core.take_status_change() is True
    assert lb.core.take_status_change() is False


def offered_to(trace: str) -> tuple[str, str, str]:
    """(Call-ID, Asterisk's tag, the phone's tag) of the call Asterisk offered a traced phone,
    read with the tests' own SIPp trace parser."""
    messages = parse_trace((RECORDINGS / trace).read_bytes())
    invite = next(m for m in messages if m.direction == "received" and m.method == "INVITE")
    ringing = next(m for m in messages if m.direction == "sent" and m.status == 180)
    from_tag = (invite.header("From") or "").rpartition(";tag=")[2]
    to_tag = (ringing.header("To") or "").rpartition(";tag=")[2]
    return invite.header("Call-ID") or "", from_tag, to_tag


@pytest.mark.parametrize("source", ["ami", "ari"])
def test_ring_while_busy_the_second_call_carries_its_own_pickup_ids(source: str) -> None:
    # The ringing leg is the call 201 → 202 that 202's "in" trace shows arriving.
    call_id, asterisk_tag, phone_tag = offered_to("ring-while-busy/sip-202-in.log")
    both = [ds for n in watched("ring-while-busy", source).notifies("202")
            if len(ds := dialogs(n)) == 2]  # fmt: skip
    assert both, "never two dialogs at once"
    for ringing, busy in both:  # the ringing call first (watch.ringing_first)
        assert busy.get("call-id") is None  # a call in progress cannot be picked up
        assert busy.get("id") != ringing.get("id")
        assert (ringing.get("call-id"), ringing.get("remote-tag"), ringing.get("local-tag")) == (
            call_id, asterisk_tag, phone_tag)  # fmt: skip


def test_the_glue_is_asked_to_flush_only_when_there_is_something_to_do() -> None:
    resync, timed = over_ami("ring-cancel")
    lb = lab("watch.stale_ring_timeout=20")
    lb.feed(resync)
    lb.subscribe("202")
    asked = []
    for _, event in timed:
        lb.core.asterisk_event(event, lb.clock.now)
        wants = lb.core.wants_flush()
        sent = lb.drain()
        asked.append(wants)
        assert wants == bool(sent)  # no NOTIFY is left behind, no flush is for nothing
    assert True in asked and asked.count(False) > asked.count(True)
    lb.core.asterisk_event(SourceLost(), lb.clock.now)
    assert lb.core.wants_flush()  # nothing to send, but the stale-ring deadline is new
    assert lb.core.next_timer() == pytest.approx(20.0)
    assert not lb.core.wants_flush()


# --- a new configuration -------------------------------------------------------------------------


def ringing_202(*extra: str) -> Lab:
    resync, timed = over_ami("pickup-replaces")
    lb = lab(*extra)
    lb.feed(resync)
    lb.subscribe("202")
    ring_at = next(i for i, (_, e) in enumerate(timed) if isinstance(e, LegIds))
    lb.play(timed[: ring_at + 2], start=lb.clock.ms)
    (early,) = dialogs(lb.notifies("202")[-1])
    assert early.get("call-id")  # group 1 picks up group 1
    return lb


def reload(lb: Lab, *extra: str) -> Reconfigured:
    config = load(None, [f"sip.domain={DOMAIN}", 'sip.udp=["127.0.0.1:5090"]', "store.path=",
                         "web.listen=", "security.requests_per_second=0", *extra])  # fmt: skip
    done = lb.core.reconfigure(config, lb.clock.now)
    lb.drain()
    return done


def test_a_reload_of_the_pickup_policy_tells_the_watchers_of_ringing_keys_at_once() -> None:
    lb = ringing_202()
    done = reload(lb, "security.pickup=nobody")
    assert done.changed == {"security.pickup"} and not done.restart_source
    (early,) = dialogs(lb.notifies("202")[-1])
    assert early.findtext("d:state", namespaces=NS) == "early" and early.get("call-id") is None


def test_a_reload_keeps_what_needs_a_restart_and_restarts_the_source_for_a_new_tracker() -> None:
    lb = ringing_202()
    tracker = lb.core.tracker
    done = reload(lb, 'sip.udp=["127.0.0.1:5999"]', "watch.outgoing_blinks=true")
    assert done.kept == ("sip.udp",) and done.restart_source
    assert [a.port for a in done.config.sip.udp] == [5090]
    assert lb.core.tracker is not tracker and lb.core.documents.tracker is lb.core.tracker
    assert reload(lb, 'sip.udp=["127.0.0.1:5999"]', "watch.outgoing_blinks=true").changed == {
        "sip.udp"}  # fmt: skip


def test_turning_digest_on_ends_the_subscriptions_made_without_it(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text('203 = "secret"\n')
    lb = ringing_202()
    reload(lb, "security.auth=digest", f"security.users_file={users}")
    assert lb.sent[-1][2].headers["subscription-state"] == "terminated;reason=deactivated"
    assert lb.core.notifier.stats().subscriptions == 0


def test_a_source_restart_on_reload_forgets_asterisk_without_calling_it_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = ringing_202("watch.stale_ring_timeout=20")
    lb.core.source_restarting(lb.clock.now)
    assert not lb.core.asterisk_synced and lb.core.stale_ring_at is None
    assert "unreachable" not in caplog.text


def test_a_ringing_key_is_told_before_the_other_keys_of_the_same_burst() -> None:
    """A burst of Asterisk events (pickup-replaces, 201 calls 202) fed before anything is sent:
    the ringing key's watchers (pickup ids) go out first, the caller's key after them."""
    resync, timed = over_ami("pickup-replaces")
    lb = lab()
    lb.feed(resync)
    assert lb.subscribe("201").status == 200 and lb.subscribe("202").status == 200
    burst, start = 0, lb.clock.ms
    for ms, event in timed:  # up to 202 ringing with its pickup ids, nothing drained
        lb.clock.ms = start + ms
        lb.core.asterisk_event(event, lb.clock.now)
        burst += 1
        if any(d.pickup is not None for d in lb.core.tracker.state("202").dialogs):
            break
    assert 1 < burst < len(timed) and lb.core.fanout_pending
    first = [Sip.read(data) for data, _ in lb.core.drain(lb.clock.now, 16, ringing_only=True)]
    assert [entity(n) for n in first if n.method == "NOTIFY"] == ["202"]
    assert any(d.get("call-id") for n in first for d in dialogs(n))  # with the ids
    rest = [Sip.read(data) for data, _ in lb.core.outgoing()]
    assert [entity(n) for n in rest if n.method == "NOTIFY"] == ["201"]
