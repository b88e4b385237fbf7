"""Who may watch and who may pick up, attacked over real sockets.

The digest answers are computed here from RFC 7616's formulas with hashlib, not with the
bridge's own code, so a wrong implementation cannot agree with itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import socket
import ssl
from pathlib import Path

import pytest
from lxml import etree
from sipp import SippWatcher
from test_app import (
    NS,
    RINGING_202,
    check_notify_sequence,
    dialogs,
    eventually,
    running_bridge,
)

from bridge.__main__ import main
from bridge.demo.ami_server import RecordedAmiServer

PASSWORDS = {"203": "s3cret-203", "206": "s3cret-206"}


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    path.write_text("".join(f'{u} = "{p}"\n' for u, p in PASSWORDS.items()))
    path.chmod(0o600)
    return path


class Phone:
    """A SIP phone on one UDP socket (bound to ``host``), speaking raw SIP."""

    def __init__(self, bridge: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.bridge = bridge
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.cseq = 0

    def subscribe(self, user: str, *extra: str, call_id: str = "", resource: str = "202") -> bytes:
        self.cseq += 1
        lines = [
            f"SUBSCRIBE sip:{resource}@pbx.test SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            f"From: <sip:{user}@pbx.test>;tag={secrets.token_hex(4)}",
            f"To: <sip:{resource}@pbx.test>",
            f"Call-ID: {call_id or secrets.token_hex(8)}",
            f"CSeq: {self.cseq} SUBSCRIBE",
            f"Contact: <sip:{user}@{self.host}:{self.port}>",
            "Event: dialog",
            "Expires: 600",
            *extra,
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def ask(self, data: bytes, wait: float = 2.0) -> str | None:
        """Send; the first response (NOTIFYs are answered 200 and skipped), None if silent."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, self.bridge)
        try:
            async with asyncio.timeout(wait):
                while True:
                    text = (await loop.sock_recv(self.sock, 65535)).decode()
                    if text.startswith("SIP/2.0"):
                        return text
                    await loop.sock_sendto(self.sock, ok_for(text), self.bridge)
        except TimeoutError:
            return None

    async def notifies(self, wait: float = 1.0) -> list[str]:
        """NOTIFYs arriving within ``wait`` seconds, each answered 200."""
        loop = asyncio.get_running_loop()
        got = []
        try:
            async with asyncio.timeout(wait):
                while True:
                    text = (await loop.sock_recv(self.sock, 65535)).decode()
                    if text.startswith("NOTIFY"):
                        got.append(text)
                        await loop.sock_sendto(self.sock, ok_for(text), self.bridge)
        except TimeoutError:
            return got

    def close(self) -> None:
        self.sock.close()


def ok_for(request: str) -> bytes:
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":")[0].lower() in ("via", "from", "to", "call-id",
                                                               "cseq")]  # fmt: skip
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


def status(response: str | None) -> int:
    assert response is not None, "no answer"
    return int(response.split(" ", 2)[1])


def challenges(response: str) -> list[dict[str, str]]:
    out = []
    for value in re.findall(r"^WWW-Authenticate: Digest (.*?)\r$", response, re.M):
        out.append({k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value)})
    return out


def authorization(ch: dict[str, str], user: str, password: str, uri: str, nc: int = 1) -> str:
    """RFC 7616 §3.4.1 with qop=auth, written out independently of bridge/sip/digest.py."""
    algorithm = ch["algorithm"]
    h = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}[algorithm]

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    cnonce, ncs = secrets.token_hex(8), f"{nc:08x}"
    ha1, ha2 = hx(f"{user}:{ch['realm']}:{password}"), hx(f"SUBSCRIBE:{uri}")
    response = hx(f"{ha1}:{ch['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    return (
        f'Authorization: Digest username="{user}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, nc={ncs}, '
        f'cnonce="{cnonce}"'
    )


URI = "sip:202@pbx.test"


