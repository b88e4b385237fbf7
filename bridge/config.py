"""The bridge's configuration: one TOML file, validated once at start.

Every error names the setting by its dotted path (``sip.udp[1]``, ``ami.port``) so an installer
can find it in the file. ``--set section.key=value`` overrides are applied before validation, so
they are checked exactly like the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.event_loop import EVENT_LOOPS
from bridge.led.buttons import LIGHTS
from bridge.led.rules import BLF_LIGHTS, LedRule
from bridge.provision.options import KEYS as SNOM_KEYS
from bridge.provision.options import SnomOptionError, SnomOptions, parse_snom
from bridge.sip.digest import ALGORITHMS, DEFAULT_ALGORITHMS
from bridge.tracker import hint_parts


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One ``host:port`` the SIP service binds to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


DEFAULT_LISTEN = (ListenAddress("0.0.0.0", 5065),)


@dataclass(frozen=True, slots=True)
class AmiConfig:
    """Where and how to reach Asterisk's manager interface."""

    host: str = "127.0.0.1"
    port: int = 5038
    username: str = ""
    secret: str = field(default="", repr=False)
    events: str = "call,system"
    getvar_timeout: float = 1.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    @property
    def configured(self) -> bool:
        """True when an AMI user is set; without one the bridge runs its demo PBX."""
        return bool(self.username)


@dataclass(frozen=True, slots=True)
class AriConfig:
    """Where and how to reach Asterisk's REST interface (when asterisk.source = "ari")."""

    url: str = "http://127.0.0.1:8088"
    username: str = ""
    password: str = field(default="", repr=False)
    app: str = "snom-blf-bridge"


@dataclass(frozen=True, slots=True)
class SipConfig:
    """The SIP side: where phones subscribe and what the bridge writes into URIs."""

    udp: tuple[ListenAddress, ...] = DEFAULT_LISTEN
    tcp: tuple[ListenAddress, ...] = DEFAULT_LISTEN
    tls: tuple[ListenAddress, ...] = ()
    tls_certificate: str = ""  # PEM chain; with tls_key, required when tls is set
    tls_key: str = ""
    domain: str = ""
    contact_host: str = ""
    min_expires: int = 60
    default_expires: int = 600
    max_expires: int = 3600
    max_message_size: int = 16384
    user_agent: str = "snom-blf-bridge"
    # TCP and TLS connections: caps (0 = none) and timeouts in seconds (0 = none).
    max_connections: int = 4096
    max_connections_per_source: int = 32
    idle_timeout: float = 3700.0
    header_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """Which extensions phones may watch, and how their calls are shown."""

    extensions: frozenset[str] | None = None  # None: every extension with a hint
    outgoing_blinks: bool = False
    stale_ring_timeout: float = 60.0  # 0: ringing keys blink until Asterisk is back


DEFAULT_ALLOW = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
    "169.254.0.0/16", "fc00::/7", "fe80::/10",
)  # fmt: skip
PICKUP_MODES = ("group", "rules", "everyone", "nobody")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may watch, who may pick up, and the limits that keep a flood harmless."""

    allow: tuple[str, ...] = DEFAULT_ALLOW
    auth: str = "off"  # "digest": SUBSCRIBEs must authenticate
    realm: str = ""  # empty: the SIP domain
    users: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    users_file: str = ""
    nonce_lifetime: float = 300.0
    pickup: str = "group"
    pickup_rules: dict[str, frozenset[str]] = field(default_factory=dict)
    show_caller: bool = True
    requests_per_second: float = 20.0
    burst: int = 50
    max_subscriptions: int = 20000
    max_subscriptions_per_source: int = 200
    digest_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS  # offered in this order
    secret_files: tuple[str, ...] = ()  # every file a secret was read from (permission check)


DEFAULT_STORE = "/var/lib/snom-blf-bridge/subscriptions.sqlite3"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where subscriptions are kept across restarts; an empty path keeps them in memory only."""

    path: str = DEFAULT_STORE
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    ami: AmiConfig = AmiConfig()
    sip: SipConfig = SipConfig()
    watch: WatchConfig = WatchConfig()
    log_level: str = "info"
    demo: bool = False
    source_file: str = ""
    store: StoreConfig = StoreConfig()
    security: SecurityConfig = SecurityConfig()
    source: str = "ami"  # asterisk.source: which interface the events come from
    ari: AriConfig = AriConfig()
    leds: tuple[LedRule, ...] = ()  # [[led]] rules
    web: ListenAddress | None = ListenAddress("127.0.0.1", 9065)  # panel, /metrics; None: off
    web_hosts: tuple[str, ...] = ()  # web.hosts: names the web side answers besides addresses
    event_loop: str = "auto"  # runtime.event_loop: auto (uvloop if installed), uvloop, asyncio
    # [hints] exten = "device&device…": the keys ARI cannot list (Asterisk's own under AMI)
    hints: tuple[tuple[str, str], ...] = ()
    snom: SnomOptions = field(default_factory=SnomOptions)  # [snom]: Snom provisioning

    @property
    def asterisk_configured(self) -> bool:
        """True when a real Asterisk is named; without one the bridge runs its demo PBX."""
        return bool(self.ari.username) if self.source == "ari" else self.ami.configured


