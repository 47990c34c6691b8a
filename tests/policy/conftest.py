"""Fixtures for the policy tests: policy files written into a temporary directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from diode.policy import Policy, PolicyEngine, load_policy
from diode.protocol.records import Record

NOW = 1_700_000_000.0

WriteFn = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> WriteFn:
    """write(text, name="p.yaml") -> path; also writes any schemas={name: dict} given."""

    def _write(text: str, name: str = "p.yaml", schemas: dict[str, object] | None = None) -> Path:
        for sname, schema in (schemas or {}).items():
            (tmp_path / sname).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / sname).write_text(json.dumps(schema))
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def engine_of(write: WriteFn) -> Callable[..., PolicyEngine]:
    def _engine(text: str, schemas: dict[str, object] | None = None) -> PolicyEngine:
        return PolicyEngine(load_policy(write(text, schemas=schemas)))

    return _engine


@pytest.fixture
def policy_of(write: WriteFn) -> Callable[..., Policy]:
    def _policy(text: str, schemas: dict[str, object] | None = None) -> Policy:
        return load_policy(write(text, schemas=schemas))

    return _policy


def rec(
    topic: str,
    value: bytes | None = b"{}",
    *,
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes | None], ...] = (),
    ts: float = NOW,
    offset: int = 0,
) -> Record:
    return Record(topic, 0, offset, int(ts * 1000), key, value, headers)


@pytest.fixture
def make_record() -> Callable[..., Record]:
    return rec
