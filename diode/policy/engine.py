"""The policy engine: ``evaluate(record, now) -> Decision`` for one validated ``Policy``.

Owns the run-time state a policy needs: which rule each topic falls under (cached per
topic), token buckets, anomaly monitors, blocked topics and the counters behind every
decision. Rules are tried in file order and the first whose match covers the topic applies;
validation guarantees that rules which overlap agree on their action. A topic on no rule is
dropped with rule ``default-deny``.

Checks run cheapest first; all content checks run so a refused record carries every reason.
When several checks disagree, the strictest action wins (see ``decision.SEVERITY``). Rate
limits are charged only by records that are about to cross, so refused records do not eat
the budget of good ones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import msgspec

from diode.policy import patterns
from diode.policy.anomaly import TopicMonitor
from diode.policy.decision import SEVERITY, Action, Decision, Finding
from diode.policy.loader import Policy
from diode.policy.model import VIOLATION_KINDS, FieldRule, Rule
from diode.policy.ratelimit import RateLimiter
from diode.protocol.records import Record

DEFAULT_DENY = "default-deny"
#: topics the engine keeps state for; records of further topics are dropped (and counted)
#: rather than letting an unbounded number of topic names grow memory
DEFAULT_MAX_TOPICS = 10_000

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}

_MISSING = object()


_EXACT_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _field_check(path: str, fr: FieldRule) -> Callable[[Any], str | None]:
    parts = tuple(path.split("."))
    types = [fr.type] if isinstance(fr.type, str) else list(fr.type or [])
    # decoded JSON holds exact builtin types, so a set of types is the fast test; `type(v)`
    # also keeps True from passing as an integer
    exact = frozenset(t for name in types for t in _EXACT_TYPES[name]) if types else None
    float_int = "integer" in types and "number" not in types
    lo, hi, enum, max_len, required = fr.min, fr.max, fr.enum, fr.max_length, fr.required
    # as in JSON Schema, numbers compare by value (1.0 is 1) but a boolean is never a number;
    # Python's sets take 1 for True, so each JSON kind has its own set
    allowed = enum is not None
    members = enum or []
    enum_str = frozenset(v for v in members if type(v) is str)
    enum_num = frozenset(v for v in members if type(v) is int or type(v) is float)
    enum_other = {(type(v), v) for v in members if type(v) is bool or v is None}
    ranged = lo is not None or hi is not None
    first = parts[0]
    nested = parts[1:]

    def check(obj: Any) -> str | None:
        v: Any = obj.get(first, _MISSING) if type(obj) is dict else _MISSING
        for p in nested:
            v = v.get(p, _MISSING) if type(v) is dict else _MISSING
        if v is _MISSING:
            return f"fields: {path} is missing" if required else None
        tv = type(v)
        if (
            exact is not None
            and tv not in exact
            and not (float_int and tv is float and v.is_integer())
        ):
            return f"fields: {path} is {_json_type(v)}, not {' or '.join(types)}"
        if ranged:
            if tv is not int and tv is not float:
                return f"fields: {path} is {_json_type(v)}, not a number to compare with a range"
            if lo is not None and v < lo:
                return f"fields: {path} = {v} is below the minimum {lo:g}"
            if hi is not None and v > hi:
                return f"fields: {path} = {v} is above the maximum {hi:g}"
        if allowed and not (
            v in enum_str
            if tv is str
            else v in enum_num
            if tv is int or tv is float
            else (tv, v) in enum_other
            if tv is bool or v is None
            else False  # arrays and objects: never members of a list of scalars
        ):
            shown = v if len(repr(v)) <= 40 else repr(v)[:40] + "..."
            return f"fields: {path} = {shown!r} is not one of the allowed values"
        if max_len is not None and tv in (str, list, dict) and len(v) > max_len:
            return f"fields: {path} has length {len(v)}, more than {max_len}"
        return None

    return check


def _json_type(v: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "object", "array"):
        if _JSON_TYPES[name](v):
            return name
    return type(v).__name__


@dataclass(slots=True)
class _CompiledRule:
    rule: Rule
    id: str
    action: Action
    test: Callable[[str], bool]
    max_bytes: int
    scan_bytes: int
    required_headers: frozenset[str]
    deny_key: list[tuple[re.Pattern[bytes], str]]
    deny_value: list[tuple[re.Pattern[bytes], str]]
    deny_headers: list[tuple[re.Pattern[bytes], str]]
    json: bool
    allow_null: bool
    schema: jsonschema_rs.Validator | None
    fields: list[Callable[[Any], str | None]]
    on: dict[str, Action]
    quarantine: str | None
    shared_limiter: RateLimiter | None

    def target(self, topic: str) -> str:
        r = self.rule
        if r.to is not None:
            return r.to
        if r.prefix is not None:
            return r.prefix + topic
        return topic


class _Route:
    """Everything about one topic: its rule, its IT-side name and its state."""

    __slots__ = (
        "blocked",
        "blocked_kind",
        "crule",
        "limiter",
        "monitor",
        "pass_decision",
        "passed",
        "target",
        "topic",
    )

    def __init__(self, topic: str, crule: _CompiledRule | None, target: str | None) -> None:
        self.topic = topic
        self.crule = crule
        self.target = target
        self.blocked: Decision | None = None
        self.blocked_kind = "blocked"
        self.limiter: RateLimiter | None = None
        self.monitor: TopicMonitor | None = None
        self.passed = 0
        self.pass_decision: Decision


class PolicyEngine:
    """Runs one policy. Not thread-safe: one engine per consuming loop."""

    def __init__(
        self,
        policy: Policy,
        *,
        max_topics: int = DEFAULT_MAX_TOPICS,
        blocked: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.policy = policy
        self.fingerprint = policy.fingerprint
        self.max_topics = max_topics
        self._rules = [self._compile(r) for r in policy.model.rules]
        self._routes: dict[str, _Route] = {}
        self._blocked: dict[str, str] = dict(blocked)
        #: (rule, action, kind) -> records; kind names the first reason, e.g. "size"
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._deny_default = Decision(
            Action.DROP, None, DEFAULT_DENY, ("no rule matches this topic (default deny)",)
        )

    # -- setup ---------------------------------------------------------------------------

    def _compile(self, rule: Rule) -> _CompiledRule:
        m = rule.match
        if m.exact is not None:
            exact = m.exact

            def base(t: str) -> bool:
                return t == exact

        else:
            rx = re.compile(patterns.glob_to_regex(m.glob) if m.glob is not None else m.regex or "")

            def base(t: str) -> bool:
                return rx.fullmatch(t) is not None

        excepts = [re.compile(patterns.glob_to_regex(e)) for e in m.except_]

        def test(t: str) -> bool:
            return base(t) and not any(e.fullmatch(t) for e in excepts)

        dflt = self.policy.model.defaults
        deny: dict[str, list[tuple[re.Pattern[bytes], str]]] = {
            "key": [],
            "value": [],
            "headers": [],
        }
        for d in rule.deny:
            compiled = patterns.compile_deny_pattern(d.pattern)
            label = d.description or d.pattern
            for where in dict.fromkeys(d.in_):
                deny[where].append((compiled, label))
        value = rule.value
        schema = None
        if value is not None and value.schema_ is not None:
            schema = self.policy.schemas[value.schema_].validator
        max_bytes = rule.max_bytes or dflt.max_bytes
        shared = None
        if rule.rate is not None and rule.rate.per == "rule":
            shared = self._limiter(rule, max_bytes)
        return _CompiledRule(
            rule=rule,
            id=rule.id,
            action=rule.action.as_action(),
            test=test,
            max_bytes=max_bytes,
            scan_bytes=rule.deny_scan_bytes or dflt.deny_scan_bytes,
            required_headers=frozenset(rule.required_headers),
            deny_key=deny["key"],
            deny_value=deny["value"],
            deny_headers=deny["headers"],
            json=value is not None and value.format == "json",
            allow_null=value.allow_null if value is not None else True,
            schema=schema,
            fields=[_field_check(p, fr) for p, fr in (value.fields if value else {}).items()],
            on={k: self.policy.violation_action(rule, k).as_action() for k in VIOLATION_KINDS},
            quarantine=self.policy.quarantine_topic(rule),
            shared_limiter=shared,
        )

    @staticmethod
    def _limiter(rule: Rule, max_bytes: int) -> RateLimiter:
        r = rule.rate
        assert r is not None
        return RateLimiter(
            r.records_per_s, r.bytes_per_s, r.burst_records, r.burst_bytes, max_bytes
        )

    def rule_for(self, topic: str) -> Rule | None:
        """The rule that covers ``topic``, or None (default deny)."""
        for c in self._rules:
            if c.test(topic):
                return c.rule
        return None

    def _route(self, topic: str) -> _Route | None:
        if len(self._routes) >= self.max_topics:
            return None
        crule = next((c for c in self._rules if c.test(topic)), None)
        target = crule.target(topic) if crule is not None else None
        route = _Route(topic, crule, target)
        if crule is not None:
            rule = crule.rule
            if rule.rate is not None:
                route.limiter = crule.shared_limiter or self._limiter(rule, crule.max_bytes)
            if rule.anomaly is not None:
                route.monitor = TopicMonitor(rule.anomaly, topic, rule.id)
            if crule.action is Action.QUARANTINE:
                pass_target = crule.quarantine
            elif crule.action.crosses:
                pass_target = target
            else:
                pass_target = None
            reasons: tuple[str, ...] = ()
            if crule.action is Action.DROP:
                reasons = (f"rule {rule.id!r} drops this topic",)
            elif crule.action is Action.QUARANTINE:
                reasons = (f"rule {rule.id!r} quarantines this topic",)
            elif crule.action is Action.ALERT:
                reasons = (f"rule {rule.id!r} forwards this topic with an alert",)
            problem = (
                patterns.topic_name_problem(target)
                if target is not None and crule.action.crosses
                else None
            )
            if target is not None and problem is not None:
                shown = repr(target) if len(target) <= 60 else f"{target[:60] + '...'!r}"
                if len(target) > 60:
                    shown += f" ({len(target)} characters)"
                route.blocked = Decision(
                    Action.DROP,
                    None,
                    rule.id,
                    (f"target topic {shown} is not a legal Kafka topic name: {problem}",),
                )
                route.blocked_kind = "target"
            route.pass_decision = Decision(crule.action, pass_target, rule.id, reasons)
        if topic in self._blocked:
            route.blocked = Decision(
                Action.DROP, None, crule.id if crule else DEFAULT_DENY, (self._blocked[topic],)
            )
        self._routes[topic] = route
        return route

    # -- the hot path --------------------------------------------------------------------

    def evaluate(self, record: Record, now: float) -> Decision:
        """Judge one record. ``now`` is wall-clock UNIX seconds (record timestamps are ms)."""
        topic = record.topic
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if route is None:
                self.counts[(DEFAULT_DENY, "drop", "too-many-topics")] += 1
                return Decision(
                    Action.DROP,
                    None,
                    DEFAULT_DENY,
                    (f"more than {self.max_topics} topics seen; refusing new topic {topic!r}",),
                )
        if route.blocked is not None:
            d = route.blocked
            self.counts[(d.rule, "drop", route.blocked_kind)] += 1
            return d
        c = route.crule
        if c is None:
            self.counts[(DEFAULT_DENY, "drop", DEFAULT_DENY)] += 1
            return self._deny_default
        if c.action is Action.DROP:
            self.counts[(c.id, "drop", "rule")] += 1
            return route.pass_decision

        bad: list[tuple[str, str]] | None = None
        size = record.size
        if size > c.max_bytes:
            bad = [("size", f"size: record is {size} bytes, more than max_bytes {c.max_bytes}")]
        if c.required_headers:
            have = {h[0] for h in record.headers}
            missing = c.required_headers - have
            if missing:
                bad = bad or []
                bad.append(("headers", f"headers: missing {', '.join(sorted(missing))}"))
        value = record.value
        if c.deny_value and value is not None:
            if len(value) <= c.scan_bytes:
                for rx, label in c.deny_value:
                    if rx.search(value) is not None:
                        bad = bad or []
                        bad.append(("deny", f"deny: value matches {label!r}"))
            else:
                bad = self._scan(c, c.deny_value, value, "value", bad)
        if c.deny_key and record.key is not None:
            bad = self._scan(c, c.deny_key, record.key, "key", bad)
        if c.deny_headers and record.headers:
            blob = b"\n".join(n.encode() + b": " + (v or b"") for n, v in record.headers)
            bad = self._scan(c, c.deny_headers, blob, "headers", bad)
        obj: Any = None
        if c.json:
            if value is None:
                if not c.allow_null:
                    bad = bad or []
                    bad.append(("format", "format: value is null, JSON expected"))
            else:
                try:
                    obj = msgspec.json.decode(value)
                except msgspec.DecodeError as exc:
                    bad = bad or []
                    bad.append(("format", f"format: value is not JSON: {exc}"))
                else:
                    schema = c.schema
                    if schema is not None and not schema.is_valid(obj):
                        bad = bad or []
                        bad.append(("schema", f"schema: {_schema_error(schema, obj)}"))
                    for check in c.fields:
                        why = check(obj)
                        if why is not None:
                            bad = bad or []
                            bad.append(("fields", why))
        hits = None
        mon = route.monitor
        if mon is not None:
            hits = mon.observe(record.timestamp, size, obj, now)
        if bad is None and hits is None:
            limiter = route.limiter
            if limiter is not None and c.action.crosses:
                why = limiter.admit(size, now)
                if why is not None:
                    bad = [("rate", why)]
            if bad is None:
                route.passed += 1
                return route.pass_decision
        return self._refuse(route, c, bad, hits, size, now)

    @staticmethod
    def _scan(
        c: _CompiledRule,
        pats: list[tuple[re.Pattern[bytes], str]],
        data: bytes,
        where: str,
        bad: list[tuple[str, str]] | None,
    ) -> list[tuple[str, str]] | None:
        plural = where == "headers"
        if len(data) > c.scan_bytes:
            bad = bad or []
            bad.append(
                (
                    "deny",
                    f"deny: {where} {'are' if plural else 'is'} {len(data)} bytes, more than "
                    f"deny_scan_bytes {c.scan_bytes}, so {'they' if plural else 'it'} cannot "
                    "be scanned",
                )
            )
            return bad
        verb = "match" if plural else "matches"
        for rx, label in pats:
            if rx.search(data) is not None:
                bad = bad or []
                bad.append(("deny", f"deny: {where} {verb} {label!r}"))
        return bad

    def _refuse(
        self,
        route: _Route,
        c: _CompiledRule,
        bad: list[tuple[str, str]] | None,
        hits: list[Finding | str] | None,
        size: int,
        now: float,
    ) -> Decision:
        action = c.action
        kinds = [k for k, _ in bad or ()]
        if hits:
            kinds.append("anomaly")
        for k in kinds:
            a = c.on[k]
            if SEVERITY[a] > SEVERITY[action]:
                action = a
        # a forwarded record that broke a rule set to alert is still forwarded
        reasons = tuple(r for _, r in bad or ()) + tuple(
            f"anomaly: {h if isinstance(h, str) else h.message}" for h in hits or ()
        )
        # a string is a reason of this record only (an episode already reported)
        findings = [h for h in hits or () if not isinstance(h, str)]
        kind = kinds[0] if kinds else "rule"
        if action.crosses and "rate" not in kinds:
            # a record forwarded despite an alert-level problem still pays for its passage
            limiter = route.limiter
            if limiter is not None:
                why = limiter.admit(size, now)
                if why is not None:
                    reasons += (why,)
                    kind = "rate"
                    if SEVERITY[c.on["rate"]] > SEVERITY[action]:
                        action = c.on["rate"]
        if action is Action.BLOCK_TOPIC:
            self._blocked[route.topic] = f"topic blocked by rule {c.id!r}: {reasons[0]}"
            route.blocked = Decision(Action.DROP, None, c.id, (self._blocked[route.topic],))
            target = None
        elif action is Action.QUARANTINE:
            target = c.quarantine
        elif action.crosses:
            target = route.target
            if action is Action.FORWARD and reasons:
                action = Action.ALERT
        else:
            target = None
        self.counts[(c.id, action.value, kind)] += 1
        return Decision(action, target, c.id, reasons, tuple(findings))

    # -- time-driven ---------------------------------------------------------------------

    def poll(self, now: float) -> list[Finding]:
        """Findings due to time alone: topics gone silent, and the running counts and ends
        of timestamp-skew episodes. Call it every second or so."""
        out: list[Finding] = []
        for route in self._routes.values():
            mon = route.monitor
            if mon is not None and mon.polled:
                out += mon.poll(now)
        return out

    # -- state ---------------------------------------------------------------------------

    def blocked_topics(self) -> dict[str, str]:
        """Topics blocked by a ``block_topic`` violation, with the reason. A block outlives a
        hot reload (``ReloadingPolicy`` hands it to the new engine); only ``unblock`` or a
        restart of the service lifts it."""
        return dict(self._blocked)

    def unblock(self, topic: str) -> bool:
        """Let a blocked topic through again; True if it was blocked. The topic's own state
        starts afresh (its rate buckets, its anomaly detectors back in warm-up); a bucket
        shared by a ``per: rule`` limit is kept."""
        was = self._blocked.pop(topic, None) is not None
        self._routes.pop(topic, None)
        return was

    def passed(self) -> dict[str, int]:
        """Records forwarded clean, per topic (refusals are in ``counts``)."""
        return {t: r.passed for t, r in self._routes.items() if r.passed}


def _schema_error(schema: jsonschema_rs.Validator, obj: Any) -> str:
    for err in schema.iter_errors(obj):
        where = "/".join(str(p) for p in err.instance_path) or "(root)"
        msg = err.message if len(err.message) <= 200 else err.message[:200] + "..."
        return f"at {where}: {msg}"
    return "does not match the schema"
