"""Records made up from a policy that the policy forwards: a workload for any policy file.

``diode bench policy --policy FILE`` measures an operator's own policy, so its records must
be ones that policy lets through; nobody should have to write them by hand. For each rule
that forwards (action ``forward`` or ``alert``), in file order, this module finds:

* topic names the rule covers and no earlier rule does, searched on the rules' topic
  automata (``patterns.find_common_topic``: shortest names first);
* one JSON value per topic that meets the rule's JSON Schema and field rules, padded to a
  size where the schema leaves room (a property of its own, or a free string), no larger
  than the rule's ``max_bytes``;
* the headers the rule requires.

Each candidate record is then judged by a fresh ``PolicyEngine``; only one the policy
forwards is kept, and a rule none of whose candidates passes is named with the engine's
reason. So whatever this module cannot make of a schema costs a topic, never a wrong
record. The stream interleaves the topics and is paced in simulated time at half of every
rate limit (per topic and per rule), so the rate checks run but never refuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any, Final

from diode.errors import PolicyError
from diode.policy import patterns
from diode.policy.engine import PolicyEngine, _field_check
from diode.policy.loader import Policy
from diode.policy.model import FieldRule, Match, Rule
from diode.protocol.records import Record

__all__ = ["DEFAULT_RECORDS_PER_S", "SampleStream", "sample_stream"]

#: arrival rate of the stream when no rate limit asks for less (as at 100k records/s)
DEFAULT_RECORDS_PER_S: Final = 100_000.0
#: the stream's first ``now`` (UNIX seconds); record timestamps follow it
START: Final = 1_700_000_000.0
#: share of a rate limit the stream uses, so that bursts and rounding never reach it
_RATE_SHARE: Final = 0.5
#: product states one topic-name search may explore
_SEARCH_BUDGET: Final = 20_000
#: searches for one rule's topics, each excluding the earlier rules the last one ran into
_MAX_ROUNDS: Final = 8
#: how deep a schema may nest before the instance builder gives up
_MAX_DEPTH: Final = 24
_FORMATS: Final = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "ops@example.com",
    "hostname": "plant-a",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
#: characters tried, in order, for a character class of a pattern
_CLASS_CANDIDATES: Final = "aA0x_-.:/ " + string.printable


class _UnsupportedError(Exception):
    """A schema or pattern construct the instance builder cannot satisfy."""


@dataclass(frozen=True, slots=True)
class SampleStream:
    """Records to judge in order, the ``now`` of the first, and the time between two."""

    records: list[Record]
    start: float
    step: float
    topics: tuple[str, ...]
    #: rules that forward but gave no record, each ``"rule 'id': why"``
    skipped: tuple[str, ...]

    @property
    def records_per_s(self) -> float:
        return 1.0 / self.step


def sample_stream(
    policy: Policy,
    n: int,
    *,
    value_size: int = 500,
    topics_per_rule: int = 4,
    max_records_per_s: float = DEFAULT_RECORDS_PER_S,
) -> SampleStream:
    """``n`` records the policy forwards, spread over the topics of its forwarding rules.

    Raises ``PolicyError`` naming each forwarding rule and why it gave no record when the
    policy forwards none of them (or has no rule that forwards).
    """
    rules = policy.model.rules
    router = PolicyEngine(policy)  # only asked which rule covers a topic: no state changes
    position = {r.id: i for i, r in enumerate(rules)}

    def covering(topic: str) -> int | None:
        rule = router.rule_for(topic)
        return None if rule is None else position[rule.id]

    templates: list[tuple[Rule, Record]] = []
    skipped: list[str] = []
    for i, rule in enumerate(rules):
        if not rule.action.as_action().crosses:
            continue
        topics = _topics(i, rules, covering, topics_per_rule)
        if not topics:
            skipped.append(f"rule {rule.id!r}: no topic it covers that an earlier rule does not")
            continue
        # the rule alone judges its topics (the router said no other rule does), so one
        # engine per candidate is cheap however many rules the policy has
        alone = dataclasses.replace(policy, model=policy.model.model_copy(update={"rules": [rule]}))
        why = ""
        for topic in topics:
            record = _candidate(policy, rule, topic, value_size)
            decision = PolicyEngine(alone).evaluate(record, START)
            if decision.crosses:
                templates.append((rule, record))
            elif not why:
                why = decision.reasons[0] if decision.reasons else decision.action.value
        if why and not any(r is rule for r, _ in templates):
            skipped.append(f"rule {rule.id!r}: {why}")
    if not templates:
        shown = policy.path if policy.path is not None else policy.model.name
        if not skipped:
            raise PolicyError(
                f"policy {shown} has no rule that forwards (every rule drops or quarantines): "
                "there is nothing to measure"
            )
        raise PolicyError(
            f"policy {shown} forwards none of the records made up for its rules:\n  "
            + "\n  ".join(skipped)
        )
    step = 1.0 / _arrival_rate(templates, max_records_per_s)
    records: list[Record] = []
    offsets = [0] * len(templates)
    for k in range(n):
        j = k % len(templates)
        t = templates[j][1]
        ts = int((START + k * step) * 1000)
        records.append(Record(t.topic, 0, offsets[j], ts, t.key, t.value, t.headers))
        offsets[j] += 1
    return SampleStream(records, START, step, tuple(t.topic for _, t in templates), tuple(skipped))


# --- topics ------------------------------------------------------------------------------


def _regex(match: Match) -> str:
    if match.exact is not None:
        return re.escape(match.exact)
    if match.glob is not None:
        return patterns.glob_to_regex(match.glob)
    assert match.regex is not None
    return match.regex


def _nfa(match: Match) -> patterns.TopicNFA:
    return patterns.TopicNFA.from_regex(_regex(match))


#: legal topic names nobody would choose: a leading or trailing dot, or an empty segment
_ODD_NAMES: Final = patterns.TopicNFA.from_regex(r"\..*|.*\.|.*\.\..*")


def _topics(
    i: int, rules: Sequence[Rule], covering: Callable[[str], int | None], most: int
) -> list[str]:
    """Up to ``most`` topics that rule ``i`` covers and no earlier rule does.

    Searched on the rule's automaton alone first; an earlier rule that takes one of the
    topics found is then excluded from the search too, and so on: most rules overlap none
    before them, and a search against hundreds of automata at once would be slow.
    """
    rule = rules[i]
    nfa = _nfa(rule.match)
    excluded = [patterns.TopicNFA.from_regex(patterns.glob_to_regex(e)) for e in rule.match.except_]
    blockers: dict[int | str, patterns.TopicNFA] = {}
    found: list[str] = []
    for _round in range(_MAX_ROUNDS):
        found = _search(nfa, [*excluded, *blockers.values()], most)
        taken = [(t, covering(t)) for t in found]
        if all(j == i for _, j in taken):
            return found
        for topic, j in taken:
            if j == i:
                continue
            if j is not None and j not in blockers:
                blockers[j] = _nfa(rules[j].match)
            else:  # the automata read anchors loosely: rule the name itself out
                blockers[topic] = patterns.TopicNFA.from_exact(topic)
    return [t for t in found if covering(t) == i]


def _search(nfa: patterns.TopicNFA, excluded: list[patterns.TopicNFA], most: int) -> list[str]:
    """Up to ``most`` names ``nfa`` accepts and no automaton of ``excluded`` does, shortest
    first; names that read like topics (no empty segment, no trailing dot) if there are
    any."""
    found: list[str] = []
    for extra in ([_ODD_NAMES], []):
        while len(found) < most:
            try:
                topic = patterns.find_common_topic(
                    [nfa],
                    [],
                    [*excluded, *extra, *(patterns.TopicNFA.from_exact(f) for f in found)],
                    budget=_SEARCH_BUDGET,
                )
            except patterns.PatternError:
                break
            if topic is None:
                break
            found.append(topic)
        if found:
            break
    return found


# --- records -----------------------------------------------------------------------------


def _candidate(policy: Policy, rule: Rule, topic: str, value_size: int) -> Record:
    key = b"bench-1"
    headers = tuple((h, b"bench") for h in dict.fromkeys(rule.required_headers))
    room = (rule.max_bytes or policy.model.defaults.max_bytes) - len(key)
    room -= sum(len(h) + len(v) for h, v in headers)
    value = _value(policy, rule, max(0, min(value_size, room)))
    return Record(topic, 0, 0, int(START * 1000), key, value, headers)


def _value(policy: Policy, rule: Rule, size: int) -> bytes:
    vr = rule.value
    schema: Any = None
    fields: Mapping[str, FieldRule] = {}
    if vr is not None and vr.format == "json":
        fields = vr.fields
        if vr.schema_ is not None:
            schema = _read_schema(policy, vr.schema_)
    doc: Any
    if schema is None:
        doc = _telemetry()
    else:
        try:
            doc = _instance(schema, schema, 0)
        except _UnsupportedError:
            doc = _telemetry()
    doc = _with_fields(doc, fields)
    validator = policy.schemas[vr.schema_].validator if vr and vr.schema_ else None
    checks = [_field_check(p, fr) for p, fr in fields.items()]

    def fits(candidate: Any) -> bool:
        if validator is not None and not validator.is_valid(candidate):
            return False
        return all(check(candidate) is None for check in checks)

    return _encode(_padded(doc, size, fits))


def _telemetry() -> dict[str, Any]:
    """A process value as a historian bridge writes it, for rules without a schema."""
    return {
        "site": "plant-a",
        "tag": "FIC-101.PV",
        "value": 50.0,
        "unit": "bar",
        "ts": int(START * 1000),
        "quality": "good",
    }


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _read_schema(policy: Policy, name: str) -> Any:
    try:
        return json.loads(policy.schemas[name].path.read_text(encoding="utf-8"))
    except (KeyError, OSError, ValueError):
        return None  # the engine still checks the value against the compiled schema


def _padded(doc: Any, size: int, fits: Callable[[Any], bool]) -> Any:
    """``doc`` grown to about ``size`` bytes of JSON where the checks allow it: a property
    of its own, else its strings, each as far as its limits let it grow."""
    if size - len(_encode(doc)) <= 0:
        return doc
    if isinstance(doc, dict):
        name = next(n for n in ("pad", "_pad", "comment", "_comment") if n not in doc)
        grown = {**doc, name: ""}
        grown[name] = "x" * max(0, size - len(_encode(grown)))
        if fits(grown):
            return grown
    for path in list(_string_paths(doc, ())):
        short = size - len(_encode(doc))
        if short <= 0:
            break
        base = _get(doc, path)
        # the longest padding in 0..short the checks accept (they refuse from a length on)
        lo, hi = 0, short
        if fits(_set(doc, path, base + "x" * hi)):
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(_set(doc, path, base + "x" * mid)):
                lo = mid
            else:
                hi = mid
        if lo:
            doc = _set(doc, path, base + "x" * lo)
    return doc


def _string_paths(doc: Any, at: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if isinstance(doc, str):
        yield at
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from _string_paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _string_paths(v, (*at, i))


def _get(doc: Any, path: tuple[str | int, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of ``doc`` with ``value`` at ``path`` (containers along it copied)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, list):
        out_list = list(doc)
        out_list[int(head)] = _set(doc[int(head)], rest, value)
        return out_list
    out = dict(doc) if isinstance(doc, dict) else {}
    out[head] = _set(out.get(head), rest, value) if rest else value
    return out


def _with_fields(doc: Any, fields: Mapping[str, FieldRule]) -> Any:
    """``doc`` with every field a field rule refuses (or requires and misses) replaced by a
    value the rule accepts."""
    for path, fr in fields.items():
        if _field_check(path, fr)(doc) is None:
            continue
        doc = _set(doc if isinstance(doc, dict) else {}, tuple(path.split(".")), _field_value(fr))
    return doc


def _field_value(fr: FieldRule) -> Any:
    if fr.enum:
        return next((v for v in fr.enum if v is not None), fr.enum[0])
    types = [fr.type] if isinstance(fr.type, str) else list(fr.type or [])
    ranged = fr.min is not None or fr.max is not None
    kind = next(
        (t for t in ("number", "integer") if t in types),
        types[0] if types else "number" if ranged else "string",
    )
    if kind in ("number", "integer"):
        return _number(fr.min, fr.max, kind == "integer")
    if kind == "string":
        return "x" * min(8, fr.max_length if fr.max_length is not None else 8)
    return {"boolean": True, "object": {}, "array": [], "null": None}[kind]


def _number(lo: float | None, hi: float | None, integer: bool) -> int | float:
    if lo is not None and hi is not None:
        mid = (lo + hi) / 2
    elif lo is not None:
        mid = lo + 1
    elif hi is not None:
        mid = hi - 1
    else:
        mid = 42.5
    if not integer:
        return mid
    v = round(mid)
    if lo is not None and v < lo:
        v = math.ceil(lo)
    if hi is not None and v > hi:
        v = math.floor(hi)
    return v


# --- JSON Schema instances -----------------------------------------------------------------


def _instance(schema: Any, root: Any, depth: int) -> Any:
    """A value valid under ``schema`` for the common keywords; raises ``_UnsupportedError``."""
    if depth > _MAX_DEPTH:
        raise _UnsupportedError("schema nests too deep")
    if schema is True:
        return "x"
    if not isinstance(schema, dict):
        raise _UnsupportedError("schema is not an object")
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        target = _resolve(root, schema["$ref"])
        return _instance(_merge(rest, target) if _constraining(rest) else target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            merged = _merge(merged, _resolve(root, sub["$ref"]) if "$ref" in sub else sub)
        return _instance(merged, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            base = {k: v for k, v in schema.items() if k != key}
            for alt in schema[key]:
                try:
                    return _instance(_merge(base, alt), root, depth + 1)
                except _UnsupportedError:
                    continue
            raise _UnsupportedError(f"no {key} alternative")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((t for t in kind if t != "null"), "null")
    if kind is None:
        kind = _implied_type(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("number", "integer"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        value = _number(lo, hi, kind == "integer")
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            value = math.ceil(value / step) * step if lo is not None else round(value / step) * step
            if kind == "integer":
                value = int(value)
        return value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    raise _UnsupportedError(f"type {kind!r}")


def _implied_type(schema: Mapping[str, Any]) -> str:
    if {"properties", "required", "additionalProperties"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems"} & schema.keys():
        return "array"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
        return "number"
    return "string"


def _constraining(schema: Mapping[str, Any]) -> bool:
    return bool(schema.keys() - {"$schema", "$id", "title", "description", "$comment"})


def _merge(a: Mapping[str, Any], b: Any) -> dict[str, Any]:
    if not isinstance(b, dict):
        raise _UnsupportedError("subschema is not an object")
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = [*a["required"], *b["required"]]
    return out


def _resolve(root: Any, ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise _UnsupportedError(f"$ref {ref!r} is not local")
    node = root
    for part in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise _UnsupportedError(f"$ref {ref!r} does not resolve")
    return node


def _object(schema: Mapping[str, Any], root: Any, depth: int) -> dict[str, Any]:
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for name, sub in props.items():
        out[name] = _instance(sub, root, depth + 1)
    extra = schema.get("additionalProperties", True)
    for name in schema.get("required", []):
        if name not in out:
            out[name] = _instance(extra if isinstance(extra, dict) else True, root, depth + 1)
    return out


def _array(schema: Mapping[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems", [])
    items = schema.get("items", True)
    if isinstance(items, list):  # draft 4-7 tuple form
        prefix, items = items, schema.get("additionalItems", True)
    n = max(int(schema.get("minItems", 1)), len(prefix))
    if "maxItems" in schema:
        n = min(n, int(schema["maxItems"]))
    return [_instance(prefix[i] if i < len(prefix) else items, root, depth + 1) for i in range(n)]


def _string(schema: Mapping[str, Any]) -> str:
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        value = _regex_example(pattern)
        if value is None:
            raise _UnsupportedError(f"pattern {pattern!r}")
        return value
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, "x") if isinstance(fmt, str) else "x"
    lo = int(schema.get("minLength", 0))
    hi = schema.get("maxLength")
    if len(value) < lo:
        value += "x" * (lo - len(value))
    if isinstance(hi, int) and len(value) > hi:
        value = value[:hi]
    return value


# --- strings a regex matches ---------------------------------------------------------------

_REPEATS: Final = (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT)


def _regex_example(pattern: str) -> str | None:
    """A short string ``re.search(pattern, ...)`` finds (JSON Schema patterns are not
    anchored), or None if the pattern uses what this builder does not follow."""
    try:
        parsed = sre_parse.parse(pattern, 0)
    except (re.error, OverflowError, RecursionError):
        return None
    out: list[str] = []
    try:
        _emit(list(parsed), out)
    except _UnsupportedError:
        return None
    text = "".join(out)
    return text if re.search(pattern, text) is not None else None


def _emit(items: list[tuple[Any, Any]], out: list[str]) -> None:
    for op, av in items:
        if op is sre_c.LITERAL:
            out.append(chr(av))
        elif op is sre_c.NOT_LITERAL:
            out.append("a" if av != ord("a") else "b")
        elif op is sre_c.ANY:
            out.append("a")
        elif op is sre_c.IN:
            out.append(_class_char(list(av)))
        elif op in _REPEATS:
            lo, hi, body = av
            for _ in range(min(hi, max(lo, 1))):
                _emit(list(body), out)
        elif op is sre_c.SUBPATTERN:
            _emit(list(av[3]), out)
        elif op is sre_c.ATOMIC_GROUP:
            _emit(list(av), out)
        elif op is sre_c.BRANCH:
            _emit(list(av[1][0]), out)
        elif op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
            continue  # checked by the final search
        else:
            raise _UnsupportedError(str(op))


def _class_char(items: list[tuple[Any, Any]]) -> str:
    negate = bool(items) and items[0][0] is sre_c.NEGATE
    members = items[1:] if negate else items
    for c in _CLASS_CANDIDATES:
        if _in_class(ord(c), members) != negate:
            return c
    raise _UnsupportedError("character class")


def _in_class(code: int, items: list[tuple[Any, Any]]) -> bool:
    for op, av in items:
        if op is sre_c.LITERAL and code == av:
            return True
        if op is sre_c.RANGE and av[0] <= code <= av[1]:
            return True
        if op is sre_c.CATEGORY and _category(av, chr(code)):
            return True
        if op not in (sre_c.LITERAL, sre_c.RANGE, sre_c.CATEGORY):
            raise _UnsupportedError(str(op))
    return False


def _category(cat: Any, c: str) -> bool:
    digit = c in string.digits
    space = c in " \t\n\r\f\v"
    word = c.isascii() and (c.isalnum() or c == "_")
    table = {
        sre_c.CATEGORY_DIGIT: digit,
        sre_c.CATEGORY_NOT_DIGIT: not digit,
        sre_c.CATEGORY_SPACE: space,
        sre_c.CATEGORY_NOT_SPACE: not space,
        sre_c.CATEGORY_WORD: word,
        sre_c.CATEGORY_NOT_WORD: not word,
    }
    if cat not in table:
        raise _UnsupportedError(str(cat))
    return table[cat]


def _arrival_rate(templates: Sequence[tuple[Rule, Record]], most: float) -> float:
    """Records/s of the whole stream (topics round robin) that keeps every topic and every
    rule at ``_RATE_SHARE`` of its rate limit."""
    n = len(templates)
    per_rule: dict[str, list[Record]] = {}
    for rule, record in templates:
        per_rule.setdefault(rule.id, []).append(record)
    rate = most
    for rule, record in templates:
        limit = rule.rate
        if limit is None:
            continue
        share = len(per_rule[rule.id]) / n if limit.per == "rule" else 1 / n
        sizes = [r.size for r in per_rule[rule.id]] if limit.per == "rule" else [record.size]
        allowed = math.inf
        if limit.records_per_s is not None:
            allowed = limit.records_per_s
        if limit.bytes_per_s is not None:
            allowed = min(allowed, limit.bytes_per_s / max(1.0, sum(sizes) / len(sizes)))
        rate = min(rate, _RATE_SHARE * allowed / share)
    return rate
