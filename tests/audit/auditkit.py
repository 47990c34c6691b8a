"""Helpers for the audit tests: a manual clock, and the tools of someone editing a log."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diode.audit import AuditLog
from diode.audit.entry import canonical

T0 = 1_750_000_000.0
CHAIN_ID = "c0ffee" * 5 + "00"


class ManualClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def refused(i: int, topic: str = "plant.sensors", rule: str = "size_limit") -> dict[str, object]:
    return {
        "topic": topic,
        "partition": i % 3,
        "offset": 1000 + i,
        "rule": rule,
        "reason": f"value of {2000 + i} bytes exceeds limit 1024",
    }


def write_entries(log: AuditLog, n: int, clock: ManualClock | None = None) -> None:
    for i in range(n):
        log.append("record_refused", refused(i))
        if clock is not None:
            clock.advance(0.5)


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def entry_of(line: bytes) -> dict[str, object]:
    obj: dict[str, object] = json.loads(line)
    return obj


def rehash(obj: dict[str, object]) -> bytes:
    """The line an attacker who knows the format writes for ``obj``: hash recomputed."""
    body = {k: v for k, v in obj.items() if k != "hash"}
    digest = hashlib.sha256(canonical(body)).hexdigest()
    return canonical({**body, "hash": digest}) + b"\n"


def find(lines: list[bytes], event: str, nth: int = 0) -> int:
    """Index of the nth line whose event is ``event``."""
    hits = [i for i, line in enumerate(lines) if entry_of(line)["event"] == event]
    return hits[nth]
