"""dialog-info rendering: the once-per-change lxml render against the per-watcher body.

The design bets on the ratio: one ``render()`` per state change, then only ``body(version)``
(two byte joins) per watcher. The figures show how much that saves for one watcher more.
"""

from __future__ import annotations

from benchmarks.timing import Row, seconds_per_call
from bridge.dialoginfo import DialogInfoDocument, RenderSettings, render
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds

SETTINGS = RenderSettings("pbx.example")

# The busiest key a phone shows in practice: a call ringing in, with the ids a pickup needs.
RINGING = Dialog(
    "1795325540.6",
    Direction.RECIPIENT,
    DialogState.EARLY,
    remote_num="201",
    remote_name="Phone 201",
    pickup=PickupIds("3c2a7b9e5f1d4a60@192.0.2.21", "as4f1e2d3c", "8d7e6f5a4b"),
)
# A second and third call on the same extension: one held, one outgoing still being set up.
HELD = Dialog(
    "1795325833.21",
    Direction.INITIATOR,
    DialogState.CONFIRMED,
    remote_num="205",
    remote_name="Phone 205",
    local_held=True,
)
CALLING = Dialog("1795325837.24", Direction.INITIATOR, DialogState.TRYING, remote_num="0301234567")

ONE_DIALOG = EntityState("202", (RINGING,))
THREE_DIALOGS = EntityState("202", (HELD, RINGING, CALLING))


def render_vs_body(state: EntityState, label: str, number: int) -> list[Row]:
    """µs per ``render()`` and per ``body(version)`` of one state, and how many bodies one
    render costs (the saving of rendering once per change instead of once per watcher)."""
    per_render = seconds_per_call(lambda: render(state, SETTINGS), number)
    document: DialogInfoDocument = render(state, SETTINGS)
    # A realistic version: watchers are past their first few NOTIFYs.
    per_body = seconds_per_call(lambda: document.body(1234), number * 10)
    return [
        (f"render: render(), {label}", per_render * 1e6, "µs"),
        (f"render: body(version), {label}", per_body * 1e6, "µs"),
        (f"render: render() / body(), {label}", per_render / per_body, "x"),
    ]


def run(quick: bool) -> list[Row]:
    """Every rendering figure."""
    number = 300 if quick else 2000
    return [
        *render_vs_body(ONE_DIALOG, "1 dialog", number),
        *render_vs_body(THREE_DIALOGS, "3 dialogs", number),
    ]
