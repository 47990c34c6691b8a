"""In-place edits of a policy file for ``diode policy allow`` and ``diode policy deny``.

Edits work on the ruamel.yaml round-trip document, so comments, key order and quoting of
everything not touched survive. Since overlapping rules must agree on their action, allowing
or denying a topic also carves it out of (``except``) the rules it would otherwise collide
with. ``except`` lists globs, so a refusing rule that matches by regex is carved out by the
globs that mean exactly that regex when there are such (``patterns.regex_as_globs``);
otherwise the edit is refused with the lines to write by hand. Since the first matching rule
decides, a new rule goes where it takes effect: above a forwarding rule that covers it,
starting from that rule's settings, so an edit never silently shadows or loses a check.
The caller validates the result (``render``) and replaces the file atomically
(``write_atomically``).
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from diode.errors import PolicyError
from diode.policy import patterns
from diode.policy.loader import Policy, dump_yaml, load_policy_text, parse_yaml

_GLOB_CHARS = re.compile(r"[*?\[]")
#: product states for the searches that only decide where an edit goes (the result is
#: validated in full before it is written)
_BUDGET = 20_000


def match_kind(topic: str, *, regex: bool = False) -> str:
    """``regex`` if asked, ``glob`` if the name holds a glob character, else ``exact``.

    Kafka topic names cannot contain ``*``, ``?`` or ``[``, so there is no ambiguity.
    """
    if regex:
        return "regex"
    return "glob" if _GLOB_CHARS.search(topic) else "exact"


@dataclass(frozen=True, slots=True)
class TopicOptions:
    """What ``allow`` may set on a rule; None leaves a field as it is."""

    to: str | None = None
    prefix: str | None = None
    max_bytes: int | None = None
    records_per_s: float | None = None
    bytes_per_s: float | None = None
    value_format: str | None = None
    schema: str | None = None
    rule_id: str | None = None
    description: str | None = None


def _regex_of(kind: str, pattern: str) -> str:
    if kind == "exact":
        return re.escape(pattern)
    if kind == "glob":
        return patterns.glob_to_regex(pattern)
    return pattern


def _nfa(match: Any) -> tuple[patterns.TopicNFA, list[patterns.TopicNFA]] | None:
    if not isinstance(match, dict):
        return None
    for kind in ("exact", "glob", "regex"):
        if isinstance(match.get(kind), str):
            try:
                nfa = patterns.TopicNFA.from_regex(_regex_of(kind, match[kind]))
                ex = [
                    patterns.TopicNFA.from_regex(patterns.glob_to_regex(str(e)))
                    for e in match.get("except") or []
                ]
            except (patterns.PatternError, re.error):
                return None
            return nfa, ex
    return None


def _same_match(match: Any, kind: str, pattern: str) -> bool:
    return isinstance(match, dict) and match.get(kind) == pattern


def _rules(doc: CommentedMap) -> CommentedSeq:
    rules = doc.get("rules")
    if rules is None:
        rules = CommentedSeq()
        doc["rules"] = rules
    if not isinstance(rules, CommentedSeq):
        raise PolicyError("`rules` in the policy is not a list")
    return rules


def _new_id(rules: CommentedSeq, stem: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", stem).strip("-.")[:56] or "rule"
    if not base[0].isalnum():
        base = "r" + base
    taken = {r.get("id") for r in rules if isinstance(r, dict)}
    cand = base
    n = 2
    while cand in taken:
        cand = f"{base}-{n}"
        n += 1
    return cand


def _flow(d: dict[str, Any]) -> CommentedMap:
    m = CommentedMap(d)
    m.fa.set_flow_style()
    return m


def _add_except(rule: Any, pattern: str) -> bool:
    match = rule["match"]
    ex = match.get("except")
    if ex is None:
        ex = CommentedSeq()
        if match.fa.flow_style():
            ex.fa.set_flow_style()
        match["except"] = ex
    if pattern in ex:
        return False
    ex.append(DoubleQuotedScalarString(pattern))
    return True


def _overlapping(
    rules: CommentedSeq, kind: str, pattern: str, skip: Any
) -> list[tuple[Any, str | None]]:
    """Rules whose topics meet ``pattern``'s, each with a topic both match (None when the
    search could not decide, which counts as meeting: the carve-out is then harmless)."""
    mine = patterns.TopicNFA.from_regex(_regex_of(kind, pattern))
    out: list[tuple[Any, str | None]] = []
    for r in rules:
        if r is skip or not isinstance(r, dict):
            continue
        other = _nfa(r.get("match"))
        if other is None:
            continue
        try:
            common = patterns.find_common_topic([mine], [other[0]], other[1])
        except patterns.OverlapUndecidedError:
            out.append((r, None))
            continue
        if common is not None:
            out.append((r, common))
    return out


def _action(rule: Any) -> str:
    return str(rule.get("action", "forward"))


def allow(
    doc: CommentedMap,
    topic: str,
    opts: TopicOptions,
    *,
    regex: bool = False,
    source: str = "the policy file",
) -> list[str]:
    """Make ``topic`` (exact name, glob, or regex) cross; return what changed, in words.

    A new rule goes where it takes effect: the first matching rule decides, so a rule
    narrower than a forwarding rule that already covers it is put just above that rule and
    starts as a copy of its settings (target, limits, checks), which the options then
    change; nothing checked before is lost. If a forwarding rule covers ``topic`` already
    and no option asks for a change, nothing changes.

    Raises ``PolicyError`` saying what to write by hand when a refusing rule that overlaps
    matches by a regex that no list of globs can express, or when rules that do not
    forward cover every topic of ``topic`` (``source`` names the file in that message)."""
    kind = match_kind(topic, regex=regex)
    rules = _rules(doc)
    changes: list[str] = []
    rule = next((r for r in rules if _same_match(r.get("match"), kind, topic)), None)
    created = rule is None
    if rule is None:
        rule = CommentedMap()
        rule["id"] = opts.rule_id or _new_id(rules, topic.replace("*", "all"))
        if opts.description:
            rule["description"] = opts.description
        rule["match"] = _flow({kind: DoubleQuotedScalarString(topic)})
        rule["action"] = "forward"
    # narrower rules that refuse part of this pattern stay in force as exceptions
    carved: list[str] = []
    stuck: list[tuple[Any, str | None]] = []
    keepers: list[Any] = []
    for other, common in _overlapping(rules, kind, topic, rule):
        if _action(other) == "forward":
            continue
        keepers.append(other)
        om = other["match"]
        carve = [om[k] for k in ("exact", "glob") if isinstance(om.get(k), str)]
        if not carve and isinstance(om.get("regex"), str):
            carve = patterns.regex_as_globs(str(om["regex"])) or []
            if not carve:
                stuck.append((other, common))
                continue
        for glob in carve:
            if _add_except(rule, glob):
                carved.append(f"rule {rule['id']!r}: except {glob} (kept by {other['id']!r})")
    if stuck:
        _apply(rule, opts, [])  # the rule to write by hand has what was asked for
        raise PolicyError(_by_hand(rule, topic, stuck, source, new=created))
    cover: tuple[int, Any] | None = None
    if created:
        if _matches_nothing(rule):
            raise PolicyError(_kept_out(topic, keepers, source))
        cover = _covering(rules, rule)
        if cover is not None and opts == TopicOptions():
            kept = f" (but for what {_names(keepers)} keep{'s' * (len(keepers) == 1)})"
            return [
                f"{kind} {topic} already crosses by rule {cover[1]['id']!r}"
                f"{kept if keepers else ''}; nothing changed (give an option such as --to or "
                "--max-bytes for a rule of its own)"
            ]
        if cover is not None:
            for key, value in cover[1].items():
                if key not in ("id", "description", "match", "action"):
                    rule[key] = _bare_copy(value)
            changes.append(
                f"added rule {rule['id']!r} forwarding {kind} {topic}, above rule "
                f"{cover[1]['id']!r} (which covers it, and whose settings it starts from)"
            )
            rate = rule.get("rate")
            if isinstance(rate, dict) and rate.get("per") == "rule":
                changes.append(
                    f"note: rule {rule['id']!r} has a `per: rule` rate bucket of its own, "
                    f"apart from that of rule {cover[1]['id']!r}: together they let more "
                    "through than before"
                )
        else:
            changes.append(f"added rule {rule['id']!r} forwarding {kind} {topic}")
    elif _action(rule) != "forward":
        changes.append(f"rule {rule['id']!r}: action {_action(rule)} -> forward")
        rule["action"] = "forward"
    else:
        changes.append(f"rule {rule['id']!r} already forwards {kind} {topic}")
    _apply(rule, opts, changes)
    changes += carved
    if created:
        at = cover[0] if cover is not None else len(rules)
        rules.insert(at, rule)
        before = {id(r) for r in list(rules)[:at]}
        for other, common in _overlapping(rules, kind, topic, rule):
            if _action(other) == "forward" and id(other) in before and common is not None:
                changes.append(
                    f"note: rule {other['id']!r} comes first and still decides the topics "
                    f"both match, such as {common!r}"
                )
    return changes


def _covering(rules: CommentedSeq, rule: Any) -> tuple[int, Any] | None:
    """The first forwarding rule that matches every topic ``rule`` does, and its index."""
    mine = _nfa(rule.get("match"))
    if mine is None:
        return None
    for i, r in enumerate(rules):
        if r is rule or not isinstance(r, dict) or _action(r) != "forward":
            continue
        theirs = _nfa(r.get("match"))
        if theirs is not None and _covers(theirs, mine):
            return i, r
    return None


def _dropped_by(rules: CommentedSeq, kind: str, topic: str) -> Any | None:
    """The first drop rule that matches every topic ``topic`` does."""
    try:
        mine = patterns.TopicNFA.from_regex(_regex_of(kind, topic))
    except (patterns.PatternError, re.error):
        return None
    for r in rules:
        if isinstance(r, dict) and _action(r) == "drop":
            theirs = _nfa(r.get("match"))
            if theirs is not None and _covers(theirs, (mine, [])):
                return r
    return None


def _covers(
    outer: tuple[patterns.TopicNFA, list[patterns.TopicNFA]],
    inner: tuple[patterns.TopicNFA, list[patterns.TopicNFA]],
) -> bool:
    """True if ``outer`` (pattern, excepts) matches every topic ``inner`` does; False when
    it does not or the search cannot tell."""
    (o_nfa, o_ex), (i_nfa, i_ex) = outer, inner
    try:
        if patterns.find_common_topic([i_nfa], [], [o_nfa, *i_ex], budget=_BUDGET) is not None:
            return False
        return all(
            patterns.find_common_topic([i_nfa], [e], i_ex, budget=_BUDGET) is None for e in o_ex
        )
    except patterns.OverlapUndecidedError:
        return False


def _matches_nothing(rule: Any) -> bool:
    """True if the rule's ``except`` leaves none of its topics."""
    nfa = _nfa(rule.get("match"))
    if nfa is None or not nfa[1]:
        return False
    try:
        return patterns.find_common_topic([nfa[0]], [], nfa[1], budget=_BUDGET) is None
    except patterns.OverlapUndecidedError:
        return False


