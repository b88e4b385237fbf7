"""What the bridge knows about a watched extension: its calls as RFC 4235 dialogs.

These records are the CallTracker's output and the input of every side output (dialog-info
bodies, LED messages, the web panel). They are immutable so one instance can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Direction(StrEnum):
    """RFC 4235 ``direction``: who sent the INVITE, seen from the watched entity."""

    INITIATOR = "initiator"  # the entity's own outgoing call
    RECIPIENT = "recipient"  # a call to the entity


# The id of the one dialog a key gets from device states (``Custom:DND201``), not a channel.
DEVICE_STATE_DIALOG = "devstate"


class DialogState(StrEnum):
    """RFC 4235 dialog states the bridge reports."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class PickupIds:
    """The ids a watcher needs to take a ringing call with ``INVITE … Replaces``.

    Already in the watched entity's view (RFC 4235 ``local-tag`` is the ringing phone's tag,
    ``remote-tag`` Asterisk's tag), so the renderer writes them as they are.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    endpoint: str = ""  # the ringing PJSIP endpoint, whose call_group the pickup policy checks


@dataclass(frozen=True, slots=True)
class Dialog:
    """One call of a watched entity."""

    id: str  # stable per call and entity; the Asterisk channel Uniqueid of the entity's leg
    direction: Direction
    state: DialogState
    remote_num: str = ""  # the other party, for the phone's display
    remote_name: str = ""
    pickup: PickupIds | None = None  # only for a ringing incoming PJSIP leg whose ids are known
    local_held: bool = False  # the entity put the call on hold
    remote_held: bool = False  # the other party put the call on hold
    remote_hidden: bool = False  # the other party restricted its presentation: never shown
    # For the panel only (not part of a key's state, so not compared): when the call began or
    # was answered, on the caller's clock (``now``; 0.0: unknown), and whether it waits parked.
    since: float = field(default=0.0, compare=False)
    parked: bool = field(default=False, compare=False)
    answered: bool = field(default=True, compare=False)  # False: still being placed


@dataclass(frozen=True, slots=True)
class EntityState:
    """Everything a watcher of one extension is told: the extension and its current dialogs."""

    exten: str
    dialogs: tuple[Dialog, ...] = ()
    known: bool = True  # False while Asterisk is unreachable: the state is not trustworthy

    def summary(self) -> str:
        """One line for the log, what the key shows: ``ringing, caller Phone 201 <201>, …``."""
        if not self.dialogs:
            return "idle" if self.known else "unknown (no word from Asterisk yet)"
        calls = "; ".join(_describe(d) for d in self.dialogs)
        return calls if self.known else f"{calls} (last known, not confirmed by Asterisk)"


def _describe(dialog: Dialog) -> str:
    if dialog.id == DEVICE_STATE_DIALOG:
        busy = "on hold" if dialog.local_held else "in use"
        return f"{'ringing' if dialog.state is DialogState.EARLY else busy} (device state)"
    party = _party(dialog)
    if dialog.state is DialogState.EARLY and dialog.direction is Direction.RECIPIENT:
        ids = "pickup ids ready" if dialog.pickup is not None else "no pickup ids"
        return f"ringing, caller {party}, {ids}"
    if dialog.state in (DialogState.TRYING, DialogState.PROCEEDING, DialogState.EARLY):
        return f"calling {party}"
    hold = " (on hold)" if dialog.local_held or dialog.remote_held else ""
    return f"in a call with {party}{hold}"


def _party(dialog: Dialog) -> str:
    if dialog.remote_hidden:
        return "a withheld number"
    if dialog.remote_name and dialog.remote_num:
        return f"{dialog.remote_name} <{dialog.remote_num}>"
    return dialog.remote_name or dialog.remote_num or "an unknown party"
