"""Digest authentication rules with a fake clock (the wire tests are in test_security.py)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import load
from bridge.settings import bridge_names
from bridge.sip.access import BridgeNames
from bridge.sip.digest import (
    WRONG_URI_REASON,
    DigestAuthenticator,
    Outcome,
    Verdict,
    answer,
    parse_credentials,
)

USERS = {"203": "pw-203"}
URI = "sip:202@pbx"


def challenge(auth: DigestAuthenticator, host: str = "10.0.0.5", now: float = 0.0) -> str:
    return auth.challenges(host, now)[0]


def test_answer_within_lifetime_is_ok_then_stale_after() -> None:
    auth = DigestAuthenticator("pbx", USERS, nonce_lifetime=300)
    ch = challenge(auth)
    assert auth.check(answer(ch, "203", "pw-203", "SUBSCRIBE", URI), "SUBSCRIBE", "10.0.0.5",
                      299).verdict is Verdict.OK  # fmt: skip
    late = answer(ch, "203", "pw-203", "SUBSCRIBE", URI, nc=2)
    outcome = auth.check(late, "SUBSCRIBE", "10.0.0.5", 301)
    assert (outcome.verdict, outcome.reason) == (Verdict.STALE, "nonce expired")
    assert "stale=true" in auth.challenges("10.0.0.5", 301, stale=True)[0]


def test_wrong_password_beats_stale_so_a_guesser_learns_nothing_new() -> None:
    auth = DigestAuthenticator("pbx", USERS, nonce_lifetime=10)
    ch = challenge(auth)
    wrong = answer(ch, "203", "nope", "SUBSCRIBE", URI)
    assert auth.check(wrong, "SUBSCRIBE", "10.0.0.5", 100).verdict is Verdict.FORBIDDEN


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, ""),
        ("Basic dXNlcjpwdw==", "not a Digest answer"),
        ('Digest username="203"', "incomplete or unsupported Digest answer"),
    ],
)
def test_unusable_answers_are_challenged_again(header: str | None, reason: str) -> None:
    outcome = DigestAuthenticator("pbx", USERS).check(header, "SUBSCRIBE", "10.0.0.5", 0)
    assert (outcome.verdict, outcome.reason) == (Verdict.MISSING, reason)


def test_forged_or_foreign_nonces_are_not_accepted() -> None:
    auth = DigestAuthenticator("pbx", USERS)
    ch = challenge(auth, host="10.0.0.5")
    other = answer(ch, "203", "pw-203", "SUBSCRIBE", URI)
    assert auth.check(other, "SUBSCRIBE", "10.0.0.6", 1).verdict is Verdict.MISSING
    forged = other.replace('nonce="', 'nonce="0.')
    assert auth.check(forged, "SUBSCRIBE", "10.0.0.5", 1).verdict is Verdict.MISSING
    restarted = DigestAuthenticator("pbx", USERS)  # another key: old nonces mean nothing
    assert restarted.check(other, "SUBSCRIBE", "10.0.0.5", 1).verdict is Verdict.MISSING


def test_md5_answer_matches_rfc_2617_arithmetic() -> None:
    auth = DigestAuthenticator("pbx", USERS)
    md5 = auth.challenges("10.0.0.5", 0)[0]  # MD5 first by default
    header = answer(md5, "203", "pw-203", "SUBSCRIBE", URI)
    p = parse_credentials(header)
    assert p is not None and p["algorithm"] == "MD5"

    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = h("203:pbx:pw-203"), h(f"SUBSCRIBE:{URI}")
    expected = h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
    assert p["response"] == expected
    assert auth.check(header, "SUBSCRIBE", "10.0.0.5", 0).verdict is Verdict.OK


def test_algorithms_offered_in_the_configured_order_and_only_those_accepted() -> None:
    default = DigestAuthenticator("pbx", USERS)
    assert [c.split("algorithm=")[1].split(",")[0] for c in default.challenges("h", 0)] == [
        "MD5", "SHA-256"
    ]  # fmt: skip
    strong = DigestAuthenticator("pbx", USERS, algorithms=("SHA-256",))
    (only,) = strong.challenges("10.0.0.5", 0)
    assert "algorithm=SHA-256" in only
    assert strong.check(answer(only, "203", "pw-203", "SUBSCRIBE", URI), "SUBSCRIBE",
                        "10.0.0.5", 0).verdict is Verdict.OK  # fmt: skip
    md5 = answer(only.replace("SHA-256", "MD5"), "203", "pw-203", "SUBSCRIBE", URI, nc=2)
    assert strong.check(md5, "SUBSCRIBE", "10.0.0.5", 0).verdict is Verdict.MISSING
    with pytest.raises(ValueError, match="algorithms"):
        DigestAuthenticator("pbx", USERS, algorithms=("SHA-1",))


def test_phones_behind_one_address_challenged_at_once_get_nonces_of_their_own() -> None:
    auth = DigestAuthenticator("pbx", USERS)
    first, second = challenge(auth, now=5.0), challenge(auth, now=5.0)  # the same millisecond
    for ch in (first, second):  # both phones start counting at 1: neither is a replay
        header = answer(ch, "203", "pw-203", "SUBSCRIBE", URI, nc=1)
        assert auth.check(header, "SUBSCRIBE", "10.0.0.5", 5.0).verdict is Verdict.OK


def test_the_answer_must_be_for_the_request_uri() -> None:
    auth = DigestAuthenticator("pbx", USERS)
    header = answer(challenge(auth), "203", "pw-203", "SUBSCRIBE", "sip:999@pbx")
    outcome = auth.check(header, "SUBSCRIBE", "10.0.0.5", 0, uri=URI)
    assert (outcome.verdict, outcome.reason) == (Verdict.WRONG_URI, WRONG_URI_REASON)
    assert auth.check(header, "SUBSCRIBE", "10.0.0.5", 0, uri="sip:999@pbx").verdict is Verdict.OK


BRIDGE = BridgeNames(frozenset({"pbx.example", "b.example:5070"}), frozenset({"10.0.0.1"}),
                     frozenset({5065}))  # fmt: skip


def _signed_for(signed: str) -> Outcome:
    """203's answer to a SUBSCRIBE for 202 whose digest signs ``signed`` as its uri, checked by
    a bridge at 10.0.0.1:5065 (the Request-URI) listening on 10.0.0.9:5066."""
    auth = DigestAuthenticator("pbx", USERS)
    header = answer(challenge(auth), "203", "pw-203", "SUBSCRIBE", signed)
    return auth.check(header, "SUBSCRIBE", "10.0.0.5", 0, uri="sip:202@10.0.0.1:5065",
                      also=lambda uri: BRIDGE.named(uri, "202", ("10.0.0.9", 5066)))


@pytest.mark.parametrize("signed", [
    "sip:10.0.0.1:5065",  # SIPp's own: the address it sent to
    "sip:202@10.0.0.1:5065", "sips:202@10.0.0.1", "sip:202@pbx.example",  # the phone's, before
    "sip:PBX.example:5060", "sip:202@b.example:5070",  # a proxy rewrote the Request-URI
    "sip:10.0.0.9:5066",  # the address the request came to (a wildcard listener, bound port)
])  # fmt: skip
def test_an_answer_signed_for_a_name_of_this_bridge_is_taken(signed: str) -> None:
    outcome = _signed_for(signed)
    assert outcome.verdict is Verdict.OK, outcome


@pytest.mark.parametrize("signed", [
    "sip:201@pbx.example",  # another key: an answer for one resource never opens another
    "sip:202@other.example", "sip:10.0.0.1:5070", "sip:10.0.0.2:5065", "sip:b.example:5071",
    "tel:+4930202", "not a uri",
])  # fmt: skip
def test_an_answer_signed_for_anything_else_is_refused(signed: str) -> None:
    outcome = _signed_for(signed)
    assert outcome.verdict is Verdict.WRONG_URI


@given(st.text(max_size=300))
def test_any_header_is_judged_without_raising(header: str) -> None:
    auth = DigestAuthenticator("pbx", USERS)
    assert auth.check(header, "SUBSCRIBE", "10.0.0.5", 0).verdict in Verdict
    parse_credentials(header)


def test_the_bridge_is_named_by_its_domain_with_or_without_the_port() -> None:
    config = load(None, ["sip.domain=pbx.example:5060", 'sip.udp=["0.0.0.0:5065"]'])
    names = bridge_names(config)
    assert names.named("sip:202@pbx.example", "202") and names.named("sip:pbx.example:5060", None)
    assert not names.named("sip:0.0.0.0:5065", "202")  # a wildcard is no name
    assert names.named("sip:10.1.2.3:5065", "202", here=("10.1.2.3", 5065))
