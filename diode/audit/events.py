"""The names of audit events and actors, and the fields some events must carry.

Owns the vocabulary of the audit log. The meaning of every event and its fields is
documented in ``docs/audit.md``; the checks here catch a caller that forgets a field the
review commands (``diode audit stats``) rely on.
"""

from __future__ import annotations

import re
from enum import StrEnum


class AuditEvent(StrEnum):
    """Every event the diode writes to its audit log."""

    SERVICE_START = "service_start"
    SERVICE_STOP = "service_stop"
    SESSION_START = "session_start"
    SESSION_RESTART = "session_restart"
    KEY_ROTATION = "key_rotation"
    POLICY_LOADED = "policy_loaded"
    POLICY_RELOADED = "policy_reloaded"
    POLICY_REJECTED = "policy_rejected"
    RECORD_REFUSED = "record_refused"
    RECORD_QUARANTINED = "record_quarantined"
    ANOMALY = "anomaly"
    GAP = "gap"
    DATAGRAMS_REJECTED = "datagrams_rejected"
    LINK_DOWN = "link_down"
    LINK_UP = "link_up"
    SPOOL_FULL = "spool_full"
    RECORDS_DELIVERED = "records_delivered"
    DUPLICATES_SKIPPED = "duplicates_skipped"
    GAP_RECOVERED = "gap_recovered"
    RESEND_LOST = "resend_lost"
    BLOCKS_LOST = "blocks_lost"
    SESSION_END = "session_end"
    POLICY_CHANGED = "policy_changed"
    PROVENANCE_INCOMPLETE = "provenance_incomplete"
    # written by the log itself, never by callers:
    AUDIT_DROPPED = "audit_dropped"
    CHECKPOINT = "checkpoint"
    CHAIN_START = "chain_start"
    CHAIN_RESUMED = "chain_resumed"


class Actor(StrEnum):
    """Which program wrote an entry."""

    SENDER = "sender"
    RECEIVER = "receiver"
    SIMULATE = "simulate"


#: Events only the log writes: a caller that could append them could fake a checkpoint
#: or a chain boundary and confuse a reader, so ``AuditLog.append`` refuses them.
RESERVED_EVENTS: frozenset[str] = frozenset(
    {
        AuditEvent.AUDIT_DROPPED,
        AuditEvent.CHECKPOINT,
        AuditEvent.CHAIN_START,
        AuditEvent.CHAIN_RESUMED,
    }
)

#: Fields an event must carry (it may carry more); ``diode audit stats`` and auditors rely
#: on these names. Events not listed carry whatever their caller documents.
REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    AuditEvent.SERVICE_START: frozenset({"config_fingerprint", "policy_fingerprint"}),
    AuditEvent.SERVICE_STOP: frozenset({"config_fingerprint", "policy_fingerprint"}),
    AuditEvent.POLICY_LOADED: frozenset({"policy_fingerprint"}),
    AuditEvent.POLICY_RELOADED: frozenset({"policy_fingerprint"}),
    AuditEvent.POLICY_REJECTED: frozenset({"reason"}),
    AuditEvent.RECORD_REFUSED: frozenset({"topic", "partition", "offset", "rule", "reason"}),
    AuditEvent.RECORD_QUARANTINED: frozenset({"topic", "partition", "offset", "rule", "reason"}),
    AuditEvent.ANOMALY: frozenset({"detector", "reason"}),
    AuditEvent.RECORDS_DELIVERED: frozenset(
        {"topic", "partition", "first_offset", "last_offset", "count"}
    ),
    AuditEvent.GAP: frozenset(
        {"topic", "partition", "first_offset", "last_offset", "count", "reason"}
    ),
    AuditEvent.RESEND_LOST: frozenset(
        {"topic", "partition", "first_offset", "last_offset", "count", "reason"}
    ),
    AuditEvent.DUPLICATES_SKIPPED: frozenset(
        {"topic", "partition", "first_offset", "last_offset", "count"}
    ),
    AuditEvent.GAP_RECOVERED: frozenset(
        {"topic", "partition", "first_offset", "last_offset", "count"}
    ),
    AuditEvent.DATAGRAMS_REJECTED: frozenset({"reason", "count", "interval_start", "interval_end"}),
    AuditEvent.AUDIT_DROPPED: frozenset({"count", "total", "reason"}),
    AuditEvent.CHECKPOINT: frozenset({"chain_id", "count", "head", "reason", "key", "signature"}),
    AuditEvent.CHAIN_START: frozenset({"chain_id", "version", "key"}),
    AuditEvent.CHAIN_RESUMED: frozenset(
        {"chain_id", "previous_file", "previous_seq", "clean", "torn", "unsigned"}
    ),
}

#: Event and actor names are written into the line without escaping, so they are kept to
#: a small alphabet; new events can be added without touching the writer.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
