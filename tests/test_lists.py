"""RFC 4662 resource lists on the fake clock: ``BridgeCore`` with a list subscriber (Supported:
eventlist) while Asterisk 22.10.1's recordings play. Every list NOTIFY is read with the standard
library's MIME parser (not ours), its RLMI part checked against tests/fixtures/schemas/rlmi.xsd
and every dialog-info part against the RFC 4235 schema."""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from panoramisk.message import Message
from test_core import (
    DOMAIN,
    FIXTURES,
    NS,
    PHONE,
    SCHEMA,
    Lab,
    Sip,
    collapsed,
    key_state,
    lab,
    over_ami,
)

from bridge.asterisk import ami_events
from bridge.asterisk.ami_wire import (
    LIST_DETAIL,
    MessageSplitter,
    parse_message,
    renamed_list_event,
)
from bridge.config import load
from bridge.config_schema import ConfigError
from bridge.events import ResourceListEntry, ResourceListsRead

RLMI = etree.XMLSchema(etree.parse(str(FIXTURES / "schemas" / "rlmi.xsd")))
RNS = {"r": "urn:ietf:params:xml:ns:rlmi"}
KEYS = ("201", "202", "203")
CONFIG = """
[[lists]]
name = "blf-list"
keys = ["201", "202", "203"]
notification_batch_interval = {interval}
"""


@dataclass
class ListNotify:
    """One list NOTIFY as a phone reads it: the RLMI document and each resource's part."""

    notify: Sip
    rlmi: etree._Element
    parts: dict[str, Sip]  # resource URI → its dialog-info part (as a Sip-like body holder)

    @property
    def full(self) -> bool:
        return self.rlmi.get("fullState") == "true"

    @property
    def version(self) -> int:
        return int(self.rlmi.get("version", "-1"))

    def resources(self) -> list[str]:
        return [str(r.get("uri")) for r in self.rlmi.findall("r:resource", RNS)]

    def state(self, exten: str) -> str | None:
        part = self.parts.get(f"sip:{exten}@{DOMAIN}")
        return None if part is None else key_state(part)

    def part_of(self, exten: str) -> bytes | None:
        """The dialog-info part of one extension, whatever the URI's host (Asterisk's or ours)."""
        for uri, part in self.parts.items():
            if uri.removeprefix("sip:").partition("@")[0] == exten:
                return part.body
        return None

    def dialogs(self, exten: str) -> list[etree._Element]:
        part = self.parts[f"sip:{exten}@{DOMAIN}"]
        return list(etree.fromstring(part.body).findall("d:dialog", NS))


def read_list(notify: Sip, *, strict: bool = True) -> ListNotify:
    """Split a list NOTIFY as RFC 4662 says a subscriber does: the multipart's start is the
    RLMI document, whose instances name their parts by Content-ID. ``strict``: every document
    valid against its schema, every part's entity its resource's URI (ours; Asterisk's own
    dialog-info puts <remote> before <local>, which the RFC 4235 schema refuses)."""
    ctype = notify.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + notify.body
    )
    assert message.get_param("type") == "application/rlmi+xml"
    start = message.get_param("start")
    by_cid: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        by_cid[str(part["Content-ID"])] = (part.get_content_type(), payload)
    first = next(iter(by_cid))
    # RFC 2387: without a start parameter (Asterisk writes none) the first part is the root.
    assert first == start or (not strict and start is None), "the RLMI document is the start"
    kind, rlmi_body = by_cid.pop(first)
    assert kind == "application/rlmi+xml"
    rlmi = etree.fromstring(rlmi_body)
    if strict:
        RLMI.assertValid(rlmi)
    parts = {}
    for resource in rlmi.findall("r:resource", RNS):
        for instance in resource.findall("r:instance", RNS):
            if instance.get("cid") is None:  # no part (Asterisk's final NOTIFY keeps them)
                continue
            kind, body = by_cid.pop(f"<{instance.get('cid')}>")
            assert kind == "application/dialog-info+xml"
            doc = etree.fromstring(body)
            if strict:
                SCHEMA.assertValid(doc)
                assert doc.get("entity") == resource.get("uri")
            parts[str(resource.get("uri"))] = Sip("", {}, body)
    assert not by_cid, f"parts no RLMI instance names: {list(by_cid)}"
    return ListNotify(notify, rlmi, parts)


