"""Configuration to component settings: what each part of the bridge is built from, and which
settings differ between two configurations (the reload diff)."""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
from collections.abc import Iterable
from typing import Any

from yarl import URL

from bridge.config import SETTINGS, Config, ListenAddress, tls_server_context
from bridge.config_schema import Declared
from bridge.dialoginfo import RenderSettings
from bridge.pickup import PickupPolicy
from bridge.sip.access import AccessLimits, BridgeNames, StreamLimits
from bridge.sip.digest import DigestAuthenticator
from bridge.sip.notifier import NotifierSettings
from bridge.tracker import TrackerSettings

_BY_NAME: dict[str, Declared] = {item.name: item for item in SETTINGS}
# Settings a running bridge cannot take over: they need new sockets or another store file. Each
# is flagged restart=True where it is declared (bridge/config.py); the [[led]] rules too.
RESTART_ONLY = (*(item.name for item in SETTINGS if item.setting.restart), "led")


# The [[asterisk]] entries' names and domains, as changed_settings names a change of them (a
# change of one PBX's source or ami/ari settings is "asterisk[i]": its source restarts).
PBX_SET = "asterisk.pbxs"


def needs_restart(name: str) -> bool:
    """Whether a setting named by ``changed_settings`` only changes on a restart."""
    if name == "led" or name.startswith("led[") or name == PBX_SET:
        return True
    item = _BY_NAME.get(name)
    return item is not None and item.setting.restart


def contacts(config: Config) -> dict[str, tuple[str, int]]:
    """Fallback Contact/Via addresses per transport (port 0: the port once bound)."""
    first = {"udp": config.sip.udp, "tcp": config.sip.tcp}
    if config.sip.tls:
        first["tls"] = config.sip.tls
    some: ListenAddress = (config.sip.udp or config.sip.tcp or config.sip.tls)[0]
    out = {}
    for transport, addresses in first.items():
        address = addresses[0] if addresses else some
        out[transport] = (config.sip.contact_host or address.host, address.port)
    return out


def tracker_settings(config: Config) -> TrackerSettings:
    return TrackerSettings(
        outgoing_blinks=config.watch.outgoing_blinks,
        watch=config.watch.extensions,
        context=config.watch.context,
    )


def notifier_settings(config: Config) -> NotifierSettings:
    sip = config.sip
    return NotifierSettings(
        min_expires=sip.min_expires,
        default_expires=sip.default_expires,
        max_expires=sip.max_expires,
        contacts=contacts(config),
        user_agent=sip.user_agent,
        contact_from_local=not sip.contact_host,
    )


def bridge_names(config: Config) -> BridgeNames:
    """What names this bridge in a digest answer's uri: its domains, listening hosts and ports."""
    sip = config.sip
    listening = (*sip.udp, *sip.tcp, *sip.tls)
    wildcard = ("", "0.0.0.0", "::")
    hosts = {a.host.lower() for a in listening if a.host not in wildcard}
    if sip.contact_host:
        hosts.add(sip.contact_host.lower().strip("[]"))
    domains = {domain(config).lower(), *(p.domain for p in config.pbxs)} - {""}
    # "pbx.example:5060" is also named as "pbx.example" (the port is the phone's choice).
    domains |= {d.rpartition(":")[0] for d in domains if d.rpartition(":")[2].isdigit()} - {""}
    return BridgeNames(frozenset(domains), frozenset(hosts),
                       frozenset(a.port for a in listening if a.port))  # fmt: skip


