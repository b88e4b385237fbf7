"""dialog-info rendering: schema-valid bodies, version splicing, escaping, pickup ids, targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.asterisk import ami_events
from bridge.demo import recording
from bridge.dialoginfo import NAMESPACE, RenderSettings, render, sip_uri
from bridge.events import LegIds
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds
from bridge.tracker import CallTracker

SCHEMA = etree.XMLSchema(
    etree.parse(str(Path(__file__).parent / "fixtures" / "schemas" / "dialog-info.xsd"))
)
NS = {"d": NAMESPACE}
PBX = RenderSettings(domain="pbx.example.com")
# The dialogs as the tracker gives them: no reordering, no idle dialog (tests/test_document_shape.py
# covers those settings).
AS_GIVEN = RenderSettings(domain="pbx.example.com", ringing_first=False, idle_dialog=False)


def parse(body: bytes) -> etree._Element:
    """Parse a body and check it against RFC 4235's schema."""
    root = etree.fromstring(body)
    SCHEMA.assertValid(root)
    return root


def ringing(**overrides: object) -> Dialog:
    fields: dict[str, object] = {
        "id": "1795325554.8",
        "direction": Direction.RECIPIENT,
        "state": DialogState.EARLY,
        "remote_num": "201",
        "remote_name": "Phone 201",
        "pickup": PickupIds("cca94fb4@host", "19106SIPpTag011", "f2740558-d4ca"),
    }
    fields.update(overrides)
    return Dialog(**fields)  # type: ignore[arg-type]


def test_empty_state_is_a_valid_empty_document() -> None:
    body = render(EntityState("202"), AS_GIVEN).body(0)
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<dialog-info ')
    root = parse(body)
    assert dict(root.items()) == {
        "version": "0",
        "state": "full",
        "entity": "sip:202@pbx.example.com",
    }
    assert len(root) == 0


def test_ringing_call_carries_pickup_ids_in_the_right_attributes() -> None:
    root = parse(render(EntityState("202", (ringing(),)), PBX).body(3))
    (dialog,) = root.findall("d:dialog", NS)
    assert dict(dialog.items()) == {
        "id": "1795325554.8",
        "call-id": "cca94fb4@host",
        "local-tag": "19106SIPpTag011",  # the ringing phone's tag
        "remote-tag": "f2740558-d4ca",  # Asterisk's tag
        "direction": "recipient",
    }
    assert [etree.QName(c).localname for c in dialog] == ["state", "local", "remote"]
    assert dialog.findtext("d:state", namespaces=NS) == "early"


def test_pickup_ids_can_be_left_out_for_watchers_who_may_not_pick_up() -> None:
    no_ids = RenderSettings(domain="pbx.example.com", pickup_ids=False)
    dialog = parse(render(EntityState("202", (ringing(),)), no_ids).body(0))[0]
    assert set(dialog.attrib) == {"id", "direction"}


def test_remote_target_is_the_watched_extension_at_the_pbx() -> None:
    dialog = parse(render(EntityState("202", (ringing(),)), PBX).body(0))[0]
    local = dialog.find("d:local", NS)
    remote = dialog.find("d:remote", NS)
    assert local is not None and remote is not None
    assert local.findtext("d:identity", namespaces=NS) == "sip:202@pbx.example.com"
    assert local.find("d:target", NS).get("uri") == "sip:202@pbx.example.com"  # type: ignore[union-attr]
    # The pickup INVITE goes to the remote target: the extension itself, never the caller.
    assert remote.find("d:target", NS).get("uri") == "sip:202@pbx.example.com"  # type: ignore[union-attr]
    identity = remote.find("d:identity", NS)
    assert identity is not None
    assert (identity.text, identity.get("display")) == ("sip:201@pbx.example.com", "Phone 201")


@pytest.mark.parametrize("version", [0, 1, 2, 9, 10, 99, 12345, 10**9, 2**32 + 1])
def test_version_is_spliced_into_the_body_rendered_once(version: int) -> None:
    doc = render(EntityState("202", (ringing(),)), PBX)
    body = doc.body(version)
    root = parse(body)
    assert root.get("version") == str(version)
    assert body.replace(f'version="{version}"'.encode(), b'version="0"', 1) == doc.body(0)


def test_negative_version_is_refused() -> None:
    with pytest.raises(ValueError):
        render(EntityState("202"), PBX).body(-1)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ('Dr. "Quote" <Boss> & Co', 'Dr. "Quote" <Boss> & Co'),
        ("Jürgen Müßig 電話 📞", "Jürgen Müßig 電話 📞"),
        ("bell\x07 and\x00null\x1b[0m", "bell andnull[0m"),
        ("tab\tand\nnew\r\nline ", "tab and new line"),
        ("lone \ud800 surrogate \ufffe", "lone surrogate"),
        ("]]> --> <!-- <![CDATA[", "]]> --> <!-- <![CDATA["),
    ],
)
def test_odd_caller_names_are_escaped_or_dropped(name: str, shown: str) -> None:
    body = render(EntityState("202", (ringing(remote_name=name),)), PBX).body(1)
    identity = parse(body).find("d:dialog/d:remote/d:identity", NS)
    assert identity is not None and identity.get("display") == shown


def test_odd_numbers_stay_valid_uris() -> None:
    for num in ("+49 30 555-0", "anonymous", "a@b:c", "<sip:x>", "100#", "ä"):
        body = render(EntityState("202", (ringing(remote_num=num),)), PBX).body(0)
        text = parse(body).findtext("d:dialog/d:remote/d:identity", namespaces=NS)
        assert text is not None and text.startswith("sip:") and text.endswith("@pbx.example.com")
        assert text.count("@") == 1 and " " not in text and "<" not in text
    assert sip_uri("+49 30", "pbx") == "sip:+49%2030@pbx"


