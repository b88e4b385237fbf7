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


def test_connection_benchmark_runs_against_the_real_bridge() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.connections", "--connections", "64"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("connections[")]
    assert len(rows) == 2 * 10, done.stdout  # ten figures on each loop
    answers = [float(row.split()[-2]) for row in rows if "OPTIONS answer" in row]
    assert answers and all(ms > 0 for ms in answers), rows  # -1: a connection went unanswered


def test_every_benchmark_module_imports() -> None:
    """The benchmarks not run here (targets, attacks, load, soak, failover …) still import:
    a name moved in the package must not break them unseen."""
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__main__")
    code = "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module('benchmarks.'+n)"
    result = subprocess.run([sys.executable, "-c", code, *names], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_wire_benchmark_times_every_watcher_and_a_subscribe_mid_fan_out() -> None:
    """benchmarks.wire, tiny: every figure printed, the mid-burst SUBSCRIBE answered, the
    floor round's NOTIFYs all counted (kernel arrival stamps: CI may not capture)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.wire", "--watchers", "1,500", "--rounds", "1",
         "--capture", "socket"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("wire, ")]
    # first/p50/p99 per size; at 500 the spread and the SUBSCRIBE as well
    assert len(rows) == 3 + 5, done.stdout
    for row in rows:
        assert " ms" in row and "no 200" not in row, row
    floor = [line for line in done.stdout.splitlines() if line.startswith("floor, 500 ")]
    assert len(floor) == 2 and "x (" in floor[1], done.stdout  # the spread, and the ratio
