"""What the sender and receiver programs set up the same way.

Owns the opening of a service's audit log from its ``[audit]`` settings, the run-until-stopped
loop and the wait of one of its turns, and the 32-byte form of a policy fingerprint that heartbeats carry (the
sender sends it, the receiver compares its own policy with it).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from diode.audit import Actor, AuditConfig, AuditLog, FsyncPolicy
from diode.config import AuditSettings
from diode.protocol.crypto import SigningKey

#: longest wait for input in one turn of a service loop: keeps timers and signals responsive
MAX_WAIT = 0.05

TopicPartition = tuple[str, int]
StatsT = TypeVar("StatsT")


class ServiceLoop(Generic[StatsT]):
    """``run()`` turns ``step()`` until ``stop()`` is called, then ``close()``s; subclasses
    provide ``stats``, ``step`` and ``close``."""

    stats: StatsT

    def __init__(self) -> None:
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask ``run`` to close and return (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> StatsT:
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()
        return self.stats

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def open_audit_log(
    settings: AuditSettings, actor: Actor, key: SigningKey, wall: Callable[[], float]
) -> AuditLog:
    """The service's audit log, its checkpoints signed with ``key``, timed by ``wall``."""
    return AuditLog(
        AuditConfig(
            path=settings.path,
            actor=actor,
            checkpoint_entries=settings.checkpoint_entries,
            checkpoint_seconds=settings.checkpoint_seconds,
            rotate_bytes=settings.rotate_bytes,
            fsync=FsyncPolicy(settings.fsync),
        ),
        key,
        clock=wall,
    )


def loop_wait(timer: float | None, now: float) -> float:
    """How long one turn may wait for input: until the next protocol timer, at most
    ``MAX_WAIT``."""
    return MAX_WAIT if timer is None else min(MAX_WAIT, max(0.0, timer - now))


def policy_fingerprint_bytes(fingerprint: str) -> bytes:
    """The 32 bytes a heartbeat carries for a policy fingerprint (hex SHA-256, or hashed)."""
    try:
        raw = bytes.fromhex(fingerprint)
    except ValueError:
        raw = b""
    return raw if len(raw) == 32 else hashlib.sha256(fingerprint.encode()).digest()


__all__ = [
    "MAX_WAIT",
    "ServiceLoop",
    "TopicPartition",
    "loop_wait",
    "open_audit_log",
    "policy_fingerprint_bytes",
]
