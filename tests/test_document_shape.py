"""The document-shape settings (``watch.ringing_first``, ``watch.single_dialog``,
``watch.idle_dialog``): one test per quirk, each failing with its setting off, every body checked
against RFC 4235's schema; and the settings' path from the TOML file to the renderer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from lxml import etree
from sipp import parse_trace

from bridge.config import ConfigError, load
from bridge.dialoginfo import NAMESPACE, RenderSettings, render
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds
from bridge.settings import render_settings

SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(__file__).parent / "fixtures" / "schemas" / "dialog-info.xsd"))
)
NS = {"d": NAMESPACE}
ON = RenderSettings(domain="pbx.example.com")
IDS = PickupIds("call-1@pbx", "asterisk-tag", "phone-tag", "202")

# 202 talks to 205 (its own call, older), then 201 rings it: the tracker lists the older call
# first, as in the ring-while-busy recording.
TALKING = Dialog("1700.1", Direction.INITIATOR, DialogState.CONFIRMED, "205", "Phone 205")
RINGING = Dialog("1700.5", Direction.RECIPIENT, DialogState.EARLY, "201", "Phone 201", IDS)
BUSY_AND_RINGING = EntityState("202", (TALKING, RINGING))


def dialogs(settings: RenderSettings, state: EntityState, allowed: frozenset[str] | None = None
            ) -> list[etree._Element]:  # fmt: skip
    root = etree.fromstring(render(state, settings, allowed).body(1))
    SCHEMA.assertValid(root)
    return list(root.findall("d:dialog", NS))


def state_of(dialog: etree._Element) -> str | None:
    return dialog.findtext("d:state", namespaces=NS)


@pytest.mark.parametrize("ringing_first", [True, False])
def test_the_ringing_call_comes_first_for_snom_and_poly(ringing_first: bool) -> None:
    """Snom takes the pickup ids from the first dialog with a call-id; a Poly overlooks a ringing
    dialog that follows one in use on the same key. Off: the older call stays first."""
    settings = dataclasses.replace(ON, ringing_first=ringing_first)
    first, second = dialogs(settings, BUSY_AND_RINGING)
    if ringing_first:
        assert (first.get("id"), state_of(first), first.get("call-id")) == (
            "1700.5", "early", "call-1@pbx",
        )  # fmt: skip
        assert state_of(second) == "confirmed"
    else:
        assert (first.get("id"), state_of(first)) == ("1700.1", "confirmed")


def test_a_ringing_call_this_watcher_may_take_comes_before_one_it_may_not() -> None:
    other = dataclasses.replace(RINGING, id="1700.9", pickup=IDS)
    state = EntityState("202", (TALKING, other, RINGING))
    # The watcher may take 1700.5 only: it leads, so the first call-id is one it can use.
    ids = [d.get("id") for d in dialogs(ON, state, frozenset({"1700.5"}))]
    assert ids == ["1700.5", "1700.9", "1700.1"]
    unordered = dataclasses.replace(ON, ringing_first=False)
    assert [d.get("id") for d in dialogs(unordered, state, frozenset({"1700.5"}))] == [
        "1700.1", "1700.9", "1700.5",
    ]  # fmt: skip


@pytest.mark.parametrize("single", [True, False])
def test_one_dialog_per_document_keeps_the_ringing_one(single: bool) -> None:
    """OpenSIPS's force_single_dialog: a phone that mishandles several dialogs gets the one
    that matters, the ringing call with its pickup ids."""
    found = dialogs(dataclasses.replace(ON, single_dialog=single), BUSY_AND_RINGING)
    if single:
        (only,) = found
        assert (state_of(only), only.get("call-id"), only.get("direction")) == (
            "early", "call-1@pbx", "recipient",
        )  # fmt: skip
    else:
        assert [state_of(d) for d in found] == ["early", "confirmed"]


def test_one_dialog_per_document_still_shows_a_call_in_progress() -> None:
    (only,) = dialogs(dataclasses.replace(ON, single_dialog=True), EntityState("202", (TALKING,)))
    assert state_of(only) == "confirmed"


@pytest.mark.parametrize("idle_dialog", [True, False])
def test_an_idle_key_gets_a_terminated_dialog_not_an_empty_document(idle_dialog: bool) -> None:
    """A Yealink kept its LED lit after a NOTIFY without <dialog>; its guide's idle body is one
    terminated dialog, as Asterisk sends. Off: the empty document RFC 4235 also allows."""
    found = dialogs(dataclasses.replace(ON, idle_dialog=idle_dialog), EntityState("202@tenant-b"))
    if idle_dialog:
        (idle,) = found
        assert (idle.get("id"), state_of(idle)) == ("202", "terminated")
        # No ids, no direction, no participants: nothing to pick up or call back.
        assert idle.get("call-id") is None and idle.get("direction") is None and len(idle) == 1
    else:
        assert found == []


def test_the_idle_dialog_is_only_for_an_idle_key() -> None:
    assert [state_of(d) for d in dialogs(ON, EntityState("202", (TALKING,)))] == ["confirmed"]


def test_the_settings_go_from_the_file_to_the_renderer(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("[watch]\nringing_first = false\nsingle_dialog = true\nidle_dialog = false\n")
    rendering = render_settings(load(path))
    assert (rendering.ringing_first, rendering.single_dialog, rendering.idle_dialog) == (
        False, True, False,
    )  # fmt: skip
    defaults = render_settings(load(None))
    assert (defaults.ringing_first, defaults.single_dialog, defaults.idle_dialog) == (
        True, False, True,
    )  # fmt: skip


def test_a_wrong_value_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[watch]\nsingle_dialog = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"watch\.single_dialog"):
        load(path)


def test_the_idle_dialog_is_the_one_asterisks_own_blf_sends() -> None:
    """Asterisk 22's own BLF (the device-states recording's watcher of 210) says idle with one
    terminated dialog named after the key: the bridge's idle body has the same dialog."""
    trace = Path(__file__).parent / "fixtures/asterisk-22.10.1/device-states/own-blf-210.log"
    notifies = [m for m in parse_trace(trace.read_bytes()) if m.method == "NOTIFY"]
    idle = [etree.fromstring(m.body) for m in notifies if b"<state>terminated" in m.body]
    assert idle
    (asterisks,) = idle[0].findall("d:dialog", NS)
    (ours,) = dialogs(ON, EntityState("210"))
    assert (ours.get("id"), state_of(ours), dict(ours.attrib)) == (
        asterisks.get("id"), state_of(asterisks), dict(asterisks.attrib),
    )  # fmt: skip
    assert len(ours) == len(asterisks) == 1  # <state> alone
