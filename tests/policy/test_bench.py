"""The built-in policy benchmark (``bench/policy.py``, and ``diode bench policy`` without
``--policy``) measures what it says: a 20-rule policy, 500-byte JSON records, schema and
anomaly checks on. Checked here without a clock; the speed itself is the benchmark's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from diode.benchmark import builtin_records, write_builtin_policy
from diode.policy import PolicyEngine, load_policy


def test_bench_policy_and_records_are_what_the_issue_asks(tmp_path: Path) -> None:
    policy = load_policy(write_builtin_policy(tmp_path))
    rules = policy.model.rules
    assert len(rules) == 20
    forwarding = [r for r in rules if r.action.value != "drop"]
    for r in forwarding:
        assert r.value is not None and r.value.format == "json" and r.value.schema_, r.id
        assert r.anomaly is not None and r.anomaly.size is not None, r.id
        assert r.anomaly.timestamp is not None, r.id
    records = builtin_records(400, seed=7)
    assert {len(r.value) for r in records} == {500}
    engine = PolicyEngine(policy)
    now = 1_700_000_000.0
    seen_rules: Counter[str] = Counter()
    for i, rec in enumerate(records):
        d = engine.evaluate(rec, now + i * 1e-5)
        assert d.action.value == "forward", (rec.topic, d.reasons)
        seen_rules[d.rule] += 1
    # the records reach every forwarding rule, so every rule's checks are measured
    assert set(seen_rules) == {r.id for r in forwarding}


def test_bench_mixed_records_are_refused_by_the_schema(tmp_path: Path) -> None:
    engine = PolicyEngine(load_policy(write_builtin_policy(tmp_path)))
    records = builtin_records(1000, seed=8, bad_share=0.1)
    decisions = [engine.evaluate(r, 1_700_000_000.0) for r in records]
    actions = Counter(d.action.value for d in decisions)
    assert set(actions) == {"forward", "drop"}
    assert 50 < actions["drop"] < 150
    # the slow path: the schema gives its reason, and the field rule too where there is one
    for d in decisions:
        if d.action.value == "drop":
            kinds = ["schema", "fields"] if d.rule.startswith("area") else ["schema"]
            assert [r.split(":")[0] for r in d.reasons] == kinds, d.reasons
