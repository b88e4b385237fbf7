"""Snom settings XML for the bridge's keys: pure, plain values in, document bytes out.

The format is Snom's provisioning XML (``<settings>`` holding ``<phone-settings>`` and
``<functionKeys>``); the settings it writes and where they are documented are listed in
docs/PROVISIONING.md. lxml writes the document, so every label and value is
escaped; characters XML 1.0 cannot carry at all are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lxml import etree

# Characters XML 1.0 cannot carry in any form (lxml refuses them rather than escaping them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
PERM = "RW"  # provisioning may change the key; the phone's own edits are overwritten on reboot


@dataclass(frozen=True, slots=True)
class BridgeAddress:
    """Where phones send their SUBSCRIBEs: the bridge's host, port and transport."""

    host: str
    port: int
    transport: str  # udp, tcp or tls

    def uri(self, exten: str) -> str:
        """The SIP URI a BLF key subscribes to for ``exten``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        params = ";user=phone" + ("" if self.transport == "udp" else f";transport={self.transport}")
        return f"sip:{exten}@{host}:{self.port}{params}"

    def list_uri(self, name: str) -> str:
        """The SIP URI of a resource list at the bridge (a name, not a number: no user=phone)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        params = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{name}@{host}:{self.port}{params}"


@dataclass(frozen=True, slots=True)
class FunctionKey:
    """One ``<fkey>``: its index on the phone, label and value (type and argument)."""

    idx: int
    label: str
    value: str


def blf_value(exten: str, address: BridgeAddress, pickup_code: str = "") -> str:
    """A BLF key's value; ``pickup_code`` adds Snom's ``|code`` fallback (dialled with the
    extension when a ringing dialog carries no call-id)."""
    value = f"blf {address.uri(exten)}"
    return f"{value}|{pickup_code}" if pickup_code else value


def plan_keys(
    phone: str,
    extensions: Iterable[str],
    address: BridgeAddress,
    *,
    labels: Mapping[str, str],
    buttons: Sequence[tuple[int, str]],
    first_key: int,
    pickup_code: Callable[[str], str],
) -> list[FunctionKey]:
    """The phone's keys: one BLF key per extension but its own, in order, from ``first_key``,
    skipping the indexes of ``buttons`` (``(key, label)`` of its LED rules, which keep theirs).
    ``pickup_code(exten)`` is the fallback for that key, "" for none."""
    taken = {key for key, _ in buttons}
    keys = [FunctionKey(key, label, f"button {key}") for key, label in buttons]
    idx = first_key
    for exten in sorted(set(extensions) - {phone}, key=natural):
        while idx in taken:
            idx += 1
        value = blf_value(exten, address, pickup_code(exten))
        keys.append(FunctionKey(idx, labels.get(exten, exten), value))
        taken.add(idx)
    return sorted(keys, key=lambda k: k.idx)


def render(keys: Sequence[FunctionKey], *, context: str = "active") -> bytes:
    """The settings document: registrar filter off and dialog-info pickup on (BLF keys), the
    broken-registrar switch on for LED keys (MESSAGEs from the bridge), then the keys."""
    root = etree.Element("settings")
    phone = etree.SubElement(root, "phone-settings")
    _setting(phone, "filter_registrar", "off")
    _setting(phone, "callpickup_dialoginfo", "on")
    if any(k.value.startswith("button ") for k in keys):
        identity = context if context.isdigit() else "1"
        _setting(phone, "user_sipusername_as_line", "on", idx=identity)
    fkeys = etree.SubElement(root, "functionKeys")
    for key in keys:
        element = etree.SubElement(
            fkeys, "fkey", idx=str(key.idx), context=context, label=_xml(key.label), perm=PERM
        )
        element.text = _xml(key.value)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True))


def _setting(parent: etree._Element, name: str, value: str, idx: str = "") -> None:
    element = etree.SubElement(parent, name)
    if idx:
        element.set("idx", idx)
    element.set("perm", PERM)
    element.text = value


def _xml(text: str) -> str:
    return _NOT_XML.sub("", text)


def natural(exten: str) -> tuple[int, int, str]:
    """201 before 1000 before 'night': numbers by value, names after them."""
    return (0, int(exten), "") if exten.isdigit() else (1, 0, exten)
