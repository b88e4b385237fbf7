"""The command line as an installer uses it: the README's run command, as a real process."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import sys
from pathlib import Path

from lxml import etree
from sipp import SCENARIOS, SippWatcher, free_port

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "etc" / "snom-blf-bridge.toml"
SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(__file__).parent / "fixtures/schemas/dialog-info.xsd"))
)
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}


async def test_shipped_config_runs_the_demo_pbx_and_a_phone_can_pick_up(tmp_path: Path) -> None:
    port = free_port()
    listen = f'["127.0.0.1:{port}"]'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(SHIPPED),
        "--set", f"sip.udp={listen}", "--set", f"sip.tcp={listen}",
        "--set", f"store.path={tmp_path / 'subscriptions.sqlite3'}",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(10):
            while "listening for SUBSCRIBEs" not in (
                line := (await process.stderr.readline()).decode()
            ):
                assert line, f"the bridge ended before listening: {''.join(log)}"
                log.append(line)
        async with SippWatcher(
            "202", ("127.0.0.1", port), scenario=SCENARIOS / "watch-until-pickup.xml", timeout=30
        ) as watcher:
            result = await watcher.finish()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, rest = await process.communicate()
    log.append(rest.decode())
    assert process.returncode == 0, "".join(log)
    assert result.ok, result.output
    *active, final = result.notifies
    assert (final.header("Subscription-State") or "") == "terminated;reason=timeout"
    pickable = []
    for notify in active:
        doc = etree.fromstring(notify.body)
        SCHEMA.assertValid(doc)
        pickable += doc.xpath("d:dialog[@call-id][d:state='early']", namespaces=NS)
    assert pickable, "no NOTIFY carried a ringing call with a call-id"
    for dialog in pickable:
        assert dialog.get("local-tag") and dialog.get("remote-tag")
        assert dialog.get("direction") == "recipient"
    text = "".join(log)
    assert "202: ringing, caller Phone 201 <201>, pickup ids ready" in text
    assert "Traceback" not in text
    # The shipped file says event_loop = "auto": uvloop where installed (CI installs it).
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop is not"
    assert f"event loop: {expected}" in text


async def test_status_command_prints_what_the_running_bridge_sees(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    listen = f'["127.0.0.1:{port}"]'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(SHIPPED),
        "--set", f"sip.udp={listen}", "--set", f"sip.tcp={listen}",
        "--set", f"store.path={tmp_path / 's.sqlite3'}", "--set", f"web.listen=127.0.0.1:{web}",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(10):
            while "in sync with Asterisk" not in (await process.stderr.readline()).decode():
                pass
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "status", "--url", f"http://127.0.0.1:{web}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(status.communicate(), 20)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.communicate()
    text = output.decode()
    assert status.returncode == 0, text
    assert text.splitlines()[0] == "bridge: ok"
    # Which AMI endpoint it follows (the demo PBX's, on loopback), no failover yet.
    assert re.fullmatch(r"asterisk: following 127\.0\.0\.1:\d+", text.splitlines()[1]), text
    # Every kind of key from the first sync: phones, a DND key, FreePBX's hint, a park slot.
    assert [line.split()[0] for line in text.splitlines()[2:]] == [
        "201", "202", "203", "204", "205", "206", "210", "211", "701"
    ]  # fmt: skip


async def test_status_command_says_when_no_bridge_answers() -> None:
    status = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "status", "--url", f"http://127.0.0.1:{free_port()}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(status.communicate(), 20)
    assert status.returncode == 1
    assert "cannot reach the bridge" in output.decode()
