"""RFC 4235 dialog-info+xml bodies for one watched extension, rendered once per change.

The XML is built once with lxml and cut around the value of ``version``, the only part that
differs between watchers (it counts per subscription), so a body for one more watcher is two byte
concatenations.

Decisions:

- Every URI uses the PBX's SIP domain (the one the phones register to), never the bridge's.
- ``<remote><target>`` is where a Snom sends its pickup INVITE: it is the watched extension
  itself, always dialable on Asterisk (docs/PICKUP.md, routing). The other party only appears in
  ``<remote><identity>``, for the display.
- An unknown state (Asterisk unreachable) is rendered like a known one, i.e. with the last known
  dialogs: dialog-info has no "unknown", and an empty document would be a fake "idle".
- Hold: the holding side's ``<target>`` carries ``+sip.rendering=no`` (it renders no media).
- Shape (``watch.ringing_first``, ``watch.single_dialog``, ``watch.idle_dialog``; docs/SNOM.md,
  docs/YEALINK.md, docs/POLY.md): a ringing dialog comes first, because Snom takes the pickup
  ids from the first dialog with a call-id and a Poly reads a ringing dialog after an
  "in use" one as nothing new; a phone that mishandles several dialogs gets only the first;
  an idle key gets one terminated dialog, the idle body Yealink documents and Asterisk sends,
  rather than none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from lxml import etree

from bridge.model import Dialog, DialogState, Direction, EntityState

NAMESPACE = "urn:ietf:params:xml:ns:dialog-info"
CONTENT_TYPE = "application/dialog-info+xml"

_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_NS = f"{{{NAMESPACE}}}"
# Characters XML 1.0 cannot carry at all (lxml refuses them): C0 controls but tab/LF/CR,
# lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_WHITESPACE = re.compile(r"\s+")
# RFC 3261 user part: unreserved, user-unreserved and the marks may stay, the rest is escaped.
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_ANONYMOUS = "sip:anonymous@anonymous.invalid"  # RFC 3323
_RINGING = frozenset((DialogState.TRYING, DialogState.PROCEEDING, DialogState.EARLY))
_BAD_HOST = re.compile(r"[\s\"<>@/;?&\\]|[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """How bodies are written.

    ``domain``: the PBX's SIP domain (host[:port]) the phones register to, used in every URI.
    ``pickup_ids``: write call-id/local-tag/remote-tag of ringing calls; a watcher that may not
    pick up (docs/PICKUP.md, gatekeeper) gets a body rendered without them.
    ``show_caller``: write who the other party is; False hides every number and name.
    ``ringing_first``: ringing dialogs (incoming first) before the others.
    ``single_dialog``: only the first dialog (after ``ringing_first``'s ordering).
    ``idle_dialog``: a document without dialogs gets one terminated dialog instead.
    """

    domain: str
    pickup_ids: bool = True
    show_caller: bool = True
    ringing_first: bool = True
    single_dialog: bool = False
    idle_dialog: bool = True

    def __post_init__(self) -> None:
        if not self.domain or _BAD_HOST.search(self.domain):
            raise ValueError(f"domain must be a SIP host[:port], got {self.domain!r}")


@dataclass(frozen=True, slots=True)
class DialogInfoDocument:
    """One rendered dialog-info body; only ``version`` is filled in per subscription."""

    state: EntityState
    prefix: bytes
    suffix: bytes

    def body(self, version: int) -> bytes:
        """The complete body with this subscription's document version."""
        if version < 0:
            raise ValueError(f"dialog-info version must not be negative: {version}")
        return b"".join((self.prefix, str(version).encode("ascii"), self.suffix))


def render(
    state: EntityState, settings: RenderSettings, pickup_for: frozenset[str] | None = None
) -> DialogInfoDocument:
    """Render an entity's state once; per-watcher bodies come from ``DialogInfoDocument.body``.

    ``pickup_for``: ids of the dialogs whose pickup ids may be written (None: all of them).
    """
    # A key of another context (202@tenant-b) is still extension 202 to its phones.
    entity = sip_uri(state.exten.partition("@")[0], settings.domain)
    # lxml-stubs type nsmap keys as str, but None is lxml's key for the default namespace.
    root = etree.Element(_NS + "dialog-info", nsmap={None: NAMESPACE})  # type: ignore[dict-item]
    root.set("version", "0")  # placeholder, cut out below; set first so it is found first
    root.set("state", "full")
    root.set("entity", entity)
    for dialog in shaped(state.dialogs, settings, pickup_for):
        ids = settings.pickup_ids and (pickup_for is None or dialog.id in pickup_for)
        _append_dialog(root, dialog, entity, settings, ids)
    if len(root) == 0 and settings.idle_dialog:
        # Idle: one terminated dialog named after the key (as Asterisk writes it), no ids.
        idle = etree.SubElement(root, _NS + "dialog")
        idle.set("id", _clean(state.exten.partition("@")[0]) or "-")
        etree.SubElement(idle, _NS + "state").text = DialogState.TERMINATED.value
    xml = etree.tostring(root, encoding="UTF-8", xml_declaration=False)
    marker = b' version="'
    start = xml.index(marker) + len(marker)
    end = xml.index(b'"', start)
    return DialogInfoDocument(state, _DECLARATION + xml[:start], xml[end:] + b"\n")


def shaped(
    dialogs: Sequence[Dialog], settings: RenderSettings, pickup_for: frozenset[str] | None = None
) -> list[Dialog]:
    """The dialogs a document holds, in the order it holds them (see ``RenderSettings``)."""
    ordered = list(dialogs)
    if settings.ringing_first:
        # Stable: calls keep their order within a rank. A ringing call this watcher may take
        # ranks before one it may not, so the first dialog with a call-id is one it can use.
        ordered.sort(key=lambda d: _rank(d, pickup_for))
    return ordered[:1] if settings.single_dialog else ordered


def _rank(dialog: Dialog, pickup_for: frozenset[str] | None) -> int:
    if dialog.state not in _RINGING:
        return 3
    if dialog.direction is not Direction.RECIPIENT:
        return 2
    takeable = dialog.pickup is not None and (pickup_for is None or dialog.id in pickup_for)
    return 0 if takeable else 1


def sip_uri(user: str, domain: str) -> str:
    """``sip:user@domain`` with the user part escaped as RFC 3261 requires."""
    return f"sip:{quote(_clean(user), safe=_USER_SAFE)}@{domain}"


def _append_dialog(
    root: etree._Element, dialog: Dialog, entity: str, settings: RenderSettings, ids: bool
) -> None:
    element = etree.SubElement(root, _NS + "dialog")
    element.set("id", _clean(dialog.id) or "-")
    if dialog.pickup is not None and ids:
        element.set("call-id", _clean(dialog.pickup.call_id))
        element.set("local-tag", _clean(dialog.pickup.local_tag))
        element.set("remote-tag", _clean(dialog.pickup.remote_tag))
    element.set("direction", dialog.direction.value)
    etree.SubElement(element, _NS + "state").text = dialog.state.value
    # Schema order: state, …, local, remote (Asterisk writes remote first, which is invalid).
    local = etree.SubElement(element, _NS + "local")
    etree.SubElement(local, _NS + "identity").text = entity
    _append_target(local, entity, dialog.local_held)
    remote = etree.SubElement(element, _NS + "remote")
    num = _clean(dialog.remote_num).strip()
    name = _WHITESPACE.sub(" ", _clean(dialog.remote_name)).strip()
    if dialog.remote_hidden:
        # Withheld by the caller: RFC 3323's anonymous identity, so the key says so.
        etree.SubElement(remote, _NS + "identity").text = _ANONYMOUS
    elif (num or name) and settings.show_caller:
        identity = etree.SubElement(remote, _NS + "identity")
        if name:
            identity.set("display", name)
        # A name without a number: the caller withheld it (RFC 3323 anonymous URI).
        identity.text = sip_uri(num, settings.domain) if num else _ANONYMOUS
    # The pickup INVITE goes to this target: the watched extension itself, on the PBX.
    _append_target(remote, entity, dialog.remote_held)


def _append_target(participant: etree._Element, uri: str, holding: bool) -> None:
    target = etree.SubElement(participant, _NS + "target")
    target.set("uri", uri)
    if holding:
        param = etree.SubElement(target, _NS + "param")
        param.set("pname", "+sip.rendering")
        param.set("pval", "no")


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)
