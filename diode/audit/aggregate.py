"""Where audit entries go, and the aggregation of frequent events into one entry.

Owns ``AuditSink`` (what the services and the policy engine write to: an ``AuditLog``, or
``MemoryAuditSink`` in tests) and ``RejectionAggregator``: a flood of bad datagrams must
not become a flood of audit entries, so the receiver reports each rejection here and one
``datagrams_rejected`` entry per reason is written per interval.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .entry import check_fields, format_time
from .events import AuditEvent


class AuditSink(Protocol):
    """Anything audit events can be appended to."""

    def append(self, event: str, fields: Mapping[str, object]) -> None: ...


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    event: str
    fields: Mapping[str, object]


class MemoryAuditSink:
    """Keeps events in a list; for tests of code that audits. Checks fields like the log."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def append(self, event: str, fields: Mapping[str, object]) -> None:
        check_fields(fields)
        self.events.append(RecordedEvent(str(event), dict(fields)))

    def of(self, event: str) -> list[Mapping[str, object]]:
        """The fields of every recorded ``event``, in order."""
        return [e.fields for e in self.events if e.event == event]


class RejectionAggregator:
    """Counts rejected datagrams per reason; writes one entry per reason per interval.

    The receiver calls ``reject(reason, now)`` for every datagram it refuses, and ``tick(now)``
    from its loop so a burst that stopped is still reported. ``flush(now)`` writes what is
    pending (at shutdown). Entries carry ``reason``, ``count``, ``interval_start`` and
    ``interval_end`` (RFC 3339) and ``seconds``, plus ``examples``: up to a few details of
    the first rejections of the interval (never datagram bytes).
    """

    MAX_EXAMPLES = 3

    def __init__(self, sink: AuditSink, interval: float = 10.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval is {interval}, must be positive")
        self._sink = sink
        self._interval = interval
        self._lock = threading.Lock()
        self._start: float | None = None
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}
        self.total = 0

    def reject(self, reason: str, now: float, detail: str | None = None) -> None:
        """Count one rejected datagram; write the previous interval if it is over."""
        with self._lock:
            self._roll(now)
            if self._start is None:
                self._start = now
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self.total += 1
            if detail is not None:
                examples = self._examples.setdefault(reason, [])
                if len(examples) < self.MAX_EXAMPLES:
                    examples.append(detail)

    def tick(self, now: float) -> None:
        """Write the current interval if it is over."""
        with self._lock:
            self._roll(now)

    def flush(self, now: float) -> None:
        """Write whatever is pending, interval over or not."""
        with self._lock:
            self._emit(now)

    def _roll(self, now: float) -> None:
        if self._start is not None and now - self._start >= self._interval:
            self._emit(now)

    def _emit(self, now: float) -> None:
        if self._start is None:
            return
        start, counts, examples = self._start, self._counts, self._examples
        self._start, self._counts, self._examples = None, {}, {}
        for reason in sorted(counts):
            fields: dict[str, object] = {
                "reason": reason,
                "count": counts[reason],
                "interval_start": format_time(start),
                "interval_end": format_time(now),
                "seconds": round(now - start, 6),
            }
            if reason in examples:
                fields["examples"] = examples[reason]
            self._sink.append(AuditEvent.DATAGRAMS_REJECTED, fields)
