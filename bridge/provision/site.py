"""A site's Snom documents from the bridge's configuration (and, when running, what it knows).

Which phones: every user the configuration names — ``security.users_file``, the phones of
``[[led]]`` rules, the watchers of ``security.pickup_rules`` and the watched extensions (a
watched extension is usually a phone too). A running bridge also knows the extensions Asterisk
gave it, which the web side passes in.

The pickup fallback (``|code``) is only written for an extension the pickup policy lets that
phone take, decided exactly as for the pickup ids: otherwise pressing the key while the
extension rings would dial the code and take the call on a path that bypasses the policy.
Without ``snom.pickup_code`` no key gets one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from bridge.config import Config
from bridge.pickup import PickupPolicy
from bridge.provision import poly, yealink
from bridge.provision.snom import BridgeAddress, natural, plan_keys, render

WILDCARDS = ("0.0.0.0", "::", "")
# Each vendor's document: its file name's extension and media type.
VENDORS = {"snom": ("xml", "application/xml"), "yealink": ("cfg", "text/plain"),
           "poly": ("xml", "application/xml")}  # fmt: skip


class ProvisionError(ValueError):
    """The document cannot be written; the message names the setting to fix."""


def known_phones(config: Config, extensions: Iterable[str] = ()) -> list[str]:
    """Every phone the bridge knows of (see the module docstring), sorted."""
    names = set(config.security.users) | {rule.phone for rule in config.leds}
    names |= set(config.security.pickup_rules) - {"*"}
    names |= set(config.watch.extensions or ()) | set(extensions)
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


# FreePBX's feature-code hint contexts (its modules' sources) and how its sites label the keys.
_FREEPBX_KEYS = {
    "park-hints": "Park {}",
    "ext-dnd-hints": "DND {}",
    "app-daynight-toggle": "Day/Night {}",
    "ext-findmefollow": "Follow-me {}",
    "ext-cf-hints": "CF {}",
}
_FEATURE_CODE = re.compile(r"\*(76|21|28|740)(\w+)")


def freepbx_label(key: str) -> str | None:
    """The label a FreePBX site gives a key named ``exten@context`` (``*76201@ext-dnd-hints``
    → "DND 201", ``71@park-hints`` → "Park 71"); None for any other key."""
    exten, _, context = key.partition("@")
    template = _FREEPBX_KEYS.get(context)
    if template is None:
        return None
    code = _FEATURE_CODE.fullmatch(exten)
    return template.format(code[2] if code and context != "park-hints" else exten)


def configured_extensions(config: Config) -> list[str]:
    """The extensions a phone's keys watch when Asterisk is not asked: ``watch.extensions``."""
    if not config.watch.extensions:
        raise ProvisionError(
            "watch.extensions is empty: without it the bridge learns the extensions from "
            "Asterisk's hints; list them there, or fetch /snom/<phone>.xml from the running bridge"
        )
    return sorted(config.watch.extensions)


def bridge_address(config: Config, towards: str | None = None) -> BridgeAddress:
    """Where phones reach the bridge: ``snom.address`` / ``snom.transport``, else the first
    listener of the first transport (``sip.contact_host`` for its host); a wildcard host is
    replaced by ``towards`` (the address the bridge uses towards the asking phone)."""
    sip, snom = config.sip, config.snom
    listeners = {"udp": sip.udp, "tcp": sip.tcp, "tls": sip.tls}
    transport = snom.transport or next(t for t in ("udp", "tcp", "tls") if listeners[t])
    if not listeners[transport]:
        raise ProvisionError(
            f"snom.transport: the bridge has no {transport} listener (sip.{transport} is empty)"
        )
    listen = listeners[transport][0]
    host, port = sip.contact_host or listen.host, listen.port
    if snom.address:
        name, colon, port_text = snom.address.rpartition(":")
        if colon and port_text.isdigit() and ":" not in name.strip("[]"):
            host, port = name.strip("[]"), int(port_text)
        else:
            host = snom.address.strip("[]")
    if host in WILDCARDS:
        if towards is None:
            raise ProvisionError(
                f"snom.address: the bridge listens on {listen} (every address); set snom.address "
                "to the address phones reach it at"
            )
        host = towards
    return BridgeAddress(host, port, transport)


def snom_document(
    config: Config,
    phone: str,
    extensions: Sequence[str],
    policy: PickupPolicy,
    address: BridgeAddress,
    *,
    default_labels: Mapping[str, str] | None = None,
) -> bytes:
    """The settings XML for ``phone``: a BLF key per extension, its ``[[led]]`` keys.
    ``default_labels``: labels for keys ``snom.labels`` does not name (FreePBX's, below)."""
    snom = config.snom

    def fallback(exten: str) -> str:
        # The ringing endpoint of an extension is taken to be its namesake (PJSIP/202 for 202).
        allowed = bool(snom.pickup_code) and policy.allows(policy.class_of(phone), exten, exten)
        return snom.pickup_code if allowed else ""

    buttons = [(rule.key, rule.label or rule.device or rule.hint)
               for rule in config.leds if rule.phone == phone]  # fmt: skip
    labels = {**(default_labels or {}), **snom.labels}
    keys = plan_keys(phone, extensions, address, labels=labels, buttons=buttons,
                     first_key=snom.first_key, pickup_code=fallback)  # fmt: skip
    return render(keys, context=snom.context)


def yealink_document(
    config: Config, phone: str, extensions: Sequence[str], address: BridgeAddress,
    default_labels: Mapping[str, str] | None = None,
) -> bytes:
    """The ``.cfg`` lines for ``phone``: a BLF key per extension on ``yealink.account`` (or
    its ``yealink.blf_list``), pickup from the NOTIFY's ids on."""
    options, labels = config.yealink, {**(default_labels or {}), **config.snom.labels}
    watched = sorted(set(extensions) - {phone}, key=natural)
    keys = [yealink.LineKey(options.first_key + i, exten, labels.get(exten, exten))
            for i, exten in enumerate(watched)]  # fmt: skip
    list_uri = address.list_uri(options.blf_list) if options.blf_list else ""
    return yealink.render(options.account, keys, list_uri=list_uri, phone=phone)


def poly_document(
    config: Config, phone: str, extensions: Sequence[str], address: BridgeAddress,
    default_labels: Mapping[str, str] | None = None,
) -> bytes:
    """The configuration XML for ``phone``: a resource at the bridge per extension (or its
    ``poly.blf_list``), native directed call pickup on."""
    options, labels = config.poly, {**(default_labels or {}), **config.snom.labels}
    watched = sorted(set(extensions) - {phone}, key=natural)
    resources = [poly.Resource(i, address.uri(exten), labels.get(exten, exten))
                 for i, exten in enumerate(watched, start=1)]  # fmt: skip
    list_uri = address.list_uri(options.blf_list) if options.blf_list else ""
    return poly.render(options.reg, resources, list_uri=list_uri)


def phone_document(
    config: Config,
    phone: str,
    extensions: Sequence[str],
    policy: PickupPolicy,
    address: BridgeAddress,
    *,
    vendor: str = "snom",
    default_labels: Mapping[str, str] | None = None,
) -> bytes:
    """The document of ``vendor`` (a key of ``VENDORS``) for ``phone``; ``default_labels``:
    labels for keys ``snom.labels`` does not name (FreePBX's feature codes and park slots)."""
    if vendor == "yealink":
        return yealink_document(config, phone, extensions, address, default_labels)
    if vendor == "poly":
        return poly_document(config, phone, extensions, address, default_labels)
    return snom_document(config, phone, extensions, policy, address, default_labels=default_labels)
