"""How Asterisk writes what names a phone: devices, channel names, hints and group lists.

Pure text helpers shared by the sources (``bridge.asterisk``), the tracker and the
configuration, so that all of them read ``PJSIP/202-0000001a`` or
``PJSIP/202&Custom:DND202`` the same way. No I/O, no state.
"""

from __future__ import annotations


def device_key(device: str) -> str:
    """Normalize a device name for comparison: the technology of ``Tech/resource`` is caseless
    (``pjsip/202``); a name without "/" (``Custom:DND201``) is caseless as a whole."""
    tech, sep, resource = device.strip().partition("/")
    return f"{tech.casefold()}{sep}{resource}"


def device_of_channel(name: str) -> str:
    """A channel's device, normalized: "PJSIP/202-00000008" → "pjsip/202" (the suffix after
    the last "-" is Asterisk's sequence)."""
    base = name.rpartition("-")[0] if "-" in name.partition("/")[2] else name
    return device_key(base)


def hint_parts(hint: str) -> list[str]:
    """The devices of a hint as written, stripped, an empty part kept (the presence provider
    after "," is not a device): "PJSIP/202&Custom:DND202,CustomPresence:202" →
    ["PJSIP/202", "Custom:DND202"]."""
    return [d.strip() for d in hint.partition(",")[0].split("&")]


def hint_devices(hint: str) -> tuple[str, ...]:
    """The devices a hint names, normalized, without repeats:
    "PJSIP/202&Custom:DND202,CustomPresence:202" → ("pjsip/202", "custom:dnd202")."""
    return tuple(dict.fromkeys(device_key(d) for d in hint_parts(hint) if d))


def is_channel_device(device: str) -> bool:
    """Whether a (normalized) hint device is a channel technology (``pjsip/201``), whose calls
    the tracker sees as channels, rather than a state provider (``custom:dnd201``)."""
    return "/" in device


def park_space(device: str) -> str | None:
    """The space of a ``park:<space>@<context>`` device (normalized), else None."""
    prefix, colon, rest = device.partition(":")
    if not colon or prefix.casefold() != "park":
        return None
    return rest.partition("@")[0] or None


def parse_groups(text: str) -> frozenset[int]:
    """An endpoint's call or pickup group list as Asterisk writes it (``1,3-5``; empty for
    none) as numbers; junk is ignored."""
    groups: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if low.isdigit() and (not dash or high.isdigit()):
            groups.update(range(int(low), int(high if dash else low) + 1))
    return frozenset(g for g in groups if 0 <= g <= 63)  # Asterisk has 64 groups
