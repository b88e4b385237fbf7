"""A reload (SIGHUP) follows what the file says, with SIPp watching a real bridge process.

Started on the demo PBX (no Asterisk named), the file then names a replayed Asterisk: the
bridge leaves the demo, logs in there, resyncs, and the watcher's subscription goes on (same
dialog, never terminated) with the new PBX's states. Likewise AMI -> ARI -> AMI.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from bridge_process import BridgeProcess
from sipp import SippResult, SippWatcher, free_port
from test_app import RINGING_202, collapsed, key_state

from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer, event_is
from bridge.store import SubscriptionStore

AMI_REPLAY_SPEED = 4  # the shared server fixture (conftest.py) replays this fast
RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
ARI_RINGING = event_is("ChannelStateChange", state="Ringing")
AMI_FILE = "[ami]\nport = {port}\nusername = 'bridge'\nsecret = 'bridgesecret'\n"
FOLLOWING = "reload: following Asterisk {source} bridge@127.0.0.1:{port}"


def count(bridge: BridgeProcess, text: str) -> int:
    return sum(text in line for line in bridge.lines)


async def reload(bridge: BridgeProcess, config: Path, text: str, *, then: str = "",
                 syncs: int = 0) -> None:
    """Write the file and SIGHUP; then wait for the line ``then`` (what it follows now) and
    for the ``syncs``-th "in sync" line (0: wait for nothing)."""
    await asyncio.to_thread(config.write_text, text)
    assert bridge.process is not None
    bridge.process.send_signal(signal.SIGHUP)
    if then:
        await bridge.wait_for(then)
    if syncs:
        await bridge.wait_for("in sync with Asterisk", count=syncs)


def the_dialog_went_on(result: SippResult) -> list[str]:
    """The watcher's NOTIFYs were all of one live dialog; returns its key states."""
    assert result.ok, result.output
    assert all((n.header("Subscription-State") or "").startswith("active;")
               for n in result.notifies), "a phone was told its subscription ended"  # fmt: skip
    assert len({n.header("Call-ID") for n in result.notifies}) == 1
    cseqs = [n.cseq for n in result.notifies]
    assert cseqs == sorted(set(cseqs)), cseqs
    return collapsed([key_state(n) for n in result.notifies])


async def test_a_reload_moves_from_the_demo_to_the_asterisk_the_file_names(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("# no Asterisk yet: the demo PBX\n")
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "s.sqlite3")
    # As installed: no ami.* on the command line, only what the file says.
    args = bridge.args
    bridge.args = [a for i, a in enumerate(args) if not a.startswith("ami.")
                   and not (a == "--set" and args[i + 1].startswith("ami."))]  # fmt: skip
    try:
        await bridge.start()
        assert "following the demo PBX" in bridge.log
        async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=4000) as watcher:
            await bridge.wait_for("subscribed to 202")
            await reload(bridge, config, AMI_FILE.format(port=server.port),
                         then=FOLLOWING.format(source="AMI", port=server.port), syncs=2)
            assert server.logged_in == 1
            on_asterisk = time.time()  # from here on the demo is closed: every call is the replay's
            ringing, idle = count(bridge, "202: ringing"), count(bridge, "202: idle")
            await server.play("ring-cancel", until=RINGING_202)
            await bridge.wait_for("202: ringing", count=ringing + 1)
            await server.play("ring-cancel")
            await bridge.wait_for("202: idle", count=idle + 1)
            back_on_demo = time.time()
            # And back: the file names no Asterisk any more, the demo runs again.
            await reload(bridge, config, "# no Asterisk: the demo PBX again\n",
                         then="reload: following the demo PBX", syncs=3)
            result = await watcher.finish()
        assert await bridge.end(signal.SIGTERM) == 0
    finally:
        await bridge.close()
    the_dialog_went_on(result)
    # The replayed call rang the key (before the demo was back), then the key went idle.
    after = [(n.time, key_state(n)) for n in result.notifies if (n.time or 0) >= on_asterisk]
    ringing_at = next(i for i, (_, state) in enumerate(after) if state == "early/recipient")
    assert (after[ringing_at][0] or 0) < back_on_demo, after
    assert collapsed([state for _, state in after[ringing_at:]])[:2] == [
        "early/recipient", "idle"], after  # fmt: skip
    assert "reloaded: ami.port, ami.secret, ami.username" in bridge.log
    assert "reload: following the demo PBX" in bridge.log
    assert "only change on a restart" not in bridge.log
    assert "Traceback" not in bridge.log


