"""What a check of the site found: the live check (`snom-blf-bridge check-site`) prints them,
the running bridge keeps the ones it can see for itself, and the panel shows those that need
attention."""

from __future__ import annotations

import dataclasses
from typing import Literal

Level = Literal["ok", "warn", "fail"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check's result: what was checked, how it went, and the fix where it did not pass."""

    level: Level
    subject: str  # what was checked: "manager user", "endpoint 203", "SIP listener udp" ...
    text: str  # what was found, one line
    fix: str = ""  # what to do about it ("" when it passed)


def pickup_group_finding(endpoint: str, call_groups: frozenset[int],
                         pickup_groups: frozenset[int]) -> Finding | None:  # fmt: skip
    """What is wrong with an endpoint's groups under ``security.pickup = "group"`` (None:
    nothing): without a pickup_group its watchers never get pickup ids; without a call_group
    nobody may take its calls."""
    lacks = [name for name, groups in (("pickup_group", pickup_groups),
                                       ("call_group", call_groups)) if not groups]  # fmt: skip
    if not lacks:
        return None
    if not pickup_groups:
        text = "has no pickup_group: its phone's keys blink but never pick up (the press dials)"
    else:
        text = "has no call_group: no key may pick up its calls"
    return Finding(
        "warn",
        f"endpoint {endpoint}",
        text,
        f"add `{'` and `'.join(f'{name} = 1' for name in lacks)}` to [{endpoint}] in "
        "pjsip.conf (the same number on the phones that may take each other's calls), then "
        "`asterisk -rx 'module reload res_pjsip.so'`",
    )
