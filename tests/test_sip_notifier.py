"""Tests for bridge.sip.notifier: every subscription rule, driven with a fake clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.resource_lists import ResourceList
from bridge.sip.client_transaction import ClientTransaction
from bridge.sip.message import Request, Response, build_response, parse_message
from bridge.sip.notifier import Notifier, NotifierSettings, Peer
from bridge.sip.subscription import NotifyTransaction, Subscription

PHONE = Peer("udp", "192.0.2.10", 40000)  # the source address: differs from Via (NAT)
TCP_PHONE = Peer("tcp", "192.0.2.11", 40001)
CONTACTS = {"udp": ("198.51.100.1", 5060), "tcp": ("198.51.100.1", 5061)}


class Doc:
    def __init__(self, state: str) -> None:
        self.state = state
        self.prefix = b'<dialog-info version="'
        self.suffix = f'" state="{state}"/>'.encode()

    def body(self, version: int) -> bytes:
        return self.prefix + str(version).encode() + self.suffix


class Source:
    """In-memory DocumentSource: resource -> a word standing for its state."""

    def __init__(self) -> None:
        self.states = {"202": "idle", "203": "idle"}

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        return user

    def knows(self, resource: str) -> bool:
        return resource in self.states

    def document(self, resource: str, watcher: str) -> Doc:
        return Doc(self.states[resource])


def subscribe(
    *,
    resource: str = "202",
    call_id: str = "call-1",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    cseq: int = 1,
    branch: str = "z9hG4bK-1",
    expires: int | None = 600,
    transport: str = "UDP",
    method: str = "SUBSCRIBE",
    drop: tuple[str, ...] = (),
    **extra: str,
) -> bytes:
    """A SUBSCRIBE as a phone behind NAT sends it; keyword args add or replace headers."""
    headers = {
        "Via": f"SIP/2.0/{transport} 10.0.0.5:5060;branch={branch};rport",
        "From": f"<sip:203@pbx.example>;tag={from_tag}",
        "To": f"<sip:{resource}@pbx.example>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID": call_id,
        "CSeq": f"{cseq} {method}",
        "Contact": "<sip:203@10.0.0.5:5060>",
        "Event": "dialog",
        "Accept": "application/dialog-info+xml",
        "Max-Forwards": "70",
    }
    if expires is not None:
        headers["Expires"] = str(expires)
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    lines = [f"{method} sip:{resource}@pbx.example SIP/2.0"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


class Bridge:
    """A Notifier plus helpers to feed it and read what it sends.

    What it sends comes back parsed, typed Any: each test asserts what it expects to get.
    """

    def __init__(self, **kwargs: float) -> None:
        self.source = Source()
        self.n = Notifier(self.source, NotifierSettings(contacts=CONTACTS, **kwargs))  # type: ignore[arg-type]

    def send(self, data: bytes, now: float = 0.0, peer: Peer = PHONE) -> list[Any]:
        self.n.receive(data, peer, now)
        return self.drain(peer)

    def drain(self, peer: Peer | None = PHONE) -> list[Any]:
        out = self.n.outgoing()
        if peer is not None:
            assert all(p == peer for _, p in out), out
        return [parse_message(data) for data, _ in out]

    def tick(self, now: float) -> list[Any]:
        self.n.handle_timer(now)
        return self.drain()

    def answer(self, notify: Request | Response, status: int = 200, now: float = 0.0,
               peer: Peer = PHONE) -> list[Any]:  # fmt: skip
        assert isinstance(notify, Request) and notify.method == "NOTIFY"
        return self.send(build_response(notify, status).to_bytes(), now, peer)

    def subscribed(self, now: float = 0.0, **kw: str | int) -> tuple[Response, Request]:
        """SUBSCRIBE, check the 200 + NOTIFY pair, answer the NOTIFY."""
        ok, notify = self.send(subscribe(**kw), now)
        assert isinstance(ok, Response) and ok.status == 200
        assert isinstance(notify, Request)
        assert self.answer(notify, now=now) == []
        return ok, notify


def state_of(notify: Request | Response) -> str | None:
    return notify.headers.get("Subscription-State")


# ----------------------------------------------------------------- creating a subscription


def test_subscribe_gets_200_then_a_full_notify() -> None:
    b = Bridge()
    ok, notify = b.send(subscribe())
    assert isinstance(ok, Response) and ok.status == 200
    to_tag = ok.to_addr().tag
    assert to_tag
    assert ok.headers.get("Expires") == "600"
    assert ok.headers.get("Contact") == "<sip:198.51.100.1:5060>"
    via = ok.vias()[0]
    assert (via.received, via.param_rport if hasattr(via, "param_rport") else None) is not None
    assert ("rport", "40000") in via.params and via.received == "192.0.2.10"

    assert isinstance(notify, Request) and notify.method == "NOTIFY"
    assert notify.uri == "sip:203@10.0.0.5:5060"  # the subscriber's Contact
    nvia = notify.vias()[0]
    assert nvia.transport == "UDP" and (nvia.host, nvia.port) == ("198.51.100.1", 5060)
    assert nvia.branch is not None and nvia.branch.startswith("z9hG4bK") and nvia.rport
    assert notify.headers.get("Max-Forwards") == "70"
    assert notify.from_addr().tag == to_tag and notify.from_addr().uri.user == "202"
    assert notify.to_addr().tag == "ft1" and notify.to_addr().uri.user == "203"
    assert notify.call_id() == "call-1"
    assert (notify.cseq().seq, notify.cseq().method) == (1, "NOTIFY")
    assert notify.headers.get("Contact") == "<sip:198.51.100.1:5060>"
    assert notify.headers.get("Event") == "dialog"
    assert state_of(notify) == "active;expires=600"
    assert notify.headers.get("Content-Type") == "application/dialog-info+xml"
    assert notify.body == b'<dialog-info version="0" state="idle"/>'
    assert b.n.stats().subscriptions == 1 and b.n.stats().watchers == {"202": 1}
    (watcher,) = b.n.watchers("202")
    assert watcher.peer == PHONE and watcher.expires_at == 600.0


def test_expires_default_and_clamp() -> None:
    b = Bridge()
    ok, _ = b.send(subscribe(expires=None))
    assert ok.headers.get("Expires") == "3600"
    ok, notify = b.send(subscribe(expires=99999, call_id="c2", branch="z9hG4bK-2"))
    assert ok.headers.get("Expires") == "3600" and state_of(notify) == "active;expires=3600"


def test_tcp_subscription_uses_tcp_contact_and_via() -> None:
    b = Bridge()
    ok, notify = b.send(subscribe(transport="TCP"), peer=TCP_PHONE)
    assert ok.headers.get("Contact") == "<sip:198.51.100.1:5061;transport=tcp>"
    assert notify.vias()[0].transport == "TCP" and notify.vias()[0].port == 5061


def test_event_id_is_echoed_and_record_route_becomes_route() -> None:
    b = Bridge()
    ok, notify = b.send(subscribe(Event="dialog;id=7", Record_Route="<sip:p1;lr>, <sip:p2;lr>"))
    assert ok.list_values("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert notify.headers.get("Event") == "dialog;id=7"
    assert notify.headers.get_all("Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]


def test_fetch_with_expires_zero_gets_one_final_notify_with_state() -> None:
    b = Bridge()
    ok, notify = b.send(subscribe(expires=0))
    assert ok.status == 200 and ok.headers.get("Expires") == "0"
    assert state_of(notify) == "terminated;reason=timeout"
    assert notify.body == b'<dialog-info version="0" state="idle"/>'
    assert b.n.stats().subscriptions == 0
    assert b.answer(notify) == []


# ----------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "status", "header"),
    [
        (subscribe(expires=59), 423, ("Min-Expires", "60")),
        (subscribe(Event="presence"), 489, ("Allow-Events", "dialog")),
        (subscribe(drop=("Event",)), 489, ("Allow-Events", "dialog")),
        (subscribe(resource="999"), 404, None),
        (subscribe(Accept="application/pidf+xml"), 406, ("Accept", "application/dialog-info+xml")),
        (subscribe(Accept=""), 406, None),
        (subscribe(to_tag="not-ours"), 481, None),
        (subscribe(method="INVITE"), 405, ("Allow", "OPTIONS, SUBSCRIBE")),
        (subscribe(method="PUBLISH"), 405, ("Allow", "OPTIONS, SUBSCRIBE")),
        (subscribe(method="CANCEL"), 481, None),
        (subscribe(Require="100rel"), 420, ("Unsupported", "100rel")),
    ],
)
def test_refusals(data: bytes, status: int, header: tuple[str, str] | None) -> None:
    b = Bridge()
    (response,) = b.send(data)
    assert isinstance(response, Response) and response.status == status
    assert response.to_addr().tag  # every final answer carries a To tag
    if header is not None:
        assert response.headers.get(header[0]) == header[1]
    assert b.n.stats().subscriptions == 0


def test_accept_wildcards_and_lists_are_fine() -> None:
    b = Bridge()
    assert b.send(subscribe(Accept="application/*"))[0].status == 200
    data = subscribe(Accept="multipart/related, application/dialog-info+xml;q=1", call_id="x")
    assert b.send(data)[0].status == 200


def test_request_uri_without_user_is_404() -> None:
    data = subscribe().replace(b"SUBSCRIBE sip:202@pbx.example", b"SUBSCRIBE sip:pbx.example")
    (response,) = Bridge().send(data)
    assert isinstance(response, Response) and response.status == 404


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (subscribe(drop=("Call-ID",)), "missing Call-ID"),
        (subscribe(drop=("From",)), "missing From"),
        (subscribe(drop=("To",)), "missing To"),
        (subscribe(drop=("CSeq",)), "missing CSeq"),
        (subscribe(drop=("Contact",)), "missing Contact"),
        (subscribe(From="<sip:203@pbx.example>"), "missing From tag"),
        (subscribe(Expires="soon"), "malformed Expires"),
        (subscribe(CSeq="1 OPTIONS"), "CSeq method differs"),
        (subscribe(CSeq="one SUBSCRIBE"), "malformed CSeq"),
        (subscribe(Contact="<sip:broken"), "bad Contact"),
        (subscribe(Event="dialog;"), "bad parameter name in Event"),
        (subscribe(From="<sip:203@h;tag=x"), "bad From"),
        (subscribe().replace(b"Max-Forwards: 70", b"Max-Forwards 70"), "malformed header line"),
        (subscribe().replace(b"Content-Length: 0", b"Content-Length: 50"), "body shorter"),
    ],
)
def test_malformed_requests_get_400_naming_the_problem(data: bytes, problem: str) -> None:
    (response,) = Bridge().send(data)
    assert isinstance(response, Response) and response.status == 400
    assert problem in response.reason
    assert response.call_id() if b"Call-ID" in data else True
    assert response.vias()[0].branch == "z9hG4bK-1"


def test_garbage_without_request_line_or_via_is_dropped_with_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = Bridge()
    with caplog.at_level(logging.INFO, logger="bridge.sip"):
        assert b.send(b"\x16\x03\x01 hello") == []
        assert b.send(subscribe(drop=("Via",))) == []
        assert b.send(b"\r\n\r\n") == []  # keep-alive: silently ignored
        other = Peer("udp", "192.0.2.99", 5060)
        assert b.send(subscribe(drop=("Via",)), peer=other) == []
        for second in range(1, 100):  # a flood: one line a minute per source
            assert b.send(b"\x16\x03\x01 hello", now=second / 10) == []
        assert b.send(b"\x16\x03\x01 hello", now=61.0) == []
    messages = [r.getMessage() for r in caplog.records if r.name == "bridge.sip"]
    assert len(messages) == 3, messages
    assert messages[0] == "dropped unreadable message from udp:192.0.2.10:40000: bad start line"
    assert messages[1].startswith("dropped SUBSCRIBE from udp:192.0.2.99:5060: ")
    assert messages[1].endswith("(1 log lines about peers were left out before this one)")
    assert messages[2].startswith("dropped unreadable message from udp:192.0.2.10:40000")
    assert "(99 log lines about peers were left out before this one)" in messages[2]


def test_options_and_ack() -> None:
    b = Bridge()
    (ok,) = b.send(subscribe(method="OPTIONS"))
    assert isinstance(ok, Response) and ok.status == 200
    assert ok.headers.get("Allow-Events") == "dialog" and ok.headers.get("Allow")
    assert b.send(subscribe(method="ACK")) == []


# ----------------------------------------------------------------- transactions


def test_udp_retransmitted_subscribe_gets_the_same_answer_and_no_new_notify() -> None:
    b = Bridge()
    b.n.receive(subscribe(), PHONE, 0.0)
    first_ok = b.n.outgoing()[0][0]
    b.n.receive(subscribe(), PHONE, 0.4)
    assert b.n.outgoing() == [(first_ok, PHONE)]
    assert b.n.stats().subscriptions == 1 and b.n.stats().server_transactions == 1
    b.n.handle_timer(31.9)
    b.n.outgoing()  # (the NOTIFY timed out meanwhile)
    b.n.receive(subscribe(), PHONE, 31.9)
    assert b.n.outgoing() == [(first_ok, PHONE)]  # still the same bytes after 64*T1 - ε
    while (deadline := b.n.next_timer()) is not None and deadline <= 64.0:
        b.n.handle_timer(deadline)  # as the transport does: each timer at its deadline
    assert b.n.stats().server_transactions == 0  # gone within two lifetimes


def test_retransmitted_refresh_and_refusal_get_their_own_answers_byte_for_byte() -> None:
    b = Bridge()
    b.n.receive(subscribe(), PHONE, 0.0)
    ok, _ = b.n.outgoing()
    tag = parse_message(ok[0]).to_addr().tag
    refresh = subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-2", expires=300)
    b.n.receive(refresh, PHONE, 1.0)
    refreshed = b.n.outgoing()[0]
    assert parse_message(refreshed[0]).headers.get("Expires") == "300"
    b.n.receive(refresh, PHONE, 1.5)
    assert b.n.outgoing() == [refreshed]  # the 200 again, no second NOTIFY
    refused = subscribe(call_id="call-2", branch="z9hG4bK-3", Event="presence")
    b.n.receive(refused, PHONE, 2.0)
    (bad_event,) = b.n.outgoing()
    assert parse_message(bad_event[0]).status == 489
    b.n.receive(refused, PHONE, 2.5)
    assert b.n.outgoing() == [bad_event]  # the same random To tag, byte for byte
    # Same branch, other Call-ID: not a retransmission, even though the key is only a hash.
    b.n.receive(subscribe(call_id="call-3", branch="z9hG4bK-3"), PHONE, 3.0)
    assert [parse_message(d).status for d, _ in b.n.outgoing()[:1]] == [200]


def test_notify_retransmission_schedule_and_timeout_on_udp(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    b = Bridge()
    b.subscribed(resource="203", call_id="call-0")  # the phone has answered a NOTIFY before
    b.n.receive(subscribe(), PHONE, 0.0)
    _, (notify_bytes, _) = b.n.outgoing()
    times = []
    now = 0.0
    while (deadline := b.n.next_timer()) is not None and deadline < 600:
        now = deadline
        b.n.handle_timer(now)
        for data, peer in b.n.outgoing():
            assert (data, peer) == (notify_bytes, PHONE)  # same bytes, same destination
            times.append(now)
        if b.n.watchers("202") == []:
            break
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert now == 32.0  # 64*T1: the subscription is gone, without a final NOTIFY
    assert b.n.stats().notifies_in_flight == 0 and b.n.watchers("202") == []
    assert "timed out" in caplog.text


def test_an_address_that_never_answered_gets_a_notify_twice_not_eleven_times() -> None:
    # The SUBSCRIBE's source may be forged: until the address answers a NOTIFY, one
    # retransmission at T1 and the transaction is given up at 3*T1.
    b = Bridge()
    b.n.receive(subscribe(), PHONE, 0.0)
    assert len(b.n.outgoing()) == 2  # the 200 and the NOTIFY
    assert b.tick(0.5) and b.n.next_timer() == 1.5
    assert b.tick(1.5) == [] and b.n.stats().subscriptions == 0
    # Once the address has answered one NOTIFY, the next gets the full RFC 3261 schedule.
    b.subscribed(call_id="call-2", from_tag="ft2", branch="z9hG4bK-2", now=2.0)
    b.n.resource_changed("202", 3.0)
    assert len(b.drain()) == 1
    assert [len(b.tick(t)) for t in (3.5, 4.5, 6.5)] == [1, 1, 1]
    assert b.n.stats().subscriptions == 1

def test_provisional_answer_slows_retransmissions_to_t2() -> None:
    b = Bridge()
    b.n._verified[(PHONE.host, PHONE.port)] = None  # as if it had answered a NOTIFY before
    _, notify = b.send(subscribe())
    trying = build_response(notify, 100)
    assert b.send(trying.to_bytes(), 0.2) == []
    assert b.tick(0.5) != []  # Timer E was already set: fires once more...
    assert b.tick(4.4) == []
    assert len(b.tick(4.5)) == 1  # ...then every T2
    assert len(b.tick(8.5)) == 1
    assert b.answer(notify, now=9.0) == []
    assert b.n.next_timer() == 32.0  # the cached 200 to the SUBSCRIBE
    b.n.handle_timer(32.0)
    assert b.n.next_timer() == 64.0  # the cached 200's generation is dropped
    b.n.handle_timer(64.0)
    assert b.n.next_timer() == 600.0  # only the expiry is left
    assert b.n.stats().subscriptions == 1


def test_tcp_never_retransmits_but_times_out_after_32s() -> None:
    b = Bridge()
    b.send(subscribe(transport="TCP"), peer=TCP_PHONE)
    assert b.n.next_timer() == 32.0
    b.n.handle_timer(31.9)
    assert b.n.outgoing() == []
    b.n.handle_timer(32.0)
    assert b.n.outgoing() == [] and b.n.stats().subscriptions == 0


@pytest.mark.parametrize("status", [481, 408, 500, 603])
def test_notify_failure_removes_the_subscription_without_a_final_notify(status: int) -> None:
    b = Bridge()
    _, notify = b.send(subscribe())
    assert b.answer(notify, status) == []
    assert b.n.stats().subscriptions == 0 and b.n.next_timer() == 32.0  # only the cached 200
    b.n.resource_changed("202", 1.0)
    assert b.drain() == []


def test_stray_and_unparseable_responses_are_ignored() -> None:
    b = Bridge()
    _, notify = b.subscribed()
    assert b.answer(notify) == []  # a retransmitted 200: its transaction is gone
    assert b.send(b"SIP/2.0 200 OK\r\nCSeq: 1 NOTIFY\r\n\r\n") == []
    assert b.n.stats().subscriptions == 1


# ----------------------------------------------------------------- changes, coalescing


def test_changes_bump_cseq_and_version_by_one() -> None:
    b = Bridge()
    b.subscribed()
    for i, word in enumerate(["early", "confirmed", "terminated"], start=1):
        b.source.states["202"] = word
        b.n.resource_changed("202", float(i))
        (notify,) = b.drain()
        assert notify.cseq().seq == i + 1
        assert notify.body == f'<dialog-info version="{i}" state="{word}"/>'.encode()
        assert state_of(notify) == f"active;expires={600 - i}"
        b.answer(notify, now=float(i))


def test_burst_of_changes_while_in_flight_gives_exactly_one_more_notify() -> None:
    b = Bridge()
    _, first = b.send(subscribe())
    for i in range(10):
        b.source.states["202"] = f"s{i}"
        b.n.resource_changed("202", 0.1)
    assert b.drain() == []  # one NOTIFY in flight at most
    (second,) = b.answer(first, now=0.2)
    assert isinstance(second, Request) and second.cseq().seq == 2
    assert second.body == b'<dialog-info version="1" state="s9"/>'  # the newest state
    assert b.answer(second, now=0.3) == []
    assert b.n.next_timer() == 32.0  # nothing else queued (the cached 200 expires at 32)


def test_other_resources_and_unwatched_ones_are_left_alone() -> None:
    b = Bridge()
    b.subscribed()
    b.n.resource_changed("203", 1.0)
    b.n.resource_changed("nobody", 1.0)
    assert b.drain() == []


def test_resource_that_disappears_ends_with_noresource() -> None:
    b = Bridge()
    b.subscribed()
    del b.source.states["202"]
    b.n.resource_changed("202", 1.0)
    (final,) = b.drain()
    assert state_of(final) == "terminated;reason=noresource" and final.body == b""
    assert "Content-Type" not in final.headers
    assert b.n.stats().subscriptions == 0


# ----------------------------------------------------------------- refresh, unsubscribe, expiry


def test_refresh_in_dialog_answers_200_and_notifies_current_state() -> None:
    b = Bridge()
    ok, _ = b.subscribed()
    tag = ok.to_addr().tag
    assert tag is not None
    b.source.states["202"] = "early"
    ok2, notify = b.send(subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-2", expires=300), 500.0)
    assert isinstance(ok2, Response) and ok2.status == 200 and ok2.to_addr().tag == tag
    assert ok2.headers.get("Expires") == "300"
    assert notify.cseq().seq == 2 and state_of(notify) == "active;expires=300"
    assert notify.body == b'<dialog-info version="1" state="early"/>'
    b.answer(notify, now=500.0)
    b.n.handle_timer(600.0)  # the first expiry no longer applies
    assert b.drain() == [] and b.n.stats().subscriptions == 1
    b.n.handle_timer(799.9)
    assert b.drain() == [] and b.n.stats().subscriptions == 1
    (final,) = b.tick(800.0)
    assert state_of(final) == "terminated;reason=timeout"


def test_a_refresh_from_another_address_or_transport_is_refused_and_moves_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sip")
    b = Bridge()
    ok, _ = b.subscribed()
    tag = ok.to_addr().tag or ""
    elsewhere = (
        Peer("udp", "192.0.2.99", 41000),  # another host
        Peer("udp", PHONE.host, PHONE.port + 1),  # a new port: without digest, a neighbour
        Peer("tcp", PHONE.host, PHONE.port),  # another transport
    )
    for n, peer in enumerate(elsewhere, 2):
        data = subscribe(to_tag=tag, cseq=n, branch=f"z9hG4bK-{n}", Contact="<sip:6@10.9.9.9>")
        (refused,) = b.send(data, 10.0, peer=peer)
        assert refused.status == 481
    # Logged once a minute per source address: two addresses, two lines.
    assert sum("refusing a refresh from" in r.getMessage() for r in caplog.records) == 2
    b.n.resource_changed("202", 11.0)
    ((data, peer),) = b.n.outgoing()
    assert peer == PHONE and data.startswith(b"NOTIFY sip:203@10.0.0.5:5060 ")
    # The phone itself refreshes (its CSeq was not taken by the refused ones) with a new
    # Contact: a target refresh.
    assert b.answer(parse_message(data), now=11.0) == []
    fresh = subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-9", Contact="<sip:203@10.0.0.5:5070>")
    ok2, notify = b.send(fresh, 12.0)
    assert ok2.status == 200 and notify.uri == "sip:203@10.0.0.5:5070"


def test_refresh_during_a_notify_in_flight_is_coalesced() -> None:
    b = Bridge()
    ok, first = b.send(subscribe())
    data = subscribe(to_tag=ok.to_addr().tag, cseq=2, branch="z9hG4bK-2")
    (ok2,) = b.send(data, 0.1)
    assert ok2.status == 200
    (second,) = b.answer(first, now=0.2)
    assert second.cseq().seq == 2


def test_refresh_rules_481_500_423() -> None:
    b = Bridge()
    ok, _ = b.subscribed()
    tag = ok.to_addr().tag
    assert tag is not None
    other_id = subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-a", Event="dialog;id=9")
    assert b.send(other_id)[0].status == 481
    old_cseq = subscribe(to_tag=tag, cseq=1, branch="z9hG4bK-b")
    assert b.send(old_cseq)[0].status == 500
    too_short = subscribe(to_tag=tag, cseq=3, branch="z9hG4bK-c", expires=10)
    (refused,) = b.send(too_short)
    assert refused.status == 423 and refused.headers.get("Min-Expires") == "60"
    wrong_call = subscribe(to_tag=tag, cseq=4, branch="z9hG4bK-d", call_id="other")
    assert b.send(wrong_call)[0].status == 481
    assert b.n.stats().subscriptions == 1


def test_unsubscribe_answers_then_sends_a_final_notify_and_forgets() -> None:
    b = Bridge()
    ok, _ = b.subscribed()
    tag = ok.to_addr().tag
    ok2, final = b.send(subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-2", expires=0), 5.0)
    assert ok2.status == 200 and ok2.headers.get("Expires") == "0"
    assert state_of(final) == "terminated;reason=timeout"
    assert final.cseq().seq == 2 and final.body == b'<dialog-info version="1" state="idle"/>'
    assert b.n.stats().subscriptions == 0
    assert b.answer(final, now=5.0) == []
    again = subscribe(to_tag=tag, cseq=3, branch="z9hG4bK-3")
    assert b.send(again, 6.0)[0].status == 481


def test_unsubscribe_while_a_notify_is_in_flight_waits_for_it() -> None:
    b = Bridge()
    ok, first = b.send(subscribe())
    (ok2,) = b.send(subscribe(to_tag=ok.to_addr().tag, cseq=2, branch="z9hG4bK-2", expires=0))
    assert ok2.status == 200
    b.n.resource_changed("202", 0.1)  # no longer watched: ignored
    (final,) = b.answer(first, now=0.2)
    assert state_of(final) == "terminated;reason=timeout" and final.cseq().seq == 2
    assert b.answer(final, now=0.3) == []
    assert b.n.next_timer() == 32.0


def test_expiry_sends_a_final_notify_and_removes() -> None:
    b = Bridge()
    b.subscribed()
    assert b.n.next_timer() == 32.0  # the cached 200 goes first (its generation ages)
    b.tick(32.0)
    assert b.n.next_timer() == 64.0  # ... and is dropped
    b.tick(64.0)
    assert b.n.next_timer() == 600.0
    assert b.tick(599.9) == []
    (final,) = b.tick(600.0)
    assert state_of(final) == "terminated;reason=timeout"
    assert b.n.stats().subscriptions == 0
    assert b.answer(final, now=600.1) == []
    assert b.n.next_timer() is None


# ----------------------------------------------------------------- scale and heap hygiene


def test_many_subscriptions_and_refreshes_keep_the_heap_small() -> None:
    b = Bridge()
    tags = []
    for i in range(2000):  # 2000 different phones (one watcher each) behind one address
        phone = f"<sip:{1000 + i}@pbx.example>;tag=ft1"
        b.n.receive(subscribe(call_id=f"c{i}", branch=f"z9hG4bK-{i}", From=phone), PHONE, 0.0)
        out = b.n.outgoing()
        ok, notify = (parse_message(d) for d, _ in out)
        tags.append(ok.to_addr().tag)
        b.n.receive(build_response(notify, 200).to_bytes(), PHONE, 0.0)
    b.n.handle_timer(40.0)  # the 2000 cached answers expire
    for round_ in range(1, 6):  # every refresh leaves one stale expiry entry behind
        for i, tag in enumerate(tags):
            data = subscribe(
                call_id=f"c{i}", to_tag=tag, cseq=round_ + 1, branch=f"z9hG4bK-{round_}-{i}"
            )
            b.n.receive(data, PHONE, 40.0 + round_)
        for data, _ in b.n.outgoing():
            msg = parse_message(data)
            if isinstance(msg, Request):
                b.n.receive(build_response(msg, 200).to_bytes(), PHONE, 40.0 + round_)
    stats = b.n.stats()
    assert stats.subscriptions == 2000 and stats.notifies_in_flight == 0
    assert stats.timer_entries <= 2 * 2000 + 64
    b.n.handle_timer(10_000.0)
    assert b.n.stats().subscriptions == 0 and len(b.n.outgoing()) == 2000


# ----------------------------------------------------------------- robustness

_MUTATIONS = [b"\r\n", b":", b";", b"<", b">", b'"', b" ", b"tag=", b"\x00", b"\xff", b"0",
              b"SIP/2.0", b"z9hG4bK", b"Expires: 0\r\n", b"To: <sip:a@b>;tag=x\r\n"]  # fmt: skip


@settings(
    max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["new", "refresh", "notify-answer", "random"]),
    st.lists(
        st.tuples(st.integers(0, 420), st.integers(0, 6), st.sampled_from(_MUTATIONS)),
        max_size=5,
    ),
    st.binary(max_size=300),
    st.sampled_from([PHONE, TCP_PHONE]),
)
def test_garbage_never_crashes_receive(
    caplog: pytest.LogCaptureFixture,
    kind: str,
    edits: list[tuple[int, int, bytes]],
    noise: bytes,
    peer: Peer,
) -> None:
    """Mutated requests (new and in-dialog), mutated NOTIFY answers and random bytes."""
    b = Bridge()
    b.n.receive(subscribe(transport=peer.transport.upper()), peer, 0.0)
    ok, notify = (parse_message(d) for d, _ in b.n.outgoing())
    tag = ok.to_addr().tag
    data = {
        "new": subscribe(call_id="c2", branch="z9hG4bK-9", Record_Route="<sip:p;lr>"),
        "refresh": subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-2"),
        "notify-answer": build_response(notify, 200).to_bytes(),
        "random": noise,
    }[kind]
    for pos, cut, token in edits:
        data = data[:pos] + token + data[pos + cut :]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bridge.sip"):
        b.n.receive(data, peer, 1.0)
        b.n.resource_changed("202", 2.0)
        for out, _ in b.n.outgoing():
            parse_message(out)  # whatever we send must be well-formed
        b.n.handle_timer(10_000.0)
        b.n.outgoing()
    assert caplog.records == []  # no "internal error" was swallowed


def test_a_phone_that_resubscribes_in_a_new_dialog_replaces_the_old_one() -> None:
    b = Bridge()
    b.subscribed(call_id="before-reboot", from_tag="a")
    ok, notify = b.send(subscribe(call_id="after-reboot", from_tag="b", branch="z9hG4bK-2"))
    assert ok.status == 200 and notify.headers.get("Call-ID") == "after-reboot"
    b.answer(notify)
    # The forgotten dialog is dropped without a word to the phone, and gets no more NOTIFYs.
    assert [w.call_id for w in b.n.watchers("202")] == ["after-reboot"]
    b.source.states["202"] = "ringing"
    b.n.resource_changed("202", 1.0)
    (update,) = b.drain()
    assert update.headers.get("Call-ID") == "after-reboot"
    _, removed = b.n.take_changes(1.0)
    assert ("before-reboot", "a") in {k[:2] for k in removed}


def test_two_phones_or_two_resources_are_separate_watchers() -> None:
    b = Bridge()
    b.subscribed(call_id="one", from_tag="a")
    b.subscribed(call_id="two", from_tag="b", branch="z9hG4bK-2", Contact="<sip:204@10.0.0.6>")
    b.source.states["203"] = "idle"
    b.subscribed(call_id="three", from_tag="c", branch="z9hG4bK-3", resource="203")
    assert sorted(w.call_id for w in b.n.watchers("202")) == ["one", "two"]
    assert b.n.stats().subscriptions == 3


def test_retransmitted_request_without_call_id_gets_the_same_400() -> None:
    b = Bridge()
    broken = subscribe(drop=("Call-ID",))
    b.n.receive(broken, PHONE, 0.0)
    (first,) = b.n.outgoing()
    assert parse_message(first[0]).status == 400
    b.n.receive(broken, PHONE, 0.5)
    assert b.n.outgoing() == [first]  # the same random To tag: it was cached, not answered anew


def test_the_cache_of_answers_is_bounded_whatever_arrives() -> None:
    b = Bridge()
    b.n._answers.max_entries = 100
    for n in range(1000):  # fetches from everywhere: each answer is cached, none retransmitted
        peer = Peer("udp", f"192.0.2.{n % 250}", 5060 + n)
        b.n.receive(subscribe(call_id=f"c{n}", branch=f"z9hG4bK-{n}", expires=0), peer, n / 1000)
        assert len(b.n.outgoing()) == 2  # the 200 and the NOTIFY, sent once
    assert b.n.stats().server_transactions <= 200  # two generations at most
    assert b.n.stats().notifies_in_flight == 0 and b.n.stats().timer_entries == 0


def test_resumed_subscriptions_keep_the_full_retransmission_schedule() -> None:
    b = Bridge()
    b.subscribed()
    snapshots = b.n.snapshot_all(1.0)
    restarted = Bridge()
    assert restarted.n.restore(snapshots, 0.0) == 1
    restarted.n.resource_changed("202", 0.0)
    assert len(restarted.drain()) == 1
    assert [len(restarted.tick(t)) for t in (0.5, 1.5, 3.5)] == [1, 1, 1]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_notify_transaction_starts_like_any_client_transaction(transport: str) -> None:
    """NotifyTransaction writes ClientTransaction's start out (speed): the two must agree."""
    sub = Subscription.create(key=("c", "f", "t"), resource="202", peer=PHONE, event="dialog",
                       event_id=None, local="<sip:202@x>;tag=t", remote="<sip:w@x>;tag=f",
                       target="sip:w@x", route=(), expires_at=60.0, remote_cseq=1)  # fmt: skip
    peer = Peer(transport, "192.0.2.1", 5060)  # type: ignore[arg-type]
    ours = NotifyTransaction("z9hG4bK-1", sub, b"x", peer, 3.0, 0.5, 4.0, 1.5, False)
    base = ClientTransaction("z9hG4bK-1", b"x", 3.0, 0.5, 4.0, transport != "udp", 1.5)
    for name in ClientTransaction.__slots__:
        assert getattr(ours, name) == getattr(base, name), name
    assert ours.fire(3.5) == base.fire(3.5) and ours.due_at == base.due_at