def _names(rules: list[Any]) -> str:
    return ", ".join(f"{r['id']!r} ({_action(r)})" for r in rules)


def _kept_out(topic: str, keepers: list[Any], source: str) -> str:
    return (
        f"cannot allow {topic!r}: every topic it matches is kept by {_names(keepers)}, and `allow` "
        "leaves rules that do not forward in force. To let it cross, edit that rule in "
        f"{source} by hand (narrow its match, or list {topic!r} under its `except`), then run "
        f"`diode policy validate {source}`."
    )


def _bare_copy(node: Any) -> Any:
    """A copy of a YAML node without its comments (they describe the original), keeping
    flow or block style and quoting."""
    if isinstance(node, CommentedMap):
        out = CommentedMap((k, _bare_copy(v)) for k, v in node.items())
        if node.fa.flow_style():
            out.fa.set_flow_style()
        return out
    if isinstance(node, CommentedSeq):
        seq = CommentedSeq(_bare_copy(v) for v in node)
        if node.fa.flow_style():
            seq.fa.set_flow_style()
        return seq
    return copy.copy(node)


def _by_hand(
    rule: Any, topic: str, stuck: list[tuple[Any, str | None]], source: str, *, new: bool
) -> str:
    """What to write by hand when regex rules cannot be carved out of ``rule``."""
    lines = [f"cannot allow {topic!r} without help: it overlaps"]
    for other, common in stuck:
        shared = f", both match {common!r}" if common else ""
        lines.append(
            f"  rule {other['id']!r} ({_action(other)}), regex {other['match']['regex']}{shared}"
        )
    lines.append(
        "and `except` lists globs only, while no list of globs means exactly such a regex."
    )
    covers: list[str] = []
    for other, _common in stuck:
        covers += patterns.regex_as_globs(str(other["match"]["regex"]), cover=True) or []
    sample = CommentedMap(rule)
    match = CommentedMap(rule["match"])
    excepts = [str(e) for e in match.get("except") or []]
    placeholder = not covers
    match["except"] = [
        DoubleQuotedScalarString(g) for g in excepts + (covers or ["<globs that cover the regex>"])
    ]
    if rule["match"].fa.flow_style():
        match.fa.set_flow_style()
    sample["match"] = match
    where = "append this rule under `rules:`" if new else f"change rule {rule['id']!r} to"
    lines += [
        f"Edit {source} by hand, then run `diode policy validate {source}`. Either",
        f"  - {where} (its `except` must cover every topic the regex matches"
        + (
            ""
            if placeholder
            else "; these globs do, and may also keep out a few topics the regex does not match"
        )
        + "):",
        *("      " + ln for ln in dump_yaml([sample]).splitlines()),
        "  - or rewrite the regex rule with `glob:` or `exact:` matches (one rule each), which "
        "`diode policy allow` then carves out by itself.",
    ]
    return "\n".join(lines)


