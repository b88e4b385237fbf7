"""Several PBXs in one bridge, over real sockets: the real process follows two replayed
Asterisks (two RecordedAmiServers, both with an extension 202), a SIPp watcher subscribes at
each PBX's domain. Each watcher sees its own PBX's calls only; one PBX stopped mid-call leaves
the other's keys live, and its own keys recover when it comes back (its resync)."""

from __future__ import annotations

from pathlib import Path

from bridge_process import BridgeProcess
from conftest import RECORDINGS
from sipp import SippWatcher, free_port
from test_app import RINGING_202, collapsed, dialogs, key_state

from bridge.demo.ami_server import RecordedAmiServer


def two_pbxs(tmp_path: Path, berlin: int, hamburg: int) -> Path:
    path = tmp_path / "bridge.toml"
    entries = []
    for name, port in (("berlin", berlin), ("hamburg", hamburg)):
        entries.append(f'[[asterisk]]\nname = "{name}"\ndomain = "{name}.test"\n'
                       f'ami = {{ port = {port}, username = "bridge", secret = "bridgesecret", '
                       "reconnect_min = 0.1, reconnect_max = 0.4 }\n")  # fmt: skip
    path.write_text("\n".join(entries))
    return path


def without_one_pbx_form(bridge: BridgeProcess) -> BridgeProcess:
    """BridgeProcess names one AMI with ``--set ami.…``; [[asterisk]] entries replace that."""
    args, kept = bridge.args, []
    for i, arg in enumerate(args):
        if arg.startswith("ami.") or (arg == "--set" and args[i + 1].startswith("ami.")):
            continue
        kept.append(arg)
    bridge.args = kept
    return bridge


async def test_each_watcher_sees_its_own_pbx_and_survives_the_other_going_away(
    tmp_path: Path,
) -> None:
    async with (
        RecordedAmiServer(RECORDINGS, speed=4) as berlin,
        RecordedAmiServer(RECORDINGS, speed=4) as hamburg,
    ):
        sip_port, berlin_port = free_port(), berlin.port
        config = two_pbxs(tmp_path, berlin_port, hamburg.port)
        bridge = without_one_pbx_form(BridgeProcess(config, sip_port, 0, tmp_path / "s.sqlite3"))
        bridge_at = ("127.0.0.1", sip_port)
        try:
            await bridge.start()
            await bridge.wait_for("in sync with Asterisk", count=2)
            async with (
                SippWatcher("202", bridge_at, idle_ms=6000, domain="berlin.test") as at_berlin,
                SippWatcher("202", bridge_at, idle_ms=6000, domain="hamburg.test") as at_hamburg,
            ):
                await bridge.wait_for("subscribed to berlin:202")
                await bridge.wait_for("subscribed to hamburg:202")
                await berlin.play("ring-cancel", until=RINGING_202)
                await bridge.wait_for("berlin:202: ringing")
                await berlin.close()  # mid-call: Berlin is gone
                await bridge.wait_for("Asterisk berlin is unreachable")
                # Hamburg's keys keep working: its call rings, is answered and ends.
                await hamburg.play("ring-answer-hangup", until=RINGING_202)
                await bridge.wait_for("hamburg:202: ringing")
                await hamburg.play("ring-answer-hangup")
                await bridge.wait_for("hamburg:202: idle")
                # Berlin comes back on its port: resync, and its key learns the call is over.
                revived = RecordedAmiServer(RECORDINGS, port=berlin_port)
                await revived.start()
                try:
                    await bridge.wait_for("in sync with Asterisk berlin", count=2)
                    await bridge.wait_for("berlin:202: idle")
                finally:
                    await revived.close()
                berlin_result = await at_berlin.finish()
                hamburg_result = await at_hamburg.finish()
        finally:
            await bridge.close()
    assert berlin_result.ok, berlin_result.output
    assert hamburg_result.ok, hamburg_result.output
    berlin_states = collapsed([key_state(n) for n in berlin_result.notifies])
    hamburg_states = collapsed([key_state(n) for n in hamburg_result.notifies])
    assert berlin_states == ["idle", "early/recipient", "idle"], berlin_states
    assert hamburg_states == ["idle", "early/recipient", "confirmed/recipient", "idle"], (
        hamburg_states)  # fmt: skip
    for result, domain in ((berlin_result, "berlin.test"), (hamburg_result, "hamburg.test")):
        assert all(f'entity="sip:202@{domain}"'.encode() in n.body for n in result.notifies)
    # Pickup ids never cross: Berlin's watcher never hears Hamburg's call-id, nor the reverse.
    call_ids = {
        name: {d.get("call-id") for n in result.notifies for d in dialogs(n) if d.get("call-id")}
        for name, result in (("berlin", berlin_result), ("hamburg", hamburg_result))
    }
    assert call_ids["berlin"] and call_ids["hamburg"]
    assert not call_ids["berlin"] & call_ids["hamburg"]
    assert "Traceback" not in bridge.log