_SECTIONS: dict[str, set[str]] = {
    "ami": {
        "host",
        "port",
        "username",
        "secret",
        "secret_file",
        "events",
        "getvar_timeout",
        "reconnect_min",
        "reconnect_max",
    },
    "sip": {
        "udp",
        "tcp",
        "tls",
        "tls_certificate",
        "tls_key",
        "domain",
        "contact_host",
        "min_expires",
        "default_expires",
        "max_expires",
        "max_message_size",
        "user_agent",
        "max_connections",
        "max_connections_per_source",
        "idle_timeout",
        "header_timeout",
    },
    "watch": {"extensions", "outgoing_blinks", "stale_ring_timeout"},
    "log": {"level"},
    "runtime": {"event_loop"},
    "demo": {"enabled"},
    "store": {"path", "flush_interval"},
    "asterisk": {"source"},
    "web": {"listen", "hosts"},
    "ari": {"url", "username", "password", "password_file", "app"},
    "snom": set(SNOM_KEYS),
    "security": {
        "allow",
        "auth",
        "realm",
        "users_file",
        "nonce_lifetime",
        "pickup",
        "pickup_rules",
        "show_caller",
        "requests_per_second",
        "burst",
        "max_subscriptions",
        "max_subscriptions_per_source",
        "digest_algorithms",
    },
}
_LOG_LEVELS = ("debug", "info", "warning", "error")


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
    return _replace_source(config, str(path) if path is not None else "")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override; the value is TOML, or a bare string."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
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
    """Validate a parsed TOML document into a Config."""
    leds = _leds(raw.get("led", []))
    hints = _hints(raw.get("hints", {}))
    raw = {k: v for k, v in raw.items() if k not in ("led", "hints")}
    for section, table in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
        for key in table:
            if key not in _SECTIONS[section]:
                known = ", ".join(sorted(_SECTIONS[section]))
                raise ConfigError(f"{section}.{key}: unknown setting (known: {known})")
    ami = _ami(_table(raw, "ami"), base_dir or Path.cwd())
    sip = _sip(_table(raw, "sip"), base_dir or Path.cwd())
    watch = _watch(_table(raw, "watch"))
    level = _str(_table(raw, "log"), "log.level", "info").lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"log.level: {level!r} is not one of {', '.join(_LOG_LEVELS)}")
    demo = _bool(_table(raw, "demo"), "demo.enabled", False)
    store = _store(_table(raw, "store"), base_dir or Path.cwd())
    security = _security(_table(raw, "security"), base_dir or Path.cwd())
    secrets_read = security.secret_files + _ami_secret_files(_table(raw, "ami"), base_dir)
    listen = _str(_table(raw, "web"), "web.listen", "127.0.0.1:9065").strip()
    web = _address(listen, "web.listen") if listen else None
    web_hosts = _names(_table(raw, "web"), "web.hosts")
    source = _str(_table(raw, "asterisk"), "asterisk.source", "ami").lower()
    if source not in ("ami", "ari"):
        raise ConfigError(f"asterisk.source: {source!r} is not one of ami, ari")
    event_loop = _str(_table(raw, "runtime"), "runtime.event_loop", "auto").lower()
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"runtime.event_loop: {event_loop!r} is not one of "
                          f"{', '.join(EVENT_LOOPS)}")  # fmt: skip
    ari, ari_files = _ari(_table(raw, "ari"), base_dir or Path.cwd(), needed=source == "ari")
    security = dataclasses.replace(security, secret_files=secrets_read + ari_files)
    try:
        snom = parse_snom(_table(raw, "snom"))
    except SnomOptionError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        ami=ami, sip=sip, watch=watch, log_level=level, demo=demo, store=store,
        security=security, source=source, ari=ari, leds=leds, web=web, event_loop=event_loop,
        hints=hints,
        web_hosts=web_hosts,
        snom=snom,
    )  # fmt: skip