def _apply(rule: Any, opts: TopicOptions, changes: list[str]) -> None:
    def put(key: str, value: Any) -> None:
        if value is not None and rule.get(key) != value:
            changes.append(f"rule {rule['id']!r}: {key} = {value}")
            rule[key] = value

    if opts.to is not None:
        rule.pop("prefix", None)
    if opts.prefix is not None:
        rule.pop("to", None)
    put("to", opts.to)
    put("prefix", opts.prefix)
    put("max_bytes", opts.max_bytes)
    if opts.records_per_s is not None or opts.bytes_per_s is not None:
        rate = rule.get("rate")
        if rate is None:
            rate = CommentedMap()
            rule["rate"] = rate
        for key, v in (("records_per_s", opts.records_per_s), ("bytes_per_s", opts.bytes_per_s)):
            if v is not None:
                rate[key] = int(v) if float(v).is_integer() else v
                changes.append(f"rule {rule['id']!r}: rate.{key} = {v:g}")
    if opts.value_format is not None or opts.schema is not None:
        value = rule.get("value")
        if value is None:
            value = CommentedMap()
            rule["value"] = value
        fmt = opts.value_format or ("json" if opts.schema else None)
        if fmt is not None:
            value["format"] = fmt
            changes.append(f"rule {rule['id']!r}: value.format = {fmt}")
        if opts.schema is not None:
            value["schema"] = opts.schema
            changes.append(f"rule {rule['id']!r}: value.schema = {opts.schema}")


