"""``python -m benchmarks [--quick]``: run every benchmark and print the figures as one table."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from benchmarks import chain, notifier, render, tracker
from benchmarks.timing import Row

# In the order of the path an event takes through the bridge.
BENCHMARKS: tuple[Callable[[bool], list[Row]], ...] = (
    tracker.run,
    render.run,
    notifier.run,
    chain.run,
)


def figure(value: float) -> str:
    """Three significant digits at least, thousands grouped: easy to compare by eye."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """Rows aligned in columns: name left, figure right, unit left."""
    cells = [(name, figure(value), unit) for name, value, unit in rows]
    header = ("benchmark", "figure", "unit")
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]
    lines = [
        f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit}"
        for name, value, unit in [header, tuple("-" * w for w in widths), *cells]
    ]
    return "\n".join(line.rstrip() for line in lines)


def main() -> None:
    """Parse the arguments, run the benchmarks, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[Row] = []
    for run in BENCHMARKS:
        rows += run(args.quick)
    elapsed = time.perf_counter() - started
    sizes = "quick sizes" if args.quick else "full sizes"
    print(f"snom-blf-bridge benchmarks ({sizes}), Python {platform.python_version()}")
    print(table(rows))
    print(f"finished in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