def _hints(t: Any) -> tuple[tuple[str, str], ...]:
    """``[hints]``: extension → device expression, written as in extensions.conf."""
    if not isinstance(t, dict):
        raise ConfigError('hints: must be a table ([hints], e.g. "210" = "Custom:DND201")')
    out: list[tuple[str, str]] = []
    for exten, value in t.items():
        name = str(exten).strip()
        if not name or any(c in name for c in ' <>"@;:'):
            raise ConfigError(f"hints.{exten}: {exten!r} is not an extension")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f'hints.{name}: must be a device expression, e.g. "PJSIP/201"')
        for device in hint_parts(value):
            tech, slash, resource = device.partition("/")
            prefix, colon, rest = device.partition(":")
            if not ((slash and tech and resource) or (colon and prefix and rest)) or " " in device:
                raise ConfigError(f"hints.{name}: {device!r} is not a device (write Tech/resource"
                                  ' or Prefix:name, joined by "&", e.g. "PJSIP/201&Custom:DND201")')
        out.append((name, value.strip()))
    return tuple(out)


def _ari(
    t: Mapping[str, Any], base_dir: Path, *, needed: bool
) -> tuple[AriConfig, tuple[str, ...]]:
    url = _str(t, "ari.url", "http://127.0.0.1:8088").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"ari.url: {url!r} must start with http:// or https://")
    password = _str(t, "ari.password", "")
    files: tuple[str, ...] = ()
    password_file = _str(t, "ari.password_file", "")
    if password and password_file:
        raise ConfigError("ari.password and ari.password_file: set only one of them")
    if password_file:
        password = _read_secret(Path(password_file), base_dir, "ari.password_file")
        files = (str(_secret_path(Path(password_file), base_dir)),)
    username = _str(t, "ari.username", "")
    if needed and username and not password:
        raise ConfigError("ari.password: required when ari.username is set (or ari.password_file)")
    app = _str(t, "ari.app", "snom-blf-bridge")
    if not app or any(c in app for c in "/?&# "):
        raise ConfigError(f"ari.app: {app!r} is not a usable Stasis application name")
    return AriConfig(url=url, username=username, password=password, app=app), files


_LED_KEYS = {"phone", "key", "device", "hint", "lights", "default", "label", "dial", "action"}