def deny(doc: CommentedMap, topic: str, *, rule_id: str | None = None) -> list[str]:
    """Stop ``topic`` (exact name or glob) from crossing; return what changed, in words."""
    kind = match_kind(topic)
    rules = _rules(doc)
    changes: list[str] = []
    rule = next((r for r in rules if _same_match(r.get("match"), kind, topic)), None)
    if rule is None:
        dropping = _dropped_by(rules, kind, topic)
        if dropping is not None:
            # a second drop rule below it would never apply (and would not validate)
            return [
                f"{kind} {topic} is already dropped by rule {dropping['id']!r}; nothing changed"
            ]
        rule = CommentedMap()
        rule["id"] = rule_id or _new_id(rules, "deny-" + topic.replace("*", "all"))
        rule["match"] = _flow({kind: DoubleQuotedScalarString(topic)})
        rule["action"] = "drop"
        changes.append(f"added rule {rule['id']!r} dropping {kind} {topic}")
        carve = True
    elif _action(rule) != "drop":
        changes.append(f"rule {rule['id']!r}: action {_action(rule)} -> drop")
        rule["action"] = "drop"
        if rule.pop("rate", None) is not None:
            # validation refuses a rate on a rule that passes nothing across
            changes.append(f"rule {rule['id']!r}: rate removed (a drop rule sends nothing)")
        carve = False
    else:
        changes.append(f"rule {rule['id']!r} already drops {kind} {topic}")
        carve = False
    for other, _common in _overlapping(rules, kind, topic, rule):
        if _action(other) != "drop" and _add_except(other, topic):
            changes.append(f"rule {other['id']!r}: except {topic}")
    if carve:
        rules.append(rule)
    return changes


@dataclass(frozen=True, slots=True)
class Document:
    """A policy file opened for editing, with the indentation it was written in and the
    text it was read from (an edit that changes nothing need not be written)."""

    data: CommentedMap
    indent: tuple[int, int, int]
    text: str = ""


def read_document(path: Path) -> Document:
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, str(path))
    if not isinstance(data, CommentedMap):
        raise PolicyError(f"{path}: a policy file is a YAML mapping")
    return Document(data, _guess_indent(text), text)


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as the file already uses them, so an edit does not
    re-indent lines it did not touch."""
    try:
        _data, seq, offset = load_yaml_guess_indent(text)
    except YAMLError:
        return (2, 4, 2)
    if not isinstance(seq, int) or not isinstance(offset, int):
        return (2, 4, 2)
    return (offset or seq, seq, offset)


def render(doc: Document, path: Path) -> tuple[str, Policy]:
    """The document as text, validated as if it were at ``path``."""
    text = dump_yaml(doc.data, doc.indent)
    return text, load_policy_text(text, path=path, display=str(path))


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new, never half."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        # a new file gets what open() would have given it; mkstemp's 0600 would keep the
        # policy from a service that runs as another user
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # the only way to read it is to set it; the CLI is single-threaded
    old = os.umask(0o022)
    os.umask(old)
    return old