async def test_digest_challenge_answer_wrong_password_and_replay(
    server: RecordedAmiServer, users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(
        server, "security.auth=digest", f"security.users_file={users_file}"
    ) as bridge:
        phone = Phone(bridge.bound("udp"))
        try:
            challenge = await phone.ask(phone.subscribe("203"))
            assert status(challenge) == 401
            assert challenge is not None
            offered = challenges(challenge)
            # MD5 first (clients that read only the first challenge), SHA-256 for clients that
            # know only that; both qop=auth, one realm.
            assert [c["algorithm"] for c in offered] == ["MD5", "SHA-256"]
            assert all(c["qop"] == "auth" and c["realm"] == "pbx.example.test" for c in offered)
            # Both algorithms are accepted (one nonce for both: the count goes up).
            for nc, ch in enumerate(offered, 1):
                answer = authorization(ch, "203", PASSWORDS["203"], URI, nc=nc)
                assert status(await phone.ask(phone.subscribe("203", answer))) == 200
            # Wrong password: 403 after the challenge, not another challenge.
            wrong = authorization(offered[0], "203", "guess", URI)
            assert status(await phone.ask(phone.subscribe("203", wrong))) == 403
            # An unknown user gets the same answer (no user enumeration).
            stranger = authorization(offered[0], "999", "guess", URI)
            assert status(await phone.ask(phone.subscribe("999", stranger))) == 403
            # A captured answer replayed (same nonce and count, new transaction): refused.
            replay = authorization(offered[0], "206", PASSWORDS["206"], URI, nc=5)
            assert status(await phone.ask(phone.subscribe("206", replay))) == 200
            assert status(await phone.ask(phone.subscribe("206", replay))) == 403
            # A nonce issued to another address is worthless here.
            other = Phone(bridge.bound("udp"), host="127.0.0.2")
            try:
                fresh = authorization(offered[0], "206", PASSWORDS["206"], URI, nc=9)
                assert status(await other.ask(other.subscribe("206", fresh))) == 401
            finally:
                other.close()
        finally:
            phone.close()
    assert "s3cret" not in caplog.text  # passwords never logged


async def test_pickup_ids_only_for_the_pickup_group(server: RecordedAmiServer) -> None:
    # 206 picks up group 2 only; 202 rings in call group 1 (the recorded PBX's pjsip.conf).
    server.endpoints["206"]["pickup_group"] = "2"
    async with (
        running_bridge(server) as bridge,
        SippWatcher("202", bridge.bound("udp"), idle_ms=1500, watcher="203") as allowed,
        SippWatcher("202", bridge.bound("udp"), idle_ms=1500, watcher="206") as outsider,
    ):
        await eventually(lambda: bridge.notifier.stats().subscriptions == 2)
        await server.play("pickup-replaces", until=RINGING_202)
        results = await allowed.finish(), await outsider.finish()
    early = [
        [d for n in check_notify_sequence(r) for d in dialogs(n)
         if d.findtext("d:state", namespaces=NS) == "early"]
        for r in results
    ]  # fmt: skip
    assert early[0] and early[1], "both keys blink"
    assert all(d.get("call-id") and d.get("local-tag") for d in early[0])
    for d in early[1]:  # the outsider sees who calls, not how to take the call
        assert d.get("call-id") is None and d.get("local-tag") is None
        assert d.get("remote-tag") is None
        identity = d.find("d:remote/d:identity", NS)
        assert identity is not None and identity.get("display") == "Phone 201"


async def test_hidden_caller_and_pickup_nobody(server: RecordedAmiServer) -> None:
    async with running_bridge(
        server, "security.show_caller=false", "security.pickup=nobody"
    ) as bridge, SippWatcher("202", bridge.bound("udp"), idle_ms=1500) as watcher:
        await eventually(lambda: bridge.notifier.stats().subscriptions == 1)
        await server.play("pickup-replaces", until=RINGING_202)
        result = await watcher.finish()
    bodies = [n.body for n in check_notify_sequence(result)]
    assert any(b"<state>early</state>" in b for b in bodies)
    for body in bodies:
        assert b"201" not in body and b"Phone" not in body and b"call-id" not in body
        etree.fromstring(body)


async def test_address_allow_list(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(server, 'security.allow=["127.0.0.1/32"]') as bridge:
        inside, outside = Phone(bridge.bound("udp")), Phone(bridge.bound("udp"), "127.0.0.3")
        try:
            assert status(await inside.ask(inside.subscribe("203"))) == 200
            # Never answered (its source may be forged), broken requests included: the
            # allow-list comes before any 400.
            broken = b"SUBSCRIBE sip:202@pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5;" \
                b"branch=z9hG4bKx\r\nCSeq: what\r\nContent-Length: 0\r\n\r\n"  # fmt: skip
            for _ in range(3):
                assert await outside.ask(outside.subscribe("203"), wait=0.3) is None
                assert await outside.ask(broken, wait=0.3) is None
        finally:
            inside.close()
            outside.close()
    assert sum("not in security.allow" in r.message for r in caplog.records) == 1


async def test_a_flood_is_throttled_while_other_phones_are_served(
    server: RecordedAmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(
        server, "security.requests_per_second=5", "security.burst=10"
    ) as bridge:
        loop = asyncio.get_running_loop()
        flooder = Phone(bridge.bound("udp"), host="127.0.0.2")
        answers: list[int] = []
        try:
            for _ in range(400):  # 400 requests in well under a second
                data = flooder.subscribe("205", resource="999")  # no such extension: 404
                await loop.sock_sendto(flooder.sock, data, flooder.bridge)
            try:
                async with asyncio.timeout(1.0):
                    while True:
                        text = (await loop.sock_recv(flooder.sock, 65535)).decode()
                        if text.startswith("SIP/2.0"):
                            answers.append(int(text.split(" ", 2)[1]))
            except TimeoutError:
                pass
            # Meanwhile a phone elsewhere subscribes as usual.
            async with SippWatcher("202", bridge.bound("udp"), idle_ms=800) as watcher:
                result = await watcher.finish()
            assert result.ok, result.output
        finally:
            flooder.close()
    # The burst got its answers (404), then one 503 a second.
    assert answers.count(404) == 10
    assert 1 <= answers.count(503) <= 2
    assert len(answers) <= 13  # the other ~390 were dropped unanswered
    throttled = [r for r in caplog.records if "throttling 127.0.0.2" in r.message]
    assert len(throttled) == 1


async def test_subscription_caps_per_source(server: RecordedAmiServer) -> None:
    async with running_bridge(server, "security.max_subscriptions_per_source=2") as bridge:
        phone = Phone(bridge.bound("udp"))
        try:
            codes = [
                status(await phone.ask(phone.subscribe(user))) for user in ("201", "203", "204")
            ]
            assert codes == [200, 200, 503]
            # Told once a second, otherwise ignored; a fetch counts like a subscription.
            fetch = phone.subscribe("205").replace(b"Expires: 600", b"Expires: 0")
            assert await phone.ask(fetch, wait=0.3) is None
            await asyncio.sleep(0.8)
            refused = await phone.ask(phone.subscribe("205"))
            assert refused is not None and "\r\nRetry-After: 10\r\n" in refused
        finally:
            phone.close()


def test_check_config_warns_about_readable_secrets_and_open_pickup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('203 = "pw"\n')
    users.chmod(0o644)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[security]\nauth = "digest"\nusers_file = "{users}"\n')
    assert main(["check-config", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"{users} holds secrets and is readable by everyone" in err
    assert "pw" not in err.replace("pwd", "")
    config.write_text('[security]\nauth = "off"\n')
    assert main(["check-config", str(config)]) == 0
    assert "only as safe as security.allow" in capsys.readouterr().err


def test_check_config_warns_about_a_tls_key_others_can_read(
    tmp_path: Path, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = certificate
    config = tmp_path / "bridge.toml"
    config.write_text(f'[sip]\ntls = ["127.0.0.1:5061"]\ntls_certificate = "{cert}"\n'
                      f'tls_key = "{key}"\n')  # fmt: skip
    for mode, warned in ((0o640, True), (0o600, False)):
        key.chmod(mode)
        assert main(["check-config", str(config)]) == 0
        assert (f"sip.tls_key: {key} is readable by others" in capsys.readouterr().err) is warned


async def test_sip_over_tls(server: RecordedAmiServer, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    async with running_bridge(
        server, 'sip.tls=["127.0.0.1:0"]', f"sip.tls_certificate={cert}", f"sip.tls_key={key}"
    ) as bridge:
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False  # the test certificate names localhost, we dial 127.0.0.1
        reader, writer = await asyncio.open_connection(*bridge.bound("tls"), ssl=client)
        host, port = writer.get_extra_info("sockname")[:2]
        writer.write(
            (
                "SUBSCRIBE sip:202@pbx.test SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bKtls1;rport\r\n"
                "From: <sip:203@pbx.test>;tag=t1\r\nTo: <sip:202@pbx.test>\r\n"
                "Call-ID: tls-1\r\nCSeq: 1 SUBSCRIBE\r\n"
                f"Contact: <sip:203@{host}:{port};transport=tls>\r\n"
                "Event: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

        async def message() -> tuple[str, bytes]:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = int(re.search(r"^Content-Length: (\d+)", head, re.M)[1])  # type: ignore[index]
            return head, await reader.readexactly(length)

        def answer(notify: str) -> None:
            cseq = re.search(r"^CSeq: .*$", notify, re.M)
            via = re.search(r"^Via: .*$", notify, re.M)
            assert cseq and via
            writer.write(f"SIP/2.0 200 OK\r\n{via[0]}\r\nFrom: <sip:202@pbx.test>\r\n"
                         f"To: <sip:203@pbx.test>\r\nCall-ID: tls-1\r\n{cseq[0]}\r\n"
                         "Content-Length: 0\r\n\r\n".encode())  # fmt: skip

        async with asyncio.timeout(5):
            ok, _ = await message()
            first, body = await message()
            assert ok.startswith("SIP/2.0 200 OK") and ";transport=tls>" in ok
            assert first.startswith("NOTIFY ") and "Via: SIP/2.0/TLS " in first
            assert b"<state>early" not in body and b"<state>confirmed" not in body  # idle
            answer(first)
            await server.play("pickup-replaces", until=RINGING_202)
            while True:  # answer the NOTIFYs until the ringing one, ids and all, arrives
                head, body = await message()
                answer(head)
                if b"<state>early</state>" in body:
                    break
        assert b'call-id="' in body
        writer.close()
