"""Who gets the pickup ids (call-id and tags) of a ringing call: every ``security.pickup`` policy.

The unit tests call bridge/pickup.py directly. The end-to-end ones run the bridge as a process
(``python -m bridge run``) against the replayed Asterisk, with two SIPp watchers of 202 (203 and
206), and read which of them got the ids in its early NOTIFYs (bodies checked against the XSD).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bridge_process import BridgeProcess
from lxml import etree
from sipp import SippResult, SippWatcher, free_port

from bridge.demo.ami_server import RecordedAmiServer, event_matches
from bridge.devices import parse_groups
from bridge.pickup import MODES, PickupPolicy

SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(__file__).parent / "fixtures" / "schemas" / "dialog-info.xsd"))
)
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
RINGING_202 = event_matches(Event="Newstate", ChannelState="5")  # 202's leg rings: ids known


def may_pickup(policy: PickupPolicy, watcher: str, ringing: str, exten: str) -> bool:
    """The question the bridge asks per watcher (through the watcher's class, as it renders)."""
    return policy.allows(policy.class_of(watcher), ringing, exten)


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        ("1-3,5", {1, 2, 3, 5}),  # as pjsip.conf takes it
        ("1, 2, 3, 5", {1, 2, 3, 5}),  # as AMI prints it (ast_print_group: ", " between)
        ("", set()),
        ("0", {0}),
        ("60-70", {60, 61, 62, 63}),  # Asterisk has groups 0-63
        ("a, 2, 3-x, 4 ,", {2, 4}),  # junk parts are dropped, the rest kept
    ],
)
def test_group_lists_as_asterisk_writes_them(text: str, groups: set[int]) -> None:
    assert parse_groups(text) == groups


def test_group_policy_is_asterisks_call_pickup_rule() -> None:
    policy = PickupPolicy("group")
    assert policy.set_groups("202", call=parse_groups("5"), pickup=parse_groups("1"))
    assert not policy.set_groups("202", call=parse_groups("5"), pickup=parse_groups("1"))
    policy.set_groups("203", call=frozenset(), pickup=parse_groups("1-3,5"))
    policy.set_groups("206", call=frozenset(), pickup=parse_groups("1-4"))
    policy.set_groups("204", call=frozenset(), pickup=parse_groups("1, 2, 3, 5"))
    assert may_pickup(policy, "203", "202", "202")
    assert not may_pickup(policy, "206", "202", "202")  # no group in common
    assert may_pickup(policy, "203", "202", "any-exten")  # the endpoint decides, not the key
    assert not may_pickup(policy, "207", "202", "202")  # groups never told: no ids
    assert not may_pickup(policy, "", "202", "202")  # an anonymous watcher
    assert not may_pickup(policy, "203", "205", "205")  # ringing endpoint not known yet
    assert policy.knows("203") and not policy.knows("207")
    # Watchers with the same pickup groups see the same bodies: one class, one rendering.
    assert policy.class_of("203") == policy.class_of("204") != policy.class_of("206")


def test_group_policy_keeps_what_asterisk_said_across_a_reload() -> None:
    old = PickupPolicy("group")
    old.set_groups("202", call=parse_groups("1"), pickup=frozenset())
    old.set_groups("203", call=frozenset(), pickup=parse_groups("1"))
    new = PickupPolicy("group")
    assert not may_pickup(new, "203", "202", "202")
    new.adopt_groups(old)
    assert may_pickup(new, "203", "202", "202")


def test_rules_policy_lists_extensions_per_watcher() -> None:
    rules = {"203": frozenset({"202"}), "reception": frozenset({"*"}), "*": frozenset({"204"})}
    policy = PickupPolicy("rules", rules)
    policy.set_groups("206", call=parse_groups("1"), pickup=parse_groups("1"))  # ignored here
    assert may_pickup(policy, "203", "202", "202")
    assert not may_pickup(policy, "203", "205", "205")
    assert may_pickup(policy, "203", "204", "204")  # "*" as watcher: a rule for everyone
    assert may_pickup(policy, "206", "204", "204") and not may_pickup(policy, "206", "202", "202")
    assert may_pickup(policy, "reception", "299", "299")  # "*" as extension: any call
    assert not may_pickup(policy, "", "204", "204")  # an anonymous watcher: never
    assert policy.class_of("203") != policy.class_of("206")  # rendered per watcher


