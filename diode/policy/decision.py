"""What the policy engine says about one record: ``Action``, ``Finding`` and ``Decision``.

These are the only types a service needs to act on a verdict; they carry no reference to
the engine that made them, so they can be logged, audited and compared freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What happens to a record. The string values appear in YAML, JSON and audit entries."""

    FORWARD = "forward"
    """Send it across the diode to ``target_topic``."""
    ALERT = "alert"
    """Send it across, and record why it deserved attention."""
    DROP = "drop"
    """Discard it on the OT side; counted with a reason."""
    QUARANTINE = "quarantine"
    """Keep it on the OT side in the quarantine topic; it never crosses."""
    BLOCK_TOPIC = "block_topic"
    """Discard it and every later record of its topic until the block is lifted.

    The block lives in the running engine: it survives a hot reload of the policy (a
    reload must not reopen a topic that leaked, say, a credential), and is lifted by
    ``PolicyEngine.unblock(topic)`` (``ReloadingPolicy.unblock``) or by restarting the
    sending service, which starts with no topic blocked."""

    @property
    def crosses(self) -> bool:
        """True when the record goes to the IT side."""
        return self is Action.FORWARD or self is Action.ALERT


#: how strict an action is; when several checks disagree the strictest one wins. Quarantine
#: ranks above drop because it keeps the evidence, and neither lets the record cross.
SEVERITY: dict[Action, int] = {
    Action.FORWARD: 0,
    Action.ALERT: 1,
    Action.DROP: 2,
    Action.QUARANTINE: 3,
    Action.BLOCK_TOPIC: 4,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """An anomaly one detector saw: what it measured and the bound it compared against."""

    detector: str
    """``rate``, ``size``, ``field:<path>``, ``timestamp`` or ``silence``."""
    topic: str
    rule: str
    observed: float
    threshold: float
    message: str
    count: int = 1
    """Records this finding stands for: 1, except for the running and final reports of a
    timestamp-skew episode, which give the episode's records so far."""

    def as_dict(self) -> dict[str, str | float]:
        return {
            "detector": self.detector,
            "topic": self.topic,
            "rule": self.rule,
            "observed": self.observed,
            "threshold": self.threshold,
            "message": self.message,
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one record.

    ``target_topic`` is the IT-side topic for forward and alert, the OT-side quarantine
    topic for quarantine, and None for drop and block_topic.
    """

    action: Action
    target_topic: str | None
    rule: str
    reasons: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def crosses(self) -> bool:
        return self.action.crosses

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action.value,
            "target_topic": self.target_topic,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "findings": [f.as_dict() for f in self.findings],
        }
