"""RFC 4662 resource lists (BLF lists): which lists exist and what they hold.

A list comes from Asterisk's own ``type = resource_list`` objects (read at each sync, see
``ResourceListsRead``) or from the bridge's ``[[lists]]`` configuration; a configured list wins
over Asterisk's of the same name. Only ``event = dialog`` lists are served. A list item that
names another list is expanded in place (Asterisk nests lists that way); the bridge sends one
flat list, which is what phones' expansion modules show anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.events import ResourceListEntry

__all__ = ["LIST_PREFIX", "ListDirectory", "ResourceList"]

# The subscription's resource label of a list subscription ("list:blf-list"): never a key name
# a tracker knows, so nothing mistakes it for an extension.
LIST_PREFIX = "list:"
_MAX_DEPTH = 8  # nested lists deeper than this (or a loop) stop being expanded


@dataclass(frozen=True, slots=True)
class ResourceList:
    """One list of keys phones may subscribe to as a whole."""

    name: str
    # Extensions, in order, nested lists already expanded; a configured list without keys is
    # Asterisk's list of that name (read over ARI by name, see bridge.asterisk.ari).
    items: tuple[str, ...]
    batch_interval: float = 0.0  # seconds changes are gathered before a NOTIFY
    full_state: bool = False  # every NOTIFY carries every resource, not only what changed
    origin: str = "asterisk"  # or "config"


class ListDirectory:
    """The lists phones may subscribe to: the configured ones and each PBX's own."""

    def __init__(self, configured: Iterable[ResourceList] = ()) -> None:
        self._configured: dict[str, ResourceList] = {}
        self._asterisk: dict[str, dict[str, ResourceList]] = {}  # PBX name → its lists
        self.set_configured(configured)

    def set_configured(self, lists: Iterable[ResourceList]) -> set[str]:
        """Take the configured lists; returns the names whose definition changed or vanished."""
        new = {lst.name: lst for lst in lists}
        changed = _differences(self._configured, new)
        self._configured = new
        return changed

    def set_from_asterisk(self, pbx: str, entries: Iterable[ResourceListEntry]) -> set[str]:
        """Take the complete set of one PBX's resource_list objects; returns the names whose
        definition changed or vanished (their subscribers must subscribe again)."""
        by_name = {e.name: e for e in entries if e.event.strip().lower() == "dialog"}
        new = {
            name: ResourceList(
                name,
                _expand(entry.items, by_name, 0, {name}),
                batch_interval=max(0, entry.batch_interval_ms) / 1000,
                full_state=entry.full_state,
            )
            for name, entry in by_name.items()
        }
        changed = _differences(self._asterisk.get(pbx, {}), new)
        self._asterisk[pbx] = new
        return changed

    def find(self, name: str, pbx: str = "") -> ResourceList | None:
        """The list a Request-URI user names, configured first, then the PBX's own."""
        found = self._configured.get(name)
        if found is None or not found.items:  # declared by name only: Asterisk's, once read
            found = self._asterisk.get(pbx, {}).get(name)
        return found

    def named_only(self) -> list[str]:
        """The configured lists declared by name only, whose keys Asterisk's list of that
        name gives (what a source that cannot list them all must read one by one)."""
        return [name for name, lst in self._configured.items() if not lst.items]

    def lists(self) -> list[ResourceList]:
        """Every list known, configured ones first (for the panel and the logs)."""
        out = list(self._configured.values())
        for lists in self._asterisk.values():
            out.extend(lst for name, lst in lists.items() if name not in self._configured)
        return out


def _expand(
    items: Iterable[str], lists: dict[str, ResourceListEntry], depth: int, seen: set[str]
) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        nested = lists.get(item)
        if nested is None:
            out.append(item)
        elif depth < _MAX_DEPTH and item not in seen:
            out.extend(_expand(nested.items, lists, depth + 1, seen | {item}))
    return tuple(dict.fromkeys(out))  # an item listed twice is one resource


def _differences(old: dict[str, ResourceList], new: dict[str, ResourceList]) -> set[str]:
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
