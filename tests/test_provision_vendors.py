"""Yealink and Poly provisioning: ``yealink-keys`` / ``poly-keys`` from the configuration alone,
``/yealink/<phone>.cfg`` / ``/poly/<phone>.xml`` from a running bridge; every document read back
(the .cfg line by line, the XML parsed) and checked against hostile labels."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from lxml import etree
from test_app import running_bridge, server  # noqa: F401 (a fixture)

from bridge.__main__ import main
from bridge.config import ConfigError, load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.provision import poly, yealink
from bridge.provision.site import bridge_address, poly_document, yealink_document

# The labels: each tries to end its value and start a setting of its own, or to break out of
# an attribute (a line separator and NEL pass TOML, which refuses other control characters).
SITE = """
[sip]
udp = ["192.0.2.10:5065"]
tcp = ["192.0.2.10:5065"]
[watch]
extensions = ["201", "202", "203", "204", "205"]
[snom]
transport = "tcp"
[snom.labels]
"202" = 'Anna " /><x a="& <evil/>'
"204" = "Reception\\u2028linekey.9.type = 13"
"205" = "Desk\\u0085account.1.sip_server.1.address = evil"
[yealink]
account = 2
first_key = 5
"""
CFG_LINE = re.compile(r"[a-z_]+(\.[a-z0-9_]+)+ = [^\n]*")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(SITE)
    return path


def settings_of(cfg: bytes) -> dict[str, str]:
    """A Yealink .cfg read as the phone does: the header, comments, ``key = value`` lines."""
    text = cfg.decode("utf-8")
    lines = text.split("\n")
    assert lines[0] == yealink.HEADER and lines[-1] == ""
    found: dict[str, str] = {}
    for line in lines[1:-1]:
        if line.startswith("#"):
            continue
        assert CFG_LINE.fullmatch(line), line
        key, _, value = line.partition(" = ")
        assert key not in found, f"{key} twice"
        found[key] = value
    # Nothing any Unicode-aware reader would take for the end of a line.
    assert len(text.splitlines()) == len(lines) - 1
    return found


def test_yealink_keys_write_a_blf_key_per_extension_with_dialog_info_pickup(site: Path) -> None:
    config = load(site)
    cfg = yealink_document(config, "203", ["201", "202", "203", "204", "205"],
                           bridge_address(config))  # fmt: skip
    found = settings_of(cfg)
    assert found.pop("account.2.dialoginfo_callpickup") == "1"
    assert found.pop("account.2.blf.subscribe_event") == "0"
    expected = {
        5: ("201", "201"), 6: ("202", 'Anna " /><x a="& <evil/>'),
        7: ("204", "Receptionlinekey.9.type = 13"),
        8: ("205", "Deskaccount.1.sip_server.1.address = evil"),
    }  # fmt: skip
    for index, (exten, label) in expected.items():
        assert found.pop(f"linekey.{index}.type") == "16"
        assert found.pop(f"linekey.{index}.line") == "2"
        assert found.pop(f"linekey.{index}.value") == exten
        assert found.pop(f"linekey.{index}.label") == label
    assert found == {}  # nothing else, no linekey.9 smuggled in by a label


def test_a_yealink_list_key_replaces_the_keys(site: Path) -> None:
    config = load(site, ["yealink.blf_list=desk"])
    found = settings_of(yealink_document(config, "203", ["202"], bridge_address(config)))
    assert found == {
        "account.2.dialoginfo_callpickup": "1",
        "account.2.blf.subscribe_event": "0",
        "account.2.blf.blf_list_uri": "sip:desk@192.0.2.10:5065;transport=tcp",
    }


def test_poly_gets_a_resource_at_the_bridge_per_extension_and_native_pickup(site: Path) -> None:
    config = load(site)
    document = poly_document(config, "203", ["201", "202", "203", "204", "205"],
                             bridge_address(config))  # fmt: skip
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8' standalone='yes'?>\n")
    root = etree.fromstring(document)
    assert root.tag == "polycomConfig"
    assert [child.tag for child in root] == ["call", "feature", "attendant"]
    assert dict(root[0].attrib) == {"call.directedCallPickupMethod": "native"}
    assert dict(root[1].attrib) == {"feature.directedCallPickup.enabled": "1"}
    attendant = dict(root[2].attrib)
    assert attendant.pop("attendant.reg") == "1"
    expected = [("201", "201"), ("202", 'Anna " /><x a="& <evil/>'),
                ("204", "Receptionlinekey.9.type = 13"),
                ("205", "Deskaccount.1.sip_server.1.address = evil")]  # fmt: skip
    for index, (exten, label) in enumerate(expected, start=1):
        name = f"attendant.resourceList.{index}"
        assert attendant.pop(f"{name}.address") == (
            f"sip:{exten}@192.0.2.10:5065;user=phone;transport=tcp"
        )
        assert attendant.pop(f"{name}.label") == label  # the hostile one escaped, intact
        assert attendant.pop(f"{name}.type") == "normal"
    assert attendant == {}
    assert len(root[2]) == 0  # no element smuggled in


def test_a_poly_list_is_one_attendant_uri(site: Path) -> None:
    config = load(site, ["poly.blf_list=desk", "poly.reg=2"])
    root = etree.fromstring(poly_document(config, "203", ["202"], bridge_address(config)))
    assert dict(root[2].attrib) == {
        "attendant.reg": "2", "attendant.uri": "sip:desk@192.0.2.10:5065;transport=tcp",
    }  # fmt: skip


def test_characters_neither_format_can_carry_are_dropped_not_a_crash() -> None:
    cfg = yealink.render(1, [yealink.LineKey(1, "202\r\n", "a\x00b\nc\rd\u2029e")])
    assert settings_of(cfg)["linekey.1.label"] == "abcde"
    assert settings_of(cfg)["linekey.1.value"] == "202"
    xml = poly.render(1, [poly.Resource(1, "sip:202@h", "a\x00b\x1bc\ud800d")])
    assert etree.fromstring(xml)[2].get("attendant.resourceList.1.label") == "abcd"


@pytest.mark.parametrize(
    ("setting", "message"),
    [("yealink.account=0", "yealink.account"), ("yealink.first_key=0", "yealink.first_key"),
     ('yealink.blf_list="a@b"', "yealink.blf_list"), ("poly.reg=35", "poly.reg"),
     ('poly.blf_list="x;y"', "poly.blf_list")],
)  # fmt: skip
def test_bad_vendor_settings_are_refused_naming_them(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, [setting])


@pytest.mark.parametrize(("command", "suffix"), [("yealink-keys", "cfg"), ("poly-keys", "xml")])
def test_the_commands_write_one_file_per_phone(
    site: Path, tmp_path: Path, command: str, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([command, "--all", "--config", str(site), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"{n}.{suffix}" for n in ("201", "202", "203", "204", "205")
    ]
    config = load(site)
    extensions = ["201", "202", "203", "204", "205"]
    render = yealink_document if command == "yealink-keys" else poly_document
    assert (out / f"203.{suffix}").read_bytes() == render(
        config, "203", extensions, bridge_address(config)
    )
    assert main([command, "--phone", "203", "--config", str(tmp_path / "nothing.toml")]) == 2
    assert command in capsys.readouterr().err


async def test_the_running_bridge_serves_both_documents(
    server: RecordedAmiServer,  # noqa: F811
) -> None:
    async with running_bridge(server, "web.listen=127.0.0.1:0") as bridge:
        known = {e.exten for e in bridge.status.entities()}
        assert bridge.web is not None
        host, port = bridge.web.addresses[0][:2]
        sip_port = bridge.bound("udp")[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/yealink/203.cfg") as r:
                assert r.status == 200 and r.content_type == "text/plain"
                cfg = settings_of(await r.read())
            async with http.get(f"http://{host}:{port}/poly/203.xml") as r:
                assert r.status == 200 and r.content_type == "application/xml"
                root = etree.fromstring(await r.read())
            async with http.get(f"http://{host}:{port}/poly/999.xml") as r:
                assert r.status == 404
            bridge.config = load(None, ['security.allow=["192.0.2.0/24"]'])
            async with http.get(f"http://{host}:{port}/yealink/203.cfg") as r:
                assert r.status == 403
    # The extensions Asterisk's hints name, but the phone's own.
    values = {v for k, v in cfg.items() if k.endswith(".value")}
    assert values == known - {"203"} and "202" in values
    addresses = {v for k, v in root[2].attrib.items() if k.endswith(".address")}
    assert f"sip:202@127.0.0.1:{sip_port};user=phone" in addresses
    assert len(addresses) == len(known) - 1