def list_lab(tmp_path: Path, *extra: str, interval: int = 200) -> Lab:
    path = tmp_path / "bridge.toml"
    path.write_text(CONFIG.format(interval=interval))
    return lab(*extra, path=path)


def subscribe_list(lb: Lab, name: str = "blf-list", *, eventlist: bool = True,
                   user: str = "203", cseq: int = 1, to_tag: str = "",
                   call_id: str = "") -> Sip:  # fmt: skip
    lb.branches += 1
    call_id = call_id or f"list-{lb.branches}@{PHONE.host}"
    headers = [
        f"SUBSCRIBE sip:{name}@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {PHONE.host}:{PHONE.port};branch=z9hG4bK-l{lb.branches}",
        f"From: <sip:{user}@{DOMAIN}>;tag=list{call_id[:12]}",
        f"To: <sip:{name}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} SUBSCRIBE",
        f"Contact: <sip:{user}@{PHONE.host}:{PHONE.port}>",
        "Event: dialog",
        "Accept: application/dialog-info+xml, application/rlmi+xml, multipart/related",
        *(["Supported: eventlist"] if eventlist else []),
        "Expires: 600",
        "Content-Length: 0",
    ]
    lb.core.receive(("\r\n".join(headers) + "\r\n\r\n").encode(), PHONE, lb.clock.now)
    (reply, *_) = lb.drain()
    return reply


def list_notifies(lb: Lab, reply: Sip) -> list[ListNotify]:
    out = [read_list(n) for n in lb.notifies_of(reply)]
    for n in out:
        assert n.notify.headers["require"] == "eventlist"
        assert n.notify.headers["event"] == "dialog"
    assert [n.version for n in out] == list(range(len(out))), "RLMI version +1 per NOTIFY"
    return out


def played(tmp_path: Path, scenario: str, *extra: str, interval: int = 200,
           user: str = "203") -> tuple[Lab, list[ListNotify]]:  # fmt: skip
    resync, timed = over_ami(scenario)
    lb = list_lab(tmp_path, *extra, interval=interval)
    lb.feed(resync)
    reply = subscribe_list(lb, user=user)
    assert reply.status == 200
    lb.play(timed, start=lb.clock.ms)
    lb.advance(lb.clock.ms + 5000)  # the last gathering interval runs out
    return lb, list_notifies(lb, reply)


def test_a_list_subscription_is_accepted_with_require_eventlist_and_full_state_first(
    tmp_path: Path,
) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb)
    assert reply.status == 200
    assert reply.headers["require"] == "eventlist"
    (first,) = list_notifies(lb, reply)
    assert first.full and first.version == 0
    assert first.resources() == [f"sip:{k}@{DOMAIN}" for k in KEYS]
    assert first.rlmi.get("uri") == f"sip:blf-list@{DOMAIN}"
    assert all(first.state(k) == "idle" for k in KEYS)


def test_a_retransmitted_list_subscribe_gets_the_same_200(tmp_path: Path) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb, call_id="same@phone")
    lb.branches -= 1  # the same branch: a retransmission
    again = subscribe_list(lb, call_id="same@phone")
    assert (again.status, again.headers["require"]) == (200, "eventlist")
    assert again.headers["to"] == reply.headers["to"]
    assert lb.core.notifier.stats().subscriptions == 1


def test_without_supported_eventlist_a_list_is_refused_with_421(tmp_path: Path) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb, eventlist=False)
    assert reply.status == 421
    assert reply.headers["require"] == "eventlist"
    assert lb.core.notifier.stats().subscriptions == 0