def domain(config: Config) -> str:
    if config.sip.domain:
        return config.sip.domain
    if config.source == "ari":
        return URL(config.ari.url).host or "127.0.0.1"
    return config.ami.host


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS listeners' context, the files read now (start, and every reload), or None
    without ``sip.tls``; ConfigError naming the settings when they do not load."""
    if not config.sip.tls:
        return None
    return tls_server_context(config.sip.tls_certificate, config.sip.tls_key)


def stream_limits(config: Config) -> StreamLimits:
    sip = config.sip
    return StreamLimits(
        max_connections=sip.max_connections,
        max_connections_per_source=sip.max_connections_per_source,
        idle_timeout=sip.idle_timeout,
        header_timeout=sip.header_timeout,
    )


def render_settings(config: Config) -> RenderSettings:
    watch = config.watch
    return RenderSettings(
        domain(config),
        show_caller=config.security.show_caller,
        ringing_first=watch.ringing_first,
        single_dialog=watch.single_dialog,
        idle_dialog=watch.idle_dialog,
    )


def pickup_policy(config: Config, old: PickupPolicy | None = None) -> PickupPolicy:
    policy = PickupPolicy(config.security.pickup, config.security.pickup_rules)
    if old is not None:  # the groups learned from Asterisk stay valid across a reload
        policy.adopt_groups(old)
    return policy


def access_limits(config: Config) -> AccessLimits:
    sec = config.security
    return AccessLimits(
        allow=tuple(ipaddress.ip_network(n, strict=False) for n in sec.allow),
        requests_per_second=sec.requests_per_second,
        burst=sec.burst,
        subscriptions_per_source=sec.max_subscriptions_per_source,
        subscriptions_total=sec.max_subscriptions,
    )


def authenticator(config: Config) -> DigestAuthenticator | None:
    sec = config.security
    if sec.auth != "digest":
        return None
    return DigestAuthenticator(
        sec.realm or domain(config),
        dict(sec.users),
        nonce_lifetime=sec.nonce_lifetime,
        algorithms=sec.digest_algorithms,
    )


def changed_settings(old: Config, new: Config) -> set[str]:
    """Dotted names of the settings that differ between two configurations: every declared
    setting, ``led[i]`` for each [[led]] rule added, removed or changed, ``hints.<exten>`` for
    each [hints] key. Only names: a secret's value is never part of the answer."""
    out = {item.name for item in SETTINGS if item.value(old) != item.value(new)}
    if old.security.users != new.security.users:  # kept out of == so it never gets printed
        out.add("security.users_file")
    for i in range(max(len(old.leds), len(new.leds))):
        if old.leds[i : i + 1] != new.leds[i : i + 1]:
            out.add(f"led[{i}]")
    if [(p.name, p.domain) for p in old.pbxs] != [(p.name, p.domain) for p in new.pbxs]:
        out.add(PBX_SET)  # which PBXs, at which domains: the core is built for them
    else:
        out.update(f"asterisk[{i}]" for i, p in enumerate(new.pbxs) if p != old.pbxs[i])
    if old.lists != new.lists:
        out.add("lists")  # taken over on reload: subscribers of a changed list subscribe again
    old_hints, new_hints = dict(old.hints), dict(new.hints)
    for exten in old_hints.keys() | new_hints.keys():
        if old_hints.get(exten) != new_hints.get(exten):
            out.add(f"hints.{exten}")
    return out


def reloadable(old: Config, new: Config) -> Config:
    """``new`` as a reload takes it over from ``old``: the settings that need a restart keep
    their old values."""
    kept = [name for name in changed_settings(old, new) if needs_restart(name)]
    return keep_old_values(new, old, kept) if kept else new


def keep_old_values(new: Config, old: Config, names: Iterable[str]) -> Config:
    """``new`` with the settings ``names`` (as changed_settings names them) as in ``old``: what
    a reload does with the settings only a restart takes over."""
    for name in names:
        if name == "led" or name.startswith("led["):
            new = dataclasses.replace(new, leds=old.leds)
        elif name.startswith("hints."):
            new = dataclasses.replace(new, hints=old.hints)
        elif name == PBX_SET:
            new = dataclasses.replace(new, pbxs=old.pbxs, source=old.source, ami=old.ami,
                                      ari=old.ari)  # fmt: skip
        else:
            item = _BY_NAME[name]
            new = _with_value(new, item.attrs, item.value(old))
            if name == "security.users_file":  # and what was read from it
                new = _with_value(new, ("security", "users"), old.security.users)
    return new


def _with_value(holder: Any, attrs: tuple[str, ...], value: object) -> Any:
    first, rest = attrs[0], attrs[1:]
    inner = _with_value(getattr(holder, first), rest, value) if rest else value
    return dataclasses.replace(holder, **{first: inner})
