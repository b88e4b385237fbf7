"""The bridge's configuration: one TOML file, validated once at start.

Each setting is declared once, on the dataclass field that holds it (``setting(default, kind,
help)``, see ``bridge/config_schema.py``): the parser, the reload diff and the settings table
of docs/CONFIGURATION.md are all read from those declarations. Every error names the setting
by its dotted path (``sip.udp[1]``, ``ami.port``) so an installer can find it in the file.
``--set section.key=value`` overrides are applied before validation, so they are checked
exactly like the file.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bridge.config_schema import (
    Addresses,
    ConfigError,
    Declared,
    Flag,
    Host,
    ListenAddress,
    Number,
    OptionalAddress,
    Strings,
    Text,
    Whole,
    declared_in,
    setting,
    settings_table,
)
from bridge.config_tables import LED_KEYS, read_hints, read_leds, read_lists
from bridge.led.rules import LedRule
from bridge.pickup import MODES as PICKUP_MODES
from bridge.provision.options import PolyOptions, SnomOptions, YealinkOptions
from bridge.resource_lists import ResourceList
from bridge.sip.digest import ALGORITHMS, DEFAULT_ALGORITHMS

__all__ = [
    "DEFAULT_LISTEN", "LED_KEYS", "PICKUP_MODES", "AmiConfig", "AriConfig", "Config",
    "ConfigError", "ListenAddress", "PbxConfig", "SecurityConfig", "SipConfig", "StoreConfig",
    "WatchConfig", "load",
]  # fmt: skip

# runtime.event_loop (bridge/event_loop.py starts them; named here so reading a
# configuration never imports asyncio)
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
_T = TypeVar("_T")
DEFAULT_LISTEN = (ListenAddress("0.0.0.0", 5065),)
_NOT_IN_A_NAME = ' <>"@;:'  # characters no extension or AOR name may hold in a SIP URI


@dataclass(frozen=True, slots=True)
class Extensions:
    """``watch.extensions``: a list of extensions (numbers allowed); empty means all."""

    def read(self, value: Any, name: str) -> frozenset[str] | None:
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise ConfigError(f'{name}: must be a list of extensions, e.g. ["201"]')
        names = [str(v).strip() for v in value]
        for i, key in enumerate(names):
            # "202" is the default context's 202; "202@tenant-b" the one of another context.
            exten, at, context = key.partition("@")
            if not exten or (at and not context) or any(
                c in part for part in (exten, context) for c in _NOT_IN_A_NAME
            ):
                raise ConfigError(f"{name}[{i}]: {key!r} is not an extension (or exten@context)")
        return frozenset(names) if names else None


@dataclass(frozen=True, slots=True)
class PickupRules:
    """``security.pickup_rules``: watcher → the extensions whose calls it may take."""

    def read(self, value: Any, name: str) -> dict[str, frozenset[str]]:
        if not isinstance(value, dict):
            raise ConfigError(f'{name}: must be a table, e.g. {{ "203" = ["202"] }}')
        rules: dict[str, frozenset[str]] = {}
        for watcher, extens in value.items():
            if not isinstance(extens, list) or not all(isinstance(e, str | int) for e in extens):
                raise ConfigError(f"{name}.{watcher}: must be a list of extensions")
            rules[str(watcher)] = frozenset(str(e) for e in extens)
        return rules


@dataclass(frozen=True, slots=True)
class PanelGroups:
    """``web.groups``: a group's name → the keys the panel shows under it."""

    def read(self, value: Any, name: str) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            raise ConfigError(f'{name}: must be a table, e.g. {{ "Front desk" = ["201", "202"] }}')
        groups: dict[str, tuple[str, ...]] = {}
        for group, keys in value.items():
            if not group.strip() or any(ord(c) < 32 for c in group):
                raise ConfigError(f"{name}: {group!r} is not a group name (text, one line)")
            if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
                raise ConfigError(f'{name}.{group}: must be a list of keys, e.g. ["201"]')
            for i, key in enumerate(str(k).strip() for k in keys):
                if not key or any(c.isspace() or ord(c) < 32 for c in key):
                    raise ConfigError(f"{name}.{group}[{i}]: {key!r} is not a key name "
                                      "(201, 202@tenant-b or berlin:202)")  # fmt: skip
            groups[group.strip()] = tuple(str(k).strip() for k in keys)
        return groups