def test_a_list_named_like_a_key_is_the_key_without_supported_eventlist(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[[lists]]\nname = "202"\nkeys = ["201", "203"]\n')
    lb = lab(path=path)
    lb.feed(over_ami("ring-cancel")[0])
    as_key = subscribe_list(lb, "202", eventlist=False)
    assert as_key.status == 200 and "require" not in as_key.headers
    (notify,) = lb.notifies_of(as_key)
    assert notify.headers["content-type"] == "application/dialog-info+xml"
    as_list = subscribe_list(lb, "202", user="204")
    assert (as_list.status, as_list.headers["require"]) == (200, "eventlist")
    (first,) = list_notifies(lb, as_list)
    assert first.resources() == [f"sip:201@{DOMAIN}", f"sip:203@{DOMAIN}"]


def test_supported_eventlist_to_a_single_key_is_an_ordinary_subscription(tmp_path: Path) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb, "202")
    assert reply.status == 200 and "require" not in reply.headers
    (notify,) = lb.notifies_of(reply)
    assert notify.headers["content-type"] == "application/dialog-info+xml"


def test_a_call_sends_only_what_changed_with_the_pickup_ids_in_the_part(tmp_path: Path) -> None:
    _, notifies = played(tmp_path, "pickup-replaces")
    first, *changes = notifies
    assert first.full and changes
    assert not any(n.full for n in changes)
    states = [n.state("202") for n in notifies if n.state("202") is not None]
    assert collapsed(states) == ["idle", "early/recipient", "idle"]
    early = [d for n in notifies if n.state("202") == "early/recipient" for d in n.dialogs("202")]
    lines = (FIXTURES / "asterisk-22.10.1" / "pickup-replaces" / "replaces.csv").read_text()
    call_id, asterisk_tag, phone_tag = lines.splitlines()[1].split(";")
    assert early and all(
        (d.get("call-id"), d.get("remote-tag"), d.get("local-tag"))
        == (call_id, asterisk_tag, phone_tag)
        for d in early
    )
    # Dialog-info versions count per resource: 202's parts 0, 1, 2 …
    versions = [int(etree.fromstring(n.parts[f"sip:202@{DOMAIN}"].body).get("version"))
                for n in notifies if n.state("202") is not None]  # fmt: skip
    assert versions == list(range(len(versions)))


def test_a_key_that_never_changes_is_only_in_the_full_state(tmp_path: Path) -> None:
    first, *changes = played(tmp_path, "ring-cancel")[1]  # 201 calls 202; 203 stays idle
    assert changes and f"sip:203@{DOMAIN}" in first.resources()
    assert all(f"sip:203@{DOMAIN}" not in n.resources() for n in changes)


def test_the_list_shows_each_key_as_a_single_key_subscription_does(tmp_path: Path) -> None:
    resync, timed = over_ami("ring-answer-hangup")
    lb = list_lab(tmp_path)
    lb.feed(resync)
    reply = subscribe_list(lb)
    singles = {k: lb.subscribe(k) for k in KEYS}
    lb.play(timed, start=lb.clock.ms)
    lb.advance(lb.clock.ms + 5000)
    notifies = list_notifies(lb, reply)
    for exten, single in singles.items():
        alone = collapsed([key_state(n) for n in lb.notifies_of(single)])
        listed = collapsed([s for n in notifies if (s := n.state(exten)) is not None])
        assert listed == alone, exten


def test_changes_within_the_interval_go_in_one_notify(tmp_path: Path) -> None:
    _, gathered = played(tmp_path, "ring-answer-hangup", interval=500)
    _, one_by_one = played(tmp_path, "ring-answer-hangup", interval=0)
    # 201 and 202 change together when the call starts: one NOTIFY carries both.
    assert any({f"sip:201@{DOMAIN}", f"sip:202@{DOMAIN}"} <= set(n.resources())
               for n in gathered[1:])  # fmt: skip
    assert len(gathered) < len(one_by_one)


def test_a_gathered_change_asks_the_glue_to_wake_at_the_interval(tmp_path: Path) -> None:
    resync, timed = over_ami("ring-cancel")
    lb = list_lab(tmp_path, interval=300)
    lb.feed(resync)
    subscribe_list(lb)
    lb.core.wants_flush()  # what the subscription asked is done
    for _, event in timed:
        if lb.core.asterisk_event(event, lb.clock.now):  # a key of the list changed: nothing
            assert lb.core.outgoing() == []  # goes out yet, but the glue must re-arm its timer
            assert lb.core.wants_flush()
            assert lb.core.next_timer() == pytest.approx(lb.clock.now + 0.3)
            return
    pytest.fail("no key changed")


