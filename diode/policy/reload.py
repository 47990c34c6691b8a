"""Hot reload: keep a running engine in step with its policy file, never with a broken one.

``ReloadingPolicy`` owns the current ``PolicyEngine``. ``check(now)`` (call it from the
service loop) notices a changed policy or schema file by size and mtime, confirms by content
hash, and reloads; ``reload()`` (call it on SIGHUP) reloads unconditionally. A file that does
not validate is rejected and the old policy keeps running. Every outcome is returned as an
event and passed to the ``on_event`` callback so it can go to the audit log.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diode.errors import PolicyValidationError
from diode.policy.decision import Decision, Finding
from diode.policy.engine import DEFAULT_MAX_TOPICS, PolicyEngine
from diode.policy.loader import Policy, load_policy
from diode.protocol.records import Record


@dataclass(frozen=True, slots=True)
class PolicyLoaded:
    """The first policy was loaded."""

    path: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class PolicyReloaded:
    """A changed, valid policy replaced the running one."""

    path: str
    old_fingerprint: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class PolicyUnchanged:
    """A reload found the same policy (same fingerprint); nothing was replaced."""

    path: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class PolicyRejected:
    """A changed policy did not validate; the one with ``kept_fingerprint`` keeps running."""

    path: str
    kept_fingerprint: str
    problems: tuple[str, ...]


PolicyEvent = PolicyLoaded | PolicyReloaded | PolicyUnchanged | PolicyRejected

_Stamp = tuple[tuple[str, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def _digest(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"\x00missing:" + str(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


class ReloadingPolicy:
    """The running policy engine plus the file it came from.

    The first load happens in the constructor and raises ``PolicyValidationError`` if the
    file is invalid: a service must not start without a policy. Blocked topics survive a
    reload (a reload must not reopen a topic blocked for, say, a leaked credential) and are
    lifted by ``unblock`` or a restart; anomaly detectors start a new warm-up, because their
    settings may have changed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_event: Callable[[PolicyEvent], None] | None = None,
        min_interval: float = 1.0,
        max_topics: int = DEFAULT_MAX_TOPICS,
    ) -> None:
        self.path = Path(path)
        self.on_event = on_event
        self.min_interval = min_interval
        self.max_topics = max_topics
        policy = load_policy(self.path)
        self.engine = PolicyEngine(policy, max_topics=max_topics)
        self._remember(policy)
        self._next_check = float("-inf")
        self._emit(PolicyLoaded(str(self.path), policy.fingerprint))

    def _remember(self, policy: Policy) -> None:
        self._watched = policy.watched_files
        self._stamp = _stamp(self._watched)
        self._digest = _digest(self._watched)

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    @property
    def fingerprint(self) -> str:
        return self.engine.fingerprint

    def evaluate(self, record: Record, now: float) -> Decision:
        return self.engine.evaluate(record, now)

    def poll(self, now: float) -> list[Finding]:
        return self.engine.poll(now)

    def blocked_topics(self) -> dict[str, str]:
        """Topics a ``block_topic`` violation blocked, with the reason; reloads keep them."""
        return self.engine.blocked_topics()

    def unblock(self, topic: str) -> bool:
        """Lift the block on ``topic`` (an operator's decision; a reload never does);
        True if it was blocked."""
        return self.engine.unblock(topic)

    def check(self, now: float) -> PolicyEvent | None:
        """Reload if a watched file changed; at most once per ``min_interval`` seconds."""
        if now < self._next_check:
            return None
        self._next_check = now + self.min_interval
        stamp = _stamp(self._watched)
        if stamp == self._stamp:
            return None
        digest = _digest(self._watched)
        if digest == self._digest:
            self._stamp = stamp  # touched, not changed
            return None
        return self.reload()

    def reload(self) -> PolicyEvent:
        """Load the file now (on SIGHUP, or from ``check``), keeping the old one if invalid."""
        old = self.engine
        try:
            policy = load_policy(self.path)
        except PolicyValidationError as exc:
            # remember what we saw so a broken file is reported once, not every check
            self._stamp = _stamp(self._watched)
            self._digest = _digest(self._watched)
            problems = tuple(f"{f}:{line}: {msg}" for f, line, msg in exc.problems)
            return self._emit(PolicyRejected(str(self.path), old.fingerprint, problems))
        self._remember(policy)
        if policy.fingerprint == old.fingerprint:
            return self._emit(PolicyUnchanged(str(self.path), policy.fingerprint))
        self.engine = PolicyEngine(
            policy, max_topics=self.max_topics, blocked=old.blocked_topics().items()
        )
        return self._emit(PolicyReloaded(str(self.path), old.fingerprint, policy.fingerprint))

    def _emit(self, event: PolicyEvent) -> PolicyEvent:
        if self.on_event is not None:
            self.on_event(event)
        return event
