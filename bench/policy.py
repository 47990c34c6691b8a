"""Policy engine throughput: decisions per second on one core.

A 20-rule policy (glob, exact and regex matches; every forwarding rule with a JSON Schema,
field rules, a deny pattern, a rate limit and the rate, size, field-drift and timestamp
detectors) judges 500-byte JSON records spread over 40 topics. Records are built before the
clock starts; ``now`` advances 10 us per record, as at 100k records/s. Prints one JSON object
with the median of several runs, for all-valid records (``decisions_per_s``) and for a mix
with 10% refused (``mixed_10pct_refused_decisions_per_s``).

    .venv/bin/python bench/policy.py            # full run, ~20 s
    .venv/bin/python bench/policy.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from diode.policy.engine import PolicyEngine
from diode.policy.loader import load_policy
from diode.protocol.records import Record

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["site", "tag", "value", "unit", "ts", "quality"],
    "properties": {
        "site": {"type": "string", "maxLength": 32},
        "tag": {"type": "string", "pattern": "^[A-Z0-9_.-]+$"},
        "value": {"type": "number"},
        "unit": {"enum": ["degC", "bar", "kW", "m3/h", "rpm"]},
        "ts": {"type": "integer"},
        "quality": {"enum": ["good", "bad", "uncertain"]},
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}

RULE = """\
  - id: area{i}
    match: {{glob: "plant.area{i}.*"}}
    prefix: "ot."
    max_bytes: 4096
    rate: {{records_per_s: 1000000, bytes_per_s: 1.0e9}}
    value:
      format: json
      schema: telemetry.json
      fields:
        value: {{type: number, required: true, min: -1.0e6, max: 1.0e6}}
        quality: {{enum: [good, bad, uncertain]}}
    deny:
      - pattern: '(?i)password\\s*[:=]'
    anomaly:
      rate: {{window_s: 1}}
      size: {{}}
      fields: {{value: {{}}}}
      timestamp: {{}}
"""

TAIL = """\
  - id: energy
    match: {exact: plant.energy.main}
    value: {format: json, schema: telemetry.json}
    anomaly: {size: {}, timestamp: {}}
  - id: orders
    match: {regex: "plant\\\\.orders\\\\.(line[0-9]+)"}
    value: {format: json, schema: telemetry.json}
    anomaly: {size: {}, timestamp: {}}
  - id: commands
    match: {glob: "plant.commands.*"}
    action: drop
"""


def write_policy(directory: Path) -> Path:
    (directory / "telemetry.json").write_text(json.dumps(SCHEMA))
    text = "version: 1\nname: bench\nquarantine_topic: diode.quarantine\nrules:\n"
    text += "".join(RULE.format(i=i) for i in range(17)) + TAIL
    path = directory / "bench.yaml"
    path.write_text(text)
    return path


def make_records(n: int, seed: int, bad_share: float = 0.0) -> list[Record]:
    rng = random.Random(seed)
    topics = [f"plant.area{i}.line{j}" for i in range(17) for j in range(2)]
    topics += ["plant.energy.main", "plant.orders.line1", "plant.orders.line2"]
    topics += ["plant.area3.line9", "plant.area5.line7", "plant.area9.line4"]
    out = []
    t0 = 1_700_000_000_000
    for k in range(n):
        doc = {
            "site": "plant-a",
            "tag": f"FIC-{rng.randrange(1000):03d}.PV",
            "value": round(50 + rng.gauss(0, 5), 3),
            "unit": "bar",
            "ts": t0 + k // 100,
            "quality": "unknown" if rng.random() < bad_share else "good",
            "meta": {"line": "3", "area": "north", "comment": ""},
        }
        body = json.dumps(doc, separators=(",", ":"))
        pad = 500 - len(body)
        doc["meta"]["comment"] = "x" * max(pad, 0)  # type: ignore[index]
        value = json.dumps(doc, separators=(",", ":")).encode()
        out.append(
            Record(
                topics[k % len(topics)],
                0,
                k,
                t0 + k // 100,
                b"FIC",
                value,
                (("source", b"historian"),),
            )
        )
    return out


def run_once(engine: PolicyEngine, records: list[Record], start: float) -> float:
    evaluate = engine.evaluate
    now = start
    t = time.perf_counter()
    for rec in records:
        evaluate(rec, now)
        now += 1e-5
    return len(records) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = 20_000 if args.quick else args.records
    runs = 2 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(write_policy(Path(tmp)))
    records = make_records(n, seed=7)
    sizes = [len(r.value or b"") for r in records]
    rates = []
    start = 1_700_000_000.0
    decisions: Counter[str] = Counter()
    for _ in range(runs):
        engine = PolicyEngine(policy)
        rates.append(run_once(engine, records, start))
        decisions = Counter()
        check = PolicyEngine(policy)
        now = start
        for rec in records:
            decisions[check.evaluate(rec, now).action.value] += 1
            now += 1e-5
    rate = statistics.median(rates)
    # the same, with 10% of records refused (schema and field violations: dropped), which
    # takes the slow path that builds reasons
    mixed_records = make_records(n, seed=8, bad_share=0.1)
    mixed = statistics.median(
        run_once(PolicyEngine(policy), mixed_records, start) for _ in range(runs)
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