@pytest.mark.parametrize(("mode", "shown"), [("group", True), ("nobody", False)])
def test_the_pickup_policy_decides_the_ids_inside_each_part(
    tmp_path: Path, mode: str, shown: bool
) -> None:
    _, notifies = played(tmp_path, "pickup-replaces", f"security.pickup={mode}")
    early = [d for n in notifies if n.state("202") == "early/recipient" for d in n.dialogs("202")]
    assert early and all((d.get("call-id") is not None) == shown for d in early)


def test_a_refresh_gets_the_full_state_again(tmp_path: Path) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb)
    to_tag = reply.headers["to"].partition(";tag=")[2]
    again = subscribe_list(lb, cseq=2, to_tag=to_tag, call_id=reply.headers["call-id"])
    assert again.status == 200 and again.headers["require"] == "eventlist"
    first, second = list_notifies(lb, reply)
    assert second.full and second.resources() == first.resources()


def test_asterisks_own_lists_are_served_and_a_changed_list_is_renewed() -> None:
    lb = lab()
    lb.feed(over_ami("ring-cancel")[0])
    lists = (ResourceListEntry("blf-list", "dialog", ("201", "202"), False, 0),
             ResourceListEntry("presence", "presence", ("201",), False, 0))  # fmt: skip
    lb.feed([ResourceListsRead(lists)])
    assert subscribe_list(lb, "presence").status == 404  # only dialog lists are served
    reply = subscribe_list(lb)
    assert reply.status == 200
    (first,) = list_notifies(lb, reply)
    assert first.resources() == [f"sip:201@{DOMAIN}", f"sip:202@{DOMAIN}"]
    lb.feed([ResourceListsRead(lists)])  # read again at the next sync, unchanged: nothing
    assert len(lb.notifies_of(reply)) == 1
    changed = (ResourceListEntry("blf-list", "dialog", ("201", "202", "203"), False, 0),)
    lb.feed([ResourceListsRead(changed)])
    final = lb.notifies_of(reply)[-1]
    assert final.headers["subscription-state"] == "terminated;reason=deactivated"
    renewed = subscribe_list(lb)
    assert list_notifies(lb, renewed)[0].resources() == [f"sip:{k}@{DOMAIN}" for k in KEYS]


