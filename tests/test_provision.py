"""Snom provisioning: ``snom-keys`` from the configuration alone, ``/snom/<phone>.xml`` from a
running bridge; every document validated against the schema and parsed back."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from lxml import etree
from test_app import running_bridge, server  # noqa: F401 (a fixture)

from bridge.__main__ import main
from bridge.config import ConfigError, load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.pickup import PickupPolicy
from bridge.provision.site import bridge_address, snom_document
from bridge.provision.snom import BridgeAddress, FunctionKey, render

SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(__file__).parent / "fixtures/schemas/snom-settings.xsd"))
)
HOSTILE = 'Anna </fkey><x>& "quoted"'
SITE = f"""
[sip]
udp = ["192.0.2.10:5065"]
tcp = []
[watch]
extensions = ["201", "202", "203", "204", "205", "206", "207"]
[security]
pickup = "rules"
pickup_rules = {{ "203" = ["202", "204"] }}
[snom]
labels = {{ "202" = '{HOSTILE}', "204" = "Reception" }}
pickup_code = "**"
[[led]]
phone = "203"
key = 8
device = "Custom:DND201"
label = "DND 201"
"""


def parsed(document: bytes) -> etree._Element:
    root = etree.fromstring(document)
    SCHEMA.assertValid(root)
    return root


def keys(root: etree._Element) -> dict[int, tuple[str, str]]:
    """fkey idx -> (label, value)."""
    return {int(k.get("idx")): (k.get("label"), k.text) for k in root.iter("fkey")}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(SITE)
    return path


def test_snom_keys_writes_six_blf_keys_and_the_led_key_of_a_phone(
    site: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert main(["snom-keys", "--phone", "203", "--config", str(site)]) == 0
    root = parsed(capsysbinary.readouterr().out)
    assert root.findtext("phone-settings/filter_registrar") == "off"
    assert root.findtext("phone-settings/callpickup_dialoginfo") == "on"
    # An LED key: MESSAGEs come from the bridge, not the registrar.
    assert root.findtext("phone-settings/user_sipusername_as_line") == "on"
    uri = "sip:{}@192.0.2.10:5065;user=phone"
    assert keys(root) == {
        0: ("201", "blf " + uri.format(201)),
        1: (HOSTILE, "blf " + uri.format(202) + "|**"),  # the hostile label came back intact
        2: ("Reception", "blf " + uri.format(204) + "|**"),
        3: ("205", "blf " + uri.format(205)),
        4: ("206", "blf " + uri.format(206)),
        5: ("207", "blf " + uri.format(207)),
        8: ("DND 201", "button 8"),
    }
    assert {k.get("context") for k in root.iter("fkey")} == {"active"}


def test_the_pickup_fallback_follows_the_pickup_policy(site: Path) -> None:
    config = load(site)
    address = bridge_address(config)
    extensions = sorted(config.watch.extensions or ())

    def fallbacks(phone: str, policy: PickupPolicy) -> set[str]:
        values = [v for _, v in keys(parsed(snom_document(config, phone, extensions, policy,
                                                          address))).values()]  # fmt: skip
        return {v.split("@")[0].removeprefix("blf sip:") for v in values if "|" in v}

    rules = PickupPolicy("rules", config.security.pickup_rules)
    assert fallbacks("203", rules) == {"202", "204"}
    assert fallbacks("205", rules) == set()  # no rule for 205: no code that would take the call
    assert fallbacks("203", PickupPolicy("nobody")) == set()
    group = PickupPolicy("group")
    assert fallbacks("203", group) == set()  # groups unknown (no Asterisk): nobody
    group.set_groups("202", frozenset({1}), frozenset())
    group.set_groups("203", frozenset(), frozenset({1}))
    assert fallbacks("203", group) == {"202"}
    no_code = load(site, ["snom.pickup_code="])
    document = snom_document(no_code, "203", extensions, PickupPolicy("everyone"), address)
    assert b"|" not in document


def test_snom_keys_all_writes_one_file_per_known_phone(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "phones"
    assert main(["snom-keys", "--all", "--config", str(site), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"20{i}.xml" for i in range(1, 8)]
    for path in out.iterdir():
        root = parsed(path.read_bytes())
        own = path.stem
        assert all(f"sip:{own}@" not in (v or "") for _, v in keys(root).values())
        assert len(keys(root)) == (7 if own == "203" else 6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # An empty watch.extensions and a wildcard address: tests/test_commands.py (the keys
        # then come from the running bridge or Asterisk, the address from this host's route).
        (['snom.transport="tls"'], "snom.transport: the bridge has no tls listener"),
    ],
)
def test_snom_keys_says_which_setting_is_missing(
    site: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "override.toml"
    text = SITE
    for item in extra:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        text = text.replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n", 1)
        text = "\n".join(line for line in text.splitlines()
                         if not (line.startswith(f"{name} = ") and value not in line))  # fmt: skip
    config.write_text(text)
    assert main(["snom-keys", "--phone", "203", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('snom.pickup_code="*8; reboot"', "snom.pickup_code"),
        ('snom.labels={ "202" = "a\\u0007b" }', "snom.labels.202"),
        ("snom.first_key=-1", "snom.first_key"),
        ("snom.adress=x", "snom.adress: unknown setting"),
    ],
)
def test_bad_snom_settings_are_refused_naming_them(
    site: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(site, [override])


def test_snom_address_and_transport_choose_the_uri() -> None:
    tls = BridgeAddress("2001:db8::5", 5061, "tls")
    assert tls.uri("202") == "sip:202@[2001:db8::5]:5061;user=phone;transport=tls"
    config = load(None, ['snom.address="bridge.example.com:5070"', 'snom.transport="tcp"'])
    assert bridge_address(config) == BridgeAddress("bridge.example.com", 5070, "tcp")
    config = load(None, ['sip.contact_host="192.0.2.7"'])
    assert bridge_address(config) == BridgeAddress("192.0.2.7", 5065, "udp")
    assert bridge_address(load(None), towards="192.0.2.9").host == "192.0.2.9"


def test_characters_xml_cannot_carry_are_dropped_not_a_crash() -> None:
    document = render([FunctionKey(0, "a\x00b\x1bc", "blf sip:202@h:1;user=phone")])
    assert keys(parsed(document)) == {0: ("abc", "blf sip:202@h:1;user=phone")}


async def test_the_running_bridge_serves_the_document_with_what_asterisk_told_it(
    server: RecordedAmiServer,  # noqa: F811
) -> None:
    async with running_bridge(
        server, "web.listen=127.0.0.1:0", 'snom.pickup_code="**"', 'security.pickup="rules"',
        'security.pickup_rules={ "203" = ["202"] }',
    ) as bridge:  # fmt: skip
        known = {e.exten for e in bridge.status.entities()}
        assert bridge.web is not None
        host, port = bridge.web.addresses[0][:2]
        sip_port = bridge.bound("udp")[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/snom/203.xml") as r:
                assert r.status == 200 and r.content_type == "application/xml"
                root = parsed(await r.read())
            async with http.get(f"http://{host}:{port}/snom/999.xml") as r:
                assert r.status == 404
            bridge.config = load(None, ['security.allow=["192.0.2.0/24"]'])
            async with http.get(f"http://{host}:{port}/snom/203.xml") as r:
                assert r.status == 403  # only addresses that may talk to the bridge
    values = {label: value for label, value in keys(root).values()}
    # The extensions come from Asterisk's hints (the demo's; watch.extensions is not set).
    assert set(values) == known - {"203"} and "202" in values
    # Each key names the bridge as the phone reaches it (the wildcard replaced by the address
    # towards the asking phone, here loopback) and its SIP port.
    assert values["202"].startswith(f"blf sip:202@127.0.0.1:{sip_port};user=phone")
    # The running bridge's policy: 203 may take 202's calls (its key has the fallback code),
    # no other extension's.
    assert [label for label, value in values.items() if "|" in value] == ["202"]
    assert values["202"].endswith("|**")


def test_the_docs_show_what_snom_keys_writes(
    site: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "PROVISIONING.md").read_text()
    shown = readme.split("A phone with six BLF keys", 1)[1].split("```xml\n", 1)[1]
    assert main(["snom-keys", "--phone", "203", "--config", str(site)]) == 0
    assert shown.split("```", 1)[0] == capsysbinary.readouterr().out.decode()
