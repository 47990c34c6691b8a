"""Heartbeats name the policy in force: ``SenderSession.set_policy_fingerprint`` after a reload."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from diode.errors import LocalProtocolError
from diode.protocol.events import HeartbeatReceived
from tests.protocol.sessionkit import Pair, records_for


def test_heartbeats_carry_the_new_fingerprint(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair()
    first = hashlib.sha256(b"policy v1").digest()
    second = hashlib.sha256(b"policy v2").digest()
    now = 0.0
    for rec in records_for(20):
        pair.feed(pair.sender.add(rec, now), now)
    now = pair.settle(now, seconds=0.5)
    assert {h.policy_fingerprint for h in pair.of(HeartbeatReceived)} == {bytes(32)}

    pair.sender.set_policy_fingerprint(first)
    mark = len(pair.of(HeartbeatReceived))
    now = pair.settle(now, seconds=0.5)
    assert {h.policy_fingerprint for h in pair.of(HeartbeatReceived)[mark:]} == {first}

    pair.sender.set_policy_fingerprint(second)
    assert pair.sender.policy_fingerprint == second
    mark = len(pair.of(HeartbeatReceived))
    pair.settle(now, seconds=0.5)
    after = [h.policy_fingerprint for h in pair.of(HeartbeatReceived)[mark:]]
    # the change is in force from the next heartbeat on, in the same session
    assert after and set(after) == {second}
    assert len({h.session_id for h in pair.of(HeartbeatReceived)}) == 1
    assert len(pair.delivered()) == 20


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_wrong_length_is_refused(make_pair: Callable[..., Pair], size: int) -> None:
    pair = make_pair()
    before = pair.sender.policy_fingerprint
    with pytest.raises(LocalProtocolError, match=f"{size} bytes, expected 32"):
        pair.sender.set_policy_fingerprint(b"x" * size)
    assert pair.sender.policy_fingerprint == before