def test_a_list_named_without_keys_is_asterisks_list_of_that_name(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[[lists]]\nname = "blf-list"\n')
    lb = lab(path=path)
    lb.feed(over_ami("ring-cancel")[0])
    assert subscribe_list(lb).status == 404  # Asterisk has not told its keys yet
    lb.feed([ResourceListsRead((ResourceListEntry("blf-list", "dialog", ("202",), False, 0),))])
    reply = subscribe_list(lb)
    assert reply.status == 200
    assert list_notifies(lb, reply)[0].resources() == [f"sip:202@{DOMAIN}"]


def test_nested_lists_are_flattened_and_an_item_asterisk_has_no_hint_for_is_left_out() -> None:
    """res_pjsip_pubsub's build_node_children leaves out an item whose own SUBSCRIBE would fail
    (Asterisk 22.10.1): a key Asterisk would answer 404 for is no instance of the list."""
    lb = lab()
    lb.feed(over_ami("ring-cancel")[0])
    lb.feed([ResourceListsRead((
        ResourceListEntry("outer", "dialog", ("201", "inner", "999"), False, 0),
        ResourceListEntry("inner", "dialog", ("202", "outer"), False, 0),
    ))])  # fmt: skip
    reply = subscribe_list(lb, "outer")
    (first,) = list_notifies(lb, reply)
    assert first.resources() == [f"sip:{k}@{DOMAIN}" for k in ("201", "202")]
    assert set(first.parts) == {f"sip:201@{DOMAIN}", f"sip:202@{DOMAIN}"}


@pytest.mark.parametrize(("table", "named"), [
    ('[[lists]]\nkeys = ["201"]', "lists[0].name"),
    ('[[lists]]\nname = "a"\nkeys = []', "lists[0].keys"),
    ('[[lists]]\nname = "a"\nkeys = "201"', "lists[0].keys"),
    ('[[lists]]\nname = "a"\nkeys = ["2 01"]', "lists[0].keys"),
    ('[[lists]]\nname = "a"\nkeys = ["201"]\nnotification_batch_interval = -1',
     "lists[0].notification_batch_interval"),
    ('[[lists]]\nname = "a"\nkeys = ["201"]\nfull_state = "yes"', "lists[0].full_state"),
    ('[[lists]]\nname = "a"\nkeys = ["201"]\nbatch = 1', "lists[0].batch"),
    ('[[lists]]\nname = "a"\nkeys = ["201"]\n[[lists]]\nname = "a"\nkeys = ["202"]',
     "lists[1].name"),
])  # fmt: skip
def test_a_bad_list_is_refused_naming_the_setting(tmp_path: Path, table: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(table + "\n")
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load(path)


# --- Asterisk's lists over AMI ------------------------------------------------------------------


def recorded_list_answer() -> list[str]:
    """The messages of the recorded answer to PJSIPShowResourceLists, as text blocks."""
    wire = (FIXTURES / "asterisk-22.10.1-lists" / "lists" / "ami-wire.jsonl").read_text()
    records = [json.loads(line) for line in wire.splitlines()]
    asked = next(i for i, r in enumerate(records) if r["data"].startswith(
        "Action: PJSIPShowResourceLists"))  # fmt: skip
    splitter = MessageSplitter()
    return splitter.feed(records[asked + 1]["data"].encode()) + splitter.feed(
        records[asked + 2]["data"].encode()
    )


def test_the_live_reader_takes_the_lists_asterisk_answers() -> None:
    blocks = recorded_list_answer()
    detail = next(b for b in blocks if b.startswith(LIST_DETAIL))
    with pytest.raises(ValueError, match="Event twice"):
        parse_message(detail)  # a repeated Event is a broken stream, unless renamed first
    # As the AMI reader hands the answer over: renamed, then read by panoramisk.
    blocks = [renamed_list_event(b) if b.startswith(LIST_DETAIL) else b for b in blocks]
    assert all(parse_message(b) for b in blocks)
    frames = [dict(Message.from_line(b).items()) for b in blocks]
    assert ami_events.resource_lists(frames) == ResourceListsRead((ResourceListEntry(
        "blf-list", "dialog", ("201", "202", "203", "210", "701"), False, 200),))  # fmt: skip


@pytest.mark.parametrize(("frames", "expected"), [
    ([{"Response": "Error", "Message": "No resource lists found"}], ResourceListsRead(())),
    ([{"Response": "Error", "Message": "Permission denied"}], None),
    ([{"Response": "Success"}, {"Event": ["ResourceListDetail", "presence"],
      "ObjectName": "p", "ListItem": "201"}],
     ResourceListsRead((ResourceListEntry("p", "presence", ("201",), False, 0),))),
])  # fmt: skip
def test_what_asterisk_may_answer_about_lists(
    frames: list[dict[str, object]], expected: ResourceListsRead | None
) -> None:
    assert ami_events.resource_lists(frames) == expected


def test_a_reload_that_changes_a_configured_list_renews_its_subscriptions(tmp_path: Path) -> None:
    lb = list_lab(tmp_path)
    lb.feed(over_ami("ring-cancel")[0])
    reply = subscribe_list(lb)
    path = tmp_path / "bridge.toml"
    path.write_text(CONFIG.format(interval=200).replace('"203"]', '"203", "204"]'))
    same = [f"sip.domain={DOMAIN}", 'sip.udp=["127.0.0.1:5090"]', "store.path=", "web.listen=",
            "security.requests_per_second=0"]  # fmt: skip
    done = lb.core.reconfigure(load(path, same), lb.clock.now)
    assert "lists" in done.changed and "lists" not in done.kept
    lb.drain()
    final = lb.notifies_of(reply)[-1]
    assert final.headers["subscription-state"] == "terminated;reason=deactivated"
    renewed = subscribe_list(lb)
    assert len(list_notifies(lb, renewed)[0].resources()) == len(KEYS) + 1
