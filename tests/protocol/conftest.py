"""Fixtures for the protocol session tests."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from diode.protocol.crypto import SigningKey
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.sender import SenderSession
from diode.protocol.wire import ProtocolConfig
from tests.protocol.sessionkit import RECEIVER, SIGNING, Pair


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    def make(
        config: ProtocolConfig | None = None,
        options: ReceiverOptions | None = None,
        seed: int = 1,
        signing: SigningKey = SIGNING,
    ) -> Pair:
        cfg = config or ProtocolConfig()
        rng = random.Random(seed)
        sender = SenderSession(cfg, signing, RECEIVER.public_key, rng.randbytes, 0.0)
        receiver = ReceiverSession(cfg, RECEIVER, SIGNING.verify_key, options=options)
        return Pair(sender, receiver)

    return make
