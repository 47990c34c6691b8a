"""The tamper-evident audit log: a hash-chained JSON-lines file with signed checkpoints.

Owns writing (``AuditLog``), verifying (``verify``) and reading back (``review``) the
record of what crossed the diode, what was refused and what was lost. Pure apart from its
own files and writer thread: no sockets, no Kafka. The format and every event's fields are
documented in ``docs/audit.md``.
"""

from __future__ import annotations

from .aggregate import AuditSink, MemoryAuditSink, RecordedEvent, RejectionAggregator
from .entry import Entry, decode_line, format_time, parse_time
from .events import REQUIRED_FIELDS, Actor, AuditEvent
from .verify import ChainReport, Problem, ProblemKind, Report, verify
from .writer import AuditConfig, AuditLog, AuditStats, CheckpointReason, FsyncPolicy

__all__ = [
    "REQUIRED_FIELDS",
    "Actor",
    "AuditConfig",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "AuditStats",
    "ChainReport",
    "CheckpointReason",
    "Entry",
    "FsyncPolicy",
    "MemoryAuditSink",
    "Problem",
    "ProblemKind",
    "RecordedEvent",
    "RejectionAggregator",
    "Report",
    "decode_line",
    "format_time",
    "parse_time",
    "verify",
]
