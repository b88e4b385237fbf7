"""The configuration file: defaults, overrides, and errors that name the bad setting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.__main__ import main
from bridge.config import (
    LED_KEYS,
    PBX_KEYS,
    SETTINGS,
    ConfigError,
    ListenAddress,
    load,
    readme_table,
)
from bridge.config_tables import LIST_KEYS

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "etc" / "snom-blf-bridge.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_file_is_valid_and_starts_the_demo() -> None:
    config = load(SHIPPED)
    assert not config.ami.configured
    assert config.sip.udp == (ListenAddress("0.0.0.0", 5065),)
    assert config.ami.events == "call,system"
    assert config.watch.extensions is None


def test_defaults_without_a_file() -> None:
    config = load(None)
    assert config.sip.min_expires == 60
    assert config.sip.default_expires == 600
    assert config.sip.max_expires == 3600
    assert (config.sip.max_connections, config.sip.max_connections_per_source) == (4096, 32)
    assert (config.sip.header_timeout, config.sip.idle_timeout) == (10.0, 3700.0)
    assert not config.watch.outgoing_blinks


def test_overrides_are_toml_or_bare_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "[ami]\nusername = 'bridge'\nsecret = 's'\n")
    config = load(
        path,
        [
            'sip.udp=["127.0.0.1:0", "[::1]:5070"]',
            "sip.tcp=[]",
            "ami.port=5039",
            "ami.host=pbx.example.com",
            "watch.extensions=[201, '202']",
        ],
    )
    assert config.sip.udp == (ListenAddress("127.0.0.1", 0), ListenAddress("::1", 5070))
    assert config.sip.tcp == ()
    assert config.ami.port == 5039
    assert config.ami.host == "pbx.example.com"
    assert config.watch.extensions == frozenset({"201", "202"})


def test_secret_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ami.secret").write_text("s3cret\n", encoding="utf-8")
    path = write(tmp_path, "[ami]\nusername = 'bridge'\nsecret_file = 'ami.secret'\n")
    assert load(path).ami.secret == "s3cret"


def test_secret_file_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami.secret").write_text("from-systemd", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write(tmp_path, "[ami]\nusername = 'bridge'\nsecret_file = 'ami.secret'\n")
    assert load(path).ami.secret == "from-systemd"


def test_standby_endpoints_are_read_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "[ami]\nstandby = ['10.0.0.2:5038', '[fd00::2]:5039']\nkeepalive = 2\n"
                 "[ari]\nstandby = ['http://10.0.0.2:8088/']\n")  # fmt: skip
    config = load(path)
    assert config.ami.standby == (ListenAddress("10.0.0.2", 5038), ListenAddress("fd00::2", 5039))
    assert config.ami.keepalive == 2.0
    assert config.ari.standby == ("http://10.0.0.2:8088",)


def test_secret_never_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path, "[ami]\nusername = 'bridge'\nsecret = 'topsecret'\n")
    assert "topsecret" not in repr(load(path))


@pytest.mark.parametrize(
    ("text", "override", "named"),
    [
        ("[sip]\nudp = ['127.0.0.1:99999']\n", None, "sip.udp[0]"),
        ("[sip]\nudp = ['127.0.0.1:5060', 'nohostport']\n", None, "sip.udp[1]"),
        ("[sip]\nmin_expires = 'soon'\n", None, "sip.min_expires"),
        ("[sip]\nmin_expires = 900\n", None, "sip.default_expires"),
        ("[sip]\nmax_connections = -1\n", None, "sip.max_connections"),
        ("[sip]\nmax_connections_per_source = 'many'\n", None, "sip.max_connections_per_source"),
        ("[sip]\nheader_timeout = 601\n", None, "sip.header_timeout"),
        ("", "sip.idle_timeout=soon", "sip.idle_timeout"),
        ("[ami]\nport = 0\n", None, "ami.port"),
        ("[ami]\nusername = 'x'\n", None, "ami.secret"),
        ("[ami]\nsecret_file = 'missing.secret'\n", None, "ami.secret_file"),
        ("[ami]\nbogus = 1\n", None, "ami.bogus"),
        ("[ami]\nstandby = ['10.0.0.2:5038', '10.0.0.3']\n", None, "ami.standby[1]"),
        ("[ami]\nstandby = ['10.0.0.2:0']\n", None, "ami.standby[0]"),
        ("[ami]\nkeepalive = 0\n", None, "ami.keepalive"),
        ("[ari]\nstandby = ['10.0.0.2:8088']\n", None, "ari.standby[0]"),
        ("[ari]\nstandby = 'http://10.0.0.2:8088'\n", None, "ari.standby"),
        ("[nonsense]\nx = 1\n", None, "[nonsense]"),
        ("[watch]\nextensions = ['20 1']\n", None, "watch.extensions[0]"),
        ("[watch]\noutgoing_blinks = 'yes'\n", None, "watch.outgoing_blinks"),
        ("[log]\nlevel = 'loud'\n", None, "log.level"),
        ("[runtime]\nevent_loop = 'twisted'\n", None, "runtime.event_loop"),
        ("[security]\ndigest_algorithms = ['SHA-1']\n", None, "security.digest_algorithms"),
        ("[security]\ndigest_algorithms = []\n", None, "security.digest_algorithms"),
        ("[security]\ndigest_algorithms = ['md5', 'MD5']\n", None, "security.digest_algorithms"),
        ("[web]\nhosts = ['']\n", None, "web.hosts"),
        ("[web]\ngroups = ['201']\n", None, "web.groups"),
        ("[web]\ngroups = { 'Front desk' = '201' }\n", None, "web.groups.Front desk"),
        ("[web]\ngroups = { 'Front desk' = ['201', '20 2'] }\n", None, "web.groups.Front desk[1]"),
        ("[web]\ngroups = { ' ' = ['201'] }\n", None, "web.groups"),
        ("", "sip.max_expires=-5", "sip.max_expires"),
        ("", "justtext", "section.key=value"),
        ("[sip\n", None, "not valid TOML"),
    ],
)
def test_errors_name_the_setting(
    tmp_path: Path, text: str, override: str | None, named: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, [override] if override else [])
    assert named in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SHIPPED)]) == 0
    out = capsys.readouterr()
    assert "OK (demo PBX, event loop " in out.out
    assert "demo PBX" in out.err  # the warning that no Asterisk is configured

    bad = write(tmp_path, "[sip]\nudp = ['127.0.0.1:70000']\n")
    assert main(["check-config", str(bad)]) == 2
    assert "sip.udp[0]" in capsys.readouterr().err


def test_check_config_warns_about_a_loopback_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[ami]\nusername = 'b'\nsecret = 's'\n")
    assert main(["check-config", str(path)]) == 0
    assert "sip.domain" in capsys.readouterr().err


def test_console_entry_point_runs_as_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", str(SHIPPED)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_run_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "[sip]\ndomain = 'a b'\n")
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "sip.domain" in done.stderr


def test_hints_table_names_extra_keys_and_rejects_what_is_no_device(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[hints]\n"210" = "Custom:DND201"\n211 = "PJSIP/201&Custom:DND201"\n'
        '"701" = "park:701@parkedcalls"\n',
    )
    assert load(path).hints == (
        ("210", "Custom:DND201"),
        ("211", "PJSIP/201&Custom:DND201"),
        ("701", "park:701@parkedcalls"),
    )
    assert load(None, ['hints.212="Queue:sales"']).hints == (("212", "Queue:sales"),)
    assert load(None).hints == ()
    for bad, named in [
        ('"210" = "DND201"', "hints.210: 'DND201' is not a device"),
        ('"210" = "PJSIP/201&"', "hints.210: '' is not a device"),
        ('"210" = 7', "hints.210: must be a device expression"),
        ('"2 10" = "Custom:X"', "hints.2 10: '2 10' is not an extension"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            load(write(tmp_path, f"[hints]\n{bad}\n"))


def shipped_settings() -> set[str]:
    """``section.key`` of every setting the shipped file writes, commented out or not."""
    section, found = "", set()
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"#? ?(\[\[?)([a-z]+)\]\]?\s*$", line):
            section = heading[2] + ("[]" if heading[1] == "[[" and heading[2] != "led" else "")
        elif assignment := re.match(r"(?:# ?)?([a-z_]+) = ", line):
            found.add(f"{section}.{assignment[1]}")
    return found


def test_shipped_file_shows_every_declared_setting_and_no_other() -> None:
    written = shipped_settings()
    tables = ("led.", "asterisk[].", "lists[].")
    assert {n for n in written if not n.startswith(tables)} == {item.name for item in SETTINGS}
    assert {n.partition(".")[2] for n in written if n.startswith("led.")} <= LED_KEYS
    assert {n.partition(".")[2] for n in written if n.startswith("lists[].")} == LIST_KEYS
    pbx_keys = {n.partition(".")[2] for n in written if n.startswith("asterisk[].")}
    assert pbx_keys == set(PBX_KEYS)


def test_shipped_file_sets_only_the_defaults() -> None:
    shipped, defaults = load(SHIPPED), load(None)
    for item in SETTINGS:
        assert item.value(shipped) == item.value(defaults), item.name


def test_panel_groups_keep_their_order_and_keys(tmp_path: Path) -> None:
    text = "[web]\ngroups = { 'Front desk' = ['201', 202], 'Berlin' = ['berlin:203'] }\n"
    groups = load(write(tmp_path, text)).web_groups
    assert list(groups.items()) == [("Front desk", ("201", "202")), ("Berlin", ("berlin:203",))]


def test_the_settings_table_is_made_from_the_declarations() -> None:
    readme = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert readme_table() in readme, "docs/CONFIGURATION.md's settings table is out of date:\n" + (
        readme_table())  # fmt: skip
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", readme, re.M)
    assert sorted(rows) == sorted(item.name for item in SETTINGS)  # each setting once
