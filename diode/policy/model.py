"""The policy file, as a pydantic model: its shape, defaults and per-field limits.

This module checks what one field can check on its own (types, ranges, unknown keys, mutually
exclusive options). What needs the whole file or the disk (regex cost, schema files, rule
overlap, quarantine topics) is checked by ``diode.policy.loader``, which also maps every
problem back to a line of the YAML.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from diode.policy.decision import Action

#: the policy file format this code reads
POLICY_VERSION = 1


def _not_reserved(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a legal Kafka topic name ('.' and '..' are reserved)")
    return name


RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
TopicName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9._-]{1,249}$"), AfterValidator(_not_reserved)]
HeaderName = Annotated[str, Field(min_length=1, max_length=255)]
PositiveRate = Annotated[float, Field(gt=0, le=1e12)]
Alpha = Annotated[float, Field(gt=0, lt=1)]
ZScore = Annotated[float, Field(gt=0, le=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RuleAction(StrEnum):
    """What a rule does with a record that passes every check."""

    FORWARD = "forward"
    ALERT = "alert"
    QUARANTINE = "quarantine"
    DROP = "drop"

    def as_action(self) -> Action:
        return Action(self.value)


class ViolationAction(StrEnum):
    """What happens to a record that fails a check."""

    DROP = "drop"
    QUARANTINE = "quarantine"
    ALERT = "alert"
    BLOCK_TOPIC = "block_topic"

    def as_action(self) -> Action:
        return Action(self.value)


class OnViolation(_Strict):
    """An action per kind of violation; unset kinds fall back to the policy defaults."""

    size: ViolationAction | None = None
    rate: ViolationAction | None = None
    format: ViolationAction | None = None
    schema_: ViolationAction | None = Field(default=None, alias="schema")
    fields: ViolationAction | None = None
    deny: ViolationAction | None = None
    headers: ViolationAction | None = None
    anomaly: ViolationAction | None = None


#: the kinds of violation, as named in ``on_violation``
VIOLATION_KINDS = ("size", "rate", "format", "schema", "fields", "deny", "headers", "anomaly")

DEFAULT_ON_VIOLATION: dict[str, ViolationAction] = {
    "size": ViolationAction.DROP,
    "rate": ViolationAction.DROP,
    "format": ViolationAction.DROP,
    "schema": ViolationAction.DROP,
    "fields": ViolationAction.DROP,
    "deny": ViolationAction.DROP,
    "headers": ViolationAction.DROP,
    "anomaly": ViolationAction.ALERT,
}


class Match(_Strict):
    """Which topics a rule covers: exactly one of ``exact``, ``glob`` or ``regex`` (full match),
    minus the names or globs listed in ``except``."""

    exact: TopicName | None = None
    glob: Annotated[str, Field(min_length=1, max_length=249)] | None = None
    regex: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    except_: list[Annotated[str, Field(min_length=1, max_length=249)]] = Field(
        default_factory=list, alias="except"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        given = [k for k in ("exact", "glob", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "match needs exactly one of exact, glob or regex"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return "exact" if self.exact is not None else "glob" if self.glob is not None else "regex"

    @property
    def pattern(self) -> str:
        value = self.exact if self.exact is not None else self.glob or self.regex
        assert value is not None
        return value

    def describe(self) -> str:
        text = f"{self.kind} {self.pattern}"
        if self.except_:
            text += f" except {', '.join(self.except_)}"
        return text


class RateLimit(_Strict):
    """Token buckets: records per second and/or bytes per second, each with a burst."""

    records_per_s: PositiveRate | None = None
    bytes_per_s: PositiveRate | None = None
    burst_records: Annotated[float, Field(ge=1)] | None = None
    burst_bytes: Annotated[float, Field(ge=1)] | None = None
    per: Literal["topic", "rule"] = "topic"

    @model_validator(mode="after")
    def _something(self) -> RateLimit:
        if self.records_per_s is None and self.bytes_per_s is None:
            raise ValueError("rate needs records_per_s, bytes_per_s or both")
        if self.burst_records is not None and self.records_per_s is None:
            raise ValueError("burst_records needs records_per_s")
        if self.burst_bytes is not None and self.bytes_per_s is None:
            raise ValueError("burst_bytes needs bytes_per_s")
        return self


FieldType = Literal["string", "number", "integer", "boolean", "object", "array", "null"]


class FieldRule(_Strict):
    """Checks on one field of a JSON object value; ``path`` segments are separated by dots."""

    type: FieldType | list[FieldType] | None = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    enum: list[str | int | float | bool | None] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _range(self) -> FieldRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class ValueRule(_Strict):
    """What a record value must look like."""

    format: Literal["json", "raw"] = "raw"
    schema_: str | None = Field(default=None, alias="schema")
    fields: dict[Annotated[str, Field(min_length=1, max_length=200)], FieldRule] = Field(
        default_factory=dict
    )
    allow_null: bool = False

    @model_validator(mode="after")
    def _json_only(self) -> ValueRule:
        if self.format != "json" and (self.schema_ is not None or self.fields):
            raise ValueError("schema and fields need format: json")
        return self


DenyField = Literal["key", "value", "headers"]


def _value_only() -> list[DenyField]:
    return ["value"]


class DenyPattern(_Strict):
    """A regex that must not occur in the record; see ``diode.policy.patterns`` for the
    cost bound a pattern must meet. Headers are searched as ``name: value`` lines, so a
    pattern can name the header it is about."""

    pattern: Annotated[str, Field(min_length=1)]
    in_: list[DenyField] = Field(default_factory=_value_only, alias="in", min_length=1)
    description: str | None = None


class RateDetector(_Strict):
    """Records per window against the EWMA of past windows."""

    window_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    alpha: Alpha = 0.05
    z: ZScore = 6.0
    warmup_windows: Annotated[int, Field(ge=1, le=100_000)] = 30


class SizeDetector(_Strict):
    """Record size against the EWMA of sizes."""

    alpha: Alpha = 0.01
    z: ZScore = 6.0
    warmup: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    min_std_fraction: Annotated[float, Field(ge=0, le=10)] = 0.05


class FieldDetector(_Strict):
    """A numeric field: its short-term average against its long-term baseline.

    The spread it measures against is never below ``min_std`` nor below
    ``min_std_fraction`` times the larger magnitude of the baseline mean and the value, so
    a signal that was constant during warm-up does not turn its first small change into a
    z-score of millions."""

    alpha_fast: Alpha = 0.2
    alpha_slow: Alpha = 0.01
    z: ZScore = 6.0
    warmup: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    min_std: Annotated[float, Field(ge=0)] = 0.0
    min_std_fraction: Annotated[float, Field(ge=0, le=10)] = 0.001


class TimestampDetector(_Strict):
    """Record timestamps too far ahead of or behind the clock.

    Every such record is an ``anomaly`` violation, but the finding is reported once per
    episode: when the first skewed record of a topic arrives, then every
    ``report_every_s`` with the running count while skewed records keep coming, and once
    more with the total when none has come for ``clear_after_s``."""

    max_future_s: Annotated[float, Field(ge=0)] = 60.0
    max_past_s: Annotated[float, Field(ge=0)] = 86_400.0
    report_every_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    clear_after_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0


class SilenceDetector(_Strict):
    """A topic that has talked steadily and then goes quiet."""

    after_s: Annotated[float, Field(gt=0)] = 60.0
    factor: Annotated[float, Field(ge=1)] = 10.0
    warmup: Annotated[int, Field(ge=2)] = 30


class Anomaly(_Strict):
    """Anomaly detectors; each one runs per topic when it is present."""

    rate: RateDetector | None = None
    size: SizeDetector | None = None
    fields: dict[Annotated[str, Field(min_length=1, max_length=200)], FieldDetector] = Field(
        default_factory=dict
    )
    timestamp: TimestampDetector | None = None
    silence: SilenceDetector | None = None


class Rule(_Strict):
    """One rule: which topics, where they go, and what a record must satisfy to cross."""

    id: RuleId
    description: str | None = None
    match: Match
    action: RuleAction = RuleAction.FORWARD
    to: TopicName | None = None
    prefix: Annotated[str, Field(pattern=r"^[a-zA-Z0-9._-]{1,200}$")] | None = None
    max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] | None = None
    rate: RateLimit | None = None
    value: ValueRule | None = None
    deny: list[DenyPattern] = Field(default_factory=list)
    deny_scan_bytes: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    required_headers: list[HeaderName] = Field(default_factory=list)
    on_violation: OnViolation = Field(default_factory=OnViolation)
    quarantine_topic: TopicName | None = None
    anomaly: Anomaly | None = None

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if self.to is not None and self.prefix is not None:
            raise ValueError("a rule takes `to` (rename) or `prefix`, not both")
        return self


class Defaults(_Strict):
    """Values every rule gets unless it sets its own."""

    max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 1 << 20
    deny_scan_bytes: Annotated[int, Field(ge=1, le=1 << 20)] = 16_384
    on_violation: OnViolation = Field(default_factory=OnViolation)


class PolicyModel(_Strict):
    """A whole policy file. Records on no rule are dropped (default deny)."""

    version: Literal[1]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    quarantine_topic: TopicName | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule] = Field(default_factory=list)


def policy_json_schema() -> dict[str, object]:
    """The JSON Schema of a policy file (shipped as ``policies/policy.schema.json`` so that
    editors can complete and check policies as they are typed)."""
    schema = PolicyModel.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Diode policy file",
        **schema,
    }
