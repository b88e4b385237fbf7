"""Poly (Polycom VVX, SoundPoint) configuration XML for BLF keys at the bridge with pickup by
Replaces: pure, plain values in, document bytes out.

A Poly configuration file is ``<polycomConfig>`` whose elements carry parameters as attributes
(``attendant.resourceList.1.address="…"``). lxml writes it, so every label and address is
escaped; characters XML 1.0 cannot carry at all are dropped (docs/POLY.md lists each setting and
where Poly documents it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_NOT_IN_A_LABEL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Resource:
    """One monitored resource: ``attendant.resourceList.N`` with its SIP URI and label."""

    index: int
    address: str
    label: str


def render(reg: int, resources: Sequence[Resource], *, list_uri: str = "") -> bytes:
    """The configuration for one phone: native directed call pickup (INVITE with Replaces from
    the NOTIFY), the attendant's registration, then either one list (``attendant.uri``) or the
    resources one by one."""
    root = etree.Element("polycomConfig")
    etree.SubElement(root, "call").set("call.directedCallPickupMethod", "native")
    etree.SubElement(root, "feature").set("feature.directedCallPickup.enabled", "1")
    attendant = etree.SubElement(root, "attendant")
    attendant.set("attendant.reg", str(reg))
    if list_uri:
        attendant.set("attendant.uri", _clean(list_uri))
    else:
        for resource in resources:
            name = f"attendant.resourceList.{resource.index}"
            attendant.set(f"{name}.address", _clean(resource.address))
            attendant.set(f"{name}.label", _NOT_IN_A_LABEL.sub("", _clean(resource.label)))
            attendant.set(f"{name}.type", "normal")  # a user: pressed while it rings, picked up
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True,
                                standalone=True))  # fmt: skip


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text).strip()
