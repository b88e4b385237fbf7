"""RFC 4662 list bodies: a multipart/related of one RLMI document and one part per resource.

The resources' parts are the dialog-info bodies the bridge already renders once per change
(``bridge.dialoginfo``): they are copied in as they are, only the RLMI document is written per
NOTIFY (its version counts per subscription, and it names only the resources the NOTIFY carries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

__all__ = [
    "MULTIPART",
    "RLMI_NAMESPACE",
    "RLMI_TYPE",
    "ResourcePart",
    "content_type",
    "list_body",
    "rlmi_document",
]

RLMI_NAMESPACE = "urn:ietf:params:xml:ns:rlmi"
RLMI_TYPE = "application/rlmi+xml"
MULTIPART = "multipart/related"
_NS = f"{{{RLMI_NAMESPACE}}}"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


@dataclass(frozen=True, slots=True)
class ResourcePart:
    """One resource of a list NOTIFY: its RLMI entry and (when active) its body part."""

    uri: str  # the resource's URI (the dialog-info entity)
    name: str  # shown by phones that read <name>
    instance: str  # RLMI instance id, fixed for the life of the subscription
    cid: str  # Content-ID of its part (without <>), unique per part
    body: bytes  # the dialog-info document; empty: no part (state terminated)
    content_type: str = "application/dialog-info+xml"
    reason: str = ""  # why a terminated instance ended (RFC 4662 §5.2), e.g. "noresource"


def content_type(boundary: str, start_cid: str) -> str:
    """The NOTIFY's Content-Type for a list body (RFC 4662 §5.1, RFC 2387)."""
    return f'{MULTIPART};type="{RLMI_TYPE}";start="<{start_cid}>";boundary="{boundary}"'


def rlmi_document(
    list_uri: str, version: int, full_state: bool, parts: Sequence[ResourcePart], name: str = ""
) -> bytes:
    """The RLMI document: the list's URI and version, and one <resource> per part carried."""
    root = etree.Element(_NS + "list", nsmap={None: RLMI_NAMESPACE})  # type: ignore[dict-item]
    root.set("uri", list_uri)
    root.set("version", str(version))
    root.set("fullState", "true" if full_state else "false")
    if name:
        etree.SubElement(root, _NS + "name").text = name
    for part in parts:
        resource = etree.SubElement(root, _NS + "resource")
        resource.set("uri", part.uri)
        if part.name:
            etree.SubElement(resource, _NS + "name").text = part.name
        instance = etree.SubElement(resource, _NS + "instance")
        instance.set("id", part.instance)
        if part.body:
            instance.set("state", "active")
            instance.set("cid", part.cid)
        else:
            instance.set("state", "terminated")
            if part.reason:
                instance.set("reason", part.reason)
    return _DECLARATION + etree.tostring(root, encoding="UTF-8") + b"\n"


def list_body(boundary: str, start_cid: str, rlmi: bytes, parts: Sequence[ResourcePart]) -> bytes:
    """The multipart/related body: the RLMI document first (the ``start``), then the parts."""
    sep = f"--{boundary}\r\n".encode()
    chunks = [sep, _part_head(start_cid, RLMI_TYPE), rlmi]
    for part in parts:
        if part.body:
            chunks += [b"\r\n", sep, _part_head(part.cid, part.content_type), part.body]
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(chunks)


def _part_head(cid: str, ctype: str) -> bytes:
    return f"Content-ID: <{cid}>\r\nContent-Type: {ctype}\r\n\r\n".encode()
