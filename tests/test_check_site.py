"""`snom-blf-bridge check-site` against a replayed Asterisk (AMI and ARI) over real sockets:
every check passes on a site that is ready, and each fails, with its fix, where it is not.
The running bridge's own findings (BridgeStatus.findings) are checked here too."""

from __future__ import annotations

import asyncio
import os
import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from test_app import synced_bridge

from bridge.__main__ import main
from bridge.app import Bridge
from bridge.config import load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.findings import Finding
from bridge.sitecheck.cli import exit_status, site_findings
from bridge.status import BridgeStatus

RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(server: RecordedAmiServer, tmp_path: Path, sip: int, web: int, *extra: str
             ) -> list[str]:  # fmt: skip
    return [
        f"ami.port={server.port}", "ami.username=bridge", "ami.secret=bridgesecret",
        f'sip.udp=["127.0.0.1:{sip}"]', "sip.tcp=[]", "sip.domain=pbx.test",
        f'web.listen="127.0.0.1:{web}"', f'store.path="{tmp_path / "store.sqlite3"}"',
        "security.requests_per_second=0", *extra,
    ]  # fmt: skip


def write_config(tmp_path: Path, lines: list[str]) -> Path:
    """The --set lines as a TOML file, as an installer would write it."""
    sections: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            value = f'"{value}"'  # a bare word, as --set takes it
        sections.setdefault(section, []).append(f"{key} = {value}")
    text = "\n".join(f"[{s}]\n" + "\n".join(v) for s, v in sections.items()) + "\n"
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def running_bridge(lines: list[str]) -> AsyncIterator[Bridge]:
    async with synced_bridge(load(None, lines)) as bridge:
        yield bridge


