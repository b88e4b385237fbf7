"""Who may take a ringing call: the pickup policy (docs/PICKUP.md, gatekeeper).

Asterisk honours an ``INVITE … Replaces`` from anyone who knows the ringing leg's call-id and
tags; it checks no pickup group. So the ids only go into the bodies of watchers this policy
allows. Others still see the key blink and who calls.

Modes:
- ``group`` (default): Asterisk's own rule for call pickup — the watcher's endpoint
  ``pickup_group`` must share a group with the ringing endpoint's ``call_group``. Groups are
  read from Asterisk (``PJSIPShowEndpoint``); until they are known, nobody gets the ids.
- ``rules``: explicit ``watcher → extensions`` lists (``*`` for any).
- ``everyone`` / ``nobody``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

MODES = ("group", "rules", "everyone", "nobody")


@dataclass(slots=True)
class PickupPolicy:
    """Decides, per watcher and ringing endpoint, whether the pickup ids may be shown."""

    mode: str = "group"
    rules: Mapping[str, frozenset[str]] = field(default_factory=dict)
    _call_groups: dict[str, frozenset[int]] = field(default_factory=dict)
    _pickup_groups: dict[str, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"pickup mode must be one of {', '.join(MODES)}")

    def set_groups(self, endpoint: str, call: frozenset[int], pickup: frozenset[int]) -> bool:
        """Learn an endpoint's groups; True when that changes anything."""
        if self._call_groups.get(endpoint) == call and self._pickup_groups.get(endpoint) == pickup:
            return False
        self._call_groups[endpoint], self._pickup_groups[endpoint] = call, pickup
        return True

    def knows(self, endpoint: str) -> bool:
        """Whether Asterisk has told this endpoint's groups."""
        return endpoint in self._call_groups

    def adopt_groups(self, other: PickupPolicy) -> None:
        """Take over the groups another policy learned (a reload keeps what Asterisk said)."""
        self._call_groups.update(other._call_groups)
        self._pickup_groups.update(other._pickup_groups)

    def class_of(self, watcher: str) -> Hashable:
        """What decides this watcher's rights; watchers of one class see the same bodies, so
        each extension is rendered once per class, not once per watcher."""
        if self.mode in ("everyone", "nobody"):
            return self.mode
        if self.mode == "rules":
            return ("rules", watcher)
        return self._pickup_groups.get(watcher, frozenset()) if watcher else frozenset()

    def allows(self, cls: Hashable, ringing_endpoint: str, exten: str) -> bool:
        """Whether watchers of class ``cls`` may take a call ringing at ``ringing_endpoint``."""
        if cls == "everyone":
            return True
        if cls == "nobody":
            return False
        if isinstance(cls, tuple):  # ("rules", watcher)
            rules, watcher = self.rules, cls[1]
            allowed = rules.get(watcher, frozenset()) | rules.get("*", frozenset())
            return bool(watcher) and ("*" in allowed or exten in allowed)
        assert isinstance(cls, frozenset)
        return bool(cls & self._call_groups.get(ringing_endpoint, frozenset()))
