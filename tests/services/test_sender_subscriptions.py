"""The sender subscribes to exactly the topics its forwarding rules can match."""

from __future__ import annotations

import re
from pathlib import Path

from diode.policy import ReloadingPolicy
from diode.services.sender import topics_from_policy

POLICY = """\
version: 1
name: subscriptions
quarantine_topic: diode.quarantine
rules:
  - id: lines
    match: {glob: "plant.line[12].telemetry"}
    prefix: "ot."
  - id: alarms
    match: {exact: plant.alarms}
    prefix: "ot."
  - id: meters
    match: {regex: "energy\\\\.meter-[0-9]+"}
    prefix: "ot."
  - id: commands
    match: {glob: "plant.commands.*"}
    action: drop
"""


def _matches(subscriptions: list[str], topic: str) -> bool:
    for sub in subscriptions:
        if sub.startswith("^"):
            if re.fullmatch(sub, topic):
                return True
        elif sub == topic:
            return True
    return False


def test_subscriptions_follow_globs_with_classes_exact_names_and_regexes(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    subs = topics_from_policy(ReloadingPolicy(path))
    assert _matches(subs, "plant.line1.telemetry")
    assert _matches(subs, "plant.line2.telemetry")
    assert not _matches(subs, "plant.line3.telemetry")
    assert _matches(subs, "plant.alarms")
    assert _matches(subs, "energy.meter-17")
    assert not _matches(subs, "energy.meter-x")
    # a drop rule needs no subscription: its records are never read
    assert not _matches(subs, "plant.commands.open-valve")
