"""Hot reload: changes are picked up, broken files keep the old policy, outcomes reported."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from diode.errors import PolicyValidationError
from diode.policy import (
    Action,
    PolicyEvent,
    PolicyLoaded,
    PolicyRejected,
    PolicyReloaded,
    PolicyUnchanged,
    ReloadingPolicy,
)
from diode.protocol.records import Record

NOW = 1_700_000_000.0
Write = Callable[..., Path]

V1 = "version: 1\nname: r\nrules:\n  - {id: a, match: {exact: t.a}}\n"
V2 = V1 + "  - {id: b, match: {exact: t.b}}\n"


def rec(topic: str, value: bytes = b"{}") -> Record:
    return Record(topic, 0, 0, int(NOW * 1000), None, value, ())


def bump_mtime(path: Path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_change_is_picked_up_by_check(write: Write) -> None:
    path = write(V1)
    events: list[PolicyEvent] = []
    holder = ReloadingPolicy(path, on_event=events.append, min_interval=1.0)
    assert isinstance(events[0], PolicyLoaded)
    old = holder.fingerprint
    assert holder.evaluate(rec("t.b"), NOW).rule == "default-deny"
    assert holder.check(NOW) is None
    path.write_text(V2)
    bump_mtime(path, 5)
    event = holder.check(NOW + 2)
    assert isinstance(event, PolicyReloaded)
    assert event.old_fingerprint == old and event.fingerprint == holder.fingerprint != old
    assert events[-1] == event
    assert holder.evaluate(rec("t.b"), NOW).rule == "b"


def test_check_is_rate_limited(write: Write) -> None:
    path = write(V1)
    holder = ReloadingPolicy(path, min_interval=10.0)
    holder.check(NOW)
    path.write_text(V2)
    bump_mtime(path, 5)
    assert holder.check(NOW + 5) is None
    assert isinstance(holder.check(NOW + 10), PolicyReloaded)


def test_broken_file_keeps_the_old_policy(write: Write) -> None:
    path = write(V1)
    events: list[PolicyEvent] = []
    holder = ReloadingPolicy(path, on_event=events.append, min_interval=0)
    old = holder.fingerprint
    path.write_text(V1 + "  - {id: c, match: {exact: t.c}, colour: red}\n")
    bump_mtime(path, 5)
    event = holder.check(NOW)
    assert isinstance(event, PolicyRejected)
    assert event.kept_fingerprint == old == holder.fingerprint
    assert any(p.startswith(f"{path}:5: unknown key") for p in event.problems)
    assert holder.evaluate(rec("t.a"), NOW).action is Action.FORWARD
    # reported once, not on every check
    assert holder.check(NOW + 1) is None
    assert events == [events[0], event]
    # fixing the file recovers
    path.write_text(V2)
    bump_mtime(path, 10)
    assert isinstance(holder.check(NOW + 2), PolicyReloaded)


def test_deleted_file_keeps_the_old_policy(write: Write) -> None:
    path = write(V1)
    holder = ReloadingPolicy(path, min_interval=0)
    path.unlink()
    event = holder.check(NOW)
    assert isinstance(event, PolicyRejected) and "cannot read" in event.problems[0]
    assert holder.evaluate(rec("t.a"), NOW).crosses


def test_touch_without_change_does_nothing(write: Write) -> None:
    path = write(V1)
    holder = ReloadingPolicy(path, min_interval=0)
    bump_mtime(path, 5)
    assert holder.check(NOW) is None


def test_reformatting_is_unchanged(write: Write) -> None:
    path = write(V1)
    holder = ReloadingPolicy(path, min_interval=0)
    path.write_text("# same meaning\n" + V1)
    bump_mtime(path, 5)
    event = holder.check(NOW)
    assert isinstance(event, PolicyUnchanged) and event.fingerprint == holder.fingerprint


def test_reload_on_demand(write: Write) -> None:
    path = write(V1)
    holder = ReloadingPolicy(path)
    path.write_text(V2)  # same mtime granularity does not matter: reload() always reads
    assert isinstance(holder.reload(), PolicyReloaded)
    assert holder.evaluate(rec("t.b"), NOW).rule == "b"


def test_schema_file_change_reloads(write: Write) -> None:
    text = (
        "version: 1\nname: r\nrules:\n"
        "  - {id: a, match: {exact: t.a}, value: {format: json, schema: s.json}}\n"
    )
    path = write(text, schemas={"s.json": {"type": "object"}})
    holder = ReloadingPolicy(path, min_interval=0)
    assert holder.evaluate(rec("t.a", b"[]"), NOW).action is Action.DROP
    schema = path.parent / "s.json"
    schema.write_text('{"type": "array"}')
    bump_mtime(schema, 5)
    assert isinstance(holder.check(NOW), PolicyReloaded)
    assert holder.evaluate(rec("t.a", b"[]"), NOW).action is Action.FORWARD


def test_blocked_topics_survive_a_reload(write: Write) -> None:
    text = (
        "version: 1\nname: r\nrules:\n"
        "  - {id: a, match: {glob: 't.*'}, deny: [{pattern: secret}], "
        "on_violation: {deny: block_topic}}\n"
    )
    path = write(text)
    holder = ReloadingPolicy(path)
    assert holder.evaluate(rec("t.a", b"secret"), NOW).action is Action.BLOCK_TOPIC
    path.write_text(text.replace("name: r", "name: r2"))
    assert isinstance(holder.reload(), PolicyReloaded)
    d = holder.evaluate(rec("t.a", b"fine"), NOW)
    assert d.action is Action.DROP and "topic blocked" in d.reasons[0]


def test_first_load_must_succeed(write: Write) -> None:
    path = write("version: 1\n")
    with pytest.raises(PolicyValidationError):
        ReloadingPolicy(path)


def test_blocked_topics_are_lifted_through_the_holder(write: Write) -> None:
    text = (
        "version: 1\nname: r\nrules:\n"
        "  - {id: a, match: {glob: 't.*'}, deny: [{pattern: secret}], "
        "on_violation: {deny: block_topic}}\n"
    )
    path = write(text)
    holder = ReloadingPolicy(path)
    holder.evaluate(rec("t.a", b"secret"), NOW)
    assert list(holder.blocked_topics()) == ["t.a"]
    path.write_text(text.replace("name: r", "name: r2"))
    holder.reload()
    assert list(holder.blocked_topics()) == ["t.a"]  # a reload does not lift it ...
    assert holder.unblock("t.a")  # ... unblock does
    assert not holder.unblock("t.a")
    assert holder.blocked_topics() == {}
    assert holder.evaluate(rec("t.a", b"fine"), NOW).action is Action.FORWARD


def test_reload_on_demand_with_a_broken_file_keeps_the_old_policy(write: Write) -> None:
    # the SIGHUP path: reload() reads the file whatever its stamp, and a bad file changes
    # nothing but is reported every time it is asked for
    path = write(V1)
    events: list[PolicyEvent] = []
    holder = ReloadingPolicy(path, on_event=events.append)
    old = holder.fingerprint
    path.write_text(V2.replace("exact: t.b", "regex: 't.(b'"))
    for _ in range(2):
        event = holder.reload()
        assert isinstance(event, PolicyRejected) and event.kept_fingerprint == old
        assert event.problems == (
            f"{path}:5: topic regex 't.(b' is not a valid regex: missing ), unterminated "
            "subpattern at position 2",
        )
    assert holder.fingerprint == old
    assert holder.evaluate(rec("t.a"), NOW).crosses
    assert holder.evaluate(rec("t.b"), NOW).rule == "default-deny"
    assert [type(e) for e in events] == [PolicyLoaded, PolicyRejected, PolicyRejected]