# ----------------------------------------------------------------- fan-out in slices


def _watchers(b: Bridge, resource: str, count: int) -> list[tuple[Peer, str]]:
    """``count`` phones (one address each) subscribed to ``resource``, first NOTIFY answered."""
    phones = []
    for i in range(count):
        peer = Peer("udp", "192.0.2.20", 30000 + i + (0 if resource == "202" else 5000))
        call_id = f"{resource}-w{i}"
        b.n.receive(subscribe(resource=resource, call_id=call_id, branch=f"z9hG4bK-{call_id}",
                              From=f"<sip:{call_id}@pbx.example>;tag=f{i}"), peer, 0.0)  # fmt: skip
        for data, _ in b.n.outgoing():
            msg = parse_message(data)
            if isinstance(msg, Request):
                b.n.receive(build_response(msg, 200).to_bytes(), peer, 0.0)
        phones.append((peer, call_id))
    return phones


def _notifies(sent: list[tuple[bytes, Peer]]) -> list[Request]:
    found = [parse_message(data) for data, _ in sent]
    return [m for m in found if isinstance(m, Request) and m.method == "NOTIFY"]


def _twins(count: int) -> tuple[Bridge, Bridge]:
    """Two notifiers with the same subscriptions and the same branches to come."""
    pair = Bridge(), Bridge()
    for b in pair:
        b.n._branch_prefix = "z9hG4bKtwin."  # the only random part of what they send
        _watchers(b, "202", count)
    return pair


