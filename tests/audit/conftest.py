"""Fixtures for the audit tests: a fixed signing key, a manual clock, small logs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from diode.audit import Actor, AuditConfig, AuditLog
from diode.protocol.crypto import SigningKey
from tests.audit.auditkit import CHAIN_ID, ManualClock


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(b"audit test key").digest())


@pytest.fixture
def other_key() -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(b"some other key").digest())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_log(tmp_path: Path, key: SigningKey, clock: ManualClock) -> Callable[..., AuditLog]:
    """Open a synchronous log under tmp_path; any setting can be overridden."""

    def make(**overrides: object) -> AuditLog:
        settings: dict[str, object] = {
            "path": tmp_path / "audit.jsonl",
            "actor": Actor.SENDER,
            "checkpoint_entries": 5,
            "checkpoint_seconds": None,
            "rotate_bytes": None,
            "threaded": False,
        }
        signing = overrides.pop("key", key)
        settings.update(overrides)
        log = AuditLog(
            AuditConfig(**settings),  # type: ignore[arg-type]
            signing,  # type: ignore[arg-type]
            clock=clock,
            chain_id=CHAIN_ID,
        )
        return log

    return make
