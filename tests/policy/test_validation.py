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
        "rule shadowed by an earlier rule with the same action",
        "version: 1\nname: t\nrules:\n"
        "  - id: all\n    match: {glob: 'plant.*'}\n"
        "  - id: boiler\n    match: {exact: plant.boiler}\n    to: it.boiler\n",
        7,
        "rule 'boiler' never applies: rule 'all' comes first and matches every topic it does "
        "(exact plant.boiler), and the first matching rule decides; move 'boiler' above 'all'",
    ),
    (
        "rule whose except covers its whole match",
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {glob: 'plant.a*', except: ['plant.*']}\n",
        5,
        "rule 'a' matches no topic: its `except` covers every topic of glob plant.a* except "
        "plant.*",
    ),
    (
        "glob with an unclosed bracket",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {glob: 'plant.[ab'}\n",
        5,
        "glob 'plant.[ab' has an unclosed '['",
    ),
    (
        "bad glob in except",
        "version: 1\nname: t\nrules:\n  - id: a\n    match: {glob: 'p.*', except: ['p.[x']}\n",
        5,
        "glob 'p.[x' has an unclosed '['",
    ),
    (
        "a field type that is no JSON type",
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    value:\n      format: json\n      fields:\n        v: {type: float}\n",
        9,
        "rules.0.value.fields.v.type: Input should be 'string', 'number', 'integer', "
        "'boolean', 'object', 'array' or 'null', or a list of them",
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
    # the narrower rule first, so that it applies to its topic and the broad one to the rest
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - {id: b, match: {exact: p.x}, to: it.x}\n  - {id: a, match: {glob: 'p.*'}}\n"
        "  - {id: c, match: {glob: '*.y'}, to: it.y}\n"  # partly shadowed: q.y is its own
    )
    assert load_policy(write(text)).model.rules[0].to == "it.x"


def test_every_rule_kind_can_be_reported_as_never_applying(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - {id: cmds, match: {regex: 'plant\\.(cmd|sp)\\..*'}, action: drop}\n"
        "  - {id: cmd1, match: {glob: 'plant.cmd.*'}, action: drop}\n"
        "  - {id: sp, match: {exact: plant.sp.x}, action: drop}\n"
    )
    found = problems(write, text)
    assert [ln for ln, _ in found] == [5, 6]
    assert all("rule 'cmds' comes first" in msg for _, msg in found)


def test_an_earlier_rule_with_exceptions_does_not_count_as_covering(write: Write) -> None:
    # 'a' leaves out p.x, so 'b' does apply to it
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - {id: a, match: {glob: 'p.*', except: [p.x]}}\n"
        "  - {id: b, match: {exact: p.x}, to: it.x}\n"
    )
    assert len(load_policy(write(text)).model.rules) == 2


def test_structure_problems_do_not_hide_bad_patterns(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        "  - id: a\n    match: {regex: 'a(b'}\n"  # 5: bad regex
        "  - id: b\n    match: {glob: 'y.*', except: ['y[q']}\n"  # 7: bad glob
        "  - id: c\n    match: {exact: z}\n"
        "    deny: [{pattern: '(a+)+b', in: [body]}]\n"  # 10: bad `in` and a costly pattern
        "    colour: red\n"  # 11: unknown key
    )
    found = problems(write, text)
    assert [ln for ln, _ in found] == [5, 7, 10, 10, 11]
    msgs = [msg for _, msg in found]
    assert "topic regex 'a(b' is not a valid regex" in msgs[0]
    assert "glob 'y[q' has an unclosed '['" in msgs[1]
    assert {msgs[2].split(":")[0], msgs[3].split(" ")[0]} == {"rules.2.deny.0.in.0", "deny"}
    assert any("repeat inside a repeat" in m for m in msgs[2:4])
    assert msgs[4] == "unknown key 'rules.2.colour'"


def test_a_pattern_refused_by_the_model_is_reported_once(write: Write) -> None:
    text = "version: 1\nname: t\nnope: 1\nrules:\n  - id: a\n    match: {regex: '" + "a" * 300
    found = problems(write, text + "'}\n")
    assert [ln for ln, _ in found] == [3, 6], found
    assert "at most 256 characters" in found[1][1]


def test_a_value_that_fits_no_member_of_a_union_is_one_problem(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n"
        + OK_RULE
        + "    value:\n      format: json\n      fields:\n"
        "        a: {type: [string, float]}\n"
        "        b: {enum: [1, {x: 1}]}\n"
    )
    assert problems(write, text) == [
        (
            9,
            "rules.0.value.fields.a.type.1: Input should be 'string', 'number', 'integer', "
            "'boolean', 'object', 'array' or 'null'",
        ),
        (
            10,
            "rules.0.value.fields.b.enum.1: Input should be a valid string, integer, number "
            "or boolean",
        ),
    ]


def test_structure_problems_come_in_line_order(write: Write) -> None:
    text = (
        "version: 1\nname: t\nrules:\n  - id: -bad\n    match: {exact: a}\n"
        "    required_headers: ['']\n    prefix: 'a/b'\n"
        "    anomaly: {rate: {window_s: 0}}\n"
    )
    lines = [ln for ln, _ in problems(write, text)]
    assert lines == sorted(lines) == [4, 6, 7, 8]


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