def _leds(raw: Any) -> tuple[LedRule, ...]:
    """``[[led]]`` tables: one key of one phone following one Asterisk state."""
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError("led: must be an array of tables ([[led]])")
    rules = []
    for i, t in enumerate(raw):
        name = f"led[{i}]"
        for key in t:
            if key not in _LED_KEYS:
                raise ConfigError(f"{name}.{key}: unknown setting (known: "
                                  f"{', '.join(sorted(_LED_KEYS))})")  # fmt: skip
        phone = str(t.get("phone", "")).strip()
        if not phone or any(c in phone for c in " <>@;:"):
            raise ConfigError(f'{name}.phone: the PJSIP AOR of the phone, e.g. "203"')
        key = t.get("key")
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= 999:
            raise ConfigError(f"{name}.key: the phone's key number (0-999)")
        device, hint = str(t.get("device", "")), str(t.get("hint", ""))
        if bool(device) == bool(hint):
            raise ConfigError(f"{name}: set exactly one of device (e.g. \"Custom:DND201\") "
                              "and hint (an extension)")  # fmt: skip
        lights = t.get("lights", BLF_LIGHTS)
        if not isinstance(lights, Mapping):
            raise ConfigError(f'{name}.lights: a table of state = light, e.g. {{ inuse = "on" }}')
        default = str(t.get("default", "off"))
        for state, light in [*lights.items(), ("default", default)]:
            if not isinstance(light, str) or light.lower() not in LIGHTS:
                where = f"{name}.default" if state == "default" else f"{name}.lights.{state}"
                known = ", ".join(sorted(LIGHTS))
                raise ConfigError(f"{where}: {light!r} is not a light ({known})")
        rules.append(
            LedRule(
                phone=phone,
                key=key,
                device=device,
                hint=hint,
                lights={str(k).lower(): str(v).lower() for k, v in lights.items()},
                default=default.lower(),
                label=str(t.get("label", "")),
                dial=str(t.get("dial", "")),
                action=str(t.get("action", "")),
            )
        )
    seen: set[tuple[str, int]] = set()
    for i, rule in enumerate(rules):
        if (rule.phone, rule.key) in seen:
            raise ConfigError(f"led[{i}]: key {rule.key} of phone {rule.phone} is ruled twice")
        seen.add((rule.phone, rule.key))
    return tuple(rules)


def _ami_secret_files(t: Mapping[str, Any], base_dir: Path | None) -> tuple[str, ...]:
    name = t.get("secret_file")
    return (str(_secret_path(Path(name), base_dir or Path.cwd())),) if name else ()


def _security(t: Mapping[str, Any], base_dir: Path) -> SecurityConfig:
    allow_raw = t.get("allow", list(DEFAULT_ALLOW))
    if not isinstance(allow_raw, list) or not all(isinstance(a, str) for a in allow_raw):
        raise ConfigError('security.allow: must be a list of networks, e.g. ["192.168.0.0/16"]')
    for i, network in enumerate(allow_raw):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"security.allow[{i}]: {network!r} is not a network") from None
    auth = _str(t, "security.auth", "off").lower()
    if auth not in ("off", "digest"):
        raise ConfigError(f"security.auth: {auth!r} is not one of off, digest")
    users: dict[str, str] = {}
    files: tuple[str, ...] = ()
    users_file = _str(t, "security.users_file", "")
    if users_file:
        path = _secret_path(Path(users_file), base_dir)
        users = _read_users(path)
        files = (str(path),)
    if auth == "digest" and not users:
        raise ConfigError("security.users_file: required (and not empty) when security.auth = "
                          "\"digest\"")  # fmt: skip
    pickup = _str(t, "security.pickup", "group").lower()
    if pickup not in PICKUP_MODES:
        raise ConfigError(f"security.pickup: {pickup!r} is not one of {', '.join(PICKUP_MODES)}")
    rules_raw = t.get("pickup_rules", {})
    if not isinstance(rules_raw, dict):
        raise ConfigError('security.pickup_rules: must be a table, e.g. { "203" = ["202"] }')
    rules: dict[str, frozenset[str]] = {}
    for watcher, extens in rules_raw.items():
        if not isinstance(extens, list) or not all(isinstance(e, str | int) for e in extens):
            raise ConfigError(f"security.pickup_rules.{watcher}: must be a list of extensions")
        rules[str(watcher)] = frozenset(str(e) for e in extens)
    if pickup == "rules" and not rules:
        raise ConfigError('security.pickup_rules: needed when security.pickup = "rules"')
    return SecurityConfig(
        allow=tuple(allow_raw),
        auth=auth,
        realm=_str(t, "security.realm", ""),
        users=users,
        users_file=users_file,
        nonce_lifetime=_number(t, "security.nonce_lifetime", 300.0, low=10, high=86400),
        pickup=pickup,
        pickup_rules=rules,
        show_caller=_bool(t, "security.show_caller", True),
        requests_per_second=_number(t, "security.requests_per_second", 20.0, low=0, high=1e6),
        burst=_int(t, "security.burst", 50, low=1, high=1_000_000),
        max_subscriptions=_int(t, "security.max_subscriptions", 20000, low=0, high=10_000_000),
        max_subscriptions_per_source=_int(
            t, "security.max_subscriptions_per_source", 200, low=0, high=10_000_000
        ),
        digest_algorithms=_digest_algorithms(t),
        secret_files=files,
    )


