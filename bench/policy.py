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

from diode.benchmark import (
    BUILTIN_START,
    BUILTIN_STEP,
    builtin_policy,
    builtin_records,
    policy_decisions,
    policy_pass,
)
from diode.policy.engine import PolicyEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
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
    print(
        json.dumps(
            {
                "benchmark": "policy",
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
