"""Failover between two AMI (ami.standby) or ARI (ari.standby) endpoints of one PBX, under a
live SIPp watcher.

The bridge runs as a real process; the primary and the standby are two replayed Asterisks on
their own ports. The primary dies loudly (its connections closed) or silently (a relay in front
of it stops forwarding and closes nothing: only the keepalive can tell); the bridge must move to
the standby within seconds, resync from it, and keep the watcher's subscription: the same dialog
goes on, the key shows the standby's state right after the switch and its calls after that.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from bridge_process import BridgeProcess
from conftest import RECORDINGS
from sipp import SippResult, SippWatcher, free_port
from test_app import NS, RINGING_202, collapsed, dialogs, key_state

from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer, event_is
from bridge.demo.relay import TcpRelay
from bridge.web.cli import format_status


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text("# everything comes from --set\n")
    return path


def with_standby(bridge: BridgeProcess, *ports: int, keepalive: float = 1.0) -> BridgeProcess:
    standby = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    bridge.args += ["--set", f"ami.standby=[{standby}]", "--set", f"ami.keepalive={keepalive}",
                    "--set", "ami.reconnect_min=0.1", "--set", "ami.reconnect_max=0.4"]  # fmt: skip
    return bridge


async def next_line(bridge: BridgeProcess, text: str, seen: int) -> None:
    """Wait for one more log line with ``text`` than the ``seen`` before."""
    await bridge.wait_for(text, count=seen + 1)


def count(bridge: BridgeProcess, text: str) -> int:
    return sum(text in line for line in bridge.lines)


def the_dialog_went_on(result: SippResult) -> list[str]:
    """What a watcher across a failover must see: one dialog, never a new SUBSCRIBE, all its
    NOTIFYs active; its key ringing, idle at the switch (the standby has no such call), ringing
    again with the standby's call and idle at the end; every ringing dialog with its ids, so a
    Snom can pick the standby's call up. Returns the key's states, repeats collapsed."""
    assert result.ok, result.output
    notifies = result.notifies
    assert all((n.header("Subscription-State") or "").startswith("active;") for n in notifies)
    assert len({n.header("Call-ID") for n in notifies}) == 1  # one dialog: no new SUBSCRIBE
    states = collapsed([key_state(n) for n in notifies])
    assert states[:4] == ["idle", "early/recipient", "idle", "early/recipient"], states
    assert states[-1] == "idle", states
    early = [d for n in notifies for d in dialogs(n) if d.findtext("d:state", namespaces=NS)
             == "early"]  # fmt: skip
    assert early and all(d.get("call-id") for d in early)
    return states


@pytest.mark.parametrize("death", ["closed", "silent"])
async def test_the_standby_takes_over_under_a_live_watcher(
    config: Path, tmp_path: Path, death: str
) -> None:
    async with (
        RecordedAmiServer(RECORDINGS, speed=4) as primary,
        RecordedAmiServer(RECORDINGS, speed=4) as standby,
        TcpRelay("127.0.0.1", primary.port) as relay,
    ):
        sip_port, web_port = free_port(), free_port()
        bridge = with_standby(
            BridgeProcess(config, sip_port, relay.port, tmp_path / "s.sqlite3"), standby.port
        )
        bridge.args += ["--set", f"web.listen=127.0.0.1:{web_port}"]
        try:
            await bridge.start()
            async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=5000) as watcher:
                await bridge.wait_for("subscribed to 202")
                await primary.play("ring-cancel", until=RINGING_202)
                await bridge.wait_for("202: ringing")
                assert standby.logged_in == 0  # a standby is only a plan until it is needed
                idle = count(bridge, "202: idle")
                if death == "closed":
                    await relay.cut()
                else:
                    relay.freeze()  # no FIN, no RST: the connection just goes quiet
                switched = f"AMI: 127.0.0.1:{relay.port} lost; following 127.0.0.1:{standby.port}"
                await bridge.wait_for(switched)
                # The standby has no such call (the primary's calls died with it): idle at once.
                await next_line(bridge, "202: idle", idle)
                # The status says so too: which endpoint, and that it moved once.
                async with aiohttp.ClientSession() as http:
                    base = f"http://127.0.0.1:{web_port}"
                    async with http.get(f"{base}/api/asterisk") as response:
                        followed = await response.json()
                    async with http.get(f"{base}/metrics") as response:
                        metrics = await response.text()
                assert [(p["endpoint"], p["failovers"]) for p in followed] == [
                    (f"127.0.0.1:{standby.port}", 1)
                ]
                assert "snom_blf_failovers_total 1.0" in metrics
                followed_at = f'endpoint="127.0.0.1:{standby.port}"'
                assert f"snom_blf_asterisk_endpoint{{{followed_at}}} 1.0" in metrics
                assert f"asterisk: following 127.0.0.1:{standby.port}, 1 failover" in (
                    format_status([], "ok", [], followed)
                )
                # Another Asterisk, another call (its own Uniqueids): ringing, answered, over.
                ringing = count(bridge, "202: ringing")
                await standby.play("ring-answer-hangup", until=RINGING_202)
                await next_line(bridge, "202: ringing", ringing)
                await standby.play("ring-answer-hangup")
                await next_line(bridge, "202: idle", idle + 1)
                result = await watcher.finish()
        finally:
            await bridge.close()
    states = the_dialog_went_on(result)
    cseqs = [n.cseq for n in result.notifies]
    assert cseqs == sorted(set(cseqs)), cseqs
    assert "confirmed/recipient" in states[4:], states
    if death == "silent":
        assert "AMI did not answer a Ping within 1.0 s" in bridge.log
    assert "Traceback" not in bridge.log


async def test_both_down_backs_off_and_says_so_once(config: Path, tmp_path: Path) -> None:
    async with (
        RecordedAmiServer(RECORDINGS, speed=4) as primary,
        RecordedAmiServer(RECORDINGS, speed=4) as standby,
    ):
        bridge = with_standby(
            BridgeProcess(config, free_port(), primary.port, tmp_path / "s.sqlite3"), standby.port
        )
        try:
            await bridge.start()
            primary_port, standby_port = primary.port, standby.port
            await primary.close()
            await standby.close()
            none = f"AMI: none of 127.0.0.1:{primary_port}, 127.0.0.1:{standby_port} answers"
            await bridge.wait_for(none)
            # Rounds of both, with backoff between rounds; the log keeps quiet meanwhile.
            tries = f"cannot connect to AMI at 127.0.0.1:{standby_port}"
            await bridge.wait_for(tries, count=4)
            warnings = [line for line in bridge.lines if "WARNING" in line]
            assert sum(none in line for line in warnings) == 1, bridge.log
            assert sum(tries in line for line in warnings) == 1, bridge.log
            starts = [line for line in bridge.lines if "reconnecting to AMI in" in line]
            assert starts, "no backoff between rounds"
            # The standby comes back first: followed, and in sync again.
            revived = RecordedAmiServer(RECORDINGS, port=standby_port)
            await revived.start()
            try:
                await bridge.wait_for(
                    f"AMI: 127.0.0.1:{primary_port} lost; following 127.0.0.1:{standby_port}"
                )
                await bridge.wait_for("in sync with Asterisk", count=2)
            finally:
                await revived.close()
        finally:
            await bridge.close()
    assert "Traceback" not in bridge.log


async def test_a_bridge_that_starts_while_the_primary_is_down_follows_the_standby(
    config: Path, tmp_path: Path
) -> None:
    async with RecordedAmiServer(RECORDINGS, speed=4) as standby:
        dead = free_port()  # nothing listens there
        bridge = with_standby(
            BridgeProcess(config, free_port(), dead, tmp_path / "s.sqlite3"), standby.port
        )
        try:
            await bridge.start()  # in sync: with the standby
            await bridge.wait_for(
                f"AMI: 127.0.0.1:{dead} does not answer; following 127.0.0.1:{standby.port}"
            )
            assert standby.logged_in == 1
        finally:
            await bridge.close()


async def test_no_return_to_the_primary_while_the_standby_answers(
    config: Path, tmp_path: Path
) -> None:
    async with (
        RecordedAmiServer(RECORDINGS, speed=4) as primary,
        RecordedAmiServer(RECORDINGS, speed=4) as standby,
    ):
        bridge = with_standby(
            BridgeProcess(config, free_port(), primary.port, tmp_path / "s.sqlite3"), standby.port
        )
        try:
            await bridge.start()
            primary.drop_clients()  # Asterisk restarted: it listens again at once
            await bridge.wait_for(f"following 127.0.0.1:{standby.port}")
            await bridge.wait_for("in sync with Asterisk", count=2)
            await asyncio.sleep(1.5)  # a keepalive or two: nothing moves
            assert (primary.logged_in, standby.logged_in) == (0, 1)
            assert count(bridge, "lost; following") == 1
        finally:
            await bridge.close()


ARI_RINGING = event_is("ChannelStateChange", state="Ringing")


@pytest.mark.parametrize("death", ["closed", "silent"])
async def test_the_ari_standby_takes_over_under_a_live_watcher(
    config: Path, tmp_path: Path, death: str
) -> None:
    async with (
        RecordedAriServer(RECORDINGS, speed=4) as primary,
        RecordedAriServer(RECORDINGS, speed=4) as standby,
        TcpRelay("127.0.0.1", primary.port) as relay,
    ):
        sip_port = free_port()
        bridge = BridgeProcess(config, sip_port, free_port(), tmp_path / "s.sqlite3")
        first, second = f"http://127.0.0.1:{relay.port}", f"http://127.0.0.1:{standby.port}"
        bridge.args += [
            "--set", "asterisk.source=ari", "--set", f"ari.url={first}",
            "--set", "ari.username=bridge", "--set", "ari.password=bridgesecret",
            "--set", f'ari.standby=["{second}"]', "--set", "ari.keepalive=1",
        ]  # fmt: skip
        try:
            await bridge.start()
            async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=5000) as watcher:
                await bridge.wait_for("subscribed to 202")
                await primary.play("ring-cancel", until=ARI_RINGING)
                await bridge.wait_for("202: ringing")
                assert standby.connected == 0
                idle = count(bridge, "202: idle")
                if death == "closed":
                    await relay.cut()
                else:
                    relay.freeze()
                await bridge.wait_for(f"ARI: {first} lost; following {second}")
                await next_line(bridge, "202: idle", idle)
                ringing = count(bridge, "202: ringing")
                await standby.play("ring-answer-hangup", until=ARI_RINGING)
                await next_line(bridge, "202: ringing", ringing)
                await standby.play("ring-answer-hangup")
                await next_line(bridge, "202: idle", idle + 1)
                result = await watcher.finish()
        finally:
            await bridge.close()
    the_dialog_went_on(result)
    assert "Traceback" not in bridge.log
