"""Records made up from a policy (``diode.policy.samples``): every one is forwarded, they
cover each forwarding rule, and they respect the rule's schema, fields, size and rates."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jsonschema_rs
import msgspec
import pytest

from diode.errors import PolicyError
from diode.policy import Policy, PolicyEngine, load_policy
from diode.policy.samples import SampleStream, _instance, _regex_example, sample_stream

ROOT = Path(__file__).resolve().parents[2]
WriteFn = Callable[..., Path]


def _judge(policy: Policy, stream: SampleStream) -> Counter[str]:
    engine = PolicyEngine(policy)
    now = stream.start
    actions: Counter[str] = Counter()
    for record in stream.records:
        actions[engine.evaluate(record, now).action.value] += 1
        now += stream.step
    return actions


@pytest.mark.parametrize("name", ["bottling-plant", "water-utility", "default"])
def test_example_policies_forward_every_record_made_up_for_them(name: str) -> None:
    policy = load_policy(ROOT / "policies" / f"{name}.yaml")
    stream = sample_stream(policy, 3000)
    assert len(stream.records) == 3000 and stream.skipped == ()
    assert _judge(policy, stream) == Counter({"forward": 3000})
    engine = PolicyEngine(policy)
    forwarding = {r.id for r in policy.model.rules if r.action.value in ("forward", "alert")}
    covered = {engine.rule_for(t).id for t in stream.topics}  # type: ignore[union-attr]
    assert covered == forwarding
    # names that read like topics: no empty segment, no leading or trailing dot
    assert all(re.fullmatch(r"[^.]+(\.[^.]+)*", t) for t in stream.topics), stream.topics


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[a-z0-9-]{1,32}$",
        r"^[A-Z]{1,4}-[0-9]{1,5}(\.[A-Z]{1,4})?$",
        r"^(PO|WO)-\d{4}-\d{6}$",
        r"[^x]{3}\s\w+",
        r"^(?:red|green)+$",
        r"(?i)^pump",
    ],
)
def test_regex_examples_match_their_pattern(pattern: str) -> None:
    example = _regex_example(pattern)
    assert example is not None and re.search(pattern, example), example


def test_schema_instances_are_valid() -> None:
    schema = {
        "$defs": {"quality": {"enum": ["good", "bad"]}},
        "type": "object",
        "required": ["id", "q", "n", "tags", "when", "kind", "extra"],
        "additionalProperties": {"type": "integer", "minimum": 7},
        "properties": {
            "id": {"type": "string", "minLength": 4, "maxLength": 6},
            "q": {"$ref": "#/$defs/quality"},
            "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20, "multipleOf": 3},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
            "nested": {"allOf": [{"properties": {"x": {"type": "number"}}, "required": ["x"]}]},
            "mode": {"type": ["null", "boolean"]},
        },
    }
    instance = _instance(schema, schema, 0)
    assert jsonschema_rs.validator_for(schema).is_valid(instance), instance


def test_values_meet_field_rules_size_limits_and_required_headers(write: WriteFn) -> None:
    path = write(
        """\
version: 1
name: t
rules:
  - id: tele
    match: {glob: "plant.*.pv"}
    max_bytes: 300
    required_headers: [source, site]
    value:
      format: json
      fields:
        value: {type: number, required: true, min: 10, max: 20}
        status.code: {type: integer, required: true, min: 3, max: 3}
        unit: {enum: [degC, bar]}
"""
    )
    policy = load_policy(path)
    stream = sample_stream(policy, 200, value_size=1000)
    assert _judge(policy, stream) == Counter({"forward": 200})
    record = stream.records[0]
    doc = msgspec.json.decode(record.value or b"")
    assert (
        10 <= doc["value"] <= 20 and doc["status"]["code"] == 3 and doc["unit"] in ("degC", "bar")
    )
    assert {h for h, _ in record.headers} == {"source", "site"}
    # padded towards 1000 bytes, but the record stays within max_bytes
    assert 250 < record.size <= 300


def test_values_are_padded_within_a_closed_schema(write: WriteFn) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["tag", "note"],
        "properties": {
            "tag": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "note": {"type": "string", "maxLength": 100},
            "text": {"type": "string", "maxLength": 150},
        },
    }
    path = write(
        """\
version: 1
name: t
rules:
  - id: a
    match: {exact: plant.a}
    value: {format: json, schema: s.json}
""",
        schemas={"s.json": schema},
    )
    policy = load_policy(path)
    stream = sample_stream(policy, 10, value_size=500)
    doc = msgspec.json.decode(stream.records[0].value or b"")
    # no room for a property of its own: the free strings grow to their limits
    assert len(doc["note"]) == 100 and len(doc["text"]) == 150 and len(doc["tag"]) == 2
    assert _judge(policy, stream) == Counter({"forward": 10})


def test_topics_avoid_carve_outs_and_earlier_rules(write: WriteFn) -> None:
    path = write(
        """\
version: 1
name: t
rules:
  - id: secret
    match: {exact: plant.line1.secret}
    action: drop
  - id: lines
    match: {glob: "plant.line1.*", except: [plant.line1.secret, "plant.line1.a*"]}
"""
    )
    policy = load_policy(path)
    stream = sample_stream(policy, 100, topics_per_rule=6)
    assert len(stream.topics) == 6
    for topic in stream.topics:
        assert topic.startswith("plant.line1.") and topic != "plant.line1.secret"
        assert not topic.startswith("plant.line1.a")
    assert _judge(policy, stream) == Counter({"forward": 100})


def test_stream_stays_below_every_rate_limit(write: WriteFn) -> None:
    path = write(
        """\
version: 1
name: t
rules:
  - id: slow
    match: {glob: "plant.slow.*"}
    rate: {records_per_s: 10}
  - id: shared
    match: {glob: "plant.shared.*"}
    rate: {records_per_s: 40, per: rule}
  - id: bytes
    match: {glob: "plant.bytes.*"}
    rate: {bytes_per_s: 100000}
"""
    )
    policy = load_policy(path)
    stream = sample_stream(policy, 5000, topics_per_rule=4)
    assert len(stream.topics) == 12
    # each slow topic gets 1/12 of the stream, at most half its 10 records/s
    assert stream.records_per_s <= 0.5 * 10 * 12
    assert _judge(policy, stream) == Counter({"forward": 5000})


def test_no_record_forwarded_names_each_rule_and_why(write: WriteFn) -> None:
    path = write(
        """\
version: 1
name: t
quarantine_topic: diode.quarantine
rules:
  - id: braces
    match: {glob: "plant.a.*"}
    deny: [{pattern: '[{]'}]
  - id: tiny
    match: {glob: "plant.b.*"}
    max_bytes: 10
    value: {format: json}
  - id: off
    match: {glob: "plant.c.*"}
    action: quarantine
"""
    )
    with pytest.raises(PolicyError) as err:
        sample_stream(load_policy(path), 10)
    message = str(err.value)
    assert "forwards none of the records made up for its rules" in message
    assert "rule 'braces': deny: value matches" in message
    assert "rule 'tiny': size:" in message
    assert "'off'" not in message  # quarantine never forwards: not a rule to measure
