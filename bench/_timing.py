"""Timing and command-line helpers the micro-benchmarks share.

Imported as ``from _timing import ...``: benchmarks run as ``python bench/<name>.py``, which
puts this directory first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def median_rate(fn: Callable[[], object], units: int, runs: int, min_time: float) -> float:
    """Median over ``runs`` of units/s, each run repeating ``fn`` for at least ``min_time``."""
    rates = []
    for _ in range(runs):
        n = 0
        began = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - began
            if elapsed >= min_time:
                break
        rates.append(units * n / elapsed)
    return statistics.median(rates)


def parse_args(
    description: str, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, int, float]:
    """``--quick``, ``--json`` and ``--seed``; with the runs and the least time per run that
    ``--quick`` (a smoke run: few, short runs) or a full run asks for."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run: few, short runs")
    parser.add_argument("--json", action="store_true", help="print JSON (the only format)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    runs, min_time = (3, 0.05) if args.quick else (7, 0.3)
    return args, runs, min_time


def print_report(report: dict[str, Any]) -> None:
    """The benchmark's one JSON object on standard output."""
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
