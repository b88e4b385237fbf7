"""LED rules: an Asterisk state source mapped to a key on a phone, a light per state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.led.buttons import KeyLight

# ExtensionStatus numbers (docs/ASTERISK.md, Hints) as the names a rule's lights use.
HINT_STATES = {
    0: "idle", 1: "inuse", 2: "busy", 4: "unavailable", 8: "ringing", 9: "inuse&ringing",
    16: "hold", 17: "inuse&hold", -1: "unknown",
}  # fmt: skip

# A rule without a ``lights`` table: the key is on wherever Asterisk's own BLF lights a key
# (in use, busy, ringing, on hold; res_pjsip_exten_state), in the names of both device states
# and hint states, and off otherwise. Without it a rule that names no lights could never light.
BLF_LIGHTS: Mapping[str, str] = {
    state: "on"
    for state in ("inuse", "busy", "ringing", "ringinuse", "onhold",  # device states
                  "inuse&ringing", "hold", "inuse&hold")  # hint states (HINT_STATES)
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LedRule:
    """Key ``key`` of phone ``phone`` (a PJSIP AOR) follows ``device`` (a device state, e.g.
    ``Custom:DND201`` or ``park:701@parkedcalls``) or ``hint`` (an extension's hint state).
    ``lights`` maps lower-case state names to lights; other states get ``default``.
    A rule configured without ``lights`` gets :data:`BLF_LIGHTS`."""

    phone: str
    key: int
    device: str = ""
    hint: str = ""
    lights: Mapping[str, str] = field(default_factory=dict)
    default: str = "off"
    label: str = ""
    dial: str = ""
    action: str = ""

    def light(self, state: str) -> KeyLight:
        """What the key shows for this state of its source."""
        chosen = self.lights.get(state.lower(), self.default)
        return KeyLight(self.key, chosen, self.dial, self.action, self.label)
