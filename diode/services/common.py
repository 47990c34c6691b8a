"""What the sender and receiver programs set up the same way.

Owns the opening of a service's audit log from its ``[audit]`` settings, the fields a refused
record's entry carries of its content (``[audit] record_content``), the audit entries of policy
loads and reloads, the run-until-stopped loop and the wait of one of its turns, and the 32-byte
form of a policy fingerprint that heartbeats carry (the sender sends it, the receiver compares
its own policy with it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from diode.audit import Actor, AuditConfig, AuditEvent, AuditLog, FsyncPolicy
from diode.config import AuditSettings
from diode.policy.reload import PolicyEvent, PolicyLoaded, PolicyRejected, PolicyReloaded
from diode.protocol.crypto import SigningKey
from diode.protocol.records import Record

log = logging.getLogger("diode.services")

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
            rotate_seconds=settings.rotate_seconds,
            fsync=FsyncPolicy(settings.fsync),
        ),
        key,
        clock=wall,
    )


def record_content(settings: AuditSettings, record: Record) -> dict[str, object]:
    """The fields of a refused or quarantined record's audit entry that speak of its content,
    as ``[audit] record_content`` says: none by default (the payload stays in the plant)."""
    mode = settings.record_content
    if mode == "none":
        return {}

    def digest(data: bytes | None) -> str | None:
        return None if data is None else hashlib.sha256(data).hexdigest()

    out: dict[str, object] = {
        "key_sha256": digest(record.key),
        "value_sha256": digest(record.value),
    }
    if mode == "full":
        limit = settings.record_content_max_bytes
        cut = False

        def b64(data: bytes | None) -> str | None:
            nonlocal cut
            if data is None:
                return None
            cut = cut or len(data) > limit
            return base64.b64encode(data[:limit]).decode()

        out["key_b64"] = b64(record.key)
        out["value_b64"] = b64(record.value)
        out["headers_b64"] = [[name, b64(value)] for name, value in record.headers]
        out["content_truncated"] = cut
    return out


def audit_policy_event(audit: AuditLog, event: PolicyEvent) -> None:
    """The audit entry (and log line) of a policy (re)load; an unchanged reload writes none."""
    if isinstance(event, PolicyLoaded):
        audit.append(
            AuditEvent.POLICY_LOADED,
            {"policy_fingerprint": event.fingerprint, "path": event.path},
        )
    elif isinstance(event, PolicyReloaded):
        audit.append(
            AuditEvent.POLICY_RELOADED,
            {
                "policy_fingerprint": event.fingerprint,
                "old_fingerprint": event.old_fingerprint,
                "path": event.path,
            },
        )
        log.info("policy reloaded: %s", event.fingerprint)
    elif isinstance(event, PolicyRejected):
        audit.append(
            AuditEvent.POLICY_REJECTED,
            {
                "reason": "; ".join(event.problems)[:1000],
                "kept_fingerprint": event.kept_fingerprint,
                "path": event.path,
            },
        )
        log.error("policy %s rejected, keeping %s", event.path, event.kept_fingerprint)


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
    "audit_policy_event",
    "loop_wait",
    "open_audit_log",
    "policy_fingerprint_bytes",
    "record_content",
]
