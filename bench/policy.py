"""Policy engine throughput: decisions per second on one core.

A 20-rule policy (glob, exact and regex matches; every forwarding rule with a JSON Schema,
field rules, a deny pattern, a rate limit and the rate, size, field-drift and timestamp
detectors) judges 500-byte JSON records spread over 40 topics. Records are built before the
clock starts; ``now`` advances 10 us per record, as at 100k records/s. Prints one JSON object
with the median of several runs, for all-valid records (``decisions_per_s``) and for a mix
with 10% refused (``mixed_10pct_refused_decisions_per_s``). Policy, records and the timed
pass are ``diode.benchmark``'s built-in ones, what ``diode bench policy`` measures by
default (there per CPU second, here by the wall clock).

    .venv/bin/python bench/policy.py            # full run, ~20 s
    .venv/bin/python bench/policy.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from diode.benchmark import (
    BUILTIN_START,
    BUILTIN_STEP,
    builtin_policy,
    builtin_records,
    policy_decisions,
    policy_pass,
)
from diode.policy.engine import PolicyEngine
from diode.policy.loader import load_policy


def load_seconds(n: int) -> float:
    """Seconds to load a policy of ``n`` rules (exact, glob and regex matches in turn)."""
    lines = ["version: 1", "name: many", "rules:"]
    for i in range(n):
        match = (
            f'{{exact: "plant.area{i}.telemetry"}}',
            f'{{glob: "plant.line{i}.*"}}',
            f'{{regex: "plant\\\\.cell{i}\\\\.[a-z]+"}}',
        )[i % 3]
        lines.append(f'  - id: r{i}\n    match: {match}\n    prefix: "ot."')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.yaml"
        path.write_text("\n".join(lines) + "\n")
        began = time.perf_counter()
        policy = load_policy(path)
        elapsed = time.perf_counter() - began
    assert len(policy.model.rules) == n
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--load-rules", type=int, default=300, help="rules of the policy timed to load")
    args = ap.parse_args()
    n = 20_000 if args.quick else args.records
    runs = 2 if args.quick else args.runs
    policy = builtin_policy()
    records = builtin_records(n, seed=7)
    sizes = [len(r.value or b"") for r in records]
    rates = []
    start, step = BUILTIN_START, BUILTIN_STEP
    for _ in range(runs):
        rates.append(policy_pass(PolicyEngine(policy), records, start, step))
    decisions = policy_decisions(policy, records, start, step)
    rate = statistics.median(rates)
    # the same, with 10% of records refused (schema and field violations: dropped), which
    # takes the slow path that builds reasons
    mixed_records = builtin_records(n, seed=8, bad_share=0.1)
    mixed = statistics.median(
        policy_pass(PolicyEngine(policy), mixed_records, start, step) for _ in range(runs)
    )
    load_s = load_seconds(args.load_rules)
    print(
        json.dumps(
            {
                "benchmark": "policy",
                # loading and validating (overlap and never-applies checks) a policy of many
                # rules: a reload blocks the sender's loop for this long
                "load_rules": args.load_rules,
                "load_seconds": round(load_s, 3),
                "rules": len(policy.model.rules),
                "records": n,
                "value_bytes_median": statistics.median(sizes),
                "decisions_per_s": round(rate),
                "us_per_decision": round(1e6 / rate, 2),
                "runs": [round(r) for r in rates],
                "mixed_10pct_refused_decisions_per_s": round(mixed),
                "decisions": dict(decisions),
                "target_per_s": 100_000,
                "python": platform.python_version(),
                "machine": platform.machine(),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
