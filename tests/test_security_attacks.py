"""The attacks of issue 14 on the SIP side, over real sockets: amplification, hijacking a
subscription, flooding the log, and a real client (SIPp's own digest code) authenticating.

The phone, its digest answers (written from RFC 7616 with hashlib) and the recorded PBX come
from test_security.py; ``benchmarks/attacks.py`` runs the same attacks at scale.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from pathlib import Path

import pytest
import test_security
from sipp import SCENARIOS, SippWatcher
from test_app import config_for, eventually, running_bridge
from test_security import PASSWORDS, Phone, authorization, challenges, status

from bridge.config import load
from bridge.demo.ami_server import RecordedAmiServer

AUTH = "security.auth=digest"
users_file = test_security.users_file


async def received(phone: Phone, wait: float) -> list[bytes]:
    """Every datagram arriving within ``wait`` seconds, none answered."""
    loop = asyncio.get_running_loop()
    got = []
    try:
        async with asyncio.timeout(wait):
            while True:
                got.append(await loop.sock_recv(phone.sock, 65535))
    except TimeoutError:
        return got


class Dialog:
    """One subscription dialog of a ``Phone``: in-dialog requests with the right ids."""

    def __init__(self, phone: Phone, user: str, resource: str = "202") -> None:
        self.phone, self.user, self.resource = phone, user, resource
        self.call_id, self.from_tag, self.to_tag = secrets.token_hex(8), secrets.token_hex(4), ""
        self.cseq = 0
        self.nc = 0
        self.challenge: dict[str, str] | None = None

    @property
    def uri(self) -> str:
        return f"sip:{self.resource}@pbx.test"

    def request(self, *, user: str = "", password: str = "", expires: int = 600,
                via: Phone | None = None, uri: str = "") -> bytes:  # fmt: skip
        """A SUBSCRIBE in this dialog; with ``password`` answering the last challenge as
        ``user`` (for the Request-URI, or ``uri``); ``via``: another socket sends it."""
        sender = via or self.phone
        self.cseq += 1
        extra = []
        if password and self.challenge is not None:
            self.nc += 1
            extra.append(authorization(self.challenge, user or self.user, password,
                                       uri or self.uri, nc=self.nc))  # fmt: skip
        to = f"<sip:{self.resource}@pbx.test>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"SUBSCRIBE {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {sender.host}:{sender.port};branch=z9hG4bK{secrets.token_hex(6)}",
            f"From: <sip:{self.user}@pbx.test>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} SUBSCRIBE",
            f"Contact: <sip:{self.user}@{self.phone.host}:{self.phone.port}>",
            "Event: dialog",
            f"Expires: {expires}",
            *extra,
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(self, data: bytes, via: Phone | None = None) -> int:
        """Send; the status of the answer (a challenge is kept for the next request)."""
        answer = await (via or self.phone).ask(data)
        code = status(answer)
        assert answer is not None
        if code == 401:
            self.challenge = challenges(answer)[0]
            self.nc = 0
        if code == 200 and not self.to_tag:
            found = re.search(r"^To: .*;tag=([^;\s]+)\r$", answer, re.M)
            assert found is not None
            self.to_tag = found[1]
        return code

    async def subscribe(self, password: str) -> None:
        """Challenge, then subscribe with credentials."""
        assert await self.send(self.request()) == 401
        assert await self.send(self.request(password=password)) == 200


async def test_a_fetch_is_answered_with_one_notify_never_retransmitted(
    server: RecordedAmiServer,
) -> None:
    async with running_bridge(server) as bridge:
        phone = Phone(bridge.bound("udp"))
        try:
            request = phone.subscribe("203").replace(b"Expires: 600", b"Expires: 0")
            await asyncio.get_running_loop().sock_sendto(phone.sock, request, phone.bridge)
            got = await received(phone, 2.0)  # a retransmission would come at 0.5 s
            assert len(got) == 2 and got[0].startswith(b"SIP/2.0 200 ")
            assert got[1].startswith(b"NOTIFY ") and b"Subscription-State: terminated" in got[1]
            # Two packets for one: what a forged source receives stays a small multiple.
            assert sum(map(len, got)) < 4 * len(request)
            assert bridge.notifier.stats().notifies_in_flight == 0
        finally:
            phone.close()


async def test_an_address_that_never_answered_gets_the_first_notify_twice(
    server: RecordedAmiServer,
) -> None:
    async with running_bridge(server) as bridge:
        phone = Phone(bridge.bound("udp"))
        try:
            request = phone.subscribe("203")
            await asyncio.get_running_loop().sock_sendto(phone.sock, request, phone.bridge)
            got = await received(phone, 3.0)
            notifies = [g for g in got if g.startswith(b"NOTIFY ")]
            assert len(notifies) == 2 and notifies[0] == notifies[1]  # sent, resent once
            assert sum(map(len, got)) < 6 * len(request)
            assert bridge.notifier.stats().subscriptions == 0  # given up at 3*T1
            # A phone that answers keeps its subscription, and is then retransmitted to in full.
            assert status(await phone.ask(phone.subscribe("203"))) == 200
            assert len(await phone.notifies(1.0)) == 1  # answered: the address is verified
            assert bridge.notifier.stats().notifies_in_flight == 0
            assert bridge.notifier.stats().subscriptions == 1
        finally:
            phone.close()


async def test_a_subscription_stays_with_its_address_and_its_user(
    server: RecordedAmiServer, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(server, AUTH, f"security.users_file={users_file}") as bridge:
        owner, thief = Phone(bridge.bound("udp")), Phone(bridge.bound("udp"), "127.0.0.4")
        nat = Phone(bridge.bound("udp"))  # the owner's phone after its NAT mapping changed
        try:
            dialog = Dialog(owner, "203")
            await dialog.subscribe(PASSWORDS["203"])

            def peer() -> tuple[str, int]:
                (watcher,) = bridge.notifier.watchers("202")
                return watcher.peer.host, watcher.peer.port

            assert peer() == (owner.host, owner.port)
            # From elsewhere, with the right ids, without credentials: 481, nothing moves.
            assert await dialog.send(dialog.request(via=thief), via=thief) == 481
            assert peer() == (owner.host, owner.port)
            # From the owner's address but without credentials: challenged, like anything new.
            assert await dialog.send(dialog.request()) == 401
            # Another user's valid credentials do not own it.
            theirs = dialog.request(user="206", password=PASSWORDS["206"])
            assert await dialog.send(theirs) == 403
            # An answer computed for another Request-URI: 400 (RFC 7616 §3.4.6).
            assert await dialog.send(dialog.request()) == 401
            other = dialog.request(password=PASSWORDS["203"], uri="sip:201@pbx.test")
            assert await dialog.send(other) == 400
            # The owner from a new port (NAT rebinding), with its credentials: followed.
            assert await dialog.send(dialog.request(via=nat), via=nat) == 401
            assert await dialog.send(dialog.request(password=PASSWORDS["203"], via=nat),
                                     via=nat) == 200  # fmt: skip
            assert peer() == (nat.host, nat.port)
            # 206 copying 203's From and Contact in a new dialog does not displace 203.
            copy = Dialog(owner, "203")
            assert await copy.send(copy.request()) == 401
            assert await copy.send(copy.request(user="206", password=PASSWORDS["206"])) == 200
            await eventually(lambda: len(bridge.notifier.watchers("202")) == 2)
        finally:
            for phone in (owner, thief, nat):
                phone.close()
    refused = [r.getMessage() for r in caplog.records if "refusing a refresh" in r.getMessage()]
    assert len(refused) == 2, refused  # the thief's 481 and 206's 403, each logged


async def test_a_user_removed_from_users_file_loses_its_subscriptions_on_reload(
    server: RecordedAmiServer, users_file: Path
) -> None:
    settings = (AUTH, f"security.users_file={users_file}")
    async with running_bridge(server, *settings) as bridge:
        phones = [Phone(bridge.bound("udp")) for _ in range(2)]
        try:
            dialogs = [Dialog(phones[0], "203"), Dialog(phones[1], "206")]
            for d in dialogs:
                await d.subscribe(PASSWORDS[d.user])
            await asyncio.to_thread(users_file.write_text, f'206 = "{PASSWORDS["206"]}"\n')
            await bridge.reload(load(None, config_for(server, *settings)))
            # (an idle body says <state>terminated</state> too: match the header)
            (final,) = [n for n in await phones[0].notifies(1.0)
                        if "Subscription-State: terminated" in n]  # fmt: skip
            assert "Subscription-State: terminated;reason=rejected" in final
            assert [w.remote.split(">")[0] for w in bridge.notifier.watchers("202")] == [
                "<sip:206@pbx.test"
            ]  # fmt: skip
            assert await dialogs[0].send(dialogs[0].request()) == 481
            assert await dialogs[1].send(dialogs[1].request()) == 401  # 206 carries on
            assert await dialogs[1].send(dialogs[1].request(password=PASSWORDS["206"])) == 200
        finally:
            for phone in phones:
                phone.close()


@pytest.mark.parametrize("algorithms", ['["MD5", "SHA-256"]', '["SHA-256", "MD5"]'])
async def test_sipp_authenticates_with_its_own_digest_code(
    server: RecordedAmiServer, users_file: Path, algorithms: str
) -> None:
    """SIPp reads only the first challenge and knows only MD5: the default order lets it in,
    SHA-256 first locks it out (what the setting's documentation warns about)."""
    settings = (AUTH, f"security.users_file={users_file}",
                f"security.digest_algorithms={algorithms}")  # fmt: skip
    async with running_bridge(server, *settings) as bridge:
        host, port = bridge.bound("udp")
        # SIPp's own answers, as it makes them: for sip:host:port (no -auth_uri), which names
        # the bridge's listening address, not the Request-URI sip:202@host:port.
        login = ["-au", "203", "-ap", PASSWORDS["203"]]
        async with SippWatcher("202", (host, port), idle_ms=800, extra_args=login,
                               scenario=SCENARIOS / "watcher-auth.xml", timeout=15) as watcher:
            result = await watcher.finish()  # fmt: skip
    if algorithms.startswith('["MD5"'):
        assert result.ok, result.output
        answers = [m.status for m in result.messages if m.direction == "received" and m.status]
        assert answers == [401, 200, 401, 200]  # a refresh is challenged too
        sent = [m for m in result.messages if m.direction == "sent" and m.method == "SUBSCRIBE"]
        assert [bool(m.header("Authorization")) for m in sent] == [False, True, False, True]
        signed = {m.header("Authorization").partition('uri="')[2].partition('"')[0]
                  for m in sent if m.header("Authorization")}  # fmt: skip
        assert signed == {f"sip:{host}:{port}"}  # SIPp's own choice, not the Request-URI
        assert len(result.notifies) >= 2  # one after each 200
    else:
        assert not result.ok
        assert "MD5" in result.output


async def test_a_flood_of_broken_and_refused_requests_writes_a_few_log_lines(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(server) as bridge:
        loop = asyncio.get_running_loop()
        senders = [Phone(bridge.bound("udp"), f"127.0.3.{i}") for i in range(1, 41)]
        try:
            caplog.clear()
            for n in range(20):  # 40 sources x 20: under the burst of each, 1,600 in all
                for phone in senders:
                    garbage = b"\x16\x03\x01 no SIP at all" if n % 2 else phone.subscribe(
                        "203", resource="999")  # fmt: skip
                    await loop.sock_sendto(phone.sock, garbage, phone.bridge)
                await asyncio.sleep(0.02)
            answers = 0
            for phone in senders:
                answers += len(await received(phone, 0.05))
            assert answers == 40 * 10  # every 404 is answered (under the rate), no garbage is
            async with SippWatcher("202", bridge.bound("udp"), idle_ms=800) as watcher:
                result = await watcher.finish()
            assert result.ok, result.output
        finally:
            for phone in senders:
                phone.close()
    lines = [r for r in caplog.records if r.name.startswith("bridge")]
    # 20 at once, then 5 a second, whatever the number of sources and requests.
    assert len(lines) <= 20 + 5 * 3 + 2, [r.getMessage() for r in lines]
    assert any("log lines about peers were left out" in r.getMessage() for r in lines)