def _digest_algorithms(t: Mapping[str, Any]) -> tuple[str, ...]:
    names = t.get("digest_algorithms", list(DEFAULT_ALGORITHMS))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError('security.digest_algorithms: must be a non-empty list, e.g. ["MD5"]')
    upper = tuple(n.upper() for n in names)
    for name in upper:
        if name not in ALGORITHMS:
            raise ConfigError(f"security.digest_algorithms: {name!r} is not one of "
                              f"{', '.join(ALGORITHMS)}")  # fmt: skip
    if len(set(upper)) != len(upper):
        raise ConfigError("security.digest_algorithms: lists an algorithm twice")
    return upper


def _names(t: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list of host names (lower-cased)."""
    names = t.get(name.rpartition(".")[2], [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f'{name}: must be a list of host names, e.g. ["bridge.example.com"]')
    return tuple(n.strip().lower() for n in names)


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


def _replace_source(config: Config, source: str) -> Config:
    return dataclasses.replace(config, source_file=source)


def _store(t: Mapping[str, Any], base_dir: Path) -> StoreConfig:
    path = _str(t, "store.path", DEFAULT_STORE).strip()
    if path and not Path(path).is_absolute():
        path = str(base_dir / path)  # relative to the config file, like ami.secret_file
    if path and Path(path).is_dir():
        raise ConfigError(f"store.path: {path} is a directory; name a file in it")
    interval = _number(t, "store.flush_interval", 1.0, low=0.05, high=60)
    return StoreConfig(path=path, flush_interval=interval)


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = raw.get(name, {})
    assert isinstance(table, dict)  # checked in from_mapping
    return table


def _ami(t: Mapping[str, Any], base_dir: Path) -> AmiConfig:
    secret = _str(t, "ami.secret", "")
    secret_file = _str(t, "ami.secret_file", "")
    if secret and secret_file:
        raise ConfigError("ami.secret and ami.secret_file: set only one of them")
    if secret_file:
        secret = _read_secret(Path(secret_file), base_dir, "ami.secret_file")
    username = _str(t, "ami.username", "")
    if username and not secret:
        raise ConfigError("ami.secret: required when ami.username is set (or use ami.secret_file)")
    rmin = _number(t, "ami.reconnect_min", 0.5, low=0.05, high=60)
    rmax = _number(t, "ami.reconnect_max", 30.0, low=0.1, high=3600)
    if rmax < rmin:
        raise ConfigError("ami.reconnect_max: must not be smaller than ami.reconnect_min")
    events = _str(t, "ami.events", "call,system")
    if not events.strip():
        raise ConfigError("ami.events: must name at least one event class, e.g. 'call,system'")
    return AmiConfig(
        host=_host(t, "ami.host", "127.0.0.1"),
        port=_port(t, "ami.port", 5038),
        username=username,
        secret=secret,
        events=events,
        getvar_timeout=_number(t, "ami.getvar_timeout", 1.0, low=0.05, high=30),
        reconnect_min=rmin,
        reconnect_max=rmax,
    )


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


def _tls(t: Mapping[str, Any], base_dir: Path) -> tuple[tuple[ListenAddress, ...], str, str]:
    tls = _addresses(t, "sip.tls", ())
    cert, key = _str(t, "sip.tls_certificate", ""), _str(t, "sip.tls_key", "")
    if not tls:
        return tls, cert, key
    if not cert or not key:
        raise ConfigError("sip.tls_certificate / sip.tls_key: both needed when sip.tls is set")
    cert, key = str(_secret_path(Path(cert), base_dir)), str(_secret_path(Path(key), base_dir))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"sip.tls_certificate / sip.tls_key: cannot load {cert} with {key}: "
                          f"{exc}") from exc  # fmt: skip
    return tls, cert, key


def _sip(t: Mapping[str, Any], base_dir: Path | None = None) -> SipConfig:
    mn = _int(t, "sip.min_expires", 60, low=1, high=86400)
    default = _int(t, "sip.default_expires", 600, low=1, high=86400)
    mx = _int(t, "sip.max_expires", 3600, low=1, high=86400)
    if not mn <= default <= mx:
        raise ConfigError(
            "sip.default_expires: must lie between sip.min_expires and sip.max_expires "
            f"({mn} <= {default} <= {mx} does not hold)"
        )
    udp = _addresses(t, "sip.udp", DEFAULT_LISTEN)
    tcp = _addresses(t, "sip.tcp", DEFAULT_LISTEN)
    tls, cert, key = _tls(t, base_dir or Path.cwd())
    if not udp and not tcp and not tls:
        raise ConfigError("sip.udp / sip.tcp / sip.tls: at least one listen address is needed")
    domain = _str(t, "sip.domain", "")
    if any(c in domain for c in ' <>"@;'):
        raise ConfigError(f"sip.domain: {domain!r} is not a host name or address")
    return SipConfig(
        udp=udp,
        tcp=tcp,
        tls=tls,
        tls_certificate=cert,
        tls_key=key,
        domain=domain,
        contact_host=_str(t, "sip.contact_host", ""),
        min_expires=mn,
        default_expires=default,
        max_expires=mx,
        max_message_size=_int(t, "sip.max_message_size", 16384, low=1024, high=65507),
        user_agent=_str(t, "sip.user_agent", "snom-blf-bridge"),
        max_connections=_int(t, "sip.max_connections", 4096, low=0, high=1_000_000),
        max_connections_per_source=_int(
            t, "sip.max_connections_per_source", 32, low=0, high=1_000_000
        ),
        idle_timeout=_number(t, "sip.idle_timeout", 3700.0, low=0, high=7 * 86400),
        header_timeout=_number(t, "sip.header_timeout", 10.0, low=0, high=600),
    )


def _watch(t: Mapping[str, Any]) -> WatchConfig:
    extensions: frozenset[str] | None = None
    if "extensions" in t:
        value = t["extensions"]
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise ConfigError('watch.extensions: must be a list of extensions, e.g. ["201"]')
        names = [str(v).strip() for v in value]
        for i, name in enumerate(names):
            if not name or any(c in name for c in ' <>"@;:'):
                raise ConfigError(f"watch.extensions[{i}]: {name!r} is not an extension")
        extensions = frozenset(names) if names else None
    return WatchConfig(
        extensions=extensions,
        outgoing_blinks=_bool(t, "watch.outgoing_blinks", False),
        stale_ring_timeout=_number(t, "watch.stale_ring_timeout", 60.0, low=0, high=86400),
    )


def _addresses(
    t: Mapping[str, Any], name: str, default: tuple[ListenAddress, ...]
) -> tuple[ListenAddress, ...]:
    key = name.split(".", 1)[1]
    if key not in t:
        return default
    value = t[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f'{name}: must be a list of "host:port" strings')
    return tuple(_address(v, f"{name}[{i}]") for i, v in enumerate(value))


def _address(value: Any, name: str) -> ListenAddress:
    if not isinstance(value, str):
        raise ConfigError(f'{name}: must be a "host:port" string')
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: {value!r} is not host:port")
    host = host.strip("[]")
    _check_host(host, name)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} is out of range 0-65535")
    return ListenAddress(host, port)


def _check_host(host: str, name: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c in host for c in ' /@<>"') or len(host) > 253:
            raise ConfigError(f"{name}: {host!r} is not an IP address or host name") from None


def _host(t: Mapping[str, Any], name: str, default: str) -> str:
    host = _str(t, name, default)
    _check_host(host, name)
    return host


def _str(t: Mapping[str, Any], name: str, default: str) -> str:
    value = t.get(name.split(".", 1)[1], default)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string, got {type(value).__name__}")
    return value


def _bool(t: Mapping[str, Any], name: str, default: bool) -> bool:
    value = t.get(name.split(".", 1)[1], default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false")
    return value


def _int(t: Mapping[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = t.get(name.split(".", 1)[1], default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: must be a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range {low}-{high}")
    return value


def _port(t: Mapping[str, Any], name: str, default: int) -> int:
    return _int(t, name, default, low=1, high=65535)


def _number(t: Mapping[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = t.get(name.split(".", 1)[1], default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: must be a number")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range {low}-{high}")
    return float(value)
