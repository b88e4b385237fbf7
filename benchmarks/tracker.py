"""CallTracker: how fast recorded Asterisk traffic goes through it, and whether memory stays flat.

The bundled recordings (six scenarios of a real Asterisk 22) are replayed round after round
through one tracker. Each round renames the channels so it is a set of new calls, as on a busy
PBX, rather than late events for calls the tracker has already buried.
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc

from benchmarks.timing import REPEAT, Row, median
from bridge.asterisk.ami_events import to_events
from bridge.demo.recording import Headers, bundled_recordings, load_recordings
from bridge.events import AsteriskEvent
from bridge.tracker import CallTracker, TrackerSettings

# Every header that names a channel: rewritten per round so each round is calls never seen before.
_RENAMED = ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid", "Channel", "DestChannel")


def recorded_traffic() -> tuple[list[AsteriskEvent], list[Headers]]:
    """The hints of the recorded PBX, and every recorded event the tracker is given, scenario
    after scenario, each scenario ending with all its channels hung up."""
    scenarios = load_recordings(bundled_recordings())
    first = next(iter(scenarios.values()))
    hints = [
        event
        for answer in first.answers.get("extensionstatelist", [])[:1]
        for frame in answer.frames
        for event in to_events(frame)
    ]
    frames: list[Headers] = []
    for scenario in scenarios.values():
        up: dict[str, str] = {}  # uniqueid → channel name, of channels not hung up yet
        for recorded in scenario.events:
            headers = recorded.headers
            if not to_events(headers):
                continue  # VarSet, Newexten, Bridge…: the AMI adapter drops them before the tracker
            frames.append(headers)
            uid = headers.get("Uniqueid", "")
            if headers.get("Event") == "Hangup":
                up.pop(uid, None)
            elif uid and "Channel" in headers:
                up.setdefault(uid, headers["Channel"])
        # pickup-replaces ends with the call still bridged; hang it up as the demo loop does, or
        # every round would leave live channels behind and the memory figure would mean nothing.
        frames += [
            {"Event": "Hangup", "Uniqueid": uid, "Channel": name, "Cause": "16"}
            for uid, name in up.items()
        ]
    return hints, frames


def round_events(frames: list[Headers], number: int) -> list[AsteriskEvent]:
    """The recorded traffic as round ``number``: the same calls under new channel ids."""
    # A fixed-width suffix keeps ids unique across rounds ("…540.5" + "000012") and keeps
    # Asterisk's "<epoch>.<sequence>" form that the tracker orders channels by.
    suffix = f"{number:06d}"
    events: list[AsteriskEvent] = []
    for headers in frames:
        renamed = dict(headers)
        for key in _RENAMED:
            if key in renamed:
                renamed[key] += suffix
        events += to_events(renamed)
    return events


def replay_rate(
    hints: list[AsteriskEvent], frames: list[Headers], rounds: int, batches: int
) -> tuple[float, int]:
    """Events per second through one long-lived tracker (median over batches of ``rounds``
    rounds), and the number of events in one round.

    Measures ``CallTracker.apply`` alone: renaming and AMI mapping happen before the clock starts.
    """
    tracker = CallTracker()
    for event in hints:
        tracker.apply(event, 0.0)
    number = 0
    rates: list[float] = []
    for batch in range(batches + 1):
        events: list[AsteriskEvent] = []
        for _ in range(rounds):
            number += 1
            events += round_events(frames, number)
        now = float(batch)  # the tracker reads `now` only for ids not in Asterisk's form
        gc.collect()
        start = time.perf_counter()
        for event in events:
            tracker.apply(event, now)
        elapsed = time.perf_counter() - start
        if batch:  # batch 0 is a warm-up: first-time code paths, dict and index growth
            rates.append(len(events) / elapsed)
    return median(rates), len(round_events(frames, 0))


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def memory(hints: list[AsteriskEvent], frames: list[Headers], max_tombstones: int) -> list[Row]:
    """Tracker memory (tracemalloc) as rounds of finished calls pile up.

    Every call of every round ends, so the only thing allowed to grow is the tombstone list, and
    it is bounded. Checkpoints: when the tombstones first get full, then two and three times as
    many rounds. Growth is taken between the last two: the tombstone dict only reaches its final
    table size after evictions have churned through it once (CPython resizes dicts on deletes too).
    """
    channels = sum(1 for h in frames if h.get("Event") == "Hangup")  # each ends in one
    fill = math.ceil(max_tombstones / channels) + 1  # rounds until the tombstones are full
    checkpoints = (fill, 2 * fill, 3 * fill)
    # Events are made while tracing, one round at a time, so the ids the tracker keeps are
    # counted (made before tracing they would not be) and each round's events are freed again.
    tracemalloc.start()
    try:
        base = _traced()
        tracker = CallTracker(TrackerSettings(max_tombstones=max_tombstones))
        for event in hints:
            tracker.apply(event, 0.0)
        sizes = {0: _traced() - base}
        for number in range(1, checkpoints[-1] + 1):
            for event in round_events(frames, number):
                tracker.apply(event, 0.0)
            if number in checkpoints:
                sizes[number] = _traced() - base
    finally:
        tracemalloc.stop()
    growth = (sizes[checkpoints[2]] - sizes[checkpoints[1]]) / (fill * channels)
    return [
        ("tracker: memory with hints only, no call yet", sizes[0] / 1024, "KiB"),
        *(
            (f"tracker: memory after {n} rounds ({n * channels} channels hung up)", sizes[n] / 1024,
             "KiB")
            for n in checkpoints
        ),
        (
            f"tracker: growth per hung-up channel, rounds {checkpoints[1]}-{checkpoints[2]}"
            f" (tombstone cap {max_tombstones})",
            growth,
            "B",
        ),
    ]  # fmt: skip


def run(quick: bool) -> list[Row]:
    """Every tracker figure."""
    hints, frames = recorded_traffic()
    rate, per_round = replay_rate(
        hints, frames, rounds=20 if quick else 100, batches=3 if quick else REPEAT
    )
    return [
        (f"tracker: recorded traffic replayed ({per_round} events per round)", rate, "events/s"),
        ("tracker: apply() per event", 1e6 / rate, "µs"),
        *memory(hints, frames, max_tombstones=256 if quick else TrackerSettings().max_tombstones),
    ]
