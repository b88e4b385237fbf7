"""Yealink and Poly: what the bridge sends a watching phone, over real sockets (a replayed
Asterisk 22, SIPp as the phone), against what each vendor documents its phones pick up from.

The fixtures in tests/fixtures/vendors/ were written by hand from the vendors' documented bodies
(their README says where each fact comes from). A body's *shape* is compared: which elements,
attributes and states it has, not its values; the values are checked against the recording.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lxml import etree
from sipp import TracedMessage
from test_app import (
    NS,
    SCHEMA,
    check_notify_sequence,
    replaces_csv,
    running_bridge,
    watch_scenario,
)
from test_core import offered_to

from bridge.demo.ami_server import RecordedAmiServer

VENDORS = Path(__file__).parent / "fixtures" / "vendors"


def shape(dialog: etree._Element) -> set[str]:
    """What a <dialog> holds, as paths: ``@call-id``, ``state=early``, ``remote/target@uri``."""
    found = {f"@{name}" for name in dialog.attrib}

    def walk(element: etree._Element, prefix: str) -> None:
        for child in element:
            if not isinstance(child.tag, str):
                continue  # a comment
            path = prefix + etree.QName(child).localname
            found.add(path)
            found.update(f"{path}@{name}" for name in child.attrib)
            if path == "state":
                found.add(f"state={child.text}")
            walk(child, path + "/")

    walk(dialog, "")
    return found


def fixture_dialog(name: str) -> etree._Element:
    doc = etree.parse(str(VENDORS / name)).getroot()
    SCHEMA.assertValid(doc)
    (dialog,) = doc.findall("d:dialog", NS)
    return dialog


def bodies(notifies: list[TracedMessage]) -> Iterator[list[etree._Element]]:
    for notify in notifies:
        doc = etree.fromstring(notify.body)
        SCHEMA.assertValid(doc)
        yield list(doc.findall("d:dialog", NS))


def state(dialog: etree._Element) -> str | None:
    return dialog.findtext("d:state", namespaces=NS)


async def test_yealink_gets_the_body_its_dialog_info_pickup_reads(
    server: RecordedAmiServer,
) -> None:
    """account.X.dialoginfo_callpickup = 1: the Yealink builds its INVITE with Replaces from the
    ringing dialog's call-id, local-tag and remote-tag; its guide's idle body is one terminated
    dialog (a Yealink kept its LED lit after a NOTIFY without any <dialog>)."""
    async with running_bridge(server) as bridge:
        result = await watch_scenario(server, bridge, "pickup-replaces")
    documents = list(bodies(check_notify_sequence(result)))
    ringing = [ds[0] for ds in documents if ds and state(ds[0]) == "early"]
    idle = [ds for ds in documents if all(state(d) == "terminated" for d in ds)]
    assert ringing and idle
    documented = shape(fixture_dialog("yealink-ringing.xml"))
    call_id, asterisk_tag, phone_tag = replaces_csv("pickup-replaces")
    for dialog in ringing:
        assert documented <= shape(dialog), documented - shape(dialog)
        assert dialog.get("direction") == "recipient"
        assert (dialog.get("call-id"), dialog.get("remote-tag"), dialog.get("local-tag")) == (
            call_id, asterisk_tag, phone_tag,
        )  # fmt: skip
    documented_idle = shape(fixture_dialog("yealink-idle.xml"))
    for dialogs in idle:
        # Never a document without a dialog: the first NOTIFY and the one after the pickup too.
        (only,) = dialogs
        assert shape(only) == documented_idle
    assert documents[0] == idle[0] and documents[-1] == idle[-1]


async def test_poly_sees_the_ringing_call_first_even_while_the_line_is_in_use(
    server: RecordedAmiServer,
) -> None:
    """call.directedCallPickupMethod = "native": the Poly needs the three ids on the <dialog>
    element (Asterisk issue #803) and overlooks "ringing" that follows "in use" on the same line.
    In ring-while-busy 202 is in a call when 201 rings it: the ringing dialog leads."""
    async with running_bridge(server) as bridge:
        result = await watch_scenario(server, bridge, "ring-while-busy")
    documents = list(bodies(check_notify_sequence(result)))
    with_ringing = [ds for ds in documents if any(state(d) == "early" for d in ds)]
    assert any(len(ds) == 2 for ds in with_ringing), "the busy-and-ringing moment never came"
    documented = shape(fixture_dialog("poly-ringing.xml"))
    call_id, asterisk_tag, phone_tag = offered_to("ring-while-busy/sip-202-in.log")
    for dialogs in with_ringing:
        first = dialogs[0]
        assert state(first) == "early" and first.get("direction") == "recipient"
        assert documented <= shape(first), documented - shape(first)
        assert (first.get("call-id"), first.get("remote-tag"), first.get("local-tag")) == (
            call_id, asterisk_tag, phone_tag,
        )  # fmt: skip
        assert all(state(d) != "early" for d in dialogs[1:])
    # The busy call before and after carries no ids: nothing there to pick up.
    busy = [d for ds in documents for d in ds if state(d) == "confirmed"]
    assert busy and all(d.get("call-id") is None for d in busy)