@dataclass(frozen=True, slots=True)
class DigestAlgorithms:
    """``security.digest_algorithms``: names the digest module knows, each once, in order."""

    def read(self, value: Any, name: str) -> tuple[str, ...]:
        names = Strings('algorithms, e.g. ["MD5"]', non_empty=True).read(value, name)
        upper = tuple(n.upper() for n in names)
        for algorithm in upper:
            if algorithm not in ALGORITHMS:
                raise ConfigError(f"{name}: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if len(set(upper)) != len(upper):
            raise ConfigError(f"{name}: lists an algorithm twice")
        return upper


def _network(text: str, name: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a network") from None
    return text


def _host_name(text: str, name: str) -> str:
    if not text.strip():
        raise ConfigError(f'{name}: must be a host name, e.g. "bridge.example.com"')
    return text.strip().lower()


@dataclass(frozen=True, slots=True)
class AmiConfig:
    """Where and how to reach Asterisk's manager interface."""

    host: str = setting("127.0.0.1", Host(), "Asterisk's manager interface: its address")
    port: int = setting(5038, Whole(1, 65535), "Asterisk's manager interface: its port")
    username: str = setting("", Text(), "the AMI user; empty: the demo PBX")
    secret: str = setting("", Text(), "the AMI user's secret", secret=True)
    secret_file: str = setting(
        "", Text(), "a file holding the secret (`$CREDENTIALS_DIRECTORY` first, then "
        "next to the config file)"
    )  # fmt: skip
    events: str = setting(
        "call,system", Text(), "event classes asked for at login (leaves out the VarSet flood)"
    )
    getvar_timeout: float = setting(
        1.0, Number(0.05, 30), "seconds to wait for a ringing leg's call-id and tags (Getvar)"
    )
    reconnect_min: float = setting(
        0.5, Number(0.05, 60), "first wait in seconds before a reconnect (doubles each try)"
    )
    reconnect_max: float = setting(30.0, Number(0.1, 3600), "longest wait before a reconnect")
    standby: tuple[ListenAddress, ...] = setting(
        (), Addresses(), 'more AMI endpoints of the same PBX (`["10.0.0.2:5038"]`, same user), '
        "followed in turn when the one followed is lost (failover)"
    )  # fmt: skip
    keepalive: float = setting(
        5.0, Number(0.5, 300), "seconds between AMI Pings; one not answered within as long "
        "drops the connection (a powered-off PBX sends no reset)"
    )  # fmt: skip

    @property
    def configured(self) -> bool:
        """True when an AMI user is set; without one the bridge runs its demo PBX."""
        return bool(self.username)


@dataclass(frozen=True, slots=True)
class AriConfig:
    """Where and how to reach Asterisk's REST interface (when asterisk.source = "ari")."""

    url: str = setting(
        "http://127.0.0.1:8088",
        Text(),
        'Asterisk\'s REST interface (with `asterisk.source = "ari"`)',
    )
    username: str = setting("", Text(), "the ari.conf user")
    password: str = setting("", Text(), "the ARI user's password", secret=True)
    password_file: str = setting("", Text(), "or a file holding it (found like `ami.secret_file`)")
    app: str = setting("snom-blf-bridge", Text(), "the Stasis application name registered")
    standby: tuple[str, ...] = setting(
        (), Strings('"http://host:8088" URLs'), 'more ARI endpoints of the same PBX '
        '(`["http://10.0.0.2:8088"]`, same user), followed in turn when the one followed is lost'
    )  # fmt: skip
    keepalive: float = setting(
        5.0, Number(0.5, 300), "seconds between websocket pings; one not answered within as "
        "long drops the connection"
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SipConfig:
    """The SIP side: where phones subscribe and what the bridge writes into URIs."""

    udp: tuple[ListenAddress, ...] = setting(
        DEFAULT_LISTEN,
        Addresses(),
        "where phones subscribe over UDP (`[]`: not at all)",
        restart=True,
    )
    tcp: tuple[ListenAddress, ...] = setting(
        DEFAULT_LISTEN,
        Addresses(),
        "where phones subscribe over TCP (`[]`: not at all)",
        restart=True,
    )
    tls: tuple[ListenAddress, ...] = setting(
        (), Addresses(), "where phones subscribe over TLS", restart=True
    )
    tls_certificate: str = setting(
        "", Text(), "its PEM certificate chain (needed with `sip.tls`; read again on reload)"
    )
    tls_key: str = setting("", Text(), "its PEM key (needed with `sip.tls`; read again on reload)")
    domain: str = setting(
        "", Text(forbidden=' <>"@;', what="a host name or address"),
        "the PBX domain written into every URI (where pickup INVITEs go)", shown="`ami.host`",
    )  # fmt: skip
    contact_host: str = setting(
        "", Text(), "host of our Contact headers; empty: the address a request came to",
        restart=True,
    )  # fmt: skip
    min_expires: int = setting(
        60, Whole(1, 86400), "shortest subscription (shorter requests get 423)"
    )
    default_expires: int = setting(
        600, Whole(1, 86400), "the lifetime of a SUBSCRIBE without Expires"
    )
    max_expires: int = setting(
        3600, Whole(1, 86400), "longest subscription; longer requests are cut to it"
    )
    max_message_size: int = setting(
        16384, Whole(1024, 65507), "largest SIP message accepted, in bytes", restart=True
    )
    user_agent: str = setting("snom-blf-bridge", Text(), "our User-Agent header")
    max_connections: int = setting(
        4096, Whole(0, 1_000_000), "open TCP/TLS connections in all (0 = no limit)"
    )
    max_connections_per_source: int = setting(
        32, Whole(0, 1_000_000), "open TCP/TLS connections per address (0 = no limit)"
    )
    idle_timeout: float = setting(
        3700.0, Number(0, 7 * 86400), "seconds of silence before a TCP/TLS connection is closed"
    )
    header_timeout: float = setting(
        10.0, Number(0, 600), "seconds for a whole message (and a TLS handshake)"
    )


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """Which extensions phones may watch, and how their calls are shown."""

    extensions: frozenset[str] | None = setting(
        None, Extensions(), "which extensions may be watched", shown="every extension with a hint"
    )
    outgoing_blinks: bool = setting(
        False, Flag(), "show an extension's own outgoing call as ringing (blinking)"
    )
    stale_ring_timeout: float = setting(
        60.0, Number(0, 86400), "seconds a ringing key keeps blinking while Asterisk is unreachable"
    )
    context: str = setting(
        "", Text(forbidden=_NOT_IN_A_NAME, what="a dialplan context name"),
        "names keys: this context's go by their bare extension (others `202@tenant-b`), and a "
        "watcher that is no known endpoint resolves here; a phone's SUBSCRIBE resolves as "
        "Asterisk's does (subscribe_context, else context, through the includes)",
        shown="the context holding the most phone hints",
    )
    ringing_first: bool = setting(
        True, Flag(),
        "a ringing call comes first in a key's document (Snom takes the pickup ids from the "
        "first dialog with a call-id; Poly overlooks a ringing dialog after one in use)",
    )  # fmt: skip
    single_dialog: bool = setting(
        False, Flag(),
        "one dialog per document, the first (`ringing_first` chooses it), for phones that "
        "mishandle several",
    )  # fmt: skip
    idle_dialog: bool = setting(
        True, Flag(),
        "an idle key's document holds one terminated dialog (Yealink's documented idle body, "
        "Asterisk's too) instead of none",
    )  # fmt: skip


DEFAULT_ALLOW = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "169.254.0.0/16", "fc00::/7", "fe80::/10",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may watch, who may pick up, and the limits that keep a flood harmless."""

    allow: tuple[str, ...] = setting(
        DEFAULT_ALLOW, Strings('networks, e.g. ["192.168.0.0/16"]', _network),
        "networks that may talk to the bridge at all", shown="loopback + private ranges",
    )  # fmt: skip
    auth: str = setting(
        "off", Text(choices=("off", "digest")), "`digest`: SUBSCRIBEs and refreshes authenticate"
    )
    realm: str = setting("", Text(), "the digest realm; empty: the SIP domain")
    # Read from users_file; kept out of == and repr so a password is never printed.
    users: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    users_file: str = setting("", Text(), 'the digest users: lines of `user = "password"`')
    nonce_lifetime: float = setting(300.0, Number(10, 86400), "seconds a digest nonce is good for")
    pickup: str = setting(
        "group",
        Text(choices=PICKUP_MODES),
        "who receives the pickup ids of a ringing call: `group`, `rules`, `everyone`, `nobody`",
    )
    pickup_rules: dict[str, frozenset[str]] = setting(  # noqa: RUF009  (copied per config)
        {},
        PickupRules(),
        'with `pickup = "rules"`: watcher = [extensions it may take], `*` for any',
    )
    show_caller: bool = setting(True, Flag(), "show the caller's number and name on the keys")
    requests_per_second: float = setting(
        20.0, Number(0, 1e6), "requests a second per address (0 = no limit)"
    )
    burst: int = setting(50, Whole(1, 1_000_000), "requests an address may send at once")
    max_subscriptions: int = setting(
        20000, Whole(0, 10_000_000), "subscriptions in all (0 = no limit)"
    )
    max_subscriptions_per_source: int = setting(
        200, Whole(0, 10_000_000), "subscriptions per address (0 = no limit)"
    )
    digest_algorithms: tuple[str, ...] = setting(
        DEFAULT_ALGORITHMS, DigestAlgorithms(), "digest algorithms offered, in this order"
    )
    secret_files: tuple[str, ...] = ()  # every file a secret was read from (permission check)


DEFAULT_STORE = "/var/lib/snom-blf-bridge/subscriptions.sqlite3"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where subscriptions are kept across restarts; an empty path keeps them in memory only."""

    path: str = setting(
        DEFAULT_STORE, Text(), "where subscriptions survive restarts; empty: memory only; a "
        "reload moves them to another file (from or to empty: on a restart)",
        restart=True,
    )  # fmt: skip
    flush_interval: float = setting(
        1.0, Number(0.05, 60), "seconds between two batched writes of the store"
    )


@dataclass(frozen=True, slots=True)
class PbxConfig:
    """One of several PBXs one bridge follows (an ``[[asterisk]]`` entry): its phones name it by
    ``domain`` in their SUBSCRIBE's Request-URI; its keys, callers and pickup ids stay its own."""

    name: str
    source: str  # "ami" or "ari"
    domain: str  # the SIP domain its phones use (host[:port]); also its dialog-info URIs
    ami: AmiConfig = AmiConfig()
    ari: AriConfig = AriConfig()


_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    ami: AmiConfig = AmiConfig()
    sip: SipConfig = SipConfig()
    watch: WatchConfig = WatchConfig()
    log_level: str = setting(
        "info", Text(choices=_LOG_LEVELS), "debug, info, warning or error", path="log.level"
    )
    demo: bool = setting(
        False, Flag(), "always run the built-in demo PBX", path="demo.enabled"
    )
    source_file: str = ""
    store: StoreConfig = StoreConfig()
    security: SecurityConfig = SecurityConfig()
    source: str = setting(
        "ami", Text(choices=("ami", "ari")), "where Asterisk's events come from",
        path="asterisk.source",
    )  # fmt: skip
    ari: AriConfig = AriConfig()
    leds: tuple[LedRule, ...] = ()  # [[led]] rules
    web: ListenAddress | None = setting(  # noqa: RUF009  (ListenAddress is frozen)
        ListenAddress("127.0.0.1", 9065), OptionalAddress(),
        "the live panel, `/metrics`, `/healthz`, `/api/…`; empty: off", path="web.listen",
        shown='`"127.0.0.1:9065"`', restart=True,
    )  # fmt: skip
    web_hosts: tuple[str, ...] = setting(
        (), Strings('host names, e.g. ["bridge.example.com"]', _host_name),
        "host names the web side answers for, besides addresses and `localhost`",
        path="web.hosts", restart=True,
    )  # fmt: skip
    web_groups: Mapping[str, tuple[str, ...]] = setting(
        {}, PanelGroups(),
        'the panel\'s own groups of keys, shown before its PBX and context groups, e.g. '
        '`{ "Front desk" = ["201", "202"] }` (a key named twice shows under the first)',
        path="web.groups",
    )  # fmt: skip
    event_loop: str = setting(
        "auto", Text(choices=EVENT_LOOPS),
        "`auto`: uvloop when installed, else asyncio; `uvloop` (required) or `asyncio`",
        path="runtime.event_loop", restart=True,
    )  # fmt: skip
    # [hints] exten = "device&device…": the keys ARI cannot list (Asterisk's own under AMI)
    hints: tuple[tuple[str, str], ...] = ()
    snom: SnomOptions = SnomOptions()  # noqa: RUF009  [snom]: Snom provisioning (frozen)
    yealink: YealinkOptions = YealinkOptions()  # noqa: RUF009  [yealink]: Yealink provisioning
    poly: PolyOptions = PolyOptions()  # noqa: RUF009  [poly]: Poly provisioning
    pbxs: tuple[PbxConfig, ...] = ()  # [[asterisk]] entries; empty: the one-PBX form
    lists: tuple[ResourceList, ...] = ()  # [[lists]]: BLF lists (RFC 4662), docs/LISTS.md

    @property
    def asterisk_configured(self) -> bool:
        """True when a real Asterisk is named; without one the bridge runs its demo PBX."""
        return bool(self.ari.username) if self.source == "ari" else self.ami.configured


# Every setting, in declaration order, and by section and key (the file's names).
SETTINGS: tuple[Declared, ...] = tuple(declared_in(Config))
SECTIONS: dict[str, dict[str, Declared]] = {}
for _item in SETTINGS:
    SECTIONS.setdefault(_item.section, {})[_item.key] = _item
# Tables of their own shape, read in config_tables.py: name → what they hold (as
# docs/CONFIGURATION.md says it).
TABLES = {
    "[[led]]": "LED rules: a phone's key follows a device or hint state (MESSAGE x-buttons); "
    "any change needs a restart",
    "[hints]": 'with `asterisk.source = "ari"`: extra keys and their devices, e.g. '
    '`"210" = "Custom:DND201"`',
    "[[asterisk]]": "several PBXs in one bridge, each `name`, `source`, `domain` (its phones' "
    "SIP domain) and its own `ami`/`ari` table of the `[ami]`/`[ari]` settings above; "
    "replaces `[asterisk]`/`[ami]`/`[ari]`",
    "[[lists]]": "BLF lists (RFC 4662) phones subscribe to as one URI: `name`, `keys` (none: "
    "Asterisk's `resource_list` of that name), `notification_batch_interval` (ms), "
    "`full_state`; see [LISTS.md](LISTS.md)",
}


def demo_store(config: Config) -> Config:
    """The demo PBX's calls are not a site's: unless store.path was set, its subscriptions are
    kept under $XDG_STATE_HOME (~/.local/state), never in the production store."""
    if config.store.path != DEFAULT_STORE:
        return config
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")  # fmt: skip
    path = os.path.join(state, "snom-blf-bridge", "demo-subscriptions.sqlite3")
    return dataclasses.replace(config, store=dataclasses.replace(config.store, path=path))


def readme_table() -> str:
    """The settings table docs/CONFIGURATION.md carries (tests/test_config.py checks it is
    up to date)."""
    return settings_table(sorted(SETTINGS, key=lambda item: item.name), TABLES)


def load(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate; raises ConfigError naming the first bad setting."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path}: not found") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    for item in overrides:
        apply_override(raw, item)
    config = from_mapping(raw, base_dir=Path(path).parent if path is not None else Path.cwd())
    return dataclasses.replace(config, source_file=str(path) if path is not None else "")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override; the value is TOML, or a bare string."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if len(key) > 2 and key[0] == key[-1] == '"':  # quoted as in TOML: hints."202@tenant-b"
        key = key[1:-1]
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as a host name: take it as a string
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"--set {item!r}: [{section}] is not a table in the file")
    table[key] = value


def from_mapping(raw: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a Config; a ConfigError lists every bad setting."""
    base = base_dir or Path.cwd()
    errors: list[str] = []

    def checked(read: Callable[[], _T], fallback: _T) -> _T:
        """``read()``, or ``fallback`` with its error kept: every mistake is found in one go."""
        try:
            return read()
        except ConfigError as exc:
            errors.extend(exc.errors)
            return fallback

    no_leds: tuple[LedRule, ...] = ()
    no_hints: tuple[tuple[str, str], ...] = ()
    leds = checked(lambda: read_leds(raw.get("led", [])), no_leds)
    hints = checked(lambda: read_hints(raw.get("hints", {})), no_hints)
    no_lists: tuple[ResourceList, ...] = ()
    lists = checked(lambda: read_lists(raw.get("lists", [])), no_lists)
    several = raw.get("asterisk")
    if isinstance(several, list):  # [[asterisk]]: several PBXs
        raw = {k: v for k, v in raw.items() if k != "asterisk"}
    for section, table in raw.items():
        if section in ("led", "hints", "lists"):
            continue
        if section not in SECTIONS:
            errors.append(f"[{section}]: unknown section (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(table, dict):
            errors.append(f"{section}: must be a table ([{section}])")
            continue
        for key in table:
            if key not in SECTIONS[section]:
                known = ", ".join(sorted(SECTIONS[section]))
                errors.append(f"{section}.{key}: unknown setting (known: {known})")
    values: dict[str, dict[str, Any]] = {}  # Config attribute → its fields, "" for Config's own
    for item in SETTINGS:
        table = raw.get(item.section, {})
        value = copy.copy(item.default)  # a dict default is not shared between configs
        if isinstance(table, dict) and item.key in table:
            value = checked(lambda: item.setting.kind.read(table[item.key], item.name), value)  # noqa: B023
        owner, attr = item.attrs if len(item.attrs) == 2 else ("", item.attrs[0])
        values.setdefault(owner, {})[attr] = value
    ami = AmiConfig(**values["ami"])
    sip = SipConfig(**values["sip"])
    store = StoreConfig(**values["store"])
    security = SecurityConfig(**values["security"])
    ari = AriConfig(**values["ari"])
    config = Config(
        ami=checked(lambda: _checked_ami(ami, base), ami),
        sip=checked(lambda: _checked_sip(sip, base), sip),
        watch=WatchConfig(**values["watch"]),
        store=checked(lambda: _checked_store(store, base), store),
        security=checked(lambda: _checked_security(security, base), security),
        ari=checked(lambda: _checked_ari(ari, base, needed=values[""]["source"] == "ari"), ari),
        leds=leds,
        hints=hints,
        lists=lists,
        snom=SnomOptions(**values["snom"]),
        yealink=YealinkOptions(**values["yealink"]),
        poly=PolyOptions(**values["poly"]),
        **values[""],
    )
    files = [_secret_path(Path(name), base) for name in (
        config.ami.secret_file, config.security.users_file, config.ari.password_file) if name
    ]  # fmt: skip
    security = dataclasses.replace(config.security, secret_files=tuple(map(str, files)))
    config = dataclasses.replace(config, security=security)
    if isinstance(several, list):
        config = checked(lambda: _with_pbxs(config, raw, several, base), config)
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{len(errors)} errors: " + "; ".join(errors), errors)  # fmt: skip
    return config


PBX_KEYS = ("name", "source", "domain", "ami", "ari")
_PBX_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _with_pbxs(config: Config, raw: Mapping[str, Any], entries: list[Any], base: Path) -> Config:
    """``[[asterisk]]`` entries: each PBX with its own ami/ari settings (declared once, on
    AmiConfig/AriConfig, read with the same kinds and checks as ``[ami]``/``[ari]``)."""
    for section in ("ami", "ari"):
        if section in raw:
            raise ConfigError(f"[{section}] and [[asterisk]]: use one form; with several PBXs "
                              f"each [[asterisk]] entry has its own {section} table")  # fmt: skip
    if config.leds:
        raise ConfigError("[[led]] and [[asterisk]]: LED rules work with one PBX only (so far)")
    if not entries:
        raise ConfigError("asterisk: [[asterisk]] needs at least one entry")
    pbxs: list[PbxConfig] = []
    errors: list[str] = []  # every mistake of every entry, found in one go
    for i, entry in enumerate(entries):
        pbx = _read_pbx(f"asterisk[{i}]", entry, base, errors)
        if pbx is not None:
            pbxs.append(pbx)
    for attr in ("name", "domain"):
        seen: set[str] = set()
        for i, pbx in enumerate(pbxs):
            value = getattr(pbx, attr).lower()
            if value in seen:
                errors.append(f"asterisk[{i}].{attr}: {value!r} is used by another PBX")
            seen.add(value)
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{len(errors)} errors: " + "; ".join(errors), errors)  # fmt: skip
    files = [str(_secret_path(Path(name), base)) for p in pbxs
             for name in (p.ami.secret_file, p.ari.password_file) if name]  # fmt: skip
    security = dataclasses.replace(config.security, secret_files=(
        *config.security.secret_files, *files))  # fmt: skip
    first = pbxs[0]  # the one-PBX fields keep meaning something (the first PBX)
    return dataclasses.replace(config, pbxs=tuple(pbxs), source=first.source, ami=first.ami,
                               ari=first.ari, security=security)  # fmt: skip


def _read_pbx(where: str, entry: Any, base: Path, errors: list[str]) -> PbxConfig | None:
    """One ``[[asterisk]]`` entry; its mistakes go to ``errors`` (each setting checked on its
    own, so one check-config names them all) and None is returned then."""
    if not isinstance(entry, dict):
        errors.append(f"{where}: must be a table ([[asterisk]])")
        return None
    found = len(errors)
    for key in entry:
        if key not in PBX_KEYS:
            errors.append(f"{where}.{key}: unknown setting (known: {', '.join(PBX_KEYS)})")
    name = str(entry.get("name", ""))
    if not _PBX_NAME.fullmatch(name):
        errors.append(f"{where}.name: {name!r} must be 1-32 letters, digits, - or _")
    source = entry.get("source", "ami")
    if source not in ("ami", "ari"):
        errors.append(f'{where}.source: {source!r} must be "ami" or "ari"')
    domain = str(entry.get("domain", "")).strip().lower()
    if not domain or any(c in domain for c in ' <>"@;/'):
        errors.append(f"{where}.domain: the SIP domain its phones use, e.g. pbx-a.example")
    sections: dict[str, Any] = {}
    for section in ("ami", "ari"):
        try:
            sections[section] = _pbx_section(entry.get(section, {}), f"{where}.{section}")
        except ConfigError as exc:
            errors.extend(exc.errors)
    if len(errors) > found:
        return None
    try:
        ami = _checked_ami(AmiConfig(**sections["ami"]), base)
        ari = _checked_ari(AriConfig(**sections["ari"]), base, needed=source == "ari")
    except ConfigError as exc:
        errors.extend(f"{where} ({name}): {e}" for e in exc.errors)
        return None
    if not (ari.username if source == "ari" else ami.username):
        errors.append(f"{where}.{source}.username: required (each PBX is a real one)")
        return None
    return PbxConfig(name, source, domain, ami, ari)


def _pbx_section(table: Any, name: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table, e.g. {{ host = \"10.0.0.1\" }}")
    section = name.rpartition(".")[2]
    declared = SECTIONS[section]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in declared:
            known = ", ".join(sorted(declared))
            raise ConfigError(f"{name}.{key}: unknown setting (known: {known})")
        values[declared[key].attrs[-1]] = declared[key].setting.kind.read(value, f"{name}.{key}")
    return values


def _checked_ami(ami: AmiConfig, base_dir: Path) -> AmiConfig:
    if ami.secret and ami.secret_file:
        raise ConfigError("ami.secret and ami.secret_file: set only one of them")
    if ami.secret_file:
        secret = _read_secret(Path(ami.secret_file), base_dir, "ami.secret_file")
        ami = dataclasses.replace(ami, secret=secret)
    if ami.username and not ami.secret:
        raise ConfigError("ami.secret: required when ami.username is set (or use ami.secret_file)")
    if ami.reconnect_max < ami.reconnect_min:
        raise ConfigError("ami.reconnect_max: must not be smaller than ami.reconnect_min")
    if not ami.events.strip():
        raise ConfigError("ami.events: must name at least one event class, e.g. 'call,system'")
    for i, standby in enumerate(ami.standby):
        if standby.port == 0:
            raise ConfigError(f"ami.standby[{i}]: {standby} has no port (AMI listens on 5038)")
    return ami


def _checked_ari(ari: AriConfig, base_dir: Path, *, needed: bool) -> AriConfig:
    url = _ari_url(ari.url, "ari.url")
    standby = tuple(_ari_url(u, f"ari.standby[{i}]") for i, u in enumerate(ari.standby))
    if ari.password and ari.password_file:
        raise ConfigError("ari.password and ari.password_file: set only one of them")
    password = ari.password
    if ari.password_file:
        password = _read_secret(Path(ari.password_file), base_dir, "ari.password_file")
    if needed and ari.username and not password:
        raise ConfigError("ari.password: required when ari.username is set (or ari.password_file)")
    if not ari.app or any(c in ari.app for c in "/?&# "):
        raise ConfigError(f"ari.app: {ari.app!r} is not a usable Stasis application name")
    return dataclasses.replace(ari, url=url, password=password, standby=standby)


def _ari_url(text: str, name: str) -> str:
    url = text.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name}: {url!r} must start with http:// or https://")
    return url


def _checked_sip(sip: SipConfig, base_dir: Path) -> SipConfig:
    if not sip.min_expires <= sip.default_expires <= sip.max_expires:
        raise ConfigError(
            "sip.default_expires: must lie between sip.min_expires and sip.max_expires "
            f"({sip.min_expires} <= {sip.default_expires} <= {sip.max_expires} does not hold)"
        )
    if not sip.udp and not sip.tcp and not sip.tls:
        raise ConfigError("sip.udp / sip.tcp / sip.tls: at least one listen address is needed")
    if not sip.tls:
        return sip
    if not sip.tls_certificate or not sip.tls_key:
        raise ConfigError("sip.tls_certificate / sip.tls_key: both needed when sip.tls is set")
    cert = str(_secret_path(Path(sip.tls_certificate), base_dir))
    key = str(_secret_path(Path(sip.tls_key), base_dir))
    tls_server_context(cert, key)  # a file that does not load is refused here, not at start
    return dataclasses.replace(sip, tls_certificate=cert, tls_key=key)


def tls_server_context(certificate: str, key: str) -> ssl.SSLContext:
    """The TLS listeners' context with ``sip.tls_certificate`` and ``sip.tls_key`` loaded; read
    when the configuration is checked, at start and at every reload (ACME renews the files
    under the same names). Raises ConfigError naming both settings when they do not load."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"sip.tls_certificate / sip.tls_key: cannot load {certificate} with "
                          f"{key}: {exc}") from exc  # fmt: skip
    return context


def _checked_store(store: StoreConfig, base_dir: Path) -> StoreConfig:
    path = store.path.strip()
    if path and not Path(path).is_absolute():
        path = str(base_dir / path)  # relative to the config file, like ami.secret_file
    if path and Path(path).is_dir():
        raise ConfigError(f"store.path: {path} is a directory; name a file in it")
    return dataclasses.replace(store, path=path)


def _checked_security(security: SecurityConfig, base_dir: Path) -> SecurityConfig:
    users: dict[str, str] = {}
    if security.users_file:
        users = _read_users(_secret_path(Path(security.users_file), base_dir))
    if security.auth == "digest" and not users:
        raise ConfigError("security.users_file: required (and not empty) when security.auth = "
                          "\"digest\"")  # fmt: skip
    if security.pickup == "rules" and not security.pickup_rules:
        raise ConfigError('security.pickup_rules: needed when security.pickup = "rules"')
    return dataclasses.replace(security, users=users)


def _read_users(path: Path) -> dict[str, str]:
    """``user = "password"`` lines (TOML); the passwords are never logged or printed."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"security.users_file: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"security.users_file: {path} is not valid TOML: {exc}") from exc
    users: dict[str, str] = {}
    for user, password in raw.items():
        if not isinstance(password, str) or not password:
            raise ConfigError(f"security.users_file: {path}: {user}: needs a password string")
        users[str(user)] = password
    return users


def _secret_path(path: Path, base_dir: Path) -> Path:
    if path.is_absolute():
        return path
    # systemd's LoadCredential= hands secrets over in $CREDENTIALS_DIRECTORY.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    in_credentials = Path(credentials) / path if credentials else None
    return in_credentials if in_credentials and in_credentials.exists() else base_dir / path


def _read_secret(path: Path, base_dir: Path, name: str) -> str:
    path = _secret_path(path, base_dir)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from exc
    if not text:
        raise ConfigError(f"{name}: {path} is empty")
    return text
