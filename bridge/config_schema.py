"""How a setting is declared: once, on the configuration dataclass field that holds it.

``setting(default, kind, help)`` is the field's default; its metadata carries the rest (how the
TOML value is read and checked, whether a reload can take it, the help line the settings table
shows). From these declarations come the parser (``bridge/config.py``), the reload diff
(``bridge/settings.py``) and the settings table of docs/CONFIGURATION.md (``settings_table``), so
a name and its default are written exactly once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it. ``errors``: every
    problem found (a file with three mistakes is told all three at once), one message each."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class Kind(Protocol):
    """How one TOML value is read: ``read`` checks it and returns the Python value; ``name`` is
    the dotted setting name every error starts with."""

    def read(self, value: Any, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting's declaration (the field's default is its default)."""

    kind: Kind
    help: str
    restart: bool = False  # a running bridge cannot take it over (new sockets, another file)
    shown: str = ""  # the default as the settings table says it, when the value says it badly
    path: str = ""  # "section.key" for a field of Config itself (log_level is log.level)


def setting(
    default: T,
    kind: Kind,
    help: str,
    *,
    restart: bool = False,
    shown: str = "",
    path: str = "",
    secret: bool = False,
) -> T:
    """A dataclass field declaring one setting; ``secret`` keeps its value out of repr."""
    meta = {"setting": Setting(kind, help, restart, shown, path)}
    if isinstance(default, dict):
        copy: Callable[[], Any] = lambda: dict(default)  # noqa: E731  (a fresh dict per config)
        made: T = field(default_factory=copy, metadata=meta, repr=not secret)
        return made
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, slots=True)
class Declared:
    """A declared setting with where it lives: ``attrs`` leads from Config to its value."""

    name: str  # dotted, as in the file: "sip.udp"
    attrs: tuple[str, ...]
    setting: Setting
    default: Any

    @property
    def section(self) -> str:
        return self.name.partition(".")[0]

    @property
    def key(self) -> str:
        return self.name.partition(".")[2]

    def value(self, config: object) -> Any:
        """This setting's value in ``config`` (a Config)."""
        for attr in self.attrs:
            config = getattr(config, attr)
        return config


def declared_in(config_class: type) -> Iterator[Declared]:
    """Every setting declared on ``config_class`` and the section dataclasses it holds."""
    for f in dataclasses.fields(config_class):
        meta = f.metadata.get("setting")
        if isinstance(meta, Setting):
            yield Declared(meta.path, (f.name,), meta, _default(f))
        elif dataclasses.is_dataclass(f.default) and not isinstance(f.default, type):
            for inner in dataclasses.fields(f.default):  # a section: [ami] is Config.ami
                found = inner.metadata.get("setting")
                if isinstance(found, Setting):
                    name = f"{f.name}.{inner.name}"
                    yield Declared(name, (f.name, inner.name), found, _default(inner))


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# --- kinds: how a TOML value is read -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A string; ``choices`` (compared lower-cased) or characters it must not contain."""

    choices: tuple[str, ...] = ()
    forbidden: str = ""
    what: str = ""  # what the forbidden characters make it not: "a host name or address"

    def read(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {type(value).__name__}")
        text = value.lower() if self.choices else value
        if self.choices and text not in self.choices:
            raise ConfigError(f"{name}: {text!r} is not one of {', '.join(self.choices)}")
        if any(c in text for c in self.forbidden):
            raise ConfigError(f"{name}: {text!r} is not {self.what}")
        return text


@dataclass(frozen=True, slots=True)
class Flag:
    """true or false."""

    def read(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false")
        return value


@dataclass(frozen=True, slots=True)
class Whole:
    """A whole number within ``low``-``high``."""

    low: int
    high: int

    def read(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be a whole number")
        if not self.low <= value <= self.high:
            raise ConfigError(f"{name}: {value} is out of range {self.low}-{self.high}")
        return value


@dataclass(frozen=True, slots=True)
class Number:
    """A number (seconds, a rate) within ``low``-``high``; read as a float."""

    low: float
    high: float

    def read(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: must be a number")
        if not self.low <= value <= self.high:
            raise ConfigError(f"{name}: {value} is out of range {_plain(self.low)}-"
                              f"{_plain(self.high)}")  # fmt: skip
        return float(value)


def _plain(number: float) -> str:
    """1000000.0 as 1000000, 0.05 as 0.05 (no exponent in an error message)."""
    return str(int(number)) if number == int(number) else str(number)


@dataclass(frozen=True, slots=True)
class Host:
    """An IP address or a host name."""

    def read(self, value: Any, name: str) -> str:
        host: str = Text().read(value, name)
        check_host(host, name)
        return host


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One ``host:port`` the SIP service binds to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Addresses:
    """A list of ``"host:port"`` (one string alone is a list of one); ``[]`` is none."""

    def read(self, value: Any, name: str) -> tuple[ListenAddress, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f'{name}: must be a list of "host:port" strings')
        return tuple(address(v, f"{name}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True, slots=True)
class OptionalAddress:
    """One ``"host:port"``, or ``""`` for none (the part it opens stays off)."""

    def read(self, value: Any, name: str) -> ListenAddress | None:
        text = Text().read(value, name).strip()
        return address(text, name) if text else None


@dataclass(frozen=True, slots=True)
class Strings:
    """A list of strings, each checked by ``check``; errors name ``name[i]``."""

    example: str
    check: Callable[[str, str], str] | None = None  # (item, item name) -> item kept
    non_empty: bool = False

    def read(self, value: Any, name: str) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or not all(isinstance(v, str) for v in value)
            or (self.non_empty and not value)
        ):
            raise ConfigError(f"{name}: must be a {'non-empty ' * self.non_empty}list of "
                              f"{self.example}")  # fmt: skip
        if self.check is None:
            return tuple(value)
        return tuple(self.check(v, f"{name}[{i}]") for i, v in enumerate(value))


def address(value: Any, name: str) -> ListenAddress:
    """``"host:port"`` (IPv6 in brackets) as a ListenAddress; port 0 binds any free one."""
    if not isinstance(value, str):
        raise ConfigError(f'{name}: must be a "host:port" string')
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: {value!r} is not host:port")
    host = host.strip("[]")
    check_host(host, name)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} is out of range 0-65535")
    return ListenAddress(host, port)


def check_host(host: str, name: str) -> None:
    """An IP address, or something a resolver could take for a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c in host for c in ' /@<>"') or len(host) > 253:
            raise ConfigError(f"{name}: {host!r} is not an IP address or host name") from None


# --- documentation ----------------------------------------------------------------------------


def shown_default(item: Declared) -> str:
    """The default as the settings table (docs/CONFIGURATION.md) writes it."""
    if item.setting.shown:
        return item.setting.shown
    value = item.default
    if value in ("", (), {}):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{_plain(value)}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def settings_table(items: Iterator[Declared] | list[Declared], tables: Mapping[str, str]) -> str:
    """The settings table of docs/CONFIGURATION.md: one row per setting, then the tables of
    their own kind (``tables``: name → meaning, such as ``[[led]]``)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for item in items:
        restart = " (needs a restart)" if item.setting.restart else ""
        rows.append(f"| `{item.name}` | {shown_default(item)} | {item.setting.help}{restart} |")
    rows += [f"| `{name}` | none | {meaning} |" for name, meaning in tables.items()]
    return "\n".join(rows) + "\n"
