"""The reload diff: every declared setting's change is named, secrets never are, and the
settings only a restart takes over are those their declarations flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import SETTINGS, Config, load
from bridge.settings import RESTART_ONLY, changed_settings, keep_old_values, needs_restart

LED = '[[led]]\nphone = "203"\nkey = {key}\ndevice = "Custom:DND201"\n'


def cases(tmp: Path, cert: Path, key: Path) -> list[tuple[list[str], set[str]]]:
    """One change per setting (a few need a partner): the overrides, and the names reported."""
    (tmp / "ami.secret").write_text("from-a-file")
    (tmp / "ari.password").write_text("from-a-file")
    (tmp / "users.toml").write_text('203 = "pw-203"\n')
    return [
        (["ami.host=pbx.test"], {"ami.host"}),
        (["ami.port=5039"], {"ami.port"}),
        (["ami.username=b", "ami.secret=s"], {"ami.username", "ami.secret"}),
        ([f"ami.secret_file={tmp / 'ami.secret'}"], {"ami.secret_file", "ami.secret"}),
        (["ami.events=call"], {"ami.events"}),
        (["ami.getvar_timeout=2"], {"ami.getvar_timeout"}),
        (["ami.reconnect_min=1"], {"ami.reconnect_min"}),
        (["ami.reconnect_max=60"], {"ami.reconnect_max"}),
        (['ami.standby=["10.0.0.2:5038"]'], {"ami.standby"}),
        (["ami.keepalive=2"], {"ami.keepalive"}),
        (["ari.url=http://pbx.test:8088"], {"ari.url"}),
        (["ari.username=b"], {"ari.username"}),
        (["ari.password=p"], {"ari.password"}),
        ([f"ari.password_file={tmp / 'ari.password'}"], {"ari.password_file", "ari.password"}),
        (["ari.app=other"], {"ari.app"}),
        (['ari.standby=["http://10.0.0.2:8088"]'], {"ari.standby"}),
        (["ari.keepalive=2"], {"ari.keepalive"}),
        (["asterisk.source=ari"], {"asterisk.source"}),
        (['sip.udp=["127.0.0.1:5070"]'], {"sip.udp"}),
        (["sip.tcp=[]"], {"sip.tcp"}),
        (
            ['sip.tls=["127.0.0.1:5061"]', f"sip.tls_certificate={cert}", f"sip.tls_key={key}"],
            {"sip.tls", "sip.tls_certificate", "sip.tls_key"},
        ),
        (["sip.domain=pbx.test"], {"sip.domain"}),
        (["sip.contact_host=10.0.0.1"], {"sip.contact_host"}),
        (["sip.min_expires=30"], {"sip.min_expires"}),
        (["sip.default_expires=900"], {"sip.default_expires"}),
        (["sip.max_expires=7200"], {"sip.max_expires"}),
        (["sip.max_message_size=4096"], {"sip.max_message_size"}),
        (["sip.user_agent=other"], {"sip.user_agent"}),
        (["sip.max_connections=10"], {"sip.max_connections"}),
        (["sip.max_connections_per_source=5"], {"sip.max_connections_per_source"}),
        (["sip.idle_timeout=100"], {"sip.idle_timeout"}),
        (["sip.header_timeout=5"], {"sip.header_timeout"}),
        (['watch.extensions=["201"]'], {"watch.extensions"}),
        (["watch.outgoing_blinks=true"], {"watch.outgoing_blinks"}),
        (["watch.stale_ring_timeout=0"], {"watch.stale_ring_timeout"}),
        (['watch.context="tenant-b"'], {"watch.context"}),
        (["watch.ringing_first=false"], {"watch.ringing_first"}),
        (["watch.single_dialog=true"], {"watch.single_dialog"}),
        (["watch.idle_dialog=false"], {"watch.idle_dialog"}),
        ([f"store.path={tmp / 's.sqlite3'}"], {"store.path"}),
        (["store.flush_interval=2"], {"store.flush_interval"}),
        (['security.allow=["10.0.0.0/8"]'], {"security.allow"}),
        (
            ["security.auth=digest", f"security.users_file={tmp / 'users.toml'}"],
            {"security.auth", "security.users_file"},
        ),
        (["security.realm=pbx"], {"security.realm"}),
        ([f"security.users_file={tmp / 'users.toml'}"], {"security.users_file"}),
        (["security.nonce_lifetime=60"], {"security.nonce_lifetime"}),
        (["security.pickup=everyone"], {"security.pickup"}),
        (['security.pickup_rules={ "203" = ["202"] }'], {"security.pickup_rules"}),
        (["security.show_caller=false"], {"security.show_caller"}),
        (["security.requests_per_second=5"], {"security.requests_per_second"}),
        (["security.burst=5"], {"security.burst"}),
        (["security.max_subscriptions=5"], {"security.max_subscriptions"}),
        (["security.max_subscriptions_per_source=5"], {"security.max_subscriptions_per_source"}),
        (['security.digest_algorithms=["SHA-256"]'], {"security.digest_algorithms"}),
        (['web.listen=""'], {"web.listen"}),
        (['web.hosts=["bridge.example.com"]'], {"web.hosts"}),
        (['web.groups={ "Front desk" = ["201"] }'], {"web.groups"}),
        (["log.level=debug"], {"log.level"}),
        (["runtime.event_loop=asyncio"], {"runtime.event_loop"}),
        (["demo.enabled=true"], {"demo.enabled"}),
        (['snom.address="bridge.example.com"'], {"snom.address"}),
        (['snom.transport="tcp"'], {"snom.transport"}),
        (['snom.labels={ "202" = "Anna" }'], {"snom.labels"}),
        (['snom.pickup_code="**"'], {"snom.pickup_code"}),
        (["snom.first_key=4"], {"snom.first_key"}),
        (['snom.context="2"'], {"snom.context"}),
        (["yealink.account=2"], {"yealink.account"}),
        (["yealink.first_key=3"], {"yealink.first_key"}),
        (['yealink.blf_list="desk"'], {"yealink.blf_list"}),
        (["poly.reg=2"], {"poly.reg"}),
        (['poly.blf_list="desk"'], {"poly.blf_list"}),
    ]


@pytest.fixture
def changes(tmp_path: Path, certificate: tuple[Path, Path]) -> list[tuple[list[str], set[str]]]:
    return cases(tmp_path, *certificate)


def test_every_setting_is_reported_when_it_changes(
    changes: list[tuple[list[str], set[str]]],
) -> None:
    base = load(None)
    assert changed_settings(base, load(None)) == set()
    for overrides, expected in changes:
        assert changed_settings(base, load(None, overrides)) == expected, overrides
        assert changed_settings(load(None, overrides), base) == expected, overrides


def test_the_cases_cover_every_declared_setting(
    changes: list[tuple[list[str], set[str]]],
) -> None:
    """A setting declared without a case here fails this test, so the diff stays tested."""
    covered = set().union(*(names for _, names in changes))
    assert covered == {item.name for item in SETTINGS}


def test_led_rules_and_hints_are_reported_one_by_one(tmp_path: Path) -> None:
    def config(text: str) -> Config:
        path = tmp_path / "bridge.toml"
        path.write_text(text)
        return load(path)

    two = config(LED.format(key=1) + LED.format(key=2))
    assert changed_settings(config(""), two) == {"led[0]", "led[1]"}
    relit = LED.format(key=1) + LED.format(key=2) + 'lights = { inuse = "red" }\n'
    assert changed_settings(two, config(relit)) == {"led[1]"}
    assert changed_settings(two, config(LED.format(key=1))) == {"led[1]"}
    hinted = config('[hints]\n"210" = "Custom:DND201"\n"211" = "PJSIP/201"\n')
    rehinted = config('[hints]\n"210" = "Custom:DND202"\n"212" = "PJSIP/201"\n')
    assert changed_settings(hinted, rehinted) == {"hints.210", "hints.211", "hints.212"}


def test_changed_secrets_are_named_never_shown(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text('203 = "old-password-203"\n')
    secret = tmp_path / "ami.secret"
    secret.write_text("old-ami-secret")
    before = ["security.auth=digest", f"security.users_file={users}", "ami.username=b",
              f"ami.secret_file={secret}", "ari.password=old-ari-password"]  # fmt: skip
    old = load(None, before)
    users.write_text('203 = "new-password-203"\n')  # same files, new contents
    secret.write_text("new-ami-secret")
    new = load(None, [*before[:-1], "ari.password=new-ari-password"])
    changed = changed_settings(old, new)
    assert changed == {"security.users_file", "ami.secret", "ari.password"}
    printed = f"{sorted(changed)} {old!r} {new!r}"
    for word in ("password-203", "ami-secret", "ari-password"):
        assert word not in printed


def test_restart_only_is_what_the_declarations_flag() -> None:
    flagged = {item.name for item in SETTINGS if item.setting.restart}
    assert flagged == {
        "sip.udp", "sip.tcp", "sip.tls", "sip.max_message_size", "sip.contact_host",
        "store.path", "runtime.event_loop", "web.listen", "web.hosts",
    }  # fmt: skip
    assert set(RESTART_ONLY) == flagged | {"led"}
    assert needs_restart("led[3]") and needs_restart("sip.udp")
    assert not needs_restart("sip.max_expires") and not needs_restart("hints.210")
    # a renewed certificate is read again on reload (README, "Restarts, reloads and faults")
    assert not needs_restart("sip.tls_certificate") and not needs_restart("sip.tls_key")


def test_a_reload_keeps_the_old_value_of_what_needs_a_restart(
    changes: list[tuple[list[str], set[str]]], tmp_path: Path
) -> None:
    old = load(None)
    every = [item for overrides, _ in changes for item in overrides
             if "ari" not in item and "secret_file" not in item]  # fmt: skip
    (tmp_path / "bridge.toml").write_text(LED.format(key=1))
    new = load(tmp_path / "bridge.toml", every)
    changed = changed_settings(old, new)
    kept = {name for name in changed if needs_restart(name)}
    assert kept == set(RESTART_ONLY) - {"led"} | {"led[0]"}
    merged = keep_old_values(new, old, kept)
    assert changed_settings(old, merged) == changed - kept  # the rest is taken over
    assert merged.security.users == new.security.users
