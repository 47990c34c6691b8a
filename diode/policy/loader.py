"""Reading a policy file: YAML to a validated ``Policy``, or a list of ``FILE:LINE: message``.

Owns everything that needs the whole file or the disk: YAML parsing (ruamel.yaml, round-trip
mode, so every node keeps its line), mapping each pydantic error location back to a line,
regex cost checks, JSON Schema files, rules that overlap with different actions (or that
the bounded overlap search cannot show apart: it fails closed), quarantine topics that a
forwarding rule would pick up again, rate settings that could never work, and the policy
fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from diode.errors import PolicyValidationError
from diode.policy import patterns
from diode.policy.model import (
    DEFAULT_ON_VIOLATION,
    VIOLATION_KINDS,
    PolicyModel,
    Rule,
    RuleAction,
    ViolationAction,
)

#: a policy file larger than this is refused before it is parsed
MAX_POLICY_BYTES = 4 << 20
#: characters a topic name or glob may contain
_GLOB_CHARS = frozenset(patterns.TOPIC_ALPHABET + "*?[]!")
#: a JSON Schema file larger than this is refused before it is read
MAX_SCHEMA_BYTES = 1 << 20
#: product states for the searches behind advice (a rule that can never apply), which
#: give up quietly: a tenth of the overlap check's, so advice never slows a load much
MAX_ADVICE_STATES = 20_000

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """A JSON Schema a rule refers to, compiled once."""

    name: str
    """As written in the policy (relative to the policy file's directory)."""
    path: Path
    sha256: str
    validator: jsonschema_rs.Validator


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy that passed every check, with what the engine needs to run it."""

    model: PolicyModel
    path: Path | None
    fingerprint: str
    schemas: Mapping[str, SchemaFile] = field(default_factory=dict)

    @property
    def watched_files(self) -> tuple[Path, ...]:
        """The files whose change means the policy changed (for hot reload)."""
        files = [s.path for s in self.schemas.values()]
        return ((self.path,) if self.path else ()) + tuple(files)

    def violation_action(self, rule: Rule, kind: str) -> ViolationAction:
        """The action for a violation of ``kind`` under ``rule``: rule, then defaults."""
        own = getattr(rule.on_violation, _attr(kind))
        if isinstance(own, ViolationAction):
            return own
        dflt = getattr(self.model.defaults.on_violation, _attr(kind))
        return dflt if isinstance(dflt, ViolationAction) else DEFAULT_ON_VIOLATION[kind]

    def quarantine_topic(self, rule: Rule) -> str | None:
        return rule.quarantine_topic or self.model.quarantine_topic


def _attr(kind: str) -> str:
    return "schema_" if kind == "schema" else kind


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    return y


def parse_yaml(text: str, display: str) -> Any:
    """Parse YAML text in round-trip mode; raise ``PolicyValidationError`` with the line."""
    try:
        return _yaml().load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyValidationError([(display, line, f"YAML: {problem}")]) from exc
    except YAMLError as exc:
        raise PolicyValidationError([(display, 1, f"YAML: {exc}")]) from exc


def dump_yaml(doc: Any, indent: tuple[int, int, int] = (2, 4, 2)) -> str:
    """Write a round-trip document back to text, keeping its comments and order;
    ``indent`` is (mapping, sequence, offset of the dash) as ruamel.yaml counts them."""
    out = io.StringIO()
    y = _yaml()
    y.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    y.dump(doc, out)
    return out.getvalue()


def line_of(doc: Any, loc: Loc) -> int:
    """The 1-based line of the deepest node along ``loc`` that exists in the document."""
    line = 1
    node = doc
    if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
        line = node.lc.line + 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, validate and compile a policy file, or raise ``PolicyValidationError``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise PolicyValidationError(
                [
                    (
                        str(p),
                        1,
                        f"policy file is {size} bytes, more than the limit {MAX_POLICY_BYTES}",
                    )
                ]
            )
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyValidationError([(str(p), 0, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyValidationError([(str(p), 1, f"not UTF-8 text: {exc.reason}")]) from exc
    return load_policy_text(text, path=p)


def load_policy_text(text: str, *, path: Path | None = None, display: str | None = None) -> Policy:
    """Validate policy text; ``path`` locates schema files (relative to its directory)."""
    shown = display or (str(path) if path is not None else "<policy>")
    base = path.parent if path is not None else Path.cwd()
    doc = parse_yaml(text, shown)
    if not isinstance(doc, CommentedMap):
        raise PolicyValidationError([(shown, 1, "a policy file is a YAML mapping")])
    try:
        model = PolicyModel.model_validate(doc)
    except ValidationError as exc:
        structure = _structure_problems(doc, exc)
        # the patterns are checked too, so one run shows a bad regex next to a mistyped key
        seen = {loc for loc, _ in structure}
        extra = [
            (loc, msg)
            for loc, msg in _raw_pattern_problems(doc)
            if not any(s[: len(loc)] == loc for s in seen)
        ]
        located = sorted(
            ((line_of(doc, loc), msg) for loc, msg in structure + extra), key=lambda p: p[0]
        )
        raise PolicyValidationError([(shown, line, msg) for line, msg in located]) from exc
    found: list[tuple[Loc, str]] = []
    schemas = _check(model, base, found)
    if found:
        located = sorted((line_of(doc, loc), msg) for loc, msg in found)
        raise PolicyValidationError([(shown, line, msg) for line, msg in located])
    return Policy(model=model, path=path, fingerprint=fingerprint(model, schemas), schemas=schemas)


def _pydantic_message(err: Any, loc: Loc | None = None) -> str:
    where = ".".join(str(p) for p in (err["loc"] if loc is None else loc))
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {where!r}"
    if kind == "missing":
        return f"missing key {where!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


#: how pydantic names the member of a union that an error is about (``str``, ``int``,
#: ``literal['a','b']``, ``list[...]``): a step in its error location that is no key of ours
_UNION_MEMBER = re.compile(r"(?:str|int|float|bool|none|[a-z][a-z-]*\[.*\])\Z", re.DOTALL)


def _union_split(doc: Any, loc: Loc) -> tuple[Loc, str, Loc, Any] | None:
    """For an error inside one member of a union: (where the value is, the member, the
    rest of the location, the value); None for any other error."""
    node = doc
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            continue
        if isinstance(part, str) and _UNION_MEMBER.match(part):
            return loc[:i], part, loc[i + 1 :], node
        return None
    return None


def _structure_problems(doc: Any, exc: ValidationError) -> list[tuple[Loc, str]]:
    """Pydantic's errors as (location, message). A value that fits no member of a union
    (``type: float``, an object in ``enum``) is one problem, not one per member."""
    out: list[tuple[Loc, str]] = []
    unions: dict[Loc, list[tuple[str, Loc, Any]]] = {}
    values: dict[Loc, Any] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        split = _union_split(doc, loc)
        if split is None:
            out.append((loc, _pydantic_message(err)))
            continue
        at, member, rest, value = split
        if at not in unions:
            out.append((at, ""))  # keeps the place of the first member's error
        unions.setdefault(at, []).append((member, rest, err))
        values[at] = value
    result: list[tuple[Loc, str]] = []
    for loc, msg in out:
        if loc not in unions:
            result.append((loc, msg))
            continue
        branches = unions[loc]
        is_list = isinstance(values[loc], list)
        # a list was meant for the list member, anything else for the others
        chosen = [b for b in branches if b[0].startswith("list[") == is_list] or branches
        if is_list:
            result += [(loc + rest, _pydantic_message(err, loc + rest)) for _, rest, err in chosen]
            continue
        msgs = list(dict.fromkeys(str(err["msg"]) for _, _, err in chosen))
        lead = "Input should be a valid "
        if len(msgs) > 1 and all(m.startswith(lead) for m in msgs):
            kinds = [m.removeprefix(lead) for m in msgs]
            text = lead + ", ".join(kinds[:-1]) + " or " + kinds[-1]
        else:
            text = "; or ".join(msgs)
        if any(b[0].startswith("list[") for b in branches):
            text += ", or a list of them"
        result.append((loc, f"{'.'.join(str(p) for p in loc)}: {text}"))
    return result


def _raw_pattern_problems(doc: Any) -> list[tuple[Loc, str]]:
    """Bad topic and deny regexes, found in the raw document (for a file whose structure
    is also wrong, so the model cannot be built)."""
    found: list[tuple[Loc, str]] = []
    rules = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(rules, list):
        return found
    for i, raw in enumerate(rules):
        if not isinstance(raw, dict):
            continue
        match = raw.get("match")
        if isinstance(match, dict):
            kinds = [k for k in ("exact", "glob", "regex") if isinstance(match.get(k), str)]
            if len(kinds) == 1:
                kind = kinds[0]
                loc: Loc = ("rules", i, "match", kind)
                try:
                    pattern = str(match[kind])
                    regex = (
                        re.escape(pattern)
                        if kind == "exact"
                        else patterns.glob_to_regex(pattern)
                        if kind == "glob"
                        else pattern
                    )
                    patterns.compile_topic_regex(regex, f"topic {kind}")
                except patterns.PatternError as exc:
                    found.append((loc, str(exc)))
            excepts = match.get("except")
            for j, ex in enumerate(excepts if isinstance(excepts, list) else []):
                if isinstance(ex, str):
                    try:
                        patterns.compile_topic_regex(patterns.glob_to_regex(ex), "except glob")
                    except patterns.PatternError as exc:
                        found.append((("rules", i, "match", "except", j), str(exc)))
        deny = raw.get("deny")
        for j, d in enumerate(deny if isinstance(deny, list) else []):
            if isinstance(d, dict) and isinstance(d.get("pattern"), str):
                try:
                    patterns.compile_deny_pattern(str(d["pattern"]))
                except patterns.PatternError as exc:
                    found.append((("rules", i, "deny", j, "pattern"), str(exc)))
    return found


def fingerprint(model: PolicyModel, schemas: Mapping[str, SchemaFile]) -> str:
    """SHA-256 (hex) of the canonical form: sorted-key JSON of the validated model, with
    every default filled in, plus the SHA-256 of each schema file it uses. Two files that
    mean the same policy (comments, order of keys, defaults spelled out) share it."""
    canonical = {
        "policy": model.model_dump(mode="json", by_alias=True),
        "schemas": {name: s.sha256 for name, s in sorted(schemas.items())},
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- checks that need the whole file --------------------------------------------------------


def _check(model: PolicyModel, base: Path, found: list[tuple[Loc, str]]) -> dict[str, SchemaFile]:
    seen: dict[str, int] = {}
    for i, rule in enumerate(model.rules):
        if rule.id in seen:
            found.append(
                (
                    ("rules", i, "id"),
                    f"rule id {rule.id!r} is already used by rule #{seen[rule.id] + 1}",
                )
            )
        else:
            seen[rule.id] = i
    matchers = [_rule_matcher(i, r, found) for i, r in enumerate(model.rules)]
    schemas: dict[str, SchemaFile] = {}
    policy = Policy(model=model, path=None, fingerprint="")
    for i, rule in enumerate(model.rules):
        for j, deny in enumerate(rule.deny):
            try:
                patterns.compile_deny_pattern(deny.pattern)
            except patterns.PatternError as exc:
                found.append((("rules", i, "deny", j, "pattern"), str(exc)))
        value = rule.value
        if value is not None and value.schema_ is not None and value.schema_ not in schemas:
            try:
                schemas[value.schema_] = load_schema(value.schema_, base)
            except ValueError as exc:
                found.append((("rules", i, "value", "schema"), str(exc)))
        if (
            rule.anomaly is not None
            and rule.anomaly.fields
            and (value is None or value.format != "json")
        ):
            found.append(
                (("rules", i, "anomaly", "fields"), "field detectors need value format: json")
            )
        needs_q = rule.action is RuleAction.QUARANTINE or any(
            policy.violation_action(rule, k) is ViolationAction.QUARANTINE for k in VIOLATION_KINDS
        )
        if needs_q and policy.quarantine_topic(rule) is None:
            found.append(
                (
                    ("rules", i),
                    f"rule {rule.id!r} can quarantine but no quarantine_topic is set "
                    "(on the rule or at the top of the policy)",
                )
            )
        _check_rate(model, i, rule, found)
    _check_quarantine_topics(model, matchers, found)
    _check_overlaps(model, matchers, found)
    return schemas


def _check_rate(model: PolicyModel, i: int, rule: Rule, found: list[tuple[Loc, str]]) -> None:
    """Rate settings that would silently never work."""
    rate = rule.rate
    if rate is None:
        return
    if not rule.action.as_action().crosses:
        found.append(
            (
                ("rules", i, "rate"),
                f"rule {rule.id!r} has action {rule.action.value}: nothing it passes crosses "
                "the diode, so its `rate` is never applied; remove `rate` (or change the action)",
            )
        )
    if rate.burst_bytes is not None:
        max_bytes = rule.max_bytes or model.defaults.max_bytes
        if rate.burst_bytes < max_bytes:
            origin = "" if rule.max_bytes is not None else " (from defaults)"
            found.append(
                (
                    ("rules", i, "rate", "burst_bytes"),
                    f"rate.burst_bytes {rate.burst_bytes:g} is smaller than max_bytes "
                    f"{max_bytes}{origin}: a record larger than the burst could never pass the "
                    f"rate check; raise burst_bytes to at least {max_bytes} or lower max_bytes",
                )
            )


@dataclass(slots=True)
class _Matcher:
    nfa: patterns.TopicNFA | None
    excepts: list[patterns.TopicNFA]
    test: Callable[[str], bool]


def _rule_matcher(i: int, rule: Rule, found: list[tuple[Loc, str]]) -> _Matcher | None:
    m = rule.match
    loc: Loc = ("rules", i, "match", m.kind)
    try:
        if m.exact is not None:
            regex = re.escape(m.exact)
        elif m.glob is not None:
            regex = patterns.glob_to_regex(m.glob)
        else:
            assert m.regex is not None
            regex = m.regex
        compiled = patterns.compile_topic_regex(regex, f"topic {m.kind}")
        nfa = patterns.TopicNFA.from_regex(regex)
    except patterns.PatternError as exc:
        found.append((loc, str(exc)))
        return None
    if m.kind != "regex":
        bad = sorted(set(m.pattern) - _GLOB_CHARS)
        if bad:
            found.append(
                (
                    loc,
                    f"topic {m.kind} {patterns.show_pattern(m.pattern)} has characters no Kafka topic name "
                    f"can contain: {''.join(bad)!r}",
                )
            )
            return None
    if not patterns.matches_some_topic(nfa):
        found.append(
            (
                loc,
                f"topic {m.kind} {patterns.show_pattern(m.pattern)} cannot match any legal Kafka topic name",
            )
        )
        return None
    excepts: list[patterns.TopicNFA] = []
    ex_compiled: list[re.Pattern[str]] = []
    for j, ex in enumerate(m.except_):
        try:
            exr = patterns.glob_to_regex(ex)
            ex_compiled.append(patterns.compile_topic_regex(exr, "except glob"))
            excepts.append(patterns.TopicNFA.from_regex(exr))
        except patterns.PatternError as exc:
            found.append((("rules", i, "match", "except", j), str(exc)))

    def test(topic: str) -> bool:
        return compiled.fullmatch(topic) is not None and not any(
            e.fullmatch(topic) for e in ex_compiled
        )

    return _Matcher(nfa, excepts, test)


def _check_quarantine_topics(
    model: PolicyModel, matchers: Sequence[_Matcher | None], found: list[tuple[Loc, str]]
) -> None:
    places: list[tuple[Loc, str]] = []
    if model.quarantine_topic:
        places.append((("quarantine_topic",), model.quarantine_topic))
    for i, rule in enumerate(model.rules):
        if rule.quarantine_topic:
            places.append((("rules", i, "quarantine_topic"), rule.quarantine_topic))
    for loc, topic in places:
        for rule, m in zip(model.rules, matchers, strict=True):
            if m is not None and rule.action.as_action().crosses and m.test(topic):
                found.append(
                    (
                        loc,
                        f"quarantine topic {topic!r} is matched by rule {rule.id!r}, which "
                        "forwards: quarantined records would cross the diode; add it to the "
                        "rule's `except`",
                    )
                )


def _check_overlaps(
    model: PolicyModel, matchers: Sequence[_Matcher | None], found: list[tuple[Loc, str]]
) -> None:
    rules = model.rules
    for j in range(len(rules)):
        mj = matchers[j]
        if mj is None or mj.nfa is None:
            continue
        if _never_applies(rules, matchers, j, found):
            continue
        for i in range(j):
            mi = matchers[i]
            if mi is None or mi.nfa is None or rules[i].action == rules[j].action:
                continue
            if patterns.surely_disjoint(mi.nfa, mj.nfa):
                continue
            try:
                common = patterns.find_common_topic([mi.nfa], [mj.nfa], mi.excepts + mj.excepts)
            except patterns.OverlapUndecidedError as exc:
                # fail closed: a pair not shown disjoint may overlap
                found.append(
                    (
                        ("rules", j, "match"),
                        f"rule {rules[j].id!r} ({rules[j].action.value}) and rule "
                        f"{rules[i].id!r} ({rules[i].action.value}) could not be checked for "
                        f"overlap ({exc}); make their patterns simpler or disjoint, e.g. list "
                        "one's topics in the other's `except`, or match them by prefix",
                    )
                )
                continue
            if common is not None:
                found.append(
                    (
                        ("rules", j, "match"),
                        f"rule {rules[j].id!r} ({rules[j].action.value}) overlaps rule "
                        f"{rules[i].id!r} ({rules[i].action.value}): both match topic "
                        f"{common!r}; list the narrower one in the other's `except`",
                    )
                )


def _covered(nfa: patterns.TopicNFA, excluded: Sequence[patterns.TopicNFA]) -> bool:
    """True if every topic ``nfa`` matches is matched by one of ``excluded``; False when
    not, or when the search cannot tell (these checks catch mistakes, they guard nothing)."""
    try:
        return patterns.find_common_topic([nfa], [], excluded, budget=MAX_ADVICE_STATES) is None
    except patterns.OverlapUndecidedError:
        return False


def _never_applies(
    rules: Sequence[Rule],
    matchers: Sequence[_Matcher | None],
    j: int,
    found: list[tuple[Loc, str]],
) -> bool:
    """Report rule ``j`` if no record can ever reach it: its ``except`` covers its whole
    match, or an earlier rule with the same action matches every topic it does (the first
    matching rule decides, so its target, limits and checks would silently never run).
    Earlier rules with a different action are the overlap check's business."""
    rule, mj = rules[j], matchers[j]
    assert mj is not None and mj.nfa is not None
    desc = rule.match.describe()
    if mj.excepts and _covered(mj.nfa, mj.excepts):
        found.append(
            (
                ("rules", j, "match"),
                f"rule {rule.id!r} matches no topic: its `except` covers every topic of {desc}",
            )
        )
        return True
    for i in range(j):
        mi = matchers[i]
        if (
            mi is None
            or mi.nfa is None
            or mi.excepts  # an earlier rule with exceptions is not checked: a cheap, safe miss
            or rules[i].action != rule.action
            # disjoint from rule i, rule j is covered only by its own `except` (checked above)
            or patterns.surely_disjoint(mi.nfa, mj.nfa)
        ):
            continue
        if _covered(mj.nfa, [mi.nfa, *mj.excepts]):
            found.append(
                (
                    ("rules", j, "match"),
                    f"rule {rule.id!r} never applies: rule {rules[i].id!r} comes first and "
                    f"matches every topic it does ({desc}), and the first matching rule "
                    f"decides; move {rule.id!r} above {rules[i].id!r}, or remove it",
                )
            )
            return True
    return False


# --- JSON Schema files ----------------------------------------------------------------------


def load_schema(name: str, base: Path) -> SchemaFile:
    """Read and compile a JSON Schema named in a policy. ``$ref`` may point only at other
    files in the same directory tree; nothing is fetched from the network."""
    path = (base / name).resolve()
    root = base.resolve()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"JSON Schema file {name!r} not found ({exc.strerror})") from exc
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(
            f"JSON Schema file {name!r} is {size} bytes, more than the limit {MAX_SCHEMA_BYTES}"
        )
    raw = path.read_bytes()
    try:
        schema = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"JSON Schema file {name!r} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict | bool):
        raise ValueError(f"JSON Schema file {name!r} must hold an object")

    def retrieve(uri: str) -> Any:
        if not uri.startswith("file://"):
            raise ValueError(f"$ref {uri!r} is not a local file; schemas are never fetched")
        target = Path(uri.removeprefix("file://")).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"$ref {uri!r} points outside the policy directory")
        if target.stat().st_size > MAX_SCHEMA_BYTES:
            raise ValueError(f"$ref {uri!r} is larger than {MAX_SCHEMA_BYTES} bytes")
        return msgspec.json.decode(target.read_bytes())

    try:
        validator = jsonschema_rs.validator_for(
            schema,
            retriever=retrieve,
            base_uri=path.as_uri(),
            # the linear-time regex engine: a schema `pattern` cannot be made to backtrack
            pattern_options=jsonschema_rs.RegexOptions(),
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"JSON Schema file {name!r} is not a valid schema: {first}") from exc
    return SchemaFile(name, path, hashlib.sha256(raw).hexdigest(), validator)


def iter_problems(exc: PolicyValidationError) -> Iterator[str]:
    """``FILE:LINE: message`` lines for a validation error."""
    for f, line, msg in exc.problems:
        yield f"{f}:{line}: {msg}"