def by_subject(found: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in found:
        out.setdefault(f.subject, []).append(f)
    return out


def levels(found: list[Finding], subject: str) -> set[str]:
    return {f.level for f in found if f.subject == subject}


async def test_a_ready_site_passes_every_check_and_exits_0(
    server: RecordedAmiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.select_fullest()
    lines = settings(server, tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    config = write_config(tmp_path, lines)
    async with running_bridge(lines):
        # A call while the check listens: its events show that `read = call` works.
        async def call() -> None:
            await server.wait_until(lambda: server.logged_in >= 2)
            await server.play("ring-answer-hangup")

        caller = asyncio.create_task(call())
        status = await asyncio.to_thread(
            main, ["check-site", "--config", str(config), "--listen", "1"]
        )
        caller.cancel()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "FAIL" not in out and "WARN" not in out
    for subject in ("login", "manager rights", "events", "hints", "keys", "pickup groups",
                    "SIP listener udp", "web 127.0.0.1", "store"):  # fmt: skip
        assert f"ok   {subject}" in out, subject
    assert "call events arrive" in out
    assert "context internal: 201, 202" in out


async def test_a_wrong_secret_fails_the_login_with_where_to_fix_it(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    lines = settings(server, tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    found = await site_findings(load(None, [*lines, "ami.secret=wrong"]), listen=0)
    login = by_subject(found)["login"][0]
    assert login.level == "fail"
    assert "refused: Authentication failed" in login.text
    assert "[bridge]" in login.fix and "manager show user bridge" in login.fix
    assert exit_status(found) == 1


async def test_no_manager_interface_says_enabled_yes(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_STREAM)  # nobody listens there
    found = await site_findings(load(None, [f"ami.port={port}", "ami.username=bridge",
                                            "ami.secret=x", "store.path="]), listen=0)  # fmt: skip
    login = by_subject(found)["login"][0]
    assert login.level == "fail" and "cannot connect" in login.text
    assert "enabled = yes" in login.fix and "manager reload" in login.fix


async def test_without_write_call_getvar_is_refused_and_the_fix_says_write_call(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    server.write = frozenset({"system", "reporting"})  # the lists and Getvar, not ParkedCalls
    found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0)
    rights = [f for f in found if f.subject == "manager rights"]
    (parked,) = rights
    assert parked.text.startswith("ParkedCalls refused (Permission denied)")
    assert "`write = call`" in parked.fix and "parking" in parked.text
    server.write = frozenset({"system"})
    found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0)
    rights = [f for f in found if f.subject == "manager rights"]
    getvar = next(f for f in rights if f.text.startswith("Getvar"))
    assert getvar.level == "fail" and "Permission denied" in getvar.text
    assert "`write = call`" in getvar.fix and "manager reload" in getvar.fix
    assert any(f.text.startswith("ExtensionStateList") for f in rights)
    # system is there: the endpoints are still read
    assert levels(found, "keys") == {"ok"}


async def test_without_read_system_no_event_arrives_and_the_fix_says_read(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    server.read = frozenset({"dialplan"})
    found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0.2)
    events = [f for f in found if f.subject == "events"]
    assert [f.level for f in events] == ["fail", "warn"]
    assert "read = system,call" in events[0].fix


async def test_an_idle_pbx_is_a_warning_and_exit_3(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    lines = settings(server, tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    async with running_bridge(lines):
        found = await site_findings(load(None, lines), listen=0.2)
    assert [f.level for f in found if f.level != "ok"] == ["warn"], found
    assert "no call event in 0.2 s" in next(f.text for f in found if f.level == "warn")
    assert exit_status(found) == 3


async def test_an_endpoint_without_pickup_groups_is_named_with_its_fix(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    server.select_fullest()
    del server.endpoints["203"]["pickup_group"], server.endpoints["203"]["call_group"]
    found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0)
    (finding,) = by_subject(found)["endpoint 203"]
    assert finding.level == "warn" and "no pickup_group" in finding.text
    assert "`pickup_group = 1` and `call_group = 1` to [203]" in finding.fix
    assert "endpoint 202" not in by_subject(found)
    # Under another pickup policy groups do not matter.
    found = await site_findings(load(None, [*settings(server, tmp_path, 1, 1),
                                            "security.pickup=everyone"]), listen=0)  # fmt: skip
    assert "endpoint 203" not in by_subject(found)
    assert levels(found, "pickup groups") == {"ok"}


async def test_watched_extensions_without_a_hint_and_a_wrong_context_fail(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    server.select_fullest()
    lines = [*settings(server, tmp_path, 1, 1), 'watch.extensions=["201", "299"]']
    found = await site_findings(load(None, lines), listen=0)
    (missing,) = by_subject(found)["extension 299"]
    assert missing.level == "fail" and "exten => 299,hint,PJSIP/299" in missing.fix
    assert "extension 201" not in by_subject(found)
    found = await site_findings(load(None, [*lines[:-1], "watch.context=nowhere"]), listen=0)
    wrong = next(f for f in found if f.subject == "hints" and f.level == "fail")
    assert "watch.context" in wrong.text and "internal" in wrong.fix


async def test_led_phones_registered_or_not_or_unknown(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    server.select("registrations")
    rules = tmp_path / "leds.toml"
    rules.write_text("".join(f'[[led]]\nphone = "{phone}"\nkey = 1\ndevice = "Custom:DND201"\n'
                             for phone in ("201", "206", "nosuch")))  # fmt: skip
    found = await site_findings(load(str(rules), settings(server, tmp_path, 1, 1)), listen=0)
    phones = {f.subject: f for f in found if f.subject.startswith("LED phone")}
    assert phones["LED phone nosuch"].level == "fail"
    assert "no AOR nosuch" in phones["LED phone nosuch"].text
    assert {phones["LED phone 201"].level, phones["LED phone 206"].level} <= {"ok", "warn"}
    registered = [f for f in phones.values() if f.level == "ok"]
    assert registered and all("registered (sip:" in f.text for f in registered)


async def test_listeners_down_and_a_store_that_cannot_be_written_fail(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    lines = ["ami.username=", f'sip.udp=["127.0.0.1:{free_port()}"]',
             f'sip.tcp=["127.0.0.1:{free_port(socket.SOCK_STREAM)}"]',
             f'web.listen="127.0.0.1:{free_port(socket.SOCK_STREAM)}"',
             f'store.path="{folder / "s.sqlite3"}"']  # fmt: skip
    found = await site_findings(load(None, lines), listen=0, patience=0.5)
    failed = {f.subject.split(" 127")[0] for f in found if f.level == "fail"}
    assert {"asterisk", "SIP listener udp", "SIP listener tcp", "web"} <= failed
    assert all("systemctl start snom-blf-bridge" in f.fix for f in found
               if f.subject.startswith(("SIP", "web")))  # fmt: skip
    store = by_subject(found)["store"][0]
    if os.geteuid() != 0:  # root writes anywhere
            assert store.level == "fail" and "install -d" in store.fix
    missing = await site_findings(load(None, [*lines[:-1], f'store.path="{tmp_path}/no/s.db"']),
                                  listen=0, patience=0.5)  # fmt: skip
    assert "does not exist" in by_subject(missing)["store"][0].text


async def test_over_ari_the_login_and_the_groups_are_checked(tmp_path: Path) -> None:
    async with RecordedAriServer(RECORDINGS, speed=0) as server:
        server.endpoints["203"].pop("pickup_group", None)
        server.endpoints["203"].pop("call_group", None)
        base = ["asterisk.source=ari", f"ari.url=http://127.0.0.1:{server.port}",
                "ari.username=bridge", "store.path="]  # fmt: skip
        found = await site_findings(load(None, [*base, "ari.password=bridgesecret"]), listen=0.1)
        assert levels(found, "login") == {"ok"}
        assert levels(found, "events") == {"ok"}
        assert levels(found, "endpoint 203") == {"warn"}
        found = await site_findings(load(None, [*base, "ari.password=wrong"]), listen=0.1)
        login = by_subject(found)["login"][0]
        assert login.level == "fail" and "401" in login.text and "ari.conf" in login.fix


async def test_the_running_bridge_finds_endpoints_without_groups_and_a_refused_getvar(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    del server.endpoints["204"]["pickup_group"]
    server.write = frozenset({"system", "reporting"})  # lists allowed (reporting), Getvar too
    lines = settings(server, tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    async with running_bridge(lines) as bridge:
        status = BridgeStatus(bridge.core, asyncio.get_running_loop().time)
        for _ in range(200):
            if any(f.subject == "endpoint 204" for f in status.findings()):
                break
            await asyncio.sleep(0.02)
        (found,) = [f for f in status.findings() if f.subject == "endpoint 204"]
        assert found.level == "warn" and "pickup_group" in found.fix
        # ParkedCalls needs write = call: the resync said so.
        parked = next(f for f in status.findings() if f.subject == "manager rights: ParkedCalls")
        assert parked.level == "fail" and "`write = call`" in parked.fix
        # Now Getvar is refused too (nor reporting): a ringing call shows it.
        server.write = frozenset({"system"})
        await server.play("ring-answer-hangup")
        for _ in range(200):
            if any(f.subject == "manager rights: Getvar" for f in status.findings()):
                break
            await asyncio.sleep(0.02)
        rights = next(f for f in status.findings() if f.subject == "manager rights: Getvar")
        assert rights.level == "fail" and "`write = call`" in rights.fix
        # The groups come back after a reload of the endpoint: the finding goes.
        server.endpoints["204"]["pickup_group"] = "1"
        assert bridge.source is not None
        bridge.source.refresh_groups()  # type: ignore[union-attr]
        for _ in range(200):
            if not any(f.subject == "endpoint 204" for f in status.findings()):
                break
            await asyncio.sleep(0.02)
        assert not any(f.subject == "endpoint 204" for f in status.findings())


async def test_on_a_freepbx_layout_the_keys_resolve_through_the_includes(tmp_path: Path) -> None:
    """FreePBX: endpoints with `context = from-internal`, no subscribe_context; the hints live
    in ext-local, park-hints, ... reached only through includes. The check reports where each
    phone's keys come from as the bridge resolves them, and a context reaching no hint."""
    freepbx = Path(__file__).parent / "fixtures" / "freepbx-asterisk-22.10.1"
    async with RecordedAmiServer(freepbx) as server:
        found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0)
        keys = {f.text.split(":")[0]: f for f in found if f.subject == "keys"}
        from_internal = next(f for t, f in keys.items() if "from context from-internal" in t)
        assert from_internal.level == "ok"
        assert "ext-local (" in from_internal.text and "park-hints (" in from_internal.text
        tenant = next(f for t, f in keys.items() if "from context tenant-b" in t)
        assert "tenant-b-ext (" in tenant.text and "ext-local" not in tenant.text
        # An endpoint whose context reaches no hint: Asterisk (and the bridge) answer 404.
        server.endpoints["203"]["context"] = "nowhere"
        found = await site_findings(load(None, settings(server, tmp_path, 1, 1)), listen=0)
        dark = next(f for f in found if f.subject == "keys" and "nowhere" in f.text)
        assert dark.level == "warn" and "include =>" in dark.fix
