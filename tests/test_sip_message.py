"""Tests for bridge.sip.message and bridge.sip.headers: parsing, framing, serializing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipp import parse_trace

from bridge.sip.headers import (
    parse_cseq,
    parse_delta_seconds,
    parse_event,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
)
from bridge.sip.message import (
    Headers,
    MessageTooLarge,
    ParseError,
    Request,
    Response,
    StreamFramer,
    build_response,
    parse_message,
)

FIXTURE = Path(__file__).parent / "fixtures/asterisk-22.10.1/asterisk-own-blf/sip-203-watcher.log"

SUBSCRIBE = (
    b"SUBSCRIBE sip:202@pbx.example;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1;rport\r\n"
    b'From: "Phone 203" <sip:203@pbx.example>;tag=abc\r\n'
    b"To: <sip:202@pbx.example>\r\n"
    b"Call-ID: call-1@10.0.0.5\r\n"
    b"CSeq: 7 SUBSCRIBE\r\n"
    b"Contact: <sip:203@10.0.0.5:5060;transport=udp>\r\n"
    b"Event: dialog\r\n"
    b"Accept: application/dialog-info+xml\r\n"
    b"Expires: 600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_parses_a_subscribe() -> None:
    msg = parse_message(SUBSCRIBE)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("SUBSCRIBE", "sip:202@pbx.example;user=phone")
    assert msg.request_uri().user == "202"
    assert msg.request_uri().param("user") == "phone"
    assert msg.from_addr().tag == "abc"
    assert msg.from_addr().display == "Phone 203"
    assert msg.to_addr().tag is None
    assert msg.call_id() == "call-1@10.0.0.5"
    assert (msg.cseq().seq, msg.cseq().method) == (7, "SUBSCRIBE")
    contact = msg.contact()
    assert contact is not None and contact.uri.host == "10.0.0.5" and contact.uri.port == 5060
    assert msg.expires() == 600
    event = msg.event()
    assert event is not None and event.package == "dialog" and event.id is None
    (via,) = msg.vias()
    assert (via.transport, via.host, via.port, via.branch, via.rport) == (
        "UDP", "10.0.0.5", 5060, "z9hG4bK-1", True
    )  # fmt: skip
    assert msg.body == b""


def test_header_names_are_case_insensitive_and_compact_forms_expand() -> None:
    data = (
        b"SUBSCRIBE sip:202@h SIP/2.0\r\nv: SIP/2.0/TCP h:5;branch=z9hG4bKx\r\n"
        b"f: <sip:a@h>;tag=1\r\nt: <sip:b@h>\r\ni: cid\r\ncseq: 1 SUBSCRIBE\r\n"
        b"m: <sip:a@h>\r\no: dialog;id=42\r\nEXPIRES: 5\r\nl: 0\r\nk: replaces\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.call_id() == "cid"
    assert msg.headers.get("CALL-ID") == msg.headers.get("i") == "cid"
    assert msg.vias()[0].transport == "TCP"
    event = msg.event()
    assert event is not None and event.id == "42"
    assert msg.expires() == 5
    assert msg.headers.get("Supported") == "replaces"
    # compact names are written out in full, with the usual spelling
    assert b"\r\nCall-ID: cid\r\n" in msg.to_bytes()
    assert b"\r\nEvent: dialog;id=42\r\n" in msg.to_bytes()


def test_folded_headers_and_several_values() -> None:
    data = (
        b"NOTIFY sip:x@h SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a:1;branch=z9hG4bK1,\r\n  SIP/2.0/UDP b:2;branch=z9hG4bK2\r\n"
        b"Via: SIP/2.0/UDP c;branch=z9hG4bK3\r\n"
        b"Subject: first\r\n\tsecond\r\n"
        b"Accept: text/plain, application/dialog-info+xml;q=0.5\r\n"
        b"\r\n"
    )
    msg = parse_message(data)
    assert [v.host for v in msg.vias()] == ["a", "b", "c"]
    assert [v.port for v in msg.vias()] == [1, 2, None]
    assert msg.headers.get("Subject") == "first second"
    assert msg.list_values("Accept") == ["text/plain", "application/dialog-info+xml;q=0.5"]


def test_content_length_cuts_the_body_and_lf_only_is_tolerated() -> None:
    data = b"SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 3\n\nabcdef"
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.body) == (200, "OK", b"abc")


def test_body_without_content_length_runs_to_the_end_of_a_datagram() -> None:
    msg = parse_message(b"\r\n\r\nSIP/2.0 180 Ringing\r\nCSeq: 1 NOTIFY\r\n\r\nxyz")
    assert isinstance(msg, Response) and msg.status == 180 and msg.body == b"xyz"


def test_serialization_round_trip_sets_content_length() -> None:
    msg = Request("NOTIFY", "sip:a@b", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("l", "99")])
    msg.body = b"<x/>"
    data = msg.to_bytes()
    assert data.endswith(b"Content-Length: 4\r\n\r\n<x/>")
    assert data.count(b"Content-Length") == 1
    again = parse_message(data)
    assert isinstance(again, Request) and again.body == b"<x/>"
    assert list(again.headers) == [
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
        ("Content-Length", "4"),
    ]


def test_asterisk_captured_messages_parse() -> None:
    """Real bytes from Asterisk 22.10.1 (odd spacing like `Content-Length:   226`)."""
    traced = parse_trace(FIXTURE.read_bytes())
    assert len(traced) == 10
    for item in traced:
        msg = parse_message(item.raw)
        assert msg.body == item.body
        msg.cseq()
        msg.vias()
    notify = parse_message(traced[2].raw)
    assert isinstance(notify, Request) and notify.method == "NOTIFY"
    assert notify.headers.get("Subscription-State") == "active;expires=599"
    assert len(notify.body) == 226 and notify.body.startswith(b"<?xml")
    reply = parse_message(traced[1].raw)
    assert isinstance(reply, Response)
    assert reply.to_addr().tag == "bba91d02-71be-446b-a661-7d93365fdf3c"
    assert reply.vias()[0].received == "127.0.0.1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad start line"),
        (b"HELLO\r\n\r\n", "bad start line"),
        (b"SIP/2.0 999 Nope\r\n\r\n", "bad start line"),
        (b"OPTIONS sip:a@b SIP/3.0\r\n\r\n", "bad start line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n", "no empty line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\n continuation\r\n\r\n", "continuation line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: \xff\xfe\r\n\r\n", "not UTF-8"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX: a\x00b\r\n\r\n", "control character in X"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nabc", "body shorter"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n", "malformed Content-Length"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab", "conflicting Content-Length"),
    ],
)
def test_malformed_input_raises_parse_error_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert reason in info.value.reason


def test_parse_error_after_a_request_line_carries_what_was_readable() -> None:
    data = SUBSCRIBE.replace(b"Event: dialog\r\n", b"Event dialog\r\n")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    partial = info.value.request
    assert isinstance(partial, Request)
    assert partial.call_id() == "call-1@10.0.0.5"  # later headers were still read
    assert partial.vias()[0].branch == "z9hG4bK-1"


@pytest.mark.parametrize(
    ("text", "user", "host", "port"),
    [
        ("sip:202@pbx.example", "202", "pbx.example", None),
        (
            "sips:alice:secret@EXAMPLE.com:5061;transport=tls?subject=x",
            "alice",
            "example.com",
            5061,
        ),
        ("sip:%32%30%32@h", "202", "h", None),
        ("sip:[2001:db8::1]:5070", None, "[2001:db8::1]", 5070),
        ("sip:alice;day=tuesday@h", "alice;day=tuesday", "h", None),
        ("tel:+4930555", None, "", None),
    ],
)
def test_uris(text: str, user: str | None, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.user, uri.host, uri.port) == (user, host, port)
    assert uri.raw == text


@pytest.mark.parametrize(
    "text", ["", "nocolon", "sip:", "sip:@h", "sip:h:99999", "sip:h:x", "s p:h"]
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_name_addr_forms() -> None:
    quoted = parse_name_addr('"Doe, \\"J\\"" <sip:j@h;lr>;tag=t1;x')
    assert quoted.display == 'Doe, "J"'
    assert quoted.uri.param("lr") is None and quoted.uri.params == (("lr", None),)
    assert quoted.tag == "t1" and ("x", None) in quoted.params
    bare = parse_name_addr("sip:j@h;tag=t2")  # addr-spec: the params are the header's
    assert bare.tag == "t2" and bare.uri.params == ()
    plain = parse_name_addr("Joe <sip:j@h>")
    assert plain.display == "Joe" and plain.tag is None
    for bad in ("<sip:j@h", '"open <sip:j@h>', "<>", "<sip:j@h>;=x"):
        with pytest.raises(ParseError):
            parse_name_addr(bad)


def test_via_stamping_for_responses() -> None:
    (via,) = parse_via("SIP / 2.0 / udp 10.0.0.5:5060 ;rport; branch=z9hG4bKa")
    assert via.transport == "UDP" and via.branch == "z9hG4bKa"
    stamped = via.with_source("192.0.2.1", 40000)
    assert (
        str(stamped) == "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;received=192.0.2.1;rport=40000"
    )
    (no_rport,) = parse_via("SIP/2.0/TCP h;branch=z9hG4bKb")
    assert (
        str(no_rport.with_source("1.2.3.4", 5)) == "SIP/2.0/TCP h;branch=z9hG4bKb;received=1.2.3.4"
    )
    for bad in ("", "SIP/2.0/UDP", "HTTP/1.1/TCP h", "SIP/2.0/UDP h:0"):
        with pytest.raises(ParseError):
            parse_via(bad)


def test_small_header_parsers() -> None:
    assert parse_cseq(" 12  NOTIFY ").seq == 12
    assert parse_event('dialog ; id="a b"').id == "a b"
    assert parse_delta_seconds("0003600", "Expires") == 3600
    assert parse_delta_seconds("9" * 5000, "Expires") == 2**32 - 1
    assert split_list('a, "b,c" <sip:x,y>, d') == ["a", '"b,c" <sip:x,y>', "d"]
    for bad in ("x NOTIFY", "1", "99999999999 NOTIFY", "2147483648 NOTIFY"):
        with pytest.raises(ParseError):
            parse_cseq(bad)
    for bad in ("", "-1", "1.5", "\u00b2", "\u0663"):
        with pytest.raises(ParseError):
            parse_delta_seconds(bad, "Expires")


def test_headers_container() -> None:
    h = Headers([("Via", "1"), ("v", "2"), ("X-Y", "3")])
    assert h.get_all("VIA") == ["1", "2"]
    assert "x-y" in h and "Route" not in h
    h.set("via", "9")
    assert list(h) == [("X-Y", "3"), ("Via", "9")]
    h.remove("X-Y")
    assert len(h) == 1


def test_build_response_copies_dialog_headers_and_adds_a_to_tag() -> None:
    request = parse_message(
        SUBSCRIBE.replace(b"Via:", b"Via: SIP/2.0/UDP proxy;branch=z9hG4bKp\r\nVia:")
    )
    assert isinstance(request, Request)
    response = build_response(
        request, 200, to_tag="our", source=("192.0.2.7", 41000), headers=[("Expires", "600")]
    )
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response) and (parsed.status, parsed.reason) == (200, "OK")
    vias = parsed.vias()
    assert [v.host for v in vias] == ["proxy", "10.0.0.5"]  # order kept
    assert vias[0].received == "192.0.2.7" and vias[1].received is None
    assert parsed.to_addr().tag == "our"
    assert parsed.from_addr().tag == "abc"
    assert parsed.call_id() == "call-1@10.0.0.5" and parsed.cseq().seq == 7
    assert parsed.headers.get("Expires") == "600"
    # an existing To tag is kept (in-dialog requests)
    tagged = parse_message(
        SUBSCRIBE.replace(b"To: <sip:202@pbx.example>", b"To: <sip:202@h>;tag=x")
    )
    assert isinstance(tagged, Request)
    assert build_response(tagged, 481, to_tag="new").to_addr().tag == "x"
    assert build_response(tagged, 481).reason == "Call/Transaction Does Not Exist"


# ----------------------------------------------------------------- stream framing


def _framed(n: int, body: bytes = b"") -> bytes:
    return (
        f"NOTIFY sip:a@b SIP/2.0\r\nCSeq: {n} NOTIFY\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_framer_splits_messages_whole_or_byte_by_byte() -> None:
    stream = _framed(1, b"hello") + b"\r\n\r\n" + _framed(2) + _framed(3, b"\r\n\r\n")
    framer = StreamFramer()
    messages = framer.feed(stream)
    assert [m.cseq().seq for m in messages] == [1, 2, 3]
    assert [m.body for m in messages] == [b"hello", b"", b"\r\n\r\n"]
    assert framer.pings == 1
    slow = StreamFramer()
    out = [m for i in range(len(stream)) for m in slow.feed(stream[i : i + 1])]
    assert [m.body for m in out] == [b"hello", b"", b"\r\n\r\n"]
    assert slow.pings == 1


def test_framer_rejects_missing_content_length_oversize_and_stays_broken() -> None:
    framer = StreamFramer()
    with pytest.raises(ParseError, match="missing Content-Length"):
        framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
    with pytest.raises(ParseError):
        framer.feed(_framed(1))  # no resynchronisation after an error
    small = StreamFramer(max_size=100)
    with pytest.raises(ParseError, match="size limit"):
        small.feed(_framed(1, b"x" * 100))
    endless = StreamFramer(max_size=100)
    endless.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    with pytest.raises(ParseError, match="size limit"):
        endless.feed(b"X-Pad: " + b"y" * 100 + b"\r\n")
    with pytest.raises(ParseError, match="Content-Length"):
        StreamFramer().feed(b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n")


def test_framer_says_too_large_with_what_it_could_read_of_the_request() -> None:
    via = b"Via: SIP/2.0/TCP h:5060;branch=z9hG4bK7\r\n"
    head = b"SUBSCRIBE sip:202@b SIP/2.0\r\n" + via + b"Call-ID: big\r\nCSeq: 1 SUBSCRIBE\r\n"
    with pytest.raises(MessageTooLarge, match="message exceeds") as declared:
        StreamFramer(max_size=200).feed(head + b"Content-Length: 500\r\n\r\n")
    endless = StreamFramer(max_size=200)
    endless.feed(head)
    with pytest.raises(MessageTooLarge, match="headers exceed") as unending:
        endless.feed(b"X-Pad: " + b"y" * 300 + b"\r\nX-More: z")
    for error in (declared.value, unending.value):
        assert isinstance(error.request, Request)
        assert error.request.call_id() == "big" and error.request.vias()[0].branch == "z9hG4bK7"
    with pytest.raises(ParseError) as short:
        StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")
    assert not isinstance(short.value, MessageTooLarge)  # a 400, not a 413


def test_framer_holds_only_the_unfinished_message_and_lets_go_of_it() -> None:
    framer = StreamFramer()
    half = _framed(1, b"hello")[:30]
    framer.feed(half)
    assert framer.pending == len(half)
    assert [m.body for m in framer.feed(_framed(1, b"hello")[30:])] == [b"hello"]
    assert framer.pending == 0
    framer.feed(b"NOTIFY sip:a@b SIP/2.0\n" + b"X: y\n" * 500)  # a head a reader stopped in
    framer.release()
    assert framer.pending == 0
    # An end of head split over two reads, a byte at a time, LF-only too, is still found.
    lf_only = b"NOTIFY sip:a@b SIP/2.0\nCSeq: 4 NOTIFY\nContent-Length: 0\n\n"
    out = [m for i in range(len(lf_only)) for m in framer.feed(lf_only[i : i + 1])]
    assert [m.cseq().seq for m in out] == [4]


# ----------------------------------------------------------------- robustness


def _parse_or_parse_error(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ParseError:
        return
    # whatever parsed must also survive the typed accessors and re-serialization
    accessors: list[Callable[[], object]] = [msg.call_id, msg.cseq, msg.vias, msg.from_addr]
    accessors += [msg.to_addr, msg.contact, msg.expires, msg.event]
    if isinstance(msg, Request):
        accessors.append(msg.request_uri)
    for accessor in accessors:
        with contextlib.suppress(ParseError):
            accessor()
    msg.to_bytes()


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_parse_error(data: bytes) -> None:
    _parse_or_parse_error(data)


_TOKENS = [b"\r\n", b"\n", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"=", b" ", b"\t"]
_TOKENS += [b"SIP/2.0", b"tag=", b"branch=", b"sip:", b"[", b"]", b"%", b"\x00", b"\xff", b"9" * 12]


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SUBSCRIBE)), st.integers(0, 8), st.sampled_from(_TOKENS)),
        max_size=6,
    )
)
def test_mutated_subscribe_only_ever_raises_parse_error(
    edits: list[tuple[int, int, bytes]],
) -> None:
    data = SUBSCRIBE
    for pos, cut, token in edits:
        data = data[:pos] + token + data[pos + cut :]
    _parse_or_parse_error(data)
    framer = StreamFramer(max_size=2048)
    try:
        for i in range(0, len(data), 7):
            for msg in framer.feed(data[i : i + 7]):
                msg.to_bytes()
    except ParseError:
        pass
