"""The configuration's tables of their own shape: ``[[led]]`` rules, ``[hints]`` keys and
``[[lists]]`` (RFC 4662 resource lists).

Their entries are not settings with one default each (a rule or a key per entry), so they are
read here by hand; errors name them like settings (``led[0].key``, ``hints.210``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.config_schema import ConfigError
from bridge.devices import hint_parts
from bridge.led.buttons import LIGHTS
from bridge.led.rules import BLF_LIGHTS, LedRule
from bridge.resource_lists import ResourceList


def read_hints(t: Any) -> tuple[tuple[str, str], ...]:
    """``[hints]``: extension → device expression, written as in extensions.conf."""
    if not isinstance(t, dict):
        raise ConfigError('hints: must be a table ([hints], e.g. "210" = "Custom:DND201")')
    out: list[tuple[str, str]] = []
    for exten, value in t.items():
        name = str(exten).strip()
        # "202@tenant-b": a key of another context (tenants), as watch.extensions names it.
        bare, at, context = name.partition("@")
        if not bare or (at and not context) or any(c in bare + context for c in ' <>"@;:'):
            raise ConfigError(f"hints.{exten}: {exten!r} is not an extension (or exten@context)")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f'hints.{name}: must be a device expression, e.g. "PJSIP/201"')
        for device in hint_parts(value):
            tech, slash, resource = device.partition("/")
            prefix, colon, rest = device.partition(":")
            if not ((slash and tech and resource) or (colon and prefix and rest)) or " " in device:
                raise ConfigError(
                    f"hints.{name}: {device!r} is not a device (write Tech/resource"
                    ' or Prefix:name, joined by "&", e.g. "PJSIP/201&Custom:DND201")'
                )
        out.append((name, value.strip()))
    return tuple(out)


LED_KEYS = {"phone", "key", "device", "hint", "lights", "default", "label", "dial", "action"}


def read_leds(raw: Any) -> tuple[LedRule, ...]:
    """``[[led]]`` tables: one key of one phone following one Asterisk state."""
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError("led: must be an array of tables ([[led]])")
    rules = []
    for i, t in enumerate(raw):
        name = f"led[{i}]"
        for key in t:
            if key not in LED_KEYS:
                raise ConfigError(f"{name}.{key}: unknown setting (known: "
                                  f"{', '.join(sorted(LED_KEYS))})")  # fmt: skip
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


LIST_KEYS = {"name", "keys", "notification_batch_interval", "full_state"}
DEFAULT_BATCH_MS = 200  # changes within this many ms go out in one NOTIFY
MAX_MS = 10_000
_BAD_NAME = ' <>"@;:/'


def read_lists(raw: Any) -> tuple[ResourceList, ...]:
    """``[[lists]]`` tables: a BLF list phones subscribe to as one URI (RFC 4662), besides the
    ``type = resource_list`` objects read from Asterisk (a list here wins over Asterisk's)."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("lists: must be an array of tables ([[lists]])")
    out: list[ResourceList] = []
    for i, t in enumerate(raw):
        where = f"lists[{i}]"
        for key in t:
            if key not in LIST_KEYS:
                raise ConfigError(f"{where}.{key}: unknown setting (known: "
                                  f"{', '.join(sorted(LIST_KEYS))})")  # fmt: skip
        name = t.get("name")
        if not isinstance(name, str) or not name.strip() or any(c in name for c in _BAD_NAME):
            raise ConfigError(f'{where}.name: the list\'s name, the user part phones subscribe '
                              'to (e.g. "blf-list")')  # fmt: skip
        keys = t.get("keys", [])  # left out: Asterisk's resource_list of this name
        if (
            not isinstance(keys, list)
            or ("keys" in t and not keys)
            or not all(isinstance(k, str | int) and not isinstance(k, bool) for k in keys)
        ):
            raise ConfigError(f'{where}.keys: a non-empty array of extensions, e.g. '
                              '["201", "202", "210"] (or leave it out to take Asterisk\'s '
                              'resource_list of this name)')  # fmt: skip
        items = tuple(str(k).strip() for k in keys)
        for item in items:
            if not item or any(c in item for c in _BAD_NAME):
                raise ConfigError(f"{where}.keys: {item!r} is not an extension")
        interval = t.get("notification_batch_interval", DEFAULT_BATCH_MS)
        whole = isinstance(interval, int) and not isinstance(interval, bool)
        if not whole or not 0 <= interval <= MAX_MS:
            raise ConfigError(f"{where}.notification_batch_interval: milliseconds (0-10000), "
                              "as in pjsip.conf")  # fmt: skip
        full_state = t.get("full_state", False)
        if not isinstance(full_state, bool):
            raise ConfigError(f"{where}.full_state: true or false")
        out.append(ResourceList(name.strip(), tuple(dict.fromkeys(items)), interval / 1000,
                                full_state, origin="config"))  # fmt: skip
    names = [lst.name for lst in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"lists[{i}].name: list {name!r} is declared twice")
    return tuple(out)