def test_a_fan_out_sends_the_bytes_and_leaves_the_state_notify_would() -> None:
    """The fan-out's own path (``_fanout_notify``, spliced body, shared timer batch) against
    the general one (``_notify``): byte for byte, and the same subscriptions, transactions,
    timers and store news afterwards, lease renewals included."""
    fast, general = _twins(40)
    for b in (fast, general):
        b.source.states["202"] = "early"
        b.n._subs[next(iter(b.n._subs))].cseq_bound = 0  # its lease runs out on this NOTIFY
        del b.n._verified[("192.0.2.20", 30003)]  # forgotten: a shorter timeout (see _notify)
        b.n.take_changes(0.0)
    for ours, theirs in zip(fast.n._subs.values(), general.n._subs.values(), strict=True):
        theirs.dialog = ours.dialog  # our To tag: random per dialog
    fast.n.resource_changed("202", 7.25, ringing=True)
    sent = list(fast.n.drain(7.25, 1000))
    told = general.n._generation["202"] = general.n._generation.get("202", 0) + 1
    expected = [general.n._notify(sub, 7.25, general.source.document("202", sub.watcher))
                for sub in general.n._subs.values()]  # fmt: skip
    assert len(sent) == 40 and [d for d, _ in sent] == [d for d, _ in expected]
    assert [p for _, p in sent] == [p for _, p in expected]

    def state(b: Bridge) -> list[tuple[object, ...]]:
        return [(s.cseq, s.version, s.told, s.dirty, s.cseq_bound, s.version_bound,
                 s.in_flight and (s.in_flight.branch, s.in_flight.due_at,
                                  s.in_flight.timeout_at, s.in_flight.final))
                for s in b.n._subs.values()]  # fmt: skip

    assert state(fast) == state(general) and all(s.told == told for s in fast.n._subs.values())
    assert fast.n.next_timer() == general.n.next_timer() and fast.n.stats() == general.n.stats()
    news = [[(c.key[0], c.cseq, c.version) for c in b.n.take_changes(7.25)[0]]
            for b in (fast, general)]  # fmt: skip
    assert news[0] == news[1] and len(news[0]) == 1
    for b in (fast, general):  # and the 200s end them alike
        for data, peer in sent:
            b.n.receive(build_response(parse_message(data), 200).to_bytes(), peer, 7.3)  # type: ignore[arg-type]
    assert state(fast) == state(general) and fast.n.stats().notifies_in_flight == 0


