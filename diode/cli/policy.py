"""``diode policy``: write, check, edit, compare and try out policy files."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import click

from diode.errors import DecodeError, PolicyError, PolicyValidationError
from diode.policy import edit
from diode.policy.decision import Action, Decision
from diode.policy.diff import diff_policies
from diode.policy.engine import PolicyEngine
from diode.policy.loader import Policy, load_policy
from diode.policy.model import VIOLATION_KINDS, Rule, RuleAction, ViolationAction
from diode.policy.replay import parse_line
from diode.policy.template import TEMPLATE
from diode.protocol.records import Record

_FILE = click.Path(dir_okay=False, path_type=Path)
_EXISTING = click.Path(exists=True, dir_okay=False, path_type=Path)

#: exit status of `test --exit-code` / `replay --exit-code` when a record is refused; 1 and 2
#: already mean an error (invalid policy, unreadable input) and a usage error
EXIT_REFUSED = 3


def _problems(exc: PolicyValidationError) -> str:
    return "\n".join(f"{f}:{line}: {msg}" for f, line, msg in exc.problems)


class _Trouble(click.ClickException):
    """An error that exits 2, for commands whose 1 means an answer (``diff``: different)."""

    exit_code = 2


def _load(path: Path, *, trouble: bool = False) -> Policy:
    try:
        return load_policy(path)
    except PolicyValidationError as exc:
        kind = _Trouble if trouble else click.ClickException
        raise kind(f"{path} is not a valid policy:\n{_problems(exc)}") from exc


@click.group("policy")
def policy() -> None:
    """Write, check, edit and try out policies: what may cross the diode.

    A policy is a YAML file. Records on no rule are dropped (default deny). Each rule matches
    topics (exact, glob or regex), names the IT-side topic, and sets limits: size, rate,
    JSON format, JSON Schema, field rules, deny patterns, required headers and anomaly
    detectors, with an action for each kind of violation.

    \b
    Start here:
      diode policy init --out plant.yaml
      diode policy validate plant.yaml
      diode policy test plant.yaml --topic plant.telemetry.boiler --value '{"tag": "TI-1", "value": 3}'
    """


@policy.command("init")
@click.option(
    "--out", "out", type=_FILE, default=None, help="File to write (default: standard output)."
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def init(out: Path | None, force: bool) -> None:
    """Write a commented starting policy that validates as it stands.

    It forwards JSON telemetry from plant.telemetry.* with size, rate, field, deny-pattern
    and anomaly checks, drops command topics, and denies everything else.

    \b
    Example:
      diode policy init --out plant.yaml && diode policy validate plant.yaml
    """
    if out is None:
        click.echo(TEMPLATE, nl=False)
        return
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; pass --force to overwrite it")
    edit.write_atomically(out, TEMPLATE)
    click.echo(f"wrote {out}")


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of a policy file, for editors that check YAML as you type.

    \b
    Example:
      diode policy schema > policies/policy.schema.json
      # then, first line of a policy: # yaml-language-server: $schema=policy.schema.json
    """
    from diode.policy.model import policy_json_schema

    click.echo(json.dumps(policy_json_schema(), indent=2, sort_keys=True))


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=_FILE)
@click.option("-q", "--quiet", is_flag=True, help="Print only problems.")
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check policy files; exit 0 if all are valid, 1 otherwise.

    Every problem is printed as FILE:LINE: message: unknown or missing keys, wrong types,
    bad or too costly regexes, missing or invalid JSON Schema files, rules that overlap with
    different actions (or are too complex to be shown not to), rules that can never apply
    (an earlier rule with the same action matches all their topics, or their `except`
    does), quarantine topics a forwarding rule would pick up, rate settings that could
    never work (burst_bytes below max_bytes; a rate on a drop or quarantine rule).

    \b
    Example:
      diode policy validate policies/*.yaml
      policies/plant.yaml:14: unknown key 'rules.0.max_byte'
    """
    failed = False
    for path in files:
        try:
            pol = load_policy(path)
        except PolicyValidationError as exc:
            failed = True
            click.echo(_problems(exc))
            continue
        if not quiet:
            click.echo(f"{path}: ok, {len(pol.model.rules)} rules, fingerprint {pol.fingerprint}")
    if failed:
        sys.exit(1)


def _rate(pol: Policy, i: int) -> str:
    r = pol.model.rules[i].rate
    if r is None:
        return ""
    parts = []
    if r.records_per_s is not None:
        parts.append(f"{_num(r.records_per_s)} rec/s")
    if r.bytes_per_s is not None:
        parts.append(f"{_num(r.bytes_per_s)} B/s")
    return ", ".join(parts) + (" per rule" if r.per == "rule" else "")


def _num(x: float) -> str:
    """2500000, not 2.5e+06: a table is read by people comparing digits."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


@policy.command("show")
@click.argument("file", type=_EXISTING)
def show(file: Path) -> None:
    """Print a policy as a table: one row per rule, in the order they are tried.

    \b
    Example:
      diode policy show policies/default.yaml
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    pol = _load(file)
    m = pol.model
    table = Table(title=escape(f"{m.name}  (fingerprint {pol.fingerprint[:16]}...)"))
    for col in ("id", "match", "action", "target topic", "max bytes", "rate", "value", "checks"):
        # fold rather than cut: a pattern shown in part is a pattern shown wrong
        table.add_column(col, overflow="fold")
    for i, r in enumerate(m.rules):
        target = "IT " + (r.to or (f"{r.prefix}<topic>" if r.prefix else "<topic>"))
        if r.action is RuleAction.QUARANTINE:
            target = f"OT {pol.quarantine_topic(r)} (quarantine)"
        elif r.action is RuleAction.DROP:
            target = ""
        value = ""
        if r.value is not None:
            value = r.value.format
            if r.value.schema_:
                value += f" + {r.value.schema_}"
            if r.value.fields:
                value += f" + {len(r.value.fields)} fields"
        checks = []
        if r.deny:
            checks.append(f"{len(r.deny)} deny")
        if r.required_headers:
            checks.append("headers " + ",".join(r.required_headers))
        if r.anomaly is not None:
            a = r.anomaly
            names = [n for n in ("rate", "size", "timestamp", "silence") if getattr(a, n)]
            names += [f"field {f}" for f in a.fields]
            checks.append("anomaly " + ",".join(names))
        # cells are text, not rich markup: `[a-z0-9]` in a regex must show as written
        cells = (
            r.id,
            r.match.describe(),
            r.action.value,
            target,
            "" if r.action is RuleAction.DROP else str(r.max_bytes or m.defaults.max_bytes),
            _rate(pol, i),
            value,
            "; ".join(checks),
        )
        table.add_row(*(escape(c) for c in cells))
    table.add_row("default-deny", "any other topic", "drop", "", "", "", "", "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or file: do not squeeze the table to 80 columns
    console.print(table)
    if m.quarantine_topic:
        click.echo(f"quarantine topic (OT side): {m.quarantine_topic}")
    blocking = [
        f"{r.id} ({', '.join(kinds)})" for r in m.rules if (kinds := _blocking_kinds(pol, r))
    ]
    if blocking:
        click.echo(
            "block_topic: a violation of these kinds blocks its whole source topic: "
            + "; ".join(blocking)
        )
        click.echo(
            "  A block lives in the running sender: a policy reload does not lift it; "
            "restarting the sender does, and so does the engine's unblock(topic) "
            "(ReloadingPolicy.unblock) where the service offers it."
        )


def _blocking_kinds(pol: Policy, rule: Rule) -> list[str]:
    """The kinds of violation that can happen under ``rule`` and block the topic."""
    if rule.action is RuleAction.DROP:
        return []  # nothing is checked
    value = rule.value
    possible = {
        "size": True,
        "rate": rule.rate is not None and rule.action.as_action().crosses,
        "format": value is not None and value.format == "json",
        "schema": value is not None and value.schema_ is not None,
        "fields": value is not None and bool(value.fields),
        "deny": bool(rule.deny),
        "headers": bool(rule.required_headers),
        "anomaly": rule.anomaly is not None,
    }
    return [
        k
        for k in VIOLATION_KINDS
        if possible[k] and pol.violation_action(rule, k) is ViolationAction.BLOCK_TOPIC
    ]


def _write_edit(file: Path, doc: edit.Document, changes: list[str], dry_run: bool) -> None:
    try:
        text, pol = edit.render(doc, file)
    except PolicyValidationError as exc:
        raise click.ClickException(
            f"the edit would make {file} invalid, so it was not written:\n{_problems(exc)}"
        ) from exc
    for c in changes:
        click.echo(c)
    if dry_run:
        click.echo(text, nl=False)
        return
    if text == doc.text:
        click.echo(f"{file} is unchanged (fingerprint {pol.fingerprint})")
        return
    edit.write_atomically(file, text)
    click.echo(f"wrote {file} (fingerprint {pol.fingerprint})")


def _document(file: Path) -> edit.Document:
    try:
        return edit.read_document(file)
    except PolicyValidationError as exc:
        raise click.ClickException(_problems(exc)) from exc
    except (OSError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from exc


@policy.command("allow")
@click.argument("file", type=_EXISTING)
@click.argument("topic")
@click.option("--regex", is_flag=True, help="TOPIC is a regex (full match), not a name or glob.")
@click.option("--to", "to", help="IT-side topic name (rename).")
@click.option("--prefix", help="IT-side topic = PREFIX + source topic.")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Size limit per record.")
@click.option("--records-per-s", type=click.FloatRange(min=0, min_open=True), help="Rate limit.")
@click.option("--bytes-per-s", type=click.FloatRange(min=0, min_open=True), help="Rate limit.")
@click.option("--format", "value_format", type=click.Choice(["json", "raw"]), help="Value format.")
@click.option("--schema", help="JSON Schema file (relative to FILE's directory); implies json.")
@click.option("--id", "rule_id", help="Id for a new rule (default: derived from TOPIC).")
@click.option("--dry-run", is_flag=True, help="Print the new file instead of writing it.")
def allow(
    file: Path,
    topic: str,
    regex: bool,
    to: str | None,
    prefix: str | None,
    max_bytes: int | None,
    records_per_s: float | None,
    bytes_per_s: float | None,
    value_format: str | None,
    schema: str | None,
    rule_id: str | None,
    dry_run: bool,
) -> None:
    """Let TOPIC (a name, or a glob with * ? [..]) cross, editing FILE in place.

    Updates the rule that matches exactly TOPIC, or adds one where it takes effect (the
    first matching rule decides): inside a forwarding rule that covers it already, just
    above that rule, starting from a copy of its settings so that no check is lost (with no
    option given, nothing changes); otherwise at the end. Rules that do not forward part of
    TOPIC stay in force: their topics are added to the new rule's `except` (a rule that
    matches by regex is added as the globs that mean exactly that regex; where there are
    none, nothing is written and the message shows what to write by hand). If they cover
    all of TOPIC, nothing is written and the message says which rule to edit. Comments and
    order are kept; the result is validated before it is written, and written atomically.

    \b
    Example:
      diode policy allow plant.yaml 'plant.energy.*' --prefix ot. --max-bytes 2048 \\
          --records-per-s 100 --schema schemas/energy-meter.json
    """
    if to is not None and prefix is not None:
        raise click.UsageError("give --to or --prefix, not both")
    doc = _document(file)
    opts = edit.TopicOptions(
        to=to,
        prefix=prefix,
        max_bytes=max_bytes,
        records_per_s=records_per_s,
        bytes_per_s=bytes_per_s,
        value_format=value_format,
        schema=schema,
        rule_id=rule_id,
    )
    try:
        changes = edit.allow(doc.data, topic, opts, regex=regex, source=str(file))
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    _write_edit(file, doc, changes, dry_run)


@policy.command("deny")
@click.argument("file", type=_EXISTING)
@click.argument("topic")
@click.option("--id", "rule_id", help="Id for a new rule (default: deny-<topic>).")
@click.option("--dry-run", is_flag=True, help="Print the new file instead of writing it.")
def deny(file: Path, topic: str, rule_id: str | None, dry_run: bool) -> None:
    """Stop TOPIC (a name, or a glob) from crossing, editing FILE in place.

    Adds a drop rule for TOPIC (or turns the rule that matches exactly TOPIC into one, and
    removes its `rate`, which a drop rule never uses) and lists TOPIC under `except` in
    every rule that would otherwise forward it. A TOPIC that a drop rule covers already
    is left as it is.

    \b
    Example:
      diode policy deny plant.yaml plant.telemetry.test-bench
    """
    doc = _document(file)
    try:
        changes = edit.deny(doc.data, topic, rule_id=rule_id)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from exc
    _write_edit(file, doc, changes, dry_run)


@policy.command("diff")
@click.argument("a", type=_EXISTING)
@click.argument("b", type=_EXISTING)
def diff(a: Path, b: Path) -> None:
    """Show how policy B differs from A in meaning; exit 0 if the same, 1 if not.

    Comments, key order and spelled-out defaults do not count; rules are paired by id.
    Lines start with + (rule added), - (removed) or ~ (changed). As with diff(1), exit
    status 2 means trouble: A or B is not a valid policy (its problems are printed).

    \b
    Example:
      diode policy diff /etc/diode/policy.yaml plant-new.yaml
    """
    pa, pb = _load(a, trouble=True), _load(b, trouble=True)
    lines = diff_policies(pa, pb)
    if not lines:
        click.echo(f"same policy (fingerprint {pa.fingerprint})")
        return
    click.echo(f"--- {a} {pa.fingerprint}")
    click.echo(f"+++ {b} {pb.fingerprint}")
    for line in lines:
        click.echo(line)
    sys.exit(1)


def _parse_header(text: str) -> tuple[str, bytes | None]:
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not K=V", param_hint="--header")
    k, v = text.split("=", 1)
    return k, v.encode()


def _print_decision(d: Decision, out: IO[str] | None = None, prefix: str = "") -> None:
    line = f"{prefix}{d.action.value}"
    if d.target_topic:
        line += f" -> {d.target_topic}"
    line += f"  (rule {d.rule})"
    click.echo(line, file=out)
    for r in d.reasons:
        click.echo(f"{prefix}  {r}", file=out)


@policy.command("test")
@click.argument("file", type=_EXISTING)
@click.option("--topic", required=True, help="Source (OT) topic of the record.")
@click.option("--key", help="Record key (text).")
@click.option("--value", help="Record value (text). Omit both --value and --value-file for null.")
@click.option(
    "--value-file", type=click.File("rb"), help="Read the value from a file ('-': stdin)."
)
@click.option("--header", "headers", multiple=True, help="Header K=V; repeat for more.")
@click.option("--partition", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--timestamp", type=int, help="Record timestamp, ms since the epoch [default: now].")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option(
    "--exit-code",
    is_flag=True,
    help=f"Exit {EXIT_REFUSED} unless the decision is forward (alert counts as not forward).",
)
def test(
    file: Path,
    topic: str,
    key: str | None,
    value: str | None,
    value_file: IO[bytes] | None,
    headers: tuple[str, ...],
    partition: int,
    timestamp: int | None,
    as_json: bool,
    exit_code: bool,
) -> None:
    """Print the decision FILE makes for one record (a fresh engine, no history).

    With --json the output has action, target_topic, rule, reasons and findings.

    Exit status: 0 whatever the decision; with --exit-code, 0 only for forward and
    3 for anything else (alert, drop, quarantine, block_topic), so a CI job can assert
    that a sample record crosses. 1 is an invalid policy, 2 a usage error.

    \b
    Example:
      diode policy test plant.yaml --topic plant.telemetry.boiler \\
          --value '{"tag": "TI-101", "value": 81.5}' --header source=plc-3 --json
      {"action": "forward", "target_topic": "ot.plant.telemetry.boiler", "rule": "telemetry", ...}
      diode policy test plant.yaml --topic plant.commands --exit-code || echo refused
    """
    if value is not None and value_file is not None:
        raise click.UsageError("give --value or --value-file, not both")
    pol = _load(file)
    now = time.time()
    raw = value_file.read() if value_file is not None else value.encode() if value else None
    if value == "":
        raw = b""
    record = Record(
        topic=topic,
        partition=partition,
        offset=0,
        timestamp=timestamp if timestamp is not None else int(now * 1000),
        key=key.encode() if key is not None else None,
        value=raw,
        headers=tuple(_parse_header(h) for h in headers),
    )
    decision = PolicyEngine(pol).evaluate(record, now)
    if as_json:
        click.echo(json.dumps(decision.as_dict()))
    else:
        _print_decision(decision)
    if exit_code and decision.action is not Action.FORWARD:
        sys.exit(EXIT_REFUSED)


@policy.command(
    "replay",
    epilog="""\b
JSONL record format, one object per line:
  {"topic": "plant.telemetry.boiler", "partition": 0, "offset": 17,
   "timestamp": 1700000000000, "now": 1700000000.05,
   "key": "TI-101", "value": {"tag": "TI-101", "value": 81.5},
   "headers": {"source": "plc-3"}}
  topic is required; partition defaults to 0 and offset to the line number.
  timestamp (Kafka, ms) and now (arrival, UNIX s): give at least one.
  key/value: a string is UTF-8 text, null is null, anything else is JSON-encoded;
  key_b64/value_b64 give raw bytes. headers: {name: value} or [[name, value], ...].""",
)
@click.argument("file", type=_EXISTING)
@click.option(
    "--records", "records", type=click.File("rb"), required=True, help="JSONL file ('-': stdin)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision/finding.")
@click.option("--all", "show_all", is_flag=True, help="Also print records forwarded clean.")
@click.option(
    "--poll-every",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds of stream time between time-driven checks (silence, skew episodes).",
)
@click.option(
    "--exit-code",
    is_flag=True,
    help=f"Exit {EXIT_REFUSED} if any record was refused (did not cross).",
)
def replay(
    file: Path,
    records: IO[bytes],
    as_json: bool,
    show_all: bool,
    poll_every: float,
    exit_code: bool,
) -> None:
    """Run a recorded stream through FILE: decisions and anomaly findings over time.

    Time is the stream's own (`now` of each record), so a replay is deterministic and the
    detectors warm up and fire as they would have live. Prints every record that was not
    forwarded clean (all with --all), time-driven findings (silence, timestamp-skew
    episodes) as they become due, then a summary.

    Exit status: 0 whatever the decisions; with --exit-code, 3 if any record was refused
    (drop, quarantine, block_topic; alert crosses and does not count), so a CI job can
    assert that a recorded stream still passes a changed policy. 1 is an invalid policy or
    a bad line, 2 a usage error.

    \b
    Example:
      diode policy replay plant.yaml --records yesterday.jsonl
      diode policy replay plant-new.yaml --records yesterday.jsonl --exit-code
    """
    pol = _load(file)
    engine = PolicyEngine(pol)
    actions: Counter[str] = Counter()
    detectors: Counter[str] = Counter()
    next_poll: float | None = None
    now = 0.0
    for lineno, line in enumerate(records, start=1):
        if not line.strip():
            continue
        try:
            record, now = parse_line(line, lineno)
        except DecodeError as exc:
            raise click.ClickException(f"{records.name}:{lineno}: {exc}") from exc
        if next_poll is None:
            next_poll = now + poll_every
        while now >= next_poll:
            for f in engine.poll(next_poll):
                detectors[f.detector] += 1
                _emit_finding(f.as_dict(), next_poll, as_json)
            next_poll += poll_every
        d = engine.evaluate(record, now)
        actions[d.action.value] += 1
        for f in d.findings:
            detectors[f.detector] += 1
        if show_all or d.action is not Action.FORWARD or d.findings:
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "line": lineno,
                            "now": now,
                            "topic": record.topic,
                            "offset": record.offset,
                            **d.as_dict(),
                        }
                    )
                )
            else:
                _print_decision(d, prefix=f"{lineno}: {record.topic}@{record.offset} t={now:.3f} ")
    summary = {
        "decisions": dict(actions),
        "findings": dict(detectors),
        "blocked": engine.blocked_topics(),
    }
    if as_json:
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(
            "decisions: " + (", ".join(f"{k} {v}" for k, v in sorted(actions.items())) or "none")
        )
        click.echo(
            "findings: " + (", ".join(f"{k} {v}" for k, v in sorted(detectors.items())) or "none")
        )
        for t, why in engine.blocked_topics().items():
            click.echo(f"blocked: {t}: {why}")
    if exit_code and any(not Action(a).crosses for a in actions):
        sys.exit(EXIT_REFUSED)


def _emit_finding(f: Mapping[str, object], now: float, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"now": now, "finding": f}))
    else:
        click.echo(f"t={now:.3f} finding {f['detector']} on {f['topic']}: {f['message']}")
