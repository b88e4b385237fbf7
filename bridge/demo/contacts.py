"""Where the replayed Asterisk's phones are: every AOR's contacts, as Asterisk 22 lists them.

Shared by the replayed AMI and ARI servers. An AOR's contacts are its static ``contact=`` lines
(the recorded PBX's pjsip.conf) and its registrations. The registrations start as a recording's
``PJSIPShowContacts`` answer listed them and follow the ``ContactStatus`` (AMI) /
``ContactStatusChange`` (ARI) events replayed or emitted since. The answers are built in the
shapes the ``contacts`` recording shows: ``ContactList`` (registrations only, AOR inside
``ObjectName``), ``AorList`` (``Contacts: <aor>/<uri>,…``, registrations first) and an AOR's
ConfigTuples (one ``contact`` per contact).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bridge.sip.headers import ParseError, parse_uri

Headers = dict[str, str]
# The contact states after which Asterisk lists the contact no more.
_GONE = frozenset({"removed"})


def static_contacts(aors: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """Each AOR's static contacts, from pjsip.conf ``aor`` objects (comma separated lines)."""
    return {
        name: [c.strip() for c in opts.get("contact", "").split(",") if c.strip()]
        for name, opts in aors.items()
    }


class Registrations:
    """The registered contacts of every AOR: ``ContactList`` items by AOR and URI."""

    def __init__(self, listed: Iterable[Mapping[str, str]] = ()) -> None:
        self.by_aor: dict[str, dict[str, Headers]] = {}
        for frame in listed:
            if frame.get("Event") == "ContactList" and frame.get("Uri"):
                aor = frame.get("ObjectName", "").partition(";@")[0]
                item = {k: v for k, v in frame.items() if k != "ActionID"}
                self.by_aor.setdefault(aor, {})[frame["Uri"]] = item

    def register(
        self, aor: str, uri: str, endpoint: str = "", status: str = "NonQualified"
    ) -> None:
        """A contact appeared or changed state; ``Removed`` takes it away."""
        if status.lower() in _GONE:
            self.by_aor.get(aor, {}).pop(uri, None)
            return
        known = self.by_aor.setdefault(aor, {}).get(uri)
        if known is not None:
            known["Status"] = status
            return
        try:
            parsed = parse_uri(uri)
            via = (parsed.host or "", str(parsed.port or 5060))
        except ParseError:
            via = ("", "0")
        digest = hashlib.md5(uri.encode(), usedforsecurity=False).hexdigest()
        self.by_aor[aor][uri] = {
            "Event": "ContactList", "ObjectType": "contact", "ObjectName": f"{aor};@{digest}",
            "ViaAddr": via[0], "Endpoint": endpoint or aor, "ViaPort": via[1], "Uri": uri,
            "UserAgent": "snom D785", "Status": status, "RoundtripUsec": "N/A",
        }  # fmt: skip

    def apply_ami(self, event: Mapping[str, str]) -> None:
        """Follow an AMI event (only ``ContactStatus`` matters)."""
        if event.get("Event") == "ContactStatus" and event.get("AOR") and event.get("URI"):
            self.register(event["AOR"], event["URI"], event.get("EndpointName", ""),
                          event.get("ContactStatus", ""))  # fmt: skip

    def apply_ari(self, event: Mapping[str, object]) -> None:
        """Follow an ARI event (only ``ContactStatusChange`` matters)."""
        info, endpoint = event.get("contact_info"), event.get("endpoint")
        if event.get("type") != "ContactStatusChange" or not isinstance(info, Mapping):
            return
        aor, uri, status = info.get("aor"), info.get("uri"), info.get("contact_status")
        resource = endpoint.get("resource") if isinstance(endpoint, Mapping) else ""
        if isinstance(aor, str) and isinstance(uri, str) and isinstance(status, str):
            self.register(aor, uri, resource if isinstance(resource, str) else "", status)

    def uris(self, aor: str, static: Mapping[str, Sequence[str]]) -> list[str]:
        """Every contact of an AOR, registered first (as Asterisk lists them)."""
        registered = list(self.by_aor.get(aor, {}))
        return registered + [c for c in static.get(aor, ()) if c not in registered]

    def contact_list(self) -> list[Headers]:
        """The answer to ``PJSIPShowContacts`` (an error when there is none, as Asterisk)."""
        items = [dict(c) for contacts in self.by_aor.values() for c in contacts.values()]
        if not items:
            return [{"Response": "Error", "Message": "No Contacts found"}]
        return [
            {"Response": "Success", "EventList": "start",
             "Message": "A listing of Contacts follows, presented as ContactList events"},
            *items,
            {"Event": "ContactListComplete", "EventList": "Complete",
             "ListItems": str(len(items))},
        ]  # fmt: skip

    def aor_list(self, static: Mapping[str, Sequence[str]]) -> list[Headers]:
        """The answer to ``PJSIPShowAors``: every AOR with all its contacts."""
        names = list(dict.fromkeys([*static, *self.by_aor]))
        if not names:
            return [{"Response": "Error", "Message": "No AORs found"}]
        items = [{"Event": "AorList", "ObjectType": "aor", "ObjectName": name, "MaxContacts": "2",
                  "Contacts": ",".join(f"{name}/{uri}" for uri in self.uris(name, static))}
                 for name in names]  # fmt: skip
        return [
            {"Response": "Success", "EventList": "start",
             "Message": "A listing of AORs follows, presented as AorList events"},
            *items,
            {"Event": "AorListComplete", "EventList": "Complete", "ListItems": str(len(items))},
        ]  # fmt: skip

    def aor_tuples(
        self, aor: str, options: Mapping[str, str], static: Mapping[str, Sequence[str]]
    ) -> list[dict[str, str]]:
        """An AOR's configuration over ARI: its options, one ``contact`` tuple per contact."""
        tuples = [{"attribute": k, "value": v} for k, v in options.items()
                  if k not in ("type", "contact")]  # fmt: skip
        tuples += [{"attribute": "contact", "value": uri} for uri in self.uris(aor, static)]
        return tuples


def pjsip_conf(directory: Path) -> Path | None:
    """The recorded PBX's pjsip.conf, in ``asterisk-etc`` beside or above the recordings."""
    for etc in (directory / "asterisk-etc", directory.parent / "asterisk-etc"):
        if (etc / "pjsip.conf").exists():
            return etc / "pjsip.conf"
    return None
