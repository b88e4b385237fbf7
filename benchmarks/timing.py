"""What every benchmark shares: the row type and a median-of-repetitions timer."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

# (what was measured, the figure, its unit): one line of the printed table.
Row = tuple[str, float, str]

REPEAT = 5  # repetitions per figure; the median shrugs off one run disturbed by the machine


def seconds_per_call(action: Callable[[], object], number: int, repeat: int = REPEAT) -> float:
    """Median over ``repeat`` runs of the time one call of ``action`` takes (``number`` calls
    per run, so the timer's own cost is spread thin). The figure includes one Python call and
    loop step, a few tens of ns: it matters only for the sub-µs figures."""
    runs = []
    for _ in range(repeat):
        # Collect first so one run does not pay for the garbage of the previous one.
        gc.collect()
        start = time.perf_counter()
        for _ in range(number):
            action()
        runs.append((time.perf_counter() - start) / number)
    return statistics.median(runs)


def median(values: list[float]) -> float:
    """The median of repeated measurements (a name that reads well at the call site)."""
    return statistics.median(values)