def test_a_fan_out_is_handed_out_in_slices_and_a_subscribe_is_answered_between_two() -> None:
    b = Bridge()
    _watchers(b, "202", 150)
    b.source.states["202"] = "early"
    b.n.resource_changed("202", 1.0, ringing=True)
    assert b.n.fanout_pending and b.n.stats().notifies_in_flight == 0  # nothing built yet
    first = list(b.n.drain(1.0, 64))
    assert len(_notifies(first)) == 64 and b.n.fanout_pending
    b.n.receive(subscribe(call_id="late", branch="z9hG4bK-late", From="<sip:l@x>;tag=l"),
                Peer("udp", "192.0.2.99", 5060), 1.001)  # fmt: skip
    second = [parse_message(d) for d, _ in b.n.drain(1.001, 64)]
    assert isinstance(second[0], Response) and second[0].status == 200  # before the slice
    assert second[1].call_id() == "late"  # its first NOTIFY too
    rest = list(b.n.drain(1.002, 1000))
    assert not b.n.fanout_pending
    told = [n.call_id() for n in _notifies(first) + second[2:] + _notifies(rest)]  # type: ignore[arg-type]
    assert sorted(told) == sorted(f"202-w{i}" for i in range(150))  # each exactly once


def test_ringing_keys_are_told_before_the_other_changes_of_the_same_burst() -> None:
    b = Bridge()
    _watchers(b, "203", 20)
    _watchers(b, "202", 100)
    b.source.states.update({"202": "early", "203": "confirmed"})
    b.n.resource_changed("203", 1.0)  # first in the burst, but not ringing
    b.n.resource_changed("202", 1.0, ringing=True)
    ringing_only = _notifies(list(b.n.drain(1.0, 1000, ringing_only=True)))
    assert {n.call_id().partition("-")[0] for n in ringing_only} == {"202"}
    assert len(ringing_only) == 100 and b.n.fanout_pending
    others = _notifies(b.n.outgoing())
    assert {n.call_id().partition("-")[0] for n in others} == {"203"} and len(others) == 20


