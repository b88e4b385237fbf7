"""How Asterisk writes devices, channel names, hints and group lists (bridge.devices)."""

from __future__ import annotations

import pytest

from bridge.devices import (
    device_key,
    device_of_channel,
    hint_devices,
    hint_parts,
    is_channel_device,
    park_space,
    parse_groups,
)


def test_technology_names_are_caseless_resources_are_not() -> None:
    assert device_key(" PJSIP/Alice ") == device_key("pjsip/Alice") == "pjsip/Alice"
    assert device_key("Custom:DND201") == "custom:dnd201"  # no "/": caseless as a whole


@pytest.mark.parametrize(
    ("channel", "device"),
    [
        ("PJSIP/202-00000008", "pjsip/202"),
        ("PJSIP/sales-desk-0000001a", "pjsip/sales-desk"),  # only the last "-" is Asterisk's
        ("Local/201@internal-00000002;1", "local/201@internal"),
        ("PJSIP/202", "pjsip/202"),  # no sequence at all
    ],
)
def test_a_channel_names_its_device(channel: str, device: str) -> None:
    assert device_of_channel(channel) == device


def test_a_hint_names_devices_up_to_its_presence_provider() -> None:
    hint = "PJSIP/202&Custom:DND202,CustomPresence:202"
    assert hint_parts(hint) == ["PJSIP/202", "Custom:DND202"]
    assert hint_parts("PJSIP/202&") == ["PJSIP/202", ""]  # kept, for the config to refuse
    assert hint_devices(hint) == ("pjsip/202", "custom:dnd202")
    assert hint_devices("PJSIP/202 & pjsip/202&") == ("pjsip/202",)


def test_devices_are_told_apart_by_how_they_are_written() -> None:
    assert is_channel_device("pjsip/201") and is_channel_device("local/201@internal")
    assert not is_channel_device("custom:dnd201") and not is_channel_device("queue:sales")
    assert park_space("park:701@parkedcalls") == "701"
    assert park_space("Park:702") == "702"
    assert park_space("custom:701@parkedcalls") is None
    assert park_space("park:@parkedcalls") is None


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        ("", set()),
        ("1, 3, 4", {1, 3, 4}),  # as ARI's configuration prints them
        ("1,3-5", {1, 3, 4, 5}),  # as pjsip.conf may write them
        ("2,x,7-,-3,64,63", {2, 63}),  # junk and groups beyond Asterisk's 0..63 are ignored
    ],
)
def test_group_lists(text: str, groups: set[int]) -> None:
    assert parse_groups(text) == frozenset(groups)
