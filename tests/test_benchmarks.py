"""The benchmarks still run (figures are not judged here, only that every one is printed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_quick_benchmark_run_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.split(":")[0] in (
        "tracker", "render", "notifier", "chain")]  # fmt: skip
    assert {row.split(":")[0] for row in rows} == {"tracker", "render", "notifier", "chain"}
    for row in rows:  # "name  figure  unit": the figure is the second word from the end
        assert float(row.split()[-2].replace(",", "")) > 0, row