def test_a_change_during_a_fan_out_gives_each_watcher_the_newest_state_once() -> None:
    """Watchers reached before the second change get it after their 200; the others get only
    the newest state: never the same state twice, CSeq and version rising by one."""
    b = Bridge()
    phones = dict((cid, peer) for peer, cid in _watchers(b, "202", 100))
    b.source.states["202"] = "early"
    b.n.resource_changed("202", 1.0, ringing=True)
    reached = _notifies(list(b.n.drain(1.0, 30)))
    b.source.states["202"] = "confirmed"
    b.n.resource_changed("202", 1.01)
    # A refresh of one watcher not reached yet tells it the newest state at once.
    refresh = subscribe(call_id="202-w90", branch="z9hG4bK-r", cseq=2, to_tag=_tag(b, "202-w90"),
                        From="<sip:202-w90@pbx.example>;tag=f90")  # fmt: skip
    b.n.receive(refresh, phones["202-w90"], 1.02)
    seen: dict[str, list[Request]] = {}
    for n in reached:
        seen.setdefault(n.call_id(), []).append(n)
    pending = list(b.n.outgoing())
    for _ in range(3):  # answer every NOTIFY: the watchers reached early get the newest next
        for n in _notifies(pending):
            seen.setdefault(n.call_id(), []).append(n)
        for n in _notifies(pending) + (reached if _ == 0 else []):
            b.n.receive(build_response(n, 200).to_bytes(), phones[n.call_id()], 1.03)
        pending = b.n.outgoing()
    assert len(seen) == 100
    for call_id, got in seen.items():
        states = [n.body.decode().rpartition('state="')[2][:-3] for n in got]
        assert states[-1] == "confirmed" and len(states) == len(set(states)), (call_id, states)
        cseqs = [n.cseq().seq for n in got]
        versions = [int(n.body.decode().partition('version="')[2].partition('"')[0]) for n in got]
        assert cseqs == list(range(cseqs[0], cseqs[0] + len(got)))
        assert versions == list(range(versions[0], versions[0] + len(got)))


