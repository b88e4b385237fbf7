"""Which Asterisk source a configuration asks for, built ready to run.

Kept out of ``bridge/app.py`` so the glue only starts and stops "the source", whichever it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import NamedTuple

from bridge.asterisk.ami import AmiSource
from bridge.asterisk.ari import AriSource
from bridge.config import Config
from bridge.events import AsteriskEvent

log = logging.getLogger("bridge")

Source = AmiSource | AriSource


class Login(NamedTuple):
    """Where and how to log in to a PBX run beside the bridge (the demo) over AMI."""

    host: str
    port: int
    username: str
    secret: str


def build_source(
    config: Config, on_event: Callable[[AsteriskEvent], None], local: Login | None = None
) -> Source:
    """The source ``config`` names (``asterisk.source``), or AMI to ``local`` when given."""
    ami = config.ami
    backoff = {"backoff_min": ami.reconnect_min, "backoff_max": ami.reconnect_max}
    if config.source == "ari" and local is None:
        ari = config.ari
        return AriSource(ari.url, ari.username, ari.password, on_event, app=ari.app,
                         hints=config.hints, contacts=[rule.phone for rule in config.leds],
                         standby=ari.standby, ping_interval=ari.keepalive,
                         lists=[lst.name for lst in config.lists if not lst.items],
                         **backoff)  # fmt: skip
    if config.hints:
        log.warning("[hints] is read only with asterisk.source = \"ari\"; over AMI the keys "
                    "are Asterisk's own hints (extensions.conf)")  # fmt: skip
    login = local or Login(ami.host, ami.port, ami.username, ami.secret)
    # A local PBX has no standby: the configured ones belong to the configured Asterisk.
    standby = [] if local else [(a.host, a.port) for a in ami.standby]
    return AmiSource(login.host, login.port, login.username, login.secret, on_event,
                     events=ami.events, getvar_timeout=ami.getvar_timeout,
                     contacts=bool(config.leds), standby=standby,
                     ping_interval=ami.keepalive, **backoff)  # fmt: skip


def describe(source: Source, config: Config, *, local: bool) -> str:
    """What the bridge follows, for the start-up log line."""
    where = f"{source.host}:{source.port}"
    if local:
        return f"the demo PBX (recorded Asterisk 22 calls, AMI on {where})"
    if config.pbxs:
        return f"{len(config.pbxs)} PBXs: " + ", ".join(
            f"{p.name} ({p.domain}) {p.source.upper()}" for p in config.pbxs)
    if isinstance(source, AriSource):
        return f"Asterisk ARI {config.ari.username}@{where}"
    return f"Asterisk AMI {config.ami.username}@{where}"


def build_sources(
    config: Config, on_event: Callable[[str, AsteriskEvent], None], local: Login | None = None
) -> dict[str, Source]:
    """One source per PBX, by name: each ``[[asterisk]]`` entry with its own ami/ari settings,
    or the one PBX (named "") of ``[asterisk]``/``[ami]``/``[ari]`` (or ``local``). Each
    source's events reach ``on_event`` with the name of their PBX."""
    if not config.pbxs or local is not None:
        return {"": build_source(config, partial(on_event, ""), local)}
    sources: dict[str, Source] = {}
    for pbx in config.pbxs:
        own = replace(config, source=pbx.source, ami=pbx.ami, ari=pbx.ari)
        sources[pbx.name] = build_source(own, partial(on_event, pbx.name))
    return sources