def test_everyone_and_nobody() -> None:
    everyone, nobody = PickupPolicy("everyone"), PickupPolicy("nobody")
    for watcher in ("203", "206", ""):
        assert may_pickup(everyone, watcher, "202", "202")
        assert not may_pickup(nobody, watcher, "202", "202")
    assert everyone.class_of("203") == everyone.class_of("206")  # one rendering for all


def test_modes_are_the_documented_ones_and_others_refused() -> None:
    assert MODES == ("group", "rules", "everyone", "nobody")
    with pytest.raises(ValueError, match="pickup mode"):
        PickupPolicy("none")


def early_dialogs(result: SippResult) -> list[etree._Element]:
    """The early (ringing) dialogs of every NOTIFY a watcher got, bodies checked by the XSD."""
    assert result.ok, result.output
    found: list[etree._Element] = []
    for notify in result.notifies:
        if notify.body:
            doc = etree.fromstring(notify.body)
            SCHEMA.assertValid(doc)
            found += doc.xpath("d:dialog[d:state='early']", namespaces=NS)
    return found


def got_ids(result: SippResult) -> bool:
    """Whether this watcher could pick up: its ringing key carried call-id and both tags."""
    early = early_dialogs(result)
    assert early, "the key never blinked"
    with_ids = [d for d in early if d.get("call-id") and d.get("local-tag") and d.get("remote-tag")]
    assert not with_ids or len(with_ids) == len(early), "ids in some NOTIFYs only"
    for d in early:  # either way, the watcher sees who calls
        identity = d.find("d:remote/d:identity", NS)
        assert identity is not None and identity.get("display") == "Phone 201"
    return bool(with_ids)


@pytest.mark.parametrize(
    ("settings", "groups", "expected"),
    [
        # 202 rings in call group 5 (as AMI prints it); 203 picks up 1-3,5, 206 only 1-4.
        ([], {"202": ("5", ""), "203": ("", "1, 2, 3, 5"), "206": ("", "1, 2, 3, 4")},
         {"203": True, "206": False}),
        (["security.pickup=rules", 'security.pickup_rules={ "206" = ["202"] }'], {},
         {"203": False, "206": True}),
        (["security.pickup=everyone"], {}, {"203": True, "206": True}),
        (["security.pickup=nobody"], {}, {"203": False, "206": False}),
    ],
    ids=["group", "rules", "everyone", "nobody"],
)  # fmt: skip
async def test_each_policy_end_to_end(
    server: RecordedAmiServer,
    tmp_path: Path,
    settings: list[str],
    groups: dict[str, tuple[str, str]],
    expected: dict[str, bool],
) -> None:
    for endpoint, (call, pickup) in groups.items():
        server.endpoints[endpoint].update(call_group=call, pickup_group=pickup)
    config = tmp_path / "bridge.toml"
    config.write_text("# everything comes from --set\n")
    port = free_port()
    bridge = BridgeProcess(config, port, server.port, tmp_path / "s.sqlite3")
    for item in settings:
        bridge.args += ["--set", item]
    results: dict[str, SippResult] = {}
    try:
        await bridge.start()
        async with (
            SippWatcher("202", ("127.0.0.1", port), idle_ms=1500, watcher="203") as w203,
            SippWatcher("202", ("127.0.0.1", port), idle_ms=1500, watcher="206") as w206,
        ):
            await bridge.wait_for("subscribed to 202", count=2)
            await server.play("pickup-replaces", until=RINGING_202)
            await bridge.wait_for("202: ringing")
            results = {"203": await w203.finish(), "206": await w206.finish()}
    finally:
        await bridge.close()
    assert {watcher: got_ids(result) for watcher, result in results.items()} == expected
    assert "Traceback" not in bridge.log
