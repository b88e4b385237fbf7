"""Several PBXs in one bridge (``[[asterisk]]``): the configuration, and the core with a fake
clock following two PBXs that both have an extension 202 (the recordings of Asterisk 22.10.1
played into one of them, the other's resync only). The same over real sockets, with the real
process and two replayed AMI servers, is in tests/test_pbxs_wire.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from test_core import Lab, Sip, dialogs, key_state, over_ami

from bridge.config import ConfigError, from_mapping, load
from bridge.core import BridgeCore
from bridge.events import ChannelSeen, SourceLost
from bridge.status import BridgeStatus
from bridge.web.metrics import MetricsSnapshot, render_metrics

TWO_PBXS = """
[sip]
udp = ["127.0.0.1:5090"]
[store]
path = ""
[web]
listen = ""
[security]
requests_per_second = 0
[watch]
stale_ring_timeout = 20

[[asterisk]]
name = "berlin"
domain = "Berlin.Example"
ami = { host = "10.1.0.1", username = "bridge", secret = "s1" }

[[asterisk]]
name = "hamburg"
domain = "hamburg.example:5060"
source = "ami"
[asterisk.ami]
host = "10.2.0.1"
port = 5039
username = "bridge"
secret = "s2"
"""


def two_pbxs(tmp_path: Path, text: str = TWO_PBXS) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


# --- configuration ----------------------------------------------------------------------------


def test_each_asterisk_entry_is_a_pbx_with_its_own_ami_settings(tmp_path: Path) -> None:
    config = load(two_pbxs(tmp_path))
    berlin, hamburg = config.pbxs
    assert (berlin.name, berlin.domain, berlin.source) == ("berlin", "berlin.example", "ami")
    assert (berlin.ami.host, berlin.ami.port, berlin.ami.secret) == ("10.1.0.1", 5038, "s1")
    assert (hamburg.domain, hamburg.ami.host, hamburg.ami.port) == (
        "hamburg.example:5060", "10.2.0.1", 5039)  # fmt: skip
    assert hamburg.ami.keepalive == 5.0  # the [ami] defaults, declared once
    assert config.asterisk_configured


def test_without_asterisk_entries_the_one_pbx_form_is_unchanged() -> None:
    config = from_mapping({"ami": {"host": "10.0.0.9", "username": "u", "secret": "s"}})
    assert config.pbxs == () and config.ami.host == "10.0.0.9"


ENTRY = {"name": "a", "domain": "a.example", "ami": {"username": "u", "secret": "s"}}


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"asterisk": [ENTRY, ENTRY | {"domain": "b.example"}]}, "asterisk[1].name: 'a' is used"),
        ({"asterisk": [ENTRY, ENTRY | {"name": "b", "domain": "A.example"}]},
         "asterisk[1].domain: 'a.example' is used"),
        ({"asterisk": [ENTRY], "ami": {"host": "10.0.0.1"}}, "[ami] and [[asterisk]]"),
        ({"asterisk": [ENTRY | {"domain": ""}]}, "asterisk[0].domain"),
        ({"asterisk": [ENTRY | {"name": "a b"}]}, "asterisk[0].name"),
        ({"asterisk": [ENTRY | {"port": 1}]}, "asterisk[0].port: unknown setting"),
        ({"asterisk": [ENTRY | {"source": "sip"}]}, "asterisk[0].source"),
        ({"asterisk": [ENTRY | {"ami": {"prot": 1}}]}, "asterisk[0].ami.prot: unknown setting"),
        ({"asterisk": [ENTRY | {"ami": {"port": 0}}]}, "asterisk[0].ami.port"),
        ({"asterisk": [ENTRY | {"ami": {"username": "u"}}]}, "asterisk[0] (a): ami.secret"),
        ({"asterisk": [ENTRY | {"ami": {}}]}, "asterisk[0].ami.username: required"),
        ({"asterisk": []}, "at least one entry"),
    ],
)  # fmt: skip
def test_bad_asterisk_entries_are_refused_naming_the_setting(raw: dict[str, object],
                                                             named: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw)
    assert named in str(caught.value)


# --- the core, two PBXs with a fake clock ---------------------------------------------------------


def lab(tmp_path: Path) -> Lab:
    lb = Lab(BridgeCore(load(two_pbxs(tmp_path))))
    resync, _ = over_ami("ring-cancel")
    lb.feed(resync, "berlin")
    lb.feed(resync, "hamburg")
    return lb


def entity(notify: Sip) -> str:
    return str(etree.fromstring(notify.body).get("entity"))


def ring_on(lb: Lab, pbx: str, call: str = "ring-cancel") -> None:
    """Play a recorded call into one PBX until its 202 rings."""
    _, timed = over_ami(call)
    ring_at = next(i for i, (_, e) in enumerate(timed)
                   if isinstance(e, ChannelSeen) and e.state == 5)  # fmt: skip
    lb.play(timed[: ring_at + 1], start=lb.clock.ms, pbx=pbx)


def test_a_subscribe_goes_to_the_pbx_its_request_uri_names(tmp_path: Path) -> None:
    lb = lab(tmp_path)
    berlin = lb.subscribe("202", domain="berlin.example")
    hamburg = lb.subscribe("202", domain="HAMBURG.example")  # case-insensitive, port left out
    by_name = lb.subscribe("202", domain="hamburg")  # a PBX's name is also its domain
    assert (berlin.status, hamburg.status, by_name.status) == (200, 200, 200)
    assert lb.subscribe("202", domain="elsewhere.example").status == 404
    assert lb.subscribe("999", domain="berlin.example").status == 404
    assert entity(lb.notifies_of(berlin)[0]) == "sip:202@berlin.example"
    assert entity(lb.notifies_of(hamburg)[0]) == "sip:202@hamburg.example:5060"
    assert sorted(lb.core.notifier.resources()) == ["berlin:202", "hamburg:202"]

    ring_on(lb, "berlin")
    assert key_state(lb.notifies_of(berlin)[-1]) == "early/recipient"
    # Hamburg's 202 is another phone: its watchers never hear of Berlin's call or its ids.
    assert [key_state(n) for n in lb.notifies_of(hamburg)] == ["idle"]
    assert [key_state(n) for n in lb.notifies_of(by_name)] == ["idle"]
    ring = dialogs(lb.notifies_of(berlin)[-1])[0]
    assert ring.get("call-id")
    assert all(ring.get("call-id").encode() not in n.body for n in lb.notifies_of(hamburg))
    states = {e.exten: e.state for e in BridgeStatus(lb.core, lambda: 0.0).entities()}
    assert states["berlin:202"] == "ringing" and states["hamburg:202"] == "idle"


def test_one_pbx_lost_leaves_the_other_live_and_recovers_on_its_resync(tmp_path: Path) -> None:
    lb = lab(tmp_path)
    berlin = lb.subscribe("202", domain="berlin.example")
    hamburg = lb.subscribe("202", domain="hamburg.example")
    ring_on(lb, "berlin")
    lb.feed([SourceLost()], "berlin")
    lost = lb.clock.ms
    assert not lb.core.asterisk_synced
    assert [(p.name, p.synced) for p in lb.core.pbxs] == [("berlin", False), ("hamburg", True)]
    assert lb.core.next_timer() == pytest.approx((lost + 20_000) / 1000)

    ring_on(lb, "hamburg")  # the other PBX's calls still light its keys
    assert key_state(lb.notifies_of(hamburg)[-1]) == "early/recipient"
    lb.advance(lost + 20_000)  # Berlin stayed away: its ringing key stops blinking, only its
    assert key_state(lb.notifies_of(berlin)[-1]) == "idle"
    assert key_state(lb.notifies_of(hamburg)[-1]) == "early/recipient"

    resync, _ = over_ami("ring-answer-hangup")  # back: its resync, then a new call rings
    lb.feed(resync, "berlin")
    assert lb.core.asterisk_synced and lb.core.stale_ring_at is None
    ring_on(lb, "berlin", "ring-answer-hangup")
    assert key_state(lb.notifies_of(berlin)[-1]) == "early/recipient"

    page = render_metrics(MetricsSnapshot.of(BridgeStatus(lb.core, lambda: 0.0))).decode()
    assert 'snom_blf_pbx_synced{pbx="berlin"} 1.0' in page
    assert 'snom_blf_pbx_connected{pbx="hamburg"} 1.0' in page
    assert "snom_blf_synced 1.0" in page  # the one-PBX names stay, over all PBXs


def test_a_reload_restarts_the_sources_but_keeps_the_set_of_pbxs_until_a_restart(
    tmp_path: Path,
) -> None:
    lb = lab(tmp_path)
    moved = load(two_pbxs(tmp_path, TWO_PBXS.replace("port = 5039", "port = 5040")))
    done = lb.core.reconfigure(moved, lb.clock.now)
    assert done.changed == {"asterisk[1]"} and done.kept == () and done.restart_source
    assert done.config.pbxs[1].ami.port == 5040
    renamed = load(two_pbxs(tmp_path, TWO_PBXS.replace('"hamburg.example:5060"', '"hh.example"')))
    done = lb.core.reconfigure(renamed, lb.clock.now)
    assert done.kept == ("asterisk.pbxs",)
    assert done.config.pbxs[1].domain == "hamburg.example:5060"  # the core's PBXs stay as built


def test_each_pbx_settles_its_own_keys_before_the_other_syncs(tmp_path: Path) -> None:
    """A key of a PBX not in sync yet is accepted (neutral NOTIFY), ended with noresource by
    that PBX's own sync if it has no such key; the PBX in sync already answers 404 at once."""
    lb = Lab(BridgeCore(load(two_pbxs(tmp_path))))
    resync, _ = over_ami("ring-cancel")
    lb.feed(resync, "berlin")
    assert lb.subscribe("202", domain="berlin.example").status == 200
    assert lb.subscribe("999", domain="berlin.example", user="204").status == 404
    waiting = lb.subscribe("202", domain="hamburg.example", user="205")
    missing = lb.subscribe("999", domain="hamburg.example", user="206")
    assert (waiting.status, missing.status) == (200, 200)
    lb.feed(resync, "hamburg")
    assert [n.headers["subscription-state"].partition(";")[0]
            for n in lb.notifies_of(waiting)][-1] == "active"  # fmt: skip
    ended = lb.notifies_of(missing)
    assert ended[-1].headers["subscription-state"] == "terminated;reason=noresource"
    assert lb.subscribe("999", domain="hamburg.example", user="207").status == 404