def test_missing_caller_number() -> None:
    only_name = parse(render(EntityState("202", (ringing(remote_num=""),)), PBX).body(0))
    identity = only_name.find("d:dialog/d:remote/d:identity", NS)
    assert identity is not None and identity.text == "sip:anonymous@anonymous.invalid"
    assert identity.get("display") == "Phone 201"
    nothing = parse(
        render(EntityState("202", (ringing(remote_num="", remote_name=""),)), PBX).body(0)
    )
    assert nothing.find("d:dialog/d:remote/d:identity", NS) is None
    assert nothing.find("d:dialog/d:remote/d:target", NS) is not None


def test_hold_marks_the_holding_sides_target() -> None:
    held = ringing(state=DialogState.CONFIRMED, pickup=None, remote_held=True)
    dialog = parse(render(EntityState("202", (held,)), PBX).body(0))[0]
    assert dialog.find("d:local/d:target/d:param", NS) is None
    param = dialog.find("d:remote/d:target/d:param", NS)
    assert param is not None and dict(param.items()) == {"pname": "+sip.rendering", "pval": "no"}
    holding = ringing(state=DialogState.CONFIRMED, pickup=None, local_held=True)
    dialog = parse(render(EntityState("202", (holding,)), PBX).body(0))[0]
    assert dialog.find("d:local/d:target/d:param", NS) is not None
    assert dialog.find("d:remote/d:target/d:param", NS) is None


def test_several_dialogs_keep_their_order_and_unknown_state_keeps_them() -> None:
    talking = ringing(id="1.1", state=DialogState.CONFIRMED, pickup=None, remote_num="205")
    state = EntityState("202", (talking, ringing()), known=False)
    root = parse(render(state, AS_GIVEN).body(0))
    assert [d.get("id") for d in root] == ["1.1", "1795325554.8"]
    assert [d.findtext("d:state", namespaces=NS) for d in root] == ["confirmed", "early"]
    assert render(state, PBX).body(5) == render(EntityState("202", state.dialogs), PBX).body(5)


def test_domain_is_checked() -> None:
    for bad in ("", "pbx example", 'pbx"x', "pbx<x>"):
        with pytest.raises(ValueError, match="domain"):
            RenderSettings(domain=bad)
    assert RenderSettings(domain="10.0.0.1:5060").domain == "10.0.0.1:5060"


# -- any state renders to a valid document -------------------------------------------------

# Every code point, control characters and lone surrogates included.
text = st.text(st.characters(exclude_categories=()), max_size=40)
pickups = st.none() | st.builds(PickupIds, text, text, text)
dialogs = st.builds(
    Dialog,
    id=text,
    direction=st.sampled_from(Direction),
    state=st.sampled_from(DialogState),
    remote_num=text,
    remote_name=text,
    pickup=pickups,
    local_held=st.booleans(),
    remote_held=st.booleans(),
)
states = st.builds(
    EntityState,
    exten=st.text(st.characters(exclude_categories=()), min_size=1, max_size=20),
    dialogs=st.lists(dialogs, max_size=4).map(tuple),
    known=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(state=states, version=st.integers(min_value=0, max_value=2**40))
def test_any_state_renders_to_schema_valid_xml(state: EntityState, version: int) -> None:
    shaped_root = parse(render(state, PBX).body(version))  # reordered, idle dialog: valid too
    assert len(shaped_root.findall("d:dialog", NS)) == max(1, len(state.dialogs))
    root = parse(render(state, AS_GIVEN).body(version))
    assert root.get("version") == str(version)
    assert len(root.findall("d:dialog", NS)) == len(state.dialogs)
    for dialog, element in zip(state.dialogs, root, strict=True):
        assert element.get("direction") == dialog.direction.value
        assert element.findtext("d:state", namespaces=NS) == dialog.state.value
        remote_target = element.find("d:remote/d:target", NS)
        assert remote_target is not None and remote_target.get("uri") == root.get("entity")
        assert (element.get("call-id") is not None) == (dialog.pickup is not None)


# -- every state of the recorded calls ------------------------------------------------------

RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"


# Every recording with a call in it (registrations and contacts have none: no key changes).
CALLS = sorted(
    p.parent.name for p in RECORDINGS.glob("*/ami-wire.jsonl") if "Newchannel" in p.read_text()
)


@pytest.mark.parametrize("scenario", CALLS)
def test_every_recorded_state_renders_valid(scenario: str) -> None:
    tracker, buffer, rendered = CallTracker(), "", 0
    for line in (RECORDINGS / scenario / "ami-wire.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["dir"] != "asterisk":
            continue
        frames, buffer = recording.parse_frames(buffer + record["data"])
        for event in (e for frame in frames for e in ami_events.to_events(frame)):
            for uid in tracker.channels_needing_ids():
                tracker.apply(LegIds(uid, f"call-{uid}", "asterisk-tag", "phone-tag"), 0.0)
            for exten in tracker.apply(event, record["t"]):
                doc = render(tracker.state(exten), PBX)
                root = parse(doc.body(rendered))
                assert root.get("entity") == f"sip:{exten}@pbx.example.com"
                rendered += 1
    assert rendered > 0


def test_a_withheld_caller_is_anonymous_whatever_the_settings() -> None:
    hidden = Dialog("1.2", Direction.RECIPIENT, DialogState.EARLY, "", "", None, remote_hidden=True)
    root = parse(render(EntityState("202", (hidden,)), PBX).body(0))
    identity = root.find("d:dialog/d:remote/d:identity", NS)
    assert identity is not None and identity.text == "sip:anonymous@anonymous.invalid"
    assert identity.get("display") is None
