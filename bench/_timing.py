"""Command-line helpers the micro-benchmarks share, and the package's timing helper.

``median_rate`` lives in ``diode.benchmark`` (``diode bench`` times with it too) and is
re-exported here.

Imported as ``from _timing import ...``: benchmarks run as ``python bench/<name>.py``, which
puts this directory first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from diode.benchmark import median_rate

__all__ = ["median_rate", "parse_args", "print_report"]


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
