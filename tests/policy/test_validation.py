"""Invalid policies of every kind are rejected, each problem with its file and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from diode.errors import PolicyValidationError
from diode.policy import load_policy, load_policy_text
from diode.policy.loader import fingerprint

Write = Callable[..., Path]

OK_RULE = "  - id: ok\n    match: {exact: plant.ok}\n"


def problems(
    write: Write, text: str, schemas: dict[str, object] | None = None
) -> list[tuple[int, str]]:
    path = write(text, schemas=schemas)
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    assert all(f == str(path) for f, _, _ in info.value.problems)
    return [(line, msg) for _, line, msg in info.value.problems]


CASES: list[tuple[str, str, int, str]] = [
    (
        "unknown key",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    max_byte: 10\n",
        6,
        "unknown key 'rules.0.max_byte'",
    ),
    ("unknown top-level key", "version: 1\nname: t\nrulez: []\n", 3, "unknown key 'rulez'"),
    ("missing name", "version: 1\nrules: []\n", 1, "missing key 'name'"),
    ("wrong version", "version: 2\nname: t\n", 1, "version"),
    (
        "wrong type",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    max_bytes: lots\n",
        6,
        "max_bytes",
    ),
    (
        "bad action",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    action: allow\n",
        6,
        "action",
    ),
    (
        "two match kinds",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {exact: a, glob: 'b*'}\n",
        5,
        "exactly one of exact, glob or regex",
    ),
    (
        "to and prefix",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    to: x\n    prefix: y.\n",
        4,
        "not both",
    ),
    (
        "illegal topic name",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {exact: 'bad topic'}\n",
        5,
        "match.exact",
    ),
    (
        "bad topic regex",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {regex: 'a(b'}\n",
        5,
        "is not a valid regex",
    ),
    (
        "backreference in a topic regex",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {regex: '(a)\\1'}\n",
        5,
        "backreference",
    ),
    (
        "bad deny regex",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    deny:\n      - pattern: '[a-'\n",
        7,
        "not a valid regex",
    ),
    (
        "nested quantifier",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    deny:\n      - pattern: '(ab+)*c'\n",
        7,
        "repeat inside a repeat",
    ),
    (
        "quadratic deny regex",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    deny:\n      - pattern: 'a.*b'\n",
        7,
        "quadratic",
    ),
    (
        "backreference in a deny regex",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    deny:\n      - pattern: '(a)x\\1'\n",
        7,
        "backreference",
    ),
    (
        "lookahead in a deny regex",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    deny:\n      - pattern: 'a(?=b)'\n",
        7,
        "lookahead",
    ),
    (
        "too long deny regex",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    deny:\n      - pattern: '"
        + "a" * 300
        + "'\n",
        7,
        "more than the limit 256",
    ),
    (
        "too many ways to match",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    deny:\n      - pattern: '[a-z]{0,40}[a-z0-9]{0,40}x'\n",
        7,
        "ways",
    ),
    (
        "missing schema file",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    value: {format: json, schema: no.json}\n",
        6,
        "JSON Schema file 'no.json' not found",
    ),
    (
        "schema without json",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    value: {schema: s.json}\n",
        6,
        "need format: json",
    ),
    (
        "field detector without json",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    anomaly: {fields: {v: {}}}\n",
        6,
        "field detectors need value format: json",
    ),
    (
        "overlapping rules with different actions",
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {glob: 'plant.*'}\n"
        "  - id: b\n    match: {regex: 'plant\\.(x|y)[0-9]'}\n    action: drop\n",
        7,
        "overlaps rule 'a' (forward): both match topic 'plant.x0'",
    ),
    (
        "duplicate rule id",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "  - id: ok\n    match: {exact: x}\n",
        6,
        "already used",
    ),
    (
        "quarantine without topic",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {exact: x}\n    action: quarantine\n",
        4,
        "no quarantine_topic",
    ),
    (
        "quarantine by violation without topic",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {exact: x}\n"
        "    on_violation: {size: quarantine}\n",
        4,
        "no quarantine_topic",
    ),
    (
        "quarantine topic would cross",
        "version: 1\nname: t\nquarantine_topic: plant.q\nrules:\n"
        "  - id: a\n    match: {glob: 'plant.*'}\n",
        3,
        "would cross the diode",
    ),
    (
        "glob with characters no topic has",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {glob: 'plant/*'}\n",
        5,
        "characters no Kafka topic name can contain: '/'",
    ),
    (
        "regex that matches no topic",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {regex: 'plant/.*'}\n",
        5,
        "cannot match any legal Kafka topic name",
    ),
    ("YAML syntax", "version: 1\nname: [t\n", 3, "YAML"),
    ("duplicate YAML key", "version: 1\nname: t\nname: u\n", 3, "YAML"),
    ("not a mapping", "- a\n- b\n", 1, "a policy file is a YAML mapping"),
    (
        "rate without any limit",
        "version: 1\nname: t\nrules:\n" + OK_RULE + "    rate: {per: rule}\n",
        6,
        "records_per_s, bytes_per_s",
    ),
    (
        "burst_bytes below the rule's max_bytes",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    max_bytes: 4096\n    rate:\n      bytes_per_s: 100000\n      burst_bytes: 1000\n",
        9,
        "burst_bytes 1000 is smaller than max_bytes 4096",
    ),
    (
        "burst_bytes below the default max_bytes",
        "version: 1\nname: t\ndefaults: {max_bytes: 8192}\nrules:\n"
        + OK_RULE
        + "    rate: {bytes_per_s: 100000, burst_bytes: 4096}\n",
        7,
        "burst_bytes 4096 is smaller than max_bytes 8192 (from defaults)",
    ),
    (
        "rate on a drop rule",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    action: drop\n    rate: {records_per_s: 10}\n",
        7,
        "rule 'ok' has action drop: nothing it passes crosses the diode, so its `rate` is never",
    ),
    (
        "rate on a quarantine rule",
        "version: 1\nname: t\nquarantine_topic: ot.q\nrules:\n"
        + OK_RULE
        + "    action: quarantine\n    rate: {records_per_s: 10}\n",
        8,
        "rule 'ok' has action quarantine: nothing it passes crosses the diode",
    ),
    (
        "min above max",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    value:\n      format: json\n      fields:\n        v: {min: 5, max: 1}\n",
        9,
        "greater than max",
    ),
]


@pytest.mark.parametrize(("name", "text", "line", "needle"), CASES, ids=[c[0] for c in CASES])
def test_rejected_with_line(write: Write, name: str, text: str, line: int, needle: str) -> None:
    found = problems(write, text)
    assert any(needle in msg and ln == line for ln, msg in found), (name, found)


def test_invalid_schema_files(write: Write) -> None:
    text = "version: 1\nname: t\nrules:\n" + "".join(
        f"  - id: r{i}\n    match: {{exact: t{i}}}\n    value: {{format: json, schema: s{i}.json}}\n"
        for i in range(3)
    )
    path = write(
        text,
        schemas={"s0.json": {"type": "nosuch"}, "s2.json": {"$ref": "https://example.invalid/x"}},
    )
    (path.parent / "s1.json").write_text("{not json")
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    found = {line: msg for _, line, msg in info.value.problems}
    assert "is not a valid schema" in found[6]
    assert "is not valid JSON" in found[9]
    assert "s2.json" in found[12] and "is not a valid schema" in found[12]


def test_every_problem_reported_at_once(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {regex: 'x(('}\n"
        "  - id: b\n    match: {exact: y}\n    deny: [{pattern: '(a*)*'}]\n"
        "  - id: b\n    match: {exact: z}\n"
    )
    lines = [line for line, _ in problems(write, text)]
    assert lines == [5, 8, 9]


def test_except_removes_overlap(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {glob: 'plant.*', except: [plant.cmd, 'plant.sp.*']}\n"
        "  - id: b\n    match: {exact: plant.cmd}\n    action: drop\n"
        "  - id: c\n    match: {glob: 'plant.sp.*'}\n    action: drop\n"
    )
    assert len(load_policy(write(text)).model.rules) == 3


def test_same_action_overlap_is_allowed(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - {id: a, match: {glob: 'p.*'}}\n  - {id: b, match: {exact: p.x}, to: it.x}\n"
    )
    assert load_policy(write(text)).model.rules[1].to == "it.x"


def test_fingerprint_is_canonical(write: Write) -> None:
    a = "version: 1\nname: t\nrules:\n  - {id: a, match: {exact: x}}\n"
    b = (
        "# a comment\nname: t   # reordered\nversion: 1\n"
        "rules:\n  - match: {exact: x}\n    id: a\n    action: forward\n"
        "defaults: {max_bytes: 1048576}\n"
    )
    c = a.replace("exact: x", "exact: y")
    fa, fb, fc = (load_policy_text(t).fingerprint for t in (a, b, c))
    assert fa == fb
    assert fa != fc
    assert len(fa) == 64 and int(fa, 16) >= 0


def test_fingerprint_covers_schema_content(write: Write) -> None:
    text = "version: 1\nname: t\nrules:\n" + OK_RULE + "    value: {format: json, schema: s.json}\n"
    path = write(text, schemas={"s.json": {"type": "object"}})
    first = load_policy(path)
    (path.parent / "s.json").write_text('{"type": "array"}')
    second = load_policy(path)
    assert first.fingerprint != second.fingerprint
    assert second.fingerprint == fingerprint(second.model, second.schemas)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError) as info:
        load_policy(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


def test_overlap_check_that_cannot_decide_fails_closed(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diode.policy import patterns

    # the two patterns do overlap ('ab' and 14 more characters), deeper than the budget
    monkeypatch.setattr(patterns, "MAX_OVERLAP_STATES", 2000)
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {regex: '.*a.{15}'}\n"
        "  - id: b\n    match: {regex: '.*b.{14}'}\n    action: drop\n"
    )
    found = problems(write, text)
    assert len(found) == 1, found
    line, msg = found[0]
    assert line == 7
    assert "rule 'b' (drop)" in msg and "rule 'a' (forward)" in msg
    assert "could not be checked for overlap" in msg
    assert "simpler or disjoint" in msg and "except" in msg


def test_overlap_check_fails_closed_at_the_real_budget(write: Write) -> None:
    # disjoint in fact (the 16th-last character cannot be both), but only a search of the
    # whole product space could show it, and that is beyond the budget
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {regex: '.*a.{15}'}\n"
        "  - id: b\n    match: {regex: '.*b.{15}'}\n    action: drop\n"
    )
    found = problems(write, text)
    assert [ln for ln, _ in found] == [7]
    assert "could not be checked for overlap" in found[0][1]


def test_same_action_pairs_need_no_overlap_decision(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diode.policy import patterns

    monkeypatch.setattr(patterns, "MAX_OVERLAP_STATES", 2000)
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {regex: '.*a.{15}'}\n"
        "  - id: b\n    match: {regex: '.*b.{14}'}\n"
    )
    assert len(load_policy(write(text)).model.rules) == 2


def test_target_topic_names_must_be_legal(write: Write) -> None:
    text = "version: 1\nname: t\nrules:\n" + OK_RULE + "    to: '..'\n"
    found = problems(write, text)
    assert any(ln == 6 and "'..'" in msg and "reserved" in msg for ln, msg in found), found
