"""Every rule kind, allowing and refusing; actions, targets, severity and fingerprints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from diode.policy import Action, PolicyEngine
from diode.protocol.records import Record

NOW = 1_700_000_000.0
Engine = Callable[..., PolicyEngine]
Make = Callable[..., Record]

HEAD = "version: 1\nname: t\nquarantine_topic: ot.q\nrules:\n"


def test_default_deny(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(HEAD + "  - id: a\n    match: {exact: plant.a}\n")
    d = e.evaluate(make_record("plant.b"), NOW)
    assert d.action is Action.DROP
    assert d.rule == "default-deny"
    assert d.target_topic is None
    assert e.evaluate(make_record("plant.a"), NOW).action is Action.FORWARD
    assert e.counts[("default-deny", "drop", "default-deny")] == 1


def test_empty_policy_denies_everything(engine_of: Engine, make_record: Make) -> None:
    e = engine_of("version: 1\nname: empty\n")
    assert e.evaluate(make_record("anything"), NOW).rule == "default-deny"


@pytest.mark.parametrize(
    ("match", "yes", "no"),
    [
        ("{exact: plant.a}", ["plant.a"], ["plant.ab", "plant", "xplant.a"]),
        ('{glob: "plant.*"}', ["plant.a", "plant.a.b", "plant."], ["plantx", "other.plant.a"]),
        ('{glob: "line?.t[0-3]"}', ["line1.t0", "lineX.t3"], ["line12.t0", "line1.t4"]),
        ('{glob: "l.[!0-3]"}', ["l.4", "l.x"], ["l.1", "l.44"]),
        (r'{regex: "plant\\.(a|b)[0-9]+"}', ["plant.a1", "plant.b22"], ["plant.c1", "plant.a1x"]),
        ('{glob: "p.*", except: [p.secret, "p.tmp.*"]}', ["p.x"], ["p.secret", "p.tmp.1"]),
    ],
)
def test_match_kinds(
    engine_of: Engine, make_record: Make, match: str, yes: list[str], no: list[str]
) -> None:
    e = engine_of(HEAD + f"  - id: r\n    match: {match}\n")
    for t in yes:
        assert e.evaluate(make_record(t), NOW).rule == "r", t
    for t in no:
        assert e.evaluate(make_record(t), NOW).rule == "default-deny", t


def test_targets_rename_prefix_and_same(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD
        + "  - {id: a, match: {exact: s.a}, to: it.alpha}\n"
        + '  - {id: b, match: {glob: "s.b*"}, prefix: "ot."}\n'
        + "  - {id: c, match: {exact: s.c}}\n"
    )
    assert e.evaluate(make_record("s.a"), NOW).target_topic == "it.alpha"
    assert e.evaluate(make_record("s.b1"), NOW).target_topic == "ot.s.b1"
    assert e.evaluate(make_record("s.c"), NOW).target_topic == "s.c"


def test_prefixed_name_too_long_is_dropped(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(HEAD + '  - {id: a, match: {glob: "s.*"}, prefix: "' + "p" * 200 + '"}\n')
    d = e.evaluate(make_record("s." + "x" * 60), NOW)
    assert d.action is Action.DROP
    (reason,) = d.reasons
    # shortened, and says so inside the quotes, with the length and the limit
    assert reason == (
        f"target topic {'p' * 60 + '...'!r} (262 characters) is not a legal Kafka topic name: "
        "longer than 249 characters"
    )


def test_illegal_target_shown_in_full_has_no_ellipsis(engine_of: Engine, make_record: Make) -> None:
    e = engine_of("version: 1\nname: t\nrules:\n  - {id: a, match: {glob: '*'}}\n")
    d = e.evaluate(make_record("bad topic"), NOW)
    assert d.action is Action.DROP
    assert d.reasons == (
        "target topic 'bad topic' is not a legal Kafka topic name: ' ' is not one of "
        "[a-zA-Z0-9._-]",
    )


def test_rule_actions(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD
        + "  - {id: f, match: {exact: t.f}, action: forward}\n"
        + "  - {id: a, match: {exact: t.a}, action: alert}\n"
        + "  - {id: q, match: {exact: t.q}, action: quarantine}\n"
        + "  - {id: d, match: {exact: t.d}, action: drop}\n"
    )
    f, a, q, d = (e.evaluate(make_record(t), NOW) for t in ("t.f", "t.a", "t.q", "t.d"))
    assert (f.action, f.target_topic) == (Action.FORWARD, "t.f")
    assert (a.action, a.target_topic) == (Action.ALERT, "t.a")
    assert a.reasons
    assert (q.action, q.target_topic) == (Action.QUARANTINE, "ot.q")
    assert (d.action, d.target_topic, d.rule) == (Action.DROP, None, "d")
    assert f.crosses and a.crosses and not q.crosses and not d.crosses


def test_max_bytes_counts_key_value_and_headers(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(HEAD + "  - {id: s, match: {exact: t}, max_bytes: 10}\n")
    assert e.evaluate(make_record("t", b"12345", key=b"12345"), NOW).action is Action.FORWARD
    d = e.evaluate(make_record("t", b"12345", key=b"123456"), NOW)
    assert d.action is Action.DROP
    assert d.reasons == ("size: record is 11 bytes, more than max_bytes 10",)
    d = e.evaluate(make_record("t", b"1234", headers=(("h", b"123456"),)), NOW)
    assert d.action is Action.DROP


def test_default_max_bytes_applies(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        "version: 1\nname: t\ndefaults: {max_bytes: 4}\nrules:\n  - {id: s, match: {exact: t}}\n"
    )
    assert e.evaluate(make_record("t", b"1234"), NOW).action is Action.FORWARD
    assert e.evaluate(make_record("t", b"12345"), NOW).action is Action.DROP


def test_records_per_second_with_burst_and_refill(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD + "  - {id: r, match: {exact: t}, rate: {records_per_s: 10, burst_records: 3}}\n"
    )
    got = [e.evaluate(make_record("t"), NOW).action for _ in range(5)]
    assert got == [Action.FORWARD] * 3 + [Action.DROP] * 2
    d = e.evaluate(make_record("t"), NOW)
    assert d.reasons[0].startswith("rate: more than 10 records/s")
    # 0.1 s later one token is back, not two
    assert e.evaluate(make_record("t"), NOW + 0.1).action is Action.FORWARD
    assert e.evaluate(make_record("t"), NOW + 0.1).action is Action.DROP
    # a long pause refills only up to the burst
    later = [e.evaluate(make_record("t"), NOW + 100).action for _ in range(4)]
    assert later == [Action.FORWARD] * 3 + [Action.DROP]


def test_bytes_per_second(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD + "  - {id: r, match: {exact: t}, max_bytes: 250,\n"
        "      rate: {bytes_per_s: 100, burst_bytes: 250}}\n"
    )
    v = b"x" * 100
    got = [e.evaluate(make_record("t", v), NOW).action for _ in range(3)]
    assert got == [Action.FORWARD, Action.FORWARD, Action.DROP]
    # a record refused by the bytes bucket did not take tokens: 50 left + 50 after 0.5 s
    assert e.evaluate(make_record("t", v), NOW + 0.5).action is Action.FORWARD


def test_rate_per_topic_and_per_rule(engine_of: Engine, make_record: Make) -> None:
    per_topic = engine_of(
        HEAD + '  - {id: r, match: {glob: "t.*"}, rate: {records_per_s: 1, burst_records: 1}}\n'
    )
    assert per_topic.evaluate(make_record("t.a"), NOW).action is Action.FORWARD
    assert per_topic.evaluate(make_record("t.b"), NOW).action is Action.FORWARD
    per_rule = engine_of(
        HEAD
        + '  - {id: r, match: {glob: "t.*"}, rate: {records_per_s: 1, burst_records: 1, '
        + "per: rule}}\n"
    )
    assert per_rule.evaluate(make_record("t.a"), NOW).action is Action.FORWARD
    assert per_rule.evaluate(make_record("t.b"), NOW).action is Action.DROP


def test_refused_records_do_not_use_rate_budget(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD
        + "  - {id: r, match: {exact: t}, max_bytes: 3, rate: {records_per_s: 1, "
        + "burst_records: 1}}\n"
    )
    for _ in range(5):
        assert e.evaluate(make_record("t", b"toolong"), NOW).reasons[0].startswith("size")
    assert e.evaluate(make_record("t", b"ok"), NOW).action is Action.FORWARD


JSON_RULE = HEAD + "  - id: j\n    match: {exact: t}\n    value:\n      format: json\n"


def test_json_format(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(JSON_RULE)
    assert e.evaluate(make_record("t", b'{"a": 1}'), NOW).action is Action.FORWARD
    d = e.evaluate(make_record("t", b"{not json"), NOW)
    assert d.action is Action.DROP
    assert d.reasons[0].startswith("format: value is not JSON")
    assert e.evaluate(make_record("t", None), NOW).reasons == (
        "format: value is null, JSON expected",
    )
    e2 = engine_of(JSON_RULE + "      allow_null: true\n")
    assert e2.evaluate(make_record("t", None), NOW).action is Action.FORWARD


def test_raw_format_takes_any_bytes(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(HEAD + "  - {id: r, match: {exact: t}, value: {format: raw}}\n")
    assert e.evaluate(make_record("t", b"\xff\x00binary"), NOW).action is Action.FORWARD


SCHEMA = {
    "type": "object",
    "required": ["tag", "value"],
    "properties": {"tag": {"type": "string"}, "value": {"type": "number"}},
    "additionalProperties": False,
}


def test_json_schema(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(JSON_RULE + "      schema: s.json\n", schemas={"s.json": SCHEMA})
    ok = e.evaluate(make_record("t", b'{"tag": "a", "value": 1.5}'), NOW)
    assert ok.action is Action.FORWARD
    d = e.evaluate(make_record("t", b'{"tag": "a"}'), NOW)
    assert d.action is Action.DROP
    assert d.reasons[0].startswith("schema:") and "value" in d.reasons[0]
    d = e.evaluate(make_record("t", b'{"tag": "a", "value": "high"}'), NOW)
    assert "at value" in d.reasons[0]
    d = e.evaluate(make_record("t", b'{"tag": "a", "value": 1, "extra": 2}'), NOW)
    assert d.action is Action.DROP


def test_schema_ref_to_local_file(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        JSON_RULE + "      schema: schemas/outer.json\n",
        schemas={
            "schemas/outer.json": {"$ref": "inner.json"},
            "schemas/inner.json": {"type": "object", "required": ["id"]},
        },
    )
    assert e.evaluate(make_record("t", b'{"id": 1}'), NOW).action is Action.FORWARD
    assert e.evaluate(make_record("t", b'{"x": 1}'), NOW).action is Action.DROP


FIELDS = JSON_RULE + (
    "      fields:\n"
    "        tag: {type: string, required: true, max_length: 5}\n"
    "        value: {type: number, min: -10, max: 10}\n"
    "        count: {type: integer}\n"
    "        state: {enum: [RUN, STOP, 3]}\n"
    "        meta.line: {type: [string, 'null'], required: true}\n"
)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"tag": "a", "meta": {"line": "1"}}, None),
        ({"tag": "a", "value": 10, "count": 2.0, "state": 3, "meta": {"line": None}}, None),
        ({"meta": {"line": "1"}}, "fields: tag is missing"),
        ({"tag": 5, "meta": {"line": "1"}}, "fields: tag is integer, not string"),
        ({"tag": "abcdef", "meta": {"line": "1"}}, "fields: tag has length 6, more than 5"),
        ({"tag": "a", "value": 10.5, "meta": {"line": "1"}}, "above the maximum 10"),
        ({"tag": "a", "value": -11, "meta": {"line": "1"}}, "below the minimum -10"),
        ({"tag": "a", "value": True, "meta": {"line": "1"}}, "value is boolean, not number"),
        ({"tag": "a", "count": 1.5, "meta": {"line": "1"}}, "count is number, not integer"),
        ({"tag": "a", "count": True, "meta": {"line": "1"}}, "count is boolean, not integer"),
        ({"tag": "a", "state": "HALT", "meta": {"line": "1"}}, "not one of the allowed values"),
        ({"tag": "a", "state": "3", "meta": {"line": "1"}}, "not one of the allowed values"),
        ({"tag": "a"}, "fields: meta.line is missing"),
        ({"tag": "a", "meta": "x"}, "fields: meta.line is missing"),
        ({"tag": "a", "meta": {"line": 7}}, "meta.line is integer, not string or null"),
    ],
)
def test_field_rules(
    engine_of: Engine, make_record: Make, doc: dict[str, object], reason: str | None
) -> None:
    e = engine_of(FIELDS)
    d = e.evaluate(make_record("t", json.dumps(doc).encode()), NOW)
    if reason is None:
        assert d.action is Action.FORWARD, d.reasons
    else:
        assert d.action is Action.DROP
        assert any(reason in r for r in d.reasons), d.reasons


def test_fields_on_a_non_object(engine_of: Engine, make_record: Make) -> None:
    d = engine_of(FIELDS).evaluate(make_record("t", b"[1, 2]"), NOW)
    assert "fields: tag is missing" in d.reasons


DENY = HEAD + (
    "  - id: d\n    match: {exact: t}\n    deny_scan_bytes: 64\n    deny:\n"
    "      - {pattern: '(?i)password\\s*[:=]', in: [key, value, headers], description: creds}\n"
    "      - {pattern: 'BEGIN [A-Z ]{0,16}PRIVATE KEY'}\n"
)


def test_deny_patterns_in_value_key_and_headers(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(DENY)
    assert e.evaluate(make_record("t", b"temperature=81"), NOW).action is Action.FORWARD
    d = e.evaluate(make_record("t", b"user=x Password = hunter2"), NOW)
    assert d.reasons == ("deny: value matches 'creds'",)
    d = e.evaluate(make_record("t", b"ok", key=b"password:1"), NOW)
    assert d.reasons == ("deny: key matches 'creds'",)
    d = e.evaluate(make_record("t", b"ok", headers=(("auth", b"password=1"),)), NOW)
    assert d.reasons == ("deny: headers match 'creds'",)
    # headers are searched as `name: value` lines, so a pattern can hit a header's name
    d = e.evaluate(make_record("t", b"ok", headers=(("password", b"x"),)), NOW)
    assert d.reasons == ("deny: headers match 'creds'",)
    d = e.evaluate(make_record("t", b"-----BEGIN RSA PRIVATE KEY-----"), NOW)
    assert d.action is Action.DROP
    # the second pattern looks only at values
    assert e.evaluate(make_record("t", b"ok", key=b"BEGIN PRIVATE KEY"), NOW).crosses


def test_deny_scan_limit_fails_closed(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(DENY)
    d = e.evaluate(make_record("t", b"x" * 65), NOW)
    assert d.action is Action.DROP
    assert d.reasons == (
        "deny: value is 65 bytes, more than deny_scan_bytes 64, so it cannot be scanned",
    )
    assert e.evaluate(make_record("t", b"x" * 64), NOW).action is Action.FORWARD
    # keys and headers too: nothing hides past the cap
    d = e.evaluate(make_record("t", b"ok", key=b"k" * 65), NOW)
    assert d.reasons == (
        "deny: key is 65 bytes, more than deny_scan_bytes 64, so it cannot be scanned",
    )
    d = e.evaluate(make_record("t", b"ok", headers=(("h", b"v" * 62),)), NOW)  # "h: " + 62
    assert d.reasons == (
        "deny: headers are 65 bytes, more than deny_scan_bytes 64, so they cannot be scanned",
    )
    assert e.evaluate(make_record("t", b"ok", headers=(("h", b"v" * 61),)), NOW).crosses


def test_required_headers(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(HEAD + "  - {id: h, match: {exact: t}, required_headers: [source, site]}\n")
    ok = make_record("t", headers=(("source", b"plc"), ("site", None)))
    assert e.evaluate(ok, NOW).action is Action.FORWARD
    d = e.evaluate(make_record("t", headers=(("source", b"plc"),)), NOW)
    assert d.reasons == ("headers: missing site",)


VIOL = HEAD + (
    "  - id: v\n    match: {glob: 't.*'}\n    max_bytes: 10\n"
    "    value: {format: json, fields: {n: {type: integer}}}\n"
    "    deny: [{pattern: 'secret'}]\n"
    "    on_violation: {size: alert, format: quarantine, deny: block_topic}\n"
)


def test_violation_actions(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(VIOL)
    d = e.evaluate(make_record("t.a", b'{"n": 12345}'), NOW)
    assert (d.action, d.target_topic) == (Action.ALERT, "t.a")
    assert d.reasons[0].startswith("size:")
    d = e.evaluate(make_record("t.a", b"nope"), NOW)
    assert (d.action, d.target_topic) == (Action.QUARANTINE, "ot.q")
    d = e.evaluate(make_record("t.a", b'{"n": "x"}'), NOW)
    assert d.action is Action.DROP  # fields: the default
    # the strictest action wins: size says alert, format says quarantine
    d = e.evaluate(make_record("t.a", b"not json at all"), NOW)
    assert d.action is Action.QUARANTINE
    assert [r.split(":")[0] for r in d.reasons] == ["size", "format"]


def test_block_topic_blocks_later_records_of_that_topic_only(
    engine_of: Engine, make_record: Make
) -> None:
    e = engine_of(VIOL)
    d = e.evaluate(make_record("t.a", b'"secret"'), NOW)
    assert (d.action, d.target_topic) == (Action.BLOCK_TOPIC, None)
    later = e.evaluate(make_record("t.a", b"{}"), NOW + 1)
    assert later.action is Action.DROP
    assert "topic blocked by rule 'v'" in later.reasons[0]
    assert e.evaluate(make_record("t.b", b"{}"), NOW).action is Action.FORWARD
    assert set(e.blocked_topics()) == {"t.a"}
    assert e.unblock("t.a")
    assert e.evaluate(make_record("t.a", b"{}"), NOW).action is Action.FORWARD


def test_policy_wide_violation_defaults(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        "version: 1\nname: t\nquarantine_topic: ot.q\n"
        "defaults: {on_violation: {size: quarantine}}\n"
        "rules:\n  - {id: a, match: {exact: t}, max_bytes: 1}\n"
        "  - {id: b, match: {exact: u}, max_bytes: 1, on_violation: {size: alert}}\n"
    )
    assert e.evaluate(make_record("t", b"xx"), NOW).action is Action.QUARANTINE
    assert e.evaluate(make_record("u", b"xx"), NOW).action is Action.ALERT


def test_rule_quarantine_topic_overrides(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD + "  - {id: q, match: {exact: t}, action: quarantine, quarantine_topic: ot.q.eng}\n"
    )
    assert e.evaluate(make_record("t"), NOW).target_topic == "ot.q.eng"


def test_first_rule_wins_among_same_action(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD + "  - {id: narrow, match: {exact: p.a}, to: it.a}\n"
        '  - {id: broad, match: {glob: "p.*"}}\n'
    )
    assert e.evaluate(make_record("p.a"), NOW).rule == "narrow"
    assert e.evaluate(make_record("p.b"), NOW).rule == "broad"


def test_topic_state_is_bounded(write: Callable[..., Path], make_record: Make) -> None:
    from diode.policy import load_policy

    text = "version: 1\nname: t\nrules:\n  - {id: a, match: {glob: '*'}}\n"
    pol = load_policy(write(text))
    e = PolicyEngine(pol, max_topics=3)
    for t in ("a", "b", "c"):
        assert e.evaluate(make_record(t), NOW).crosses
    d = e.evaluate(make_record("d"), NOW)
    assert d.action is Action.DROP and "more than 3 topics" in d.reasons[0]
    assert e.evaluate(make_record("a"), NOW).crosses
    assert e.counts[("default-deny", "drop", "too-many-topics")] == 1


def test_decision_as_dict_is_json(engine_of: Engine, make_record: Make) -> None:
    d = engine_of(VIOL).evaluate(make_record("t.a", b"nope"), NOW)
    out = json.loads(json.dumps(d.as_dict()))
    assert out["action"] == "quarantine" and out["target_topic"] == "ot.q"
    assert out["rule"] == "v" and out["reasons"][0].startswith("format:")


def test_alerted_records_still_pay_the_rate_limit(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD
        + "  - {id: r, match: {exact: t}, max_bytes: 1, on_violation: {size: alert}, "
        + "rate: {records_per_s: 1, burst_records: 2}}\n"
    )
    got = [e.evaluate(make_record("t", b"big"), NOW) for _ in range(3)]
    assert [d.action for d in got] == [Action.ALERT, Action.ALERT, Action.DROP]
    assert got[2].reasons[-1].startswith("rate: more than 1 records/s")


ENUM = JSON_RULE + "      fields:\n        n: {enum: [1, 2, 2.5, true, 'x', null]}\n"


@pytest.mark.parametrize(
    ("value", "passes"),
    [
        ("1", True),
        ("1.0", True),  # JSON numbers compare by value: 1.0 == 1 (as in JSON Schema)
        ("2.00", True),
        ("2.5", True),
        ("1e0", True),
        ("3", False),
        ("1.5", False),
        ("true", True),
        ("false", False),  # a boolean is never a number, nor a number a boolean
        ('"1"', False),
        ('"x"', True),
        ("null", True),
        ("[1]", False),  # arrays and objects are never enum members here (and must not crash)
        ('{"a": 1}', False),
    ],
)
def test_enum_compares_json_numbers_by_value(
    engine_of: Engine, make_record: Make, value: str, passes: bool
) -> None:
    d = engine_of(ENUM).evaluate(make_record("t", b'{"n": ' + value.encode() + b"}"), NOW)
    assert (d.action is Action.FORWARD) == passes, d.reasons


def test_enum_of_one_does_not_admit_true(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(JSON_RULE + "      fields:\n        n: {enum: [1, 0]}\n")
    assert e.evaluate(make_record("t", b'{"n": 1.0}'), NOW).action is Action.FORWARD
    assert e.evaluate(make_record("t", b'{"n": true}'), NOW).action is Action.DROP
    assert e.evaluate(make_record("t", b'{"n": false}'), NOW).action is Action.DROP


def test_non_ascii_deny_pattern_matches_utf8_values(engine_of: Engine, make_record: Make) -> None:
    e = engine_of(
        HEAD
        + "  - id: d\n    match: {exact: t}\n    deny:\n"
        + "      - {pattern: '(?i)passwort\\s*[:=]\\s*ü', in: [key, value, headers]}\n"
    )
    value = json.dumps({"note": "Passwort: üblich"}, ensure_ascii=False).encode()
    d = e.evaluate(make_record("t", value), NOW)
    assert d.action is Action.DROP and d.reasons[0].startswith("deny: value matches")
    d = e.evaluate(make_record("t", b"ok", headers=(("x", "PASSWORT=Über".encode()),)), NOW)
    assert d.action is Action.DROP
    assert e.evaluate(make_record("t", b"Passwort: nein"), NOW).crosses


EVERY_CHECK = (
    HEAD + "  - id: all\n    match: {exact: t}\n    max_bytes: 200\n"
    "    value: {format: json, schema: s.json, fields: {n: {type: integer}}}\n"
    "    deny: [{pattern: secret}]\n    required_headers: [src]\n"
    "    anomaly: {timestamp: {max_future_s: 60}}\n"
)
GOOD = b'{"a": 1, "n": 1}'
SRC = (("src", b"plc"),)
#: kind -> a record that breaks that check and no other
BREAKS: dict[str, Record] = {
    "size": Record(
        "t", 0, 0, int(NOW * 1000), None, b'{"a": 1, "n": 1, "p": "' + b"x" * 200 + b'"}', SRC
    ),
    "format": Record("t", 0, 0, int(NOW * 1000), None, b"not json", SRC),
    "schema": Record("t", 0, 0, int(NOW * 1000), None, b'{"n": 1}', SRC),
    "fields": Record("t", 0, 0, int(NOW * 1000), None, b'{"a": 1, "n": "x"}', SRC),
    "deny": Record("t", 0, 0, int(NOW * 1000), None, b'{"a": 1, "n": 1, "s": "secret"}', SRC),
    "headers": Record("t", 0, 0, int(NOW * 1000), None, GOOD, ()),
    "anomaly": Record("t", 0, 0, int((NOW + 600) * 1000), None, GOOD, SRC),
    "rate": Record("t", 0, 0, int(NOW * 1000), None, GOOD, SRC),  # the second in a second
}


@pytest.mark.parametrize("action", ["drop", "quarantine", "alert", "block_topic"])
@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_each_kind_of_violation_takes_its_own_action(
    engine_of: Engine, kind: str, action: str
) -> None:
    text = EVERY_CHECK + f"    on_violation: {{{kind}: {action}}}\n"
    if kind == "rate":
        text += "    rate: {records_per_s: 1, burst_records: 1}\n"
    e = engine_of(text, schemas={"s.json": {"type": "object", "required": ["a"]}})
    good = Record("t", 0, 0, int(NOW * 1000), None, GOOD, SRC)
    assert e.evaluate(good, NOW).action is Action.FORWARD
    d = e.evaluate(BREAKS[kind], NOW)
    assert d.action is Action(action), d.reasons
    assert len(d.reasons) == 1 and d.reasons[0].startswith(f"{kind}: "), d.reasons
    assert (
        d.target_topic
        == {"drop": None, "quarantine": "ot.q", "alert": "t", "block_topic": None}[action]
    )
    later = e.evaluate(good, NOW + 10)
    assert later.action is (Action.DROP if action == "block_topic" else Action.FORWARD)
