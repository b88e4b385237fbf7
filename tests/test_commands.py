"""Every command as the README shows it, run as a newcomer runs it (issue 22, point 4):
snom-keys on the shipped file, the manual page after `make run` and after the install step,
`led` given something that is no phone, check-config with several mistakes, `status | head`,
and the demo's store kept out of the production path."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sipp import free_port
from test_app import synced_bridge

from bridge.__main__ import main
from bridge.app import Bridge
from bridge.config import DEFAULT_STORE, demo_store, load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.led.cli import light_key

ROOT = Path(__file__).parent.parent
SHIPPED = ROOT / "etc" / "snom-blf-bridge.toml"
README = ROOT / "README.md"


@asynccontextmanager
async def bridge_with_web(server: RecordedAmiServer, web: int) -> AsyncIterator[Bridge]:
    server.select_fullest()
    async with synced_bridge(load(None, [
        f"ami.port={server.port}", "ami.username=bridge", "ami.secret=bridgesecret",
        'sip.udp=["127.0.0.1:0"]', "sip.tcp=[]", "store.path=", f"web.listen=127.0.0.1:{web}",
    ])) as bridge:  # fmt: skip
        yield bridge


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# ----------------------------------------------------------------- snom-keys


async def test_snom_keys_on_the_shipped_file_takes_the_keys_the_running_bridge_knows(
    server: RecordedAmiServer,
) -> None:
    web = free_port()
    async with bridge_with_web(server, web):
        status, out, err = await run("snom-keys", "--phone", "203", "--config", str(SHIPPED),
                                     "--set", f"web.listen=127.0.0.1:{web}")  # fmt: skip
    assert status == 0, err
    keys = re.findall(r"blf sip:(\d+)@", out)
    # Every key the bridge follows but the phone's own
    assert keys == ["201", "202", "204", "205", "206", "210", "211", "701"], out
    assert "the running bridge" in err and "watch.extensions is empty" in err


async def test_snom_keys_asks_asterisk_when_no_bridge_runs(server: RecordedAmiServer) -> None:
    server.select_fullest()
    status, out, err = await run(
        "snom-keys", "--phone", "203", "--config", str(SHIPPED), "--set", "web.listen=",
        "--set", "ami.username=bridge", "--set", "ami.secret=bridgesecret",
        "--set", f"ami.port={server.port}", "--set", "sip.domain=pbx.test",
    )  # fmt: skip
    assert status == 0, err
    assert re.findall(r"blf sip:(\d+)@", out)[:3] == ["201", "202", "204"]
    assert "Asterisk has hints for in context internal" in err


async def test_snom_keys_with_nothing_to_ask_says_what_to_do() -> None:
    status, out, err = await run("snom-keys", "--phone", "203", "--config", str(SHIPPED),
                                 "--set", f"web.listen=127.0.0.1:{free_port()}")  # fmt: skip
    assert status == 1  # not 2: the file is fine
    assert out == ""
    assert "Start the bridge" in err and "--set 'watch.extensions=" in err
    assert "no bridge answers at http://127.0.0.1:" in err


async def test_snom_keys_takes_set() -> None:
    status, out, err = await run("snom-keys", "--phone", "203", "--config", str(SHIPPED),
                                 "--set", 'watch.extensions=["201", "202"]',
                                 "--set", "snom.address=192.0.2.10:5065")  # fmt: skip
    assert status == 0, err
    assert re.findall(r"blf sip:(\d+)@192\.0\.2\.10:5065", out) == ["201", "202"]


# ----------------------------------------------------------------- the manual page


@pytest.mark.skipif(shutil.which("man") is None or shutil.which("make") is None,
                    reason="needs man and make")  # fmt: skip
def test_make_run_puts_the_manual_page_where_man_finds_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # the venv exists: no pip here
    page = venv / "share" / "man" / "man1" / "snom-blf-bridge.1"
    subprocess.run(["make", "-s", f"VENV={venv}", str(page)], cwd=ROOT, check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("MANPATH", None)
    found = subprocess.run(["man", "-w", "snom-blf-bridge"], env=env, capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert found.stdout.strip() == str(page), found.stderr


def test_the_readme_install_links_the_manual_page_where_the_folder_does_not_exist(
    tmp_path: Path,
) -> None:
    lines = [line for line in README.read_text().splitlines()
             if "share/man/man1" in line and not line.startswith(("#", "|", "`"))]  # fmt: skip
    assert lines, "the README's install shows no manual page step"
    venv, prefix = tmp_path / "opt", tmp_path / "usr-local"
    page = venv / "share" / "man" / "man1" / "snom-blf-bridge.1"
    page.parent.mkdir(parents=True)
    page.write_text(".TH x\n")
    script = "\n".join(lines).replace("/opt/snom-blf-bridge/venv", str(venv))
    script = script.replace("/usr/local", str(prefix))
    subprocess.run(["bash", "-euc", script], check=True)  # /usr/local/share/man/man1 is new
    assert (prefix / "share" / "man" / "man1" / "snom-blf-bridge.1").read_text() == ".TH x\n"


# ----------------------------------------------------------------- led


async def test_led_with_a_bare_extension_says_what_to_give_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = time.monotonic()
    ok, what = await light_key("203", 2, "on")
    assert not ok and time.monotonic() - started < 1
    assert "'203' is not an address" in what and "led 192.0.2.10 2 on" in what


async def test_led_with_an_unknown_host_fails_fast() -> None:
    started = time.monotonic()
    ok, what = await light_key("phone.invalid", 2, "on")
    assert not ok and time.monotonic() - started < 6
    assert "cannot find the phone's address 'phone.invalid'" in what


async def test_led_to_a_silent_phone_gives_up_within_its_wait_and_promises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    started = time.monotonic()
    ok, what = await light_key(f"127.0.0.1:{port}", 2, "on", wait=0.6)
    assert not ok and time.monotonic() - started < 1.5
    assert what.startswith(f"no answer from 127.0.0.1:{port} within 0.6 s")
    log = caplog.text + what
    assert "trying again" not in log and "phone phone" not in log and "answered no" not in log


# ----------------------------------------------------------------- check-config, status


def test_check_config_lists_every_error_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ami]\nport = 99999\nusernme = "x"\n[sip]\nudp = "nohost"\n'
                   '[security]\npickup = "sometimes"\n')  # fmt: skip
    assert main(["check-config", str(bad)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert [e.split(": error: ")[1].split(":")[0] for e in errors] == [
        "ami.usernme", "ami.port", "sip.udp[0]", "security.pickup"
    ], errors  # fmt: skip


def test_check_config_lists_every_error_of_several_pbxs_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sip]\nudp = "nohost"\n'
                   '[[asterisk]]\nname = "a b"\nsource = "sip"\ndomain = ""\n'
                   '[[asterisk]]\nname = "hamburg"\ndomain = "b.example"\n'
                   'ami = { port = 99999 }\n')  # fmt: skip
    assert main(["check-config", str(bad)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert [e.split(": error: ")[1].split(":")[0] for e in errors] == [
        "sip.udp[0]", "asterisk[0].name", "asterisk[0].source", "asterisk[0].domain",
        "asterisk[1].ami.port",
    ], errors  # fmt: skip


async def test_status_into_a_closed_pipe_ends_quietly(server: RecordedAmiServer) -> None:
    web = free_port()
    async with bridge_with_web(server, web):
        read, write = os.pipe()
        os.close(read)  # `| head` that has had its lines
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "status", "--url", f"http://127.0.0.1:{web}",
            stdout=write, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        os.close(write)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0
    assert err.decode() == ""  # no BrokenPipeError traceback, no "Exception ignored"


# ----------------------------------------------------------------- the demo's store


def test_the_demo_keeps_its_store_out_of_the_production_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = demo_store(load(SHIPPED))
    assert config.store.path == str(tmp_path / "snom-blf-bridge" / "demo-subscriptions.sqlite3")
    chosen = demo_store(load(SHIPPED, ["store.path=/srv/s.sqlite3"]))
    assert chosen.store.path == "/srv/s.sqlite3"  # a path someone chose is kept


async def test_make_runs_demo_writes_no_error_and_nothing_under_var_lib(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    listen = f'["127.0.0.1:{port}"]'
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(SHIPPED),
        "--set", f"sip.udp={listen}", "--set", f"sip.tcp={listen}",
        "--set", f"web.listen=127.0.0.1:{web}", stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert process.stderr is not None
    lines = []
    try:
        async with asyncio.timeout(15):
            while "in sync with Asterisk" not in (line := (await process.stderr.readline()
                                                           ).decode()):  # fmt: skip
                assert line, "".join(lines)
                lines.append(line)
    finally:
        process.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(process.stderr.read(), 15)
        await process.wait()
    text = "".join(lines) + rest.decode()
    assert " ERROR " not in text, text
    assert DEFAULT_STORE not in text
    assert (tmp_path / "snom-blf-bridge" / "demo-subscriptions.sqlite3").exists()


async def test_snom_keys_behind_a_wildcard_address_names_this_host_and_says_so() -> None:
    status, out, err = await run("snom-keys", "--phone", "203", "--config", str(SHIPPED),
                                 "--set", 'watch.extensions=["202"]')  # fmt: skip
    assert status == 0, err  # the shipped file listens on 0.0.0.0:5065
    (host,) = re.findall(r"blf sip:202@([^:]+):5065", out)
    assert host != "0.0.0.0"
    assert f"the keys name {host} (this host's address towards the network)" in err
    assert "set snom.address" in err
