"""``diode policy``: init, validate, show, allow/deny (edits keep comments), diff, test, replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diode.cli import main
from diode.policy import load_policy
from diode.policy.template import TEMPLATE

NOW_MS = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["policy", *args], input=input, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    path = tmp_path / "plant.yaml"
    code, out = run("init", "--out", str(path))
    assert code == 0, out
    return path


def test_init_writes_a_valid_commented_policy(plant: Path) -> None:
    text = plant.read_text()
    assert text == TEMPLATE
    assert text.count("#") > 10
    assert load_policy(plant).model.rules
    code, out = run("init", "--out", str(plant))
    assert code != 0 and "exists" in out


def test_default_yaml_is_the_template() -> None:
    assert (ROOT / "policies" / "default.yaml").read_text() == TEMPLATE


def test_validate_ok_and_problems(plant: Path, tmp_path: Path) -> None:
    code, out = run("validate", str(plant))
    assert code == 0 and "ok" in out and load_policy(plant).fingerprint in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: b\nrules:\n  - id: a\n    match: {exact: x}\n    nope: 1\n")
    code, out = run("validate", str(plant), str(bad))
    assert code == 1
    assert f"{bad}:6: unknown key 'rules.0.nope'" in out.splitlines()


def test_show_lists_rules(plant: Path) -> None:
    code, out = run("show", str(plant))
    assert code == 0
    for word in ("telemetry", "no-commands", "default-deny", "ot.<topic>", "4096"):
        assert word in out


def test_test_json(plant: Path) -> None:
    value = '{"tag": "TI-101", "value": 81.5, "unit": "degC"}'
    code, out = run(
        "test", str(plant), "--topic", "plant.telemetry.boiler", "--value", value, "--json"
    )
    assert code == 0
    d = json.loads(out)
    assert d["action"] == "forward"
    assert d["target_topic"] == "ot.plant.telemetry.boiler"
    assert d["rule"] == "telemetry" and d["reasons"] == []


def test_test_refusals(plant: Path, tmp_path: Path) -> None:
    code, out = run(
        "test", str(plant), "--topic", "plant.telemetry.boiler", "--value", '{"tag": 1}', "--json"
    )
    d = json.loads(out)
    assert d["action"] == "quarantine" and d["target_topic"] == "diode.quarantine"
    assert any("tag is integer" in r for r in d["reasons"])
    code, out = run("test", str(plant), "--topic", "plant.commands", "--json")
    assert json.loads(out)["rule"] == "no-commands"
    vf = tmp_path / "v.json"
    vf.write_text('{"tag": "a", "value": 1, "note": "password: x"}')
    code, out = run(
        "test",
        str(plant),
        "--topic",
        "plant.telemetry.x",
        "--value-file",
        str(vf),
        "--header",
        "source=plc",
        "--key",
        "k",
    )
    assert code == 0 and out.startswith("quarantine -> diode.quarantine")
    assert "deny: value matches 'credentials in clear text'" in out


def test_allow_keeps_comments_and_validates(plant: Path) -> None:
    before = plant.read_text()
    code, out = run(
        "allow",
        str(plant),
        "plant.energy.*",
        "--prefix",
        "ot.",
        "--max-bytes",
        "2048",
        "--records-per-s",
        "100",
    )
    assert code == 0, out
    after = plant.read_text()
    # every comment line of the original survives, in order
    comments = [ln.strip() for ln in before.splitlines() if ln.strip().startswith("#")]
    assert [ln.strip() for ln in after.splitlines() if ln.strip().startswith("#")] == comments
    assert after.startswith(before.split("rules:")[0])
    pol = load_policy(plant)
    rule = pol.model.rules[-1]
    assert rule.match.glob == "plant.energy.*" and rule.prefix == "ot."
    assert rule.max_bytes == 2048 and rule.rate is not None and rule.rate.records_per_s == 100
    # editing the same pattern again updates that rule instead of adding one
    code, _ = run("allow", str(plant), "plant.energy.*", "--max-bytes", "999")
    assert code == 0
    rules = load_policy(plant).model.rules
    assert len(rules) == 3 and rules[-1].max_bytes == 999


def test_deny_carves_out_of_forwarding_rules(plant: Path) -> None:
    code, out = run("deny", str(plant), "plant.telemetry.test-bench")
    assert code == 0, out
    pol = load_policy(plant)
    tele = pol.model.rules[0]
    assert tele.match.except_ == ["plant.telemetry.test-bench"]
    assert pol.model.rules[-1].action.value == "drop"
    code, out = run("test", str(plant), "--topic", "plant.telemetry.test-bench", "--json")
    assert json.loads(out)["action"] == "drop"
    assert "# Diode policy" in plant.read_text()


def test_allow_keeps_narrower_denials(plant: Path) -> None:
    assert run("deny", str(plant), "plant.lab.secret")[0] == 0
    code, out = run("allow", str(plant), "plant.lab.*")
    assert code == 0, out
    rules = load_policy(plant).model.rules
    broad = next(r for r in rules if r.match.glob == "plant.lab.*")
    assert broad.match.except_ == ["plant.lab.secret"]
    code, out = run("test", str(plant), "--topic", "plant.lab.secret", "--json")
    assert json.loads(out)["action"] == "drop"
    code, out = run("test", str(plant), "--topic", "plant.lab.open", "--json")
    assert json.loads(out)["action"] == "forward"


def test_allow_carves_out_a_regex_rule_that_globs_can_express(plant: Path) -> None:
    code, out = run("allow", str(plant), "plant.*")
    assert code == 0, out
    rules = load_policy(plant).model.rules
    broad = next(r for r in rules if r.match.glob == "plant.*")
    assert broad.match.except_ == [
        "plant.commands",
        "plant.commands.*",
        "plant.setpoints",
        "plant.setpoints.*",
    ]
    assert "(kept by 'no-commands')" in out
    for topic, action in [
        ("plant.commands", "drop"),
        ("plant.setpoints.valve3", "drop"),
        ("plant.commandsx", "forward"),
        ("plant.energy", "forward"),
    ]:
        code, out = run("test", str(plant), "--topic", topic, "--value", "{}", "--json")
        assert json.loads(out)["action"] == action, (topic, out)


def test_allow_that_collides_with_an_inexpressible_regex_says_what_to_edit(
    plant: Path,
) -> None:
    text = plant.read_text().replace(
        'match: {regex: "plant\\\\.(commands|setpoints)(\\\\..*)?"}',
        'match: {regex: "plant\\\\.cmd[0-9]{2,}"}',
    )
    assert "cmd[0-9]{2,}" in text
    plant.write_text(text)
    before = plant.read_text()
    code, out = run("allow", str(plant), "plant.*", "--prefix", "ot.")
    assert code != 0
    assert plant.read_text() == before
    # the rule to write by hand is the one asked for
    assert "          prefix: ot.\n" in out
    # names the file, both rules, the regex, where to write and what
    assert str(plant) in out
    assert "'no-commands'" in out and "plant\\.cmd[0-9]{2,}" in out
    assert "except" in out and "by hand" in out
    assert "plant.cmd" in out  # a topic the two share, to start from


def test_invalid_edit_is_not_written(plant: Path) -> None:
    before = plant.read_text()
    code, out = run("allow", str(plant), "plant.x", "--schema", "missing.json")
    assert code != 0 and "not written" in out and "missing.json" in out
    assert plant.read_text() == before
    assert not [p for p in plant.parent.iterdir() if p.name.endswith(".tmp")]


def test_allow_dry_run(plant: Path) -> None:
    before = plant.read_text()
    code, out = run("allow", str(plant), "plant.y", "--to", "it.y", "--dry-run")
    assert code == 0 and "to: it.y" in out
    assert plant.read_text() == before


def test_diff(plant: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("# reformatted\n" + plant.read_text())
    code, out = run("diff", str(plant), str(other))
    assert code == 0 and "same policy" in out
    run("allow", str(other), "plant.energy.*")
    run("allow", str(other), "plant.telemetry.*", "--max-bytes", "8192")
    code, out = run("diff", str(plant), str(other))
    assert code == 1
    assert "+ rule 'plant.energy.all' (forward glob plant.energy.*)" in out
    assert "~ rule 'telemetry' max_bytes: 4096 -> 8192" in out


def test_replay_reports_decisions_and_findings(plant: Path, tmp_path: Path) -> None:
    lines = []
    t = NOW_MS / 1000
    for i in range(400):
        lines.append(
            {
                "topic": "plant.telemetry.boiler",
                "now": t + i * 0.1,
                "key": "TI-101",
                "value": {"tag": "TI-101", "value": 80 + (i % 7) * 0.1, "unit": "degC"},
                "headers": {"source": "plc-3"},
            }
        )
    lines.append({"topic": "plant.commands", "now": t + 40.05, "value": "open valve"})
    lines.append({"topic": "plant.telemetry.boiler", "now": t + 200, "value": "{broken"})
    records = tmp_path / "r.jsonl"
    records.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    code, out = run("replay", str(plant), "--records", str(records))
    assert code == 0, out
    assert "401: plant.commands@401 t=1700000040.050 drop  (rule no-commands)" in out
    assert "finding silence on plant.telemetry.boiler" in out
    assert "decisions: drop 1, forward 400, quarantine 1" in out
    code, out = run("replay", str(plant), "--records", str(records), "--json")
    objs = [json.loads(x) for x in out.splitlines()]
    assert objs[-1]["summary"]["decisions"] == {"forward": 400, "drop": 1, "quarantine": 1}
    # the broken record is also far smaller than usual
    assert objs[-1]["summary"]["findings"] == {"silence": 1, "size": 1}


def test_replay_bad_line(plant: Path, tmp_path: Path) -> None:
    records = tmp_path / "r.jsonl"
    records.write_text('{"topic": "a", "now": 1}\n{"value": 1}\n')
    code, out = run("replay", str(plant), "--records", str(records))
    assert code != 0 and f"{records}:2: topic" in out


def test_help_teaches_with_examples() -> None:
    for cmd in ("init", "schema", "validate", "show", "allow", "deny", "diff", "test", "replay"):
        code, out = run(cmd, "--help")
        assert code == 0 and "Example" in out, cmd
    assert '"topic"' in run("replay", "--help")[1]


def test_edits_touch_only_what_they_change(plant: Path) -> None:
    import difflib

    before = plant.read_text().splitlines()
    assert run("deny", str(plant), "plant.telemetry.lab")[0] == 0
    assert run("allow", str(plant), "plant.energy.*", "--records-per-s", "50")[0] == 0
    after = plant.read_text().splitlines()
    diff = [ln for ln in difflib.ndiff(before, after) if ln[:1] in "+-"]
    removed = [ln[2:] for ln in diff if ln.startswith("- ")]
    assert removed == [
        '    match: {glob: "plant.telemetry.*"}   # or {exact: NAME} or {regex: "..."} (full match)'
    ]
    added = [ln[2:] for ln in diff if ln.startswith("+ ")]
    assert added[0].startswith(
        '    match: {glob: "plant.telemetry.*", except: ["plant.telemetry.lab"]} # or {exact'
    )
    assert "  - id: deny-plant.telemetry.lab" in added
    assert "      records_per_s: 50" in added


def test_deny_of_a_rate_limited_rule_drops_its_rate(plant: Path) -> None:
    code, out = run("deny", str(plant), "plant.telemetry.*")
    assert code == 0, out
    rule = load_policy(plant).model.rules[0]
    assert rule.action.value == "drop" and rule.rate is None
    assert "rate removed" in out


def test_test_exit_code(plant: Path) -> None:
    good = '{"tag": "TI-101", "value": 81.5, "unit": "degC"}'
    args = ("test", str(plant), "--topic", "plant.telemetry.boiler", "--exit-code")
    assert run(*args, "--value", good)[0] == 0
    code, out = run(*args, "--value", '{"tag": 1}')
    assert code == 3 and out.startswith("quarantine")
    assert run("test", str(plant), "--topic", "erp.orders", "--exit-code")[0] == 3
    # without the flag the decision is only printed
    assert run("test", str(plant), "--topic", "erp.orders")[0] == 0


def test_test_exit_code_counts_alert_as_not_forward(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("version: 1\nname: a\nrules:\n  - {id: a, match: {exact: t}, action: alert}\n")
    code, out = run("test", str(path), "--topic", "t", "--exit-code")
    assert code == 3 and out.startswith("alert")


def test_replay_exit_code(plant: Path, tmp_path: Path) -> None:
    t = NOW_MS / 1000
    good = {"topic": "plant.telemetry.boiler", "now": t, "headers": {"source": "plc"}}
    good["value"] = {"tag": "TI-101", "value": 80.0, "unit": "degC"}
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(good) + "\n")
    assert run("replay", str(plant), "--records", str(clean), "--exit-code")[0] == 0
    mixed = tmp_path / "mixed.jsonl"
    refused = {"topic": "plant.commands", "now": t + 1, "value": "open"}
    mixed.write_text(json.dumps(good) + "\n" + json.dumps(refused) + "\n")
    code, out = run("replay", str(plant), "--records", str(mixed), "--exit-code")
    assert code == 3 and "decisions: drop 1, forward 1" in out
    assert run("replay", str(plant), "--records", str(mixed))[0] == 0


def test_exit_code_is_documented() -> None:
    for cmd in ("test", "replay"):
        out = run(cmd, "--help")[1]
        assert "--exit-code" in out and "3" in out, cmd


def test_show_says_which_rules_can_block_a_topic_and_how_to_lift_it() -> None:
    code, out = run("show", str(ROOT / "policies" / "bottling-plant.yaml"))
    assert code == 0
    assert "block_topic" in out
    assert "line-telemetry" in out.split("block_topic", 1)[1]
    assert "restart" in out and "unblock" in out
    code, out = run("show", str(ROOT / "policies" / "default.yaml"))
    assert "block_topic" not in out


# --- validate, show, diff: what the operator reads --------------------------------------------


def test_validate_reports_bad_regexes_with_a_structure_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: b\nrules:\n"
        "  - id: a\n    match: {regex: 'plant\\.(a'}\n"
        "  - id: b\n    match: {exact: x}\n    deny: [{pattern: '\\w+@\\w+'}]\n    colour: red\n"
    )
    code, out = run("validate", str(bad))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{bad}:5: topic regex 'plant\\.(a' is not a valid regex")
    assert lines[1].startswith(f"{bad}:8: deny pattern '\\w+@\\w+' refused")
    assert lines[2] == f"{bad}:9: unknown key 'rules.1.colour'"
    assert len(lines) == 3


def test_validate_reports_overlapping_rules_with_different_actions(tmp_path: Path) -> None:
    bad = tmp_path / "overlap.yaml"
    bad.write_text(
        "version: 1\nname: b\nrules:\n"
        "  - id: all\n    match: {glob: 'plant.*'}\n"
        "  - id: cmds\n    match: {glob: 'plant.cmd.*'}\n    action: drop\n"
    )
    code, out = run("validate", str(bad))
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:7: rule 'cmds' (drop) overlaps rule 'all' (forward): both match topic "
        "'plant.cmd.'; list the narrower one in the other's `except`"
    ]


def test_show_prints_patterns_as_written(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nname: '[bold]x'\nquarantine_topic: ot.q\nrules:\n"
        "  - {id: r, match: {regex: 'p[a-z]x'}, to: it.r}\n"
        "  - {id: g, match: {glob: 'q.[ab]*'}, prefix: 'ot.'}\n"
        "  - {id: e, match: {glob: 'eng.*'}, action: quarantine}\n"
    )
    code, out = run("show", str(path))
    assert code == 0, out
    # square brackets are text, not rich markup that would vanish
    for text in ("[bold]x", "regex p[a-z]x", "glob q.[ab]*", "IT it.r", "IT ot.<topic>"):
        assert text in out, text
    assert "OT ot.q (quarantine)" in out


def test_diff_of_an_invalid_policy_is_trouble_not_a_difference(plant: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: b\nrulez: []\n")
    code, out = run("diff", str(plant), str(bad))
    assert code == 2
    assert f"{bad}:3: unknown key 'rulez'" in out


def test_diff_lists_removed_rules_in_file_order(tmp_path: Path) -> None:
    rules = "".join(f"  - {{id: {n}, match: {{exact: t.{n}}}}}\n" for n in "qwertyuiop")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("version: 1\nname: n\nrules:\n" + rules)
    b.write_text("version: 1\nname: n\nrules: []\n")
    code, out = run("diff", str(a), str(b))
    assert code == 1
    removed = [ln.split("'")[1] for ln in out.splitlines() if ln.startswith("- rule")]
    assert removed == list("qwertyuiop")


# --- allow and deny: an edit goes where it takes effect ---------------------------------------


def _comments(text: str) -> list[str]:
    return [ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln]


def test_allow_narrower_than_a_forwarding_rule_goes_above_it_with_its_checks(
    plant: Path,
) -> None:
    before = plant.read_text()
    code, out = run("allow", str(plant), "plant.telemetry.boiler", "--to", "it.boiler")
    assert code == 0, out
    assert "above rule 'telemetry'" in out
    assert _comments(plant.read_text()) == _comments(before)
    rules = load_policy(plant).model.rules
    assert [r.id for r in rules] == ["plant.telemetry.boiler", "telemetry", "no-commands"]
    new, old = rules[0], rules[1]
    assert (new.to, new.prefix) == ("it.boiler", None)
    # every check of the rule it was carved from still applies
    for field in ("max_bytes", "rate", "value", "deny", "anomaly"):
        assert getattr(new, field) == getattr(old, field), field
    good = '{"tag": "TI-101", "value": 81.5, "unit": "degC"}'
    code, out = run("test", str(plant), "--topic", "plant.telemetry.boiler", "--value", good)
    assert out.startswith("forward -> it.boiler  (rule plant.telemetry.boiler)")
    leak = '{"tag": "TI-101", "value": 1, "note": "password: x"}'
    code, out = run("test", str(plant), "--topic", "plant.telemetry.boiler", "--value", leak)
    assert out.startswith("quarantine -> diode.quarantine")
    code, out = run("test", str(plant), "--topic", "plant.telemetry.pump", "--value", good)
    assert out.startswith("forward -> ot.plant.telemetry.pump  (rule telemetry)")


def test_allow_of_a_topic_that_already_crosses_changes_nothing(plant: Path) -> None:
    before = plant.read_bytes()
    code, out = run("allow", str(plant), "plant.telemetry.boiler")
    assert code == 0
    assert "already crosses by rule 'telemetry'; nothing changed" in out
    assert "unchanged" in out
    assert plant.read_bytes() == before


def test_allow_broader_than_a_forwarding_rule_says_which_rule_keeps_its_topics(
    plant: Path,
) -> None:
    code, out = run("allow", str(plant), "plant.*", "--prefix", "all.")
    assert code == 0, out
    assert "note: rule 'telemetry' comes first and still decides the topics both match" in out
    assert [r.id for r in load_policy(plant).model.rules][-1] == "plant.all"
    code, out = run("test", str(plant), "--topic", "plant.telemetry.x", "--json")
    assert json.loads(out)["rule"] == "telemetry"
    code, out = run("test", str(plant), "--topic", "plant.energy", "--json")
    assert json.loads(out)["target_topic"] == "all.plant.energy"


def test_allow_inside_a_refusing_rule_is_refused_with_what_to_do(plant: Path) -> None:
    before = plant.read_bytes()
    code, out = run("allow", str(plant), "plant.commands.valve3")
    assert code == 1
    assert plant.read_bytes() == before
    assert "cannot allow 'plant.commands.valve3': every topic it matches is kept by " in out
    assert "'no-commands' (drop)" in out and "by hand" in out and str(plant) in out


def test_deny_of_a_topic_already_dropped_changes_nothing(plant: Path) -> None:
    before = plant.read_bytes()
    code, out = run("deny", str(plant), "plant.setpoints.valve3")
    assert code == 0
    assert "already dropped by rule 'no-commands'; nothing changed" in out
    assert plant.read_bytes() == before


def test_new_files_follow_the_umask_and_edits_keep_the_mode(tmp_path: Path) -> None:
    import os

    old = os.umask(0o027)
    try:
        path = tmp_path / "p.yaml"
        assert run("init", "--out", str(path))[0] == 0
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o604)
        assert run("allow", str(path), "plant.x")[0] == 0
        assert path.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_test_value_and_value_file_are_exclusive(plant: Path, tmp_path: Path) -> None:
    vf = tmp_path / "v"
    vf.write_text("{}")
    code, out = run("test", str(plant), "--topic", "t", "--value", "{}", "--value-file", str(vf))
    assert code == 2 and "--value or --value-file, not both" in out
    code, out = run("test", str(plant), "--topic", "t", "--header", "novalue")
    assert code == 2 and "is not K=V" in out


def test_test_header_deny_reason(plant: Path) -> None:
    code, out = run(
        "test",
        str(plant),
        "--topic",
        "plant.telemetry.boiler",
        "--value",
        '{"tag": "TI-101", "value": 1}',
        "--header",
        "auth=password=1",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    assert d["reasons"] == ["deny: headers match 'credentials in clear text'"]
    assert sorted(d) == ["action", "findings", "reasons", "rule", "target_topic"]


def test_allow_says_when_a_copied_rule_wide_rate_becomes_a_second_bucket(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nname: n\nrules:\n"
        "  - {id: meters, match: {glob: 'energy.*'}, rate: {records_per_s: 100, per: rule}}\n"
    )
    code, out = run("allow", str(path), "energy.em104", "--to", "it.em104")
    assert code == 0, out
    assert "note: rule 'energy.em104' has a `per: rule` rate bucket of its own" in out
    rules = load_policy(path).model.rules
    assert [r.id for r in rules] == ["energy.em104", "meters"]
    assert rules[0].rate == rules[1].rate
