"""Fresh identifiers for every round of the demo's replay loop.

A recording replayed twice would say the same Uniqueids again, and a bridge rightly ignores news
of channels that have hung up (the tracker's tombstones): the demo went quiet after its first
round. Each round therefore renames what identifies a call, the same way in the AMI and the ARI
server: a channel's Uniqueid/id (and Linkedid) moves ``number`` * 100000 s later, which keeps
Asterisk's ``<epoch>.<sequence>`` shape and order; a channel name's sequence suffix moves by
``number`` * 0x100000; SIP Call-IDs and tags get ``-r<number>``. Round 0 is the recording as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SECONDS = 100_000  # per round: far beyond the span of any recording
SEQUENCES = 0x100000  # per round, added to a channel name's 8 hex digits
_UNIQUEID = re.compile(r"^(\d+)\.(\d+)$")
_CHANNEL = re.compile(r"^(.+-)([0-9a-f]{8})(;\d+)?$")
_SIP_VARIABLES = frozenset({"CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)",
                            "CHANNEL(pjsip,remote_tag)"})  # fmt: skip
Json = dict[str, object]


class RoundIds:
    """How identifiers are renamed in one round (module docstring)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def uniqueid(self, value: str) -> str:
        """A Uniqueid / Linkedid / ARI channel id of this round."""
        m = _UNIQUEID.match(value)
        if not self.number or m is None:
            return value
        return f"{int(m[1]) + self.number * SECONDS}.{m[2]}"

    def channel(self, name: str) -> str:
        """A channel name of this round (``PJSIP/201-0000004f``)."""
        return self._shift_channel(name, self.number)

    def recorded_channel(self, name: str) -> str:
        """The recorded name of a channel of this round (for the recorded variables)."""
        return self._shift_channel(name, -self.number)

    def variable(self, variable: str, value: str) -> str:
        """A channel variable's value this round: the SIP ids are fresh too."""
        if not self.number or not value or variable not in _SIP_VARIABLES:
            return value
        return self.sip_id(value)

    def sip_id(self, value: str) -> str:
        """A SIP Call-ID or tag of this round."""
        return f"{value}-r{self.number}" if self.number and value else value

    def ami(self, headers: Mapping[str, str]) -> dict[str, str]:
        """An AMI message with this round's identifiers."""
        if not self.number:
            return dict(headers)
        out: dict[str, str] = {}
        for key, value in headers.items():
            lower = key.lower()
            if lower.endswith(("uniqueid", "linkedid")) and not lower.startswith("bridge"):
                out[key] = self.uniqueid(value)
            elif lower.endswith("channel"):
                out[key] = self.channel(value)
            else:
                out[key] = value
        return out

    def ari(self, event: Mapping[str, object]) -> Json:
        """An ARI event (or REST object) with this round's identifiers."""
        renamed = self._ari(event)
        assert isinstance(renamed, dict)
        return renamed

    def _ari(self, value: object) -> object:
        if not self.number:
            return value
        if isinstance(value, list):
            return [self._ari(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        out: Json = {str(k): self._ari(v) for k, v in value.items()}
        if isinstance(out.get("channels"), list):  # a bridge's members: channel ids
            out["channels"] = [self.uniqueid(c) if isinstance(c, str) else c
                               for c in value["channels"]]  # fmt: skip
        if {"id", "name", "state"} <= out.keys():  # a channel object
            for key, rename in (("id", self.uniqueid), ("name", self.channel),
                                ("protocol_id", self.sip_id)):  # fmt: skip
                if isinstance(out.get(key), str):
                    out[key] = rename(str(out[key]))
        return out

    @staticmethod
    def _shift_channel(name: str, rounds: int) -> str:
        m = _CHANNEL.match(name)
        if not rounds or m is None:
            return name
        sequence = (int(m[2], 16) + rounds * SEQUENCES) % (1 << 32)
        return f"{m[1]}{sequence:08x}{m[3] or ''}"
