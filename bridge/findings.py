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