def _tag(b: Bridge, call_id: str) -> str:
    return next(key[2] for key in b.n._subs if key[0] == call_id)


def test_a_200_to_a_notify_is_matched_by_our_branch_without_a_parse() -> None:
    b = Bridge()
    _, notify = b.send(subscribe())
    answer = build_response(notify, 200).to_bytes()
    assert b.n.answered(answer.replace(b"NOTIFY\r\n", b"OPTIONS\r\n"), 0.1) is False
    assert b.n.answered(answer.replace(b";branch=", b";branch=x"), 0.1) is False
    assert b.n.stats().notifies_in_flight == 1
    assert b.n.answered(answer, 0.1) is True and b.n.stats().notifies_in_flight == 0
    assert b.n.answered(answer, 0.2) is False  # a retransmitted 200: nothing left to match
    assert b.tick(5.0) == []  # no retransmission of the NOTIFY answered


def test_another_keys_change_gets_a_slice_before_a_big_burst_ends() -> None:
    b = Bridge()
    _watchers(b, "202", 100)
    _watchers(b, "203", 5)
    b.source.states.update({"202": "confirmed", "203": "confirmed"})
    b.n.resource_changed("202", 1.0)
    first = _notifies(list(b.n.drain(1.0, 16)))
    b.n.resource_changed("203", 1.001)  # while 202's burst is going on
    second = _notifies(list(b.n.drain(1.001, 16)))
    assert {n.call_id() for n in first} <= {f"202-w{i}" for i in range(100)}
    assert [n.call_id() for n in second[:5]] == [f"203-w{i}" for i in range(5)]
    rest = _notifies(b.n.outgoing())
    assert len(first) + len(second) + len(rest) == 105


