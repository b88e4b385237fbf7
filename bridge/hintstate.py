"""Keys that follow device states rather than channels: ``Custom:DND201``, ``park:701@parkedcalls``,
``Queue:…`` and the like, alone or in a composite hint (``PJSIP/201&Custom:DND201``).

Pure logic for the CallTracker: no I/O, no clock. Decisions:

- A hint device written ``Tech/resource`` (``PJSIP/201``, ``Local/…``) is a channel device: its
  calls come from channels, with their callers and pickup ids, and its device state adds nothing.
  Every other device (``Prefix:name``) has no channels; only its device state says anything.
- The device states of a hint's stateful devices are aggregated as Asterisk aggregates a hint
  (``ast_devstate_aggregate``, main/devicestate.c) and shown as Asterisk's own BLF shows the
  result (res_pjsip_exten_state, see the ``own-blf-*.log`` recordings): in use, busy, on hold,
  ringing while in use → one ``confirmed`` dialog; ringing → ``early``; idle, unavailable,
  unknown → no dialog. On hold also marks the key's side held, as Asterisk does.
- A parking space (``park:<space>@<context>``; the part after ``@`` is the lot's context) shows
  each call parked on it, with the parked caller, instead of its bare device state; a space that
  is in use while no parked call is known (ARI cannot always tell) falls back to the device state.
  A parked call carries no pickup ids: the key dials the space, which retrieves the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.devices import is_channel_device, park_space
from bridge.model import DEVICE_STATE_DIALOG, Dialog, DialogState, Direction

# ast_devstate_aggregate's order of precedence (main/devicestate.c, state_order[]).
_PRECEDENCE = {
    "INVALID": 0,
    "UNKNOWN": 1,
    "UNAVAILABLE": 2,
    "NOT_INUSE": 3,
    "ONHOLD": 4,
    "RINGING": 5,
    "INUSE": 6,
    "BUSY": 7,
    "RINGINUSE": 8,
}
_IN_USE = frozenset({"INUSE", "ONHOLD", "BUSY"})
_CONFIRMED = frozenset({"INUSE", "BUSY", "ONHOLD", "RINGINUSE"})


def aggregate(states: Iterable[str]) -> str:
    """Several devices' states as one, the way Asterisk aggregates the devices of a hint."""
    result, ringing, in_use = "INVALID", False, False
    for raw in states:
        state = raw.upper() if raw.upper() in _PRECEDENCE else "UNKNOWN"
        ringing |= state == "RINGING"
        in_use |= state in _IN_USE
        if ringing and in_use:
            result = "RINGINUSE"
        elif _PRECEDENCE[state] > _PRECEDENCE[result]:
            result = state
    return result


def device_dialog(state: str) -> Dialog | None:
    """The one dialog a key shows for an aggregate device state (None: the key is dark)."""
    if state in _CONFIRMED:
        return Dialog(DEVICE_STATE_DIALOG, Direction.RECIPIENT, DialogState.CONFIRMED,
                      local_held=state == "ONHOLD")  # fmt: skip
    if state == "RINGING":
        return Dialog(DEVICE_STATE_DIALOG, Direction.RECIPIENT, DialogState.EARLY)
    return None


@dataclass(slots=True)
class _Parked:
    uniqueid: str
    caller_num: str
    caller_name: str
    epoch: int
    since: float  # ``now`` when first parked (the panel's waiting time)


class HintStates:
    """Device states of the stateful hint devices and the calls waiting in parking spaces."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}  # normalized device → state name, upper case
        self._parked: dict[str, dict[str, _Parked]] = {}  # space → parked uniqueid → call

    def set_state(self, device: str, state: str) -> bool:
        """Remember a device's state; True if it changed. Channel devices are not kept."""
        if is_channel_device(device):
            return False
        state = state.strip().upper()
        if self._states.get(device) == state:
            return False
        self._states[device] = state
        return True

    def park(
        self, space: str, uniqueid: str, num: str, name: str, epoch: int, *, now: float = 0.0
    ) -> bool:
        """A call is parked on ``space`` (again, in a resync); True if the key must change."""
        calls = self._parked.setdefault(space, {})
        old = calls.get(uniqueid)
        calls[uniqueid] = _Parked(uniqueid, num, name, epoch, old.since if old else now)
        return old is None or (old.caller_num, old.caller_name) != (num, name)

    def unpark(self, uniqueid: str, space: str = "") -> set[str]:
        """A parked call left (or hung up); the spaces it was on."""
        spaces = [space] if space else list(self._parked)
        left: set[str] = set()
        for s in spaces:
            calls = self._parked.get(s)
            if calls is not None and calls.pop(uniqueid, None) is not None:
                left.add(s)
                if not calls:
                    del self._parked[s]
        return left

    def sweep(self, epoch: int) -> set[str]:
        """After a resync: forget the parked calls it did not list; the spaces that changed."""
        stale = {(s, c.uniqueid) for s, calls in self._parked.items() for c in calls.values()
                 if c.epoch != epoch}  # fmt: skip
        for space, uniqueid in stale:
            self.unpark(uniqueid, space)
        return {space for space, _ in stale}

    def dialogs(self, devices: Iterable[str]) -> tuple[Dialog, ...]:
        """The dialogs of a hint's devices that no channel stands for: its parked calls, then
        one dialog for the aggregate state of the rest."""
        parked: list[Dialog] = []
        states: list[str] = []
        for device in devices:
            if is_channel_device(device):
                continue
            space = park_space(device)
            calls = self._parked.get(space, {}) if space is not None else {}
            if calls:  # the parked calls explain the space's state
                parked += (Dialog(c.uniqueid, Direction.RECIPIENT, DialogState.CONFIRMED,
                                  c.caller_num, c.caller_name, since=c.since, parked=True)
                           for c in calls.values())  # fmt: skip
            elif device in self._states:
                states.append(self._states[device])
        rest = device_dialog(aggregate(states)) if states else None
        return (*parked, rest) if rest is not None else tuple(parked)

    def states(self, devices: Iterable[str]) -> dict[str, str]:
        """The last known state of each of these devices that has no channels (the panel
        tells do-not-disturb and unavailable from them)."""
        return {d: self._states[d] for d in devices if d in self._states}