async def test_a_reload_moves_to_another_asterisk_and_relearns_its_keys(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    """Another AMI endpoint: the old one's keys are forgotten, the new one's sync tells them
    (a watcher of a key the new one lacks is ended with noresource; 202's goes on)."""
    config = tmp_path / "bridge.toml"
    config.write_text(AMI_FILE.format(port=server.port))
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "s.sqlite3")
    args = bridge.args
    bridge.args = [a for i, a in enumerate(args) if not a.startswith("ami.port")
                   and not (a == "--set" and args[i + 1].startswith("ami.port"))]  # fmt: skip
    async with RecordedAmiServer(RECORDINGS, speed=4) as other:
        try:
            await bridge.start()
            async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=4000) as watcher:
                await bridge.wait_for("subscribed to 202")
                await reload(bridge, config, AMI_FILE.format(port=other.port),
                             then=FOLLOWING.format(source="AMI", port=other.port), syncs=2)
                await other.play("ring-cancel", until=RINGING_202)
                await bridge.wait_for("202: ringing")
                await other.play("ring-cancel")
                await bridge.wait_for("202: idle", count=2)
                result = await watcher.finish()
            assert await bridge.end(signal.SIGTERM) == 0
        finally:
            await bridge.close()
    states = the_dialog_went_on(result)
    assert states == ["idle", "early/recipient", "idle"], states
    assert (len(server.logins), len(other.logins)) == (1, 1)
    assert "failover" not in bridge.log  # a move by reload is no failover
    assert "Traceback" not in bridge.log


async def test_a_reload_moves_from_ami_to_ari_and_back(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("# AMI from the command line\n")
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "s.sqlite3")
    async with RecordedAriServer(RECORDINGS, speed=4) as ari:
        try:
            await bridge.start()
            async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=4000) as watcher:
                await bridge.wait_for("subscribed to 202")
                await reload(bridge, config, "[asterisk]\nsource = 'ari'\n[ari]\n"
                             f"url = 'http://127.0.0.1:{ari.port}'\nusername = 'bridge'\n"
                             "password = 'bridgesecret'\n",
                             then=FOLLOWING.format(source="ARI", port=ari.port),
                             syncs=2)  # fmt: skip
                await ari.play("ring-cancel", until=ARI_RINGING)
                await bridge.wait_for("202: ringing")
                await ari.play("ring-cancel")
                await bridge.wait_for("202: idle", count=2)
                await reload(bridge, config, "# AMI again\n",
                             then=FOLLOWING.format(source="AMI", port=server.port), syncs=3)
                await server.play("ring-cancel", until=RINGING_202)
                await bridge.wait_for("202: ringing", count=2)
                await server.play("ring-cancel")
                await bridge.wait_for("202: idle", count=3)
                result = await watcher.finish()
            assert await bridge.end(signal.SIGTERM) == 0
        finally:
            await bridge.close()
    states = the_dialog_went_on(result)
    assert states == ["idle", "early/recipient", "idle", "early/recipient", "idle"], states
    assert len(server.logins) == 2 and len(ari.logins) == 1
    assert "Traceback" not in bridge.log


async def test_leaving_the_demo_moves_its_subscriptions_to_the_sites_store(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    """The demo keeps its own store (config.demo_store); the site's file names another. The
    reload moves every running subscription there and empties the demo's, so the restart that
    follows resumes them, and no later demo run resumes them too."""
    demo_store, site_store = tmp_path / "demo.sqlite3", tmp_path / "site.sqlite3"
    config = tmp_path / "bridge.toml"
    config.write_text(f"[store]\npath = '{demo_store}'\n")
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "unused.sqlite3")
    args = bridge.args  # as installed: the store and the AMI user come from the file
    bridge.args = [a for i, a in enumerate(args) if not a.startswith(("ami.", "store.path"))
                   and not (a == "--set" and args[i + 1].startswith(("ami.", "store.path")))]
    try:
        await bridge.start()
        async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=3000) as watcher:
            await bridge.wait_for("subscribed to 202")
            await reload(bridge, config, AMI_FILE.format(port=server.port)
                         + f"[store]\npath = '{site_store}'\n",
                         then=f"subscriptions are kept in {site_store} now", syncs=2)  # fmt: skip
            moved = await asyncio.to_thread(SubscriptionStore(site_store).load)
            left = await asyncio.to_thread(SubscriptionStore(demo_store).load)
            result = await watcher.finish()
        assert await bridge.end(signal.SIGTERM) == 0
    finally:
        await bridge.close()
    the_dialog_went_on(result)
    assert [s.resource for s in moved] == ["202"] and left == []
    assert "only change on a restart" not in bridge.log
    assert "Traceback" not in bridge.log


async def test_clearing_demo_enabled_moves_to_the_asterisk_already_named(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    """`demo.enabled = true` beside a configured Asterisk runs the demo; clearing it and
    reloading follows that Asterisk, with no restart and nothing said to be waiting for one."""
    config = tmp_path / "bridge.toml"
    config.write_text(AMI_FILE.format(port=server.port) + "[demo]\nenabled = true\n")
    sip_port = free_port()
    bridge = BridgeProcess(config, sip_port, server.port, tmp_path / "s.sqlite3")
    try:
        await bridge.start()
        assert "following the demo PBX" in bridge.log
        async with SippWatcher("202", ("127.0.0.1", sip_port), idle_ms=2000) as watcher:
            await bridge.wait_for("subscribed to 202")
            await reload(bridge, config, AMI_FILE.format(port=server.port),
                         then=FOLLOWING.format(source="AMI", port=server.port), syncs=2)
            assert server.logged_in == 1
            result = await watcher.finish()
        assert await bridge.end(signal.SIGTERM) == 0
    finally:
        await bridge.close()
    the_dialog_went_on(result)
    assert "only change on a restart" not in bridge.log