class Lists(Source):
    """The same keys and two RFC 4662 lists gathering for 100 ms: ``ring`` (202), ``busy`` (203)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = {name: ResourceList(name, (key,), batch_interval=0.1)
                      for name, key in (("ring", "202"), ("busy", "203"))}  # fmt: skip

    def find_list(self, user: str, watcher: str, domain: str) -> ResourceList | None:
        return self.lists.get(user)

    def list_uri(self, name: str, domain: str) -> str:
        return f"sip:{name}@pbx.example"

    def resource_uri(self, resource: str) -> str:
        return f"sip:{resource}@pbx.example"


def test_lists_whose_gathering_ends_together_go_out_in_slices_ringing_first() -> None:
    source = Lists()
    n = Notifier(source, NotifierSettings(contacts=CONTACTS), lists=source)
    for name in ("busy", "ring"):
        for i in range(30):
            peer, call_id = Peer("udp", "192.0.2.30", 20000 + i + 100 * len(name)), f"{name}-{i}"
            n.receive(subscribe(resource=name, call_id=call_id, branch=f"z9hG4bK-{call_id}",
                                From=f"<sip:{call_id}@pbx.example>;tag=f{i}",
                                Supported="eventlist"), peer, 0.0)  # fmt: skip
            for data, _ in n.outgoing():
                if isinstance(msg := parse_message(data), Request):
                    assert msg.headers.get("Require") == "eventlist"
                    n.receive(build_response(msg, 200).to_bytes(), peer, 0.0)
    source.states.update({"202": "early", "203": "confirmed"})
    n.resource_changed("203", 1.0)  # first, not ringing
    n.resource_changed("202", 1.0, ringing=True)
    assert not n.fanout_pending and n.next_timer() == pytest.approx(1.1)  # gathering
    n.handle_timer(1.1)
    assert n.fanout_pending and n.stats().notifies_in_flight == 0  # nothing built yet
    first = _notifies(list(n.drain(1.1, 16, ringing_only=True)))
    assert len(first) == 16 and {m.call_id().partition("-")[0] for m in first} == {"ring"}
    rest = _notifies(list(n.drain(1.1, 1000, ringing_only=True)))
    assert len(rest) == 14 and {m.call_id().partition("-")[0] for m in rest} == {"ring"}
    others = _notifies(n.outgoing())
    assert sorted(m.call_id() for m in others) == sorted(f"busy-{i}" for i in range(30))
    assert all(b"application/rlmi+xml" in m.body for m in first + rest + others)
