"""Turn protocol session events into audit entries.

Owns the mapping from what the sessions report (``diode.protocol.events``) to what an
auditor reads (``diode.audit.AuditEvent``). The receiver service and ``diode simulate`` share
it, so a simulated run's log reads exactly like a real one.

Per-datagram and per-record events are aggregated, never written one by one: rejected
datagrams become one ``datagrams_rejected`` entry per reason per interval (through
``RejectionAggregator``), delivered records one ``records_delivered`` entry per source
partition per interval with the offset range, count and bytes. Everything that means loss
(``gap``, ``blocks_lost``) or a change of trust (session start/restart, key rotation, link
down/up) is written at once.

Losses are accounted across sender sessions (``diode.protocol.accounting.LossLedger``): a
record at or below its partition's highest delivered offset is a duplicate a restarted sender
sent again (``duplicates_skipped``, aggregated like deliveries), a gap of records all accounted
for already is ``resend_lost`` rather than ``gap``, a gap's ``count`` is what it newly loses,
and a resent record that fills a reported gap is ``gap_recovered``. So the ``gap`` counts less
the ``gap_recovered`` counts are exactly the records that never arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from diode.audit import AuditEvent, RejectionAggregator, format_time
from diode.protocol.accounting import LossLedger, OpenGap
from diode.protocol.events import (
    BlocksLost,
    DatagramRejected,
    GapDetected,
    HeartbeatMissed,
    KeyRotated,
    LinkUp,
    PartitionUnseen,
    RecordsDelivered,
    SessionEnded,
    SessionStarted,
)

RECORDS_DELIVERED = AuditEvent.RECORDS_DELIVERED
DUPLICATES_SKIPPED = AuditEvent.DUPLICATES_SKIPPED
#: the gap reason of offsets no session showed: sent while the receiver was down, never
#: readable, or refused by the sender's policy (the count is an upper bound)
UNSEEN = "unseen"
BLOCKS_LOST = AuditEvent.BLOCKS_LOST
SESSION_END = AuditEvent.SESSION_END


class ActorLog(Protocol):
    """The part of ``AuditLog`` used here (an in-memory sink works in tests)."""

    def append(
        self, event: str, fields: Mapping[str, object], *, actor: str | None = None
    ) -> None: ...


class _ActorSink:
    """Writes as one actor: lets a single log hold a simulated sender and receiver."""

    __slots__ = ("_actor", "_log")

    def __init__(self, log: ActorLog, actor: str | None) -> None:
        self._log = log
        self._actor = actor

    def append(self, event: str, fields: Mapping[str, object]) -> None:
        self._log.append(event, fields, actor=self._actor)


@dataclass(slots=True)
class _Range:
    first_offset: int
    last_offset: int
    count: int
    bytes: int


@dataclass(slots=True)
class _Recovered:
    topic: str
    partition: int
    gap: OpenGap
    first_offset: int
    last_offset: int
    count: int


def _merge(ranges: dict[tuple[str, int], _Range], key: tuple[str, int], span: _Range) -> None:
    """Add ``span`` (later offsets of the same partition) to the interval's range."""
    have = ranges.get(key)
    if have is None:
        ranges[key] = _Range(span.first_offset, span.last_offset, span.count, span.bytes)
    else:
        have.last_offset = span.last_offset
        have.count += span.count
        have.bytes += span.bytes


class ProtocolAuditor:
    """Feed it every event of one session side with ``handle(event, now)``.

    ``now`` is wall-clock seconds since the epoch (it dates aggregation intervals); call
    ``tick(now)`` from the program's loop so quiet intervals still close, and ``close(now)``
    at shutdown to write what is pending.
    """

    def __init__(self, log: ActorLog, *, actor: str | None = None, interval: float = 10.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval is {interval}, must be positive")
        self._sink = _ActorSink(log, actor)
        self._rejections = RejectionAggregator(self._sink, interval)
        self._interval = interval
        self._window_start: float | None = None
        self._delivered: dict[tuple[str, int], _Range] = {}
        self._duplicates: dict[tuple[str, int], _Range] = {}
        self._recovered: dict[int, _Recovered] = {}
        self.ledger = LossLedger()
        #: new records delivered (duplicates of a resend not included)
        self.records_delivered = 0
        self.records_duplicate = 0

    @property
    def records_lost(self) -> int:
        """Records reported lost and not recovered since: the ``gap`` counts less the
        ``gap_recovered`` counts."""
        return self.ledger.net_lost

    def seed(
        self,
        last_delivered: Mapping[tuple[str, int], int],
        last_reported: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """Offsets delivered before this program started (learned from IT Kafka) and
        reported lost by its previous run (from its audit log)."""
        self.ledger.seed(last_delivered, last_reported)

    def handle(self, event: object, now: float) -> None:
        # close an interval that is over before the event lands in the next one
        self.tick(now)
        if isinstance(event, RecordsDelivered):
            self._deliver(event, now)
        elif isinstance(event, DatagramRejected):
            self._rejections.reject(event.reason, now, event.detail[:200])
        elif isinstance(event, GapDetected):
            # a gap must never appear before the deliveries that preceded it
            self._flush_delivered(now)
            key = (event.topic, event.partition)
            unseen = self.ledger.first_sight(event.session_id, key, event.first_offset)
            if unseen is not None:
                self._unseen(event.session_id, key, unseen, now)
            verdict = self.ledger.gap(
                event.session_id,
                event.topic,
                event.partition,
                event.first_offset,
                event.last_offset,
                event.count,
            )
            fields: dict[str, object] = {
                "session_id": event.session_id.hex(),
                "topic": event.topic,
                "partition": event.partition,
                "first_offset": event.first_offset,
                "last_offset": event.last_offset,
                "count": verdict.lost if verdict.lost else event.count,
                "reason": event.reason,
                "block": event.block,
            }
            if not verdict.lost:
                self._sink.append(AuditEvent.RESEND_LOST, fields)
                return
            if verdict.lost != event.count or verdict.bound:
                # the block held more records; the others were accounted for already
                fields["block_records"] = event.count
                fields["count_is_bound"] = verdict.bound
            self._sink.append(AuditEvent.GAP, fields)
        elif isinstance(event, PartitionUnseen):
            key = (event.topic, event.partition)
            unseen = self.ledger.first_sight(event.session_id, key, event.last_offset + 1)
            if unseen is not None:
                self._unseen(event.session_id, key, unseen, now)
        elif isinstance(event, BlocksLost):
            self._sink.append(
                BLOCKS_LOST,
                {
                    "session_id": event.session_id.hex(),
                    "first_block": event.first_block,
                    "last_block": event.last_block,
                    "reason": event.reason,
                },
            )
        elif isinstance(event, SessionStarted):
            self._flush_delivered(now)
            if event.restart:
                self._sink.append(
                    AuditEvent.SESSION_RESTART,
                    {
                        "session_id": event.session_id.hex(),
                        "previous_session_id": (
                            event.previous_session_id.hex()
                            if event.previous_session_id is not None
                            else None
                        ),
                        "key_id": event.key_id,
                    },
                )
            else:
                self._sink.append(
                    AuditEvent.SESSION_START,
                    {"session_id": event.session_id.hex(), "key_id": event.key_id},
                )
        elif isinstance(event, SessionEnded):
            self._flush_delivered(now)
            self._sink.append(
                SESSION_END,
                {
                    "session_id": event.session_id.hex(),
                    "blocks_delivered": event.blocks_delivered,
                    "blocks_lost": event.blocks_lost,
                },
            )
        elif isinstance(event, KeyRotated):
            self._sink.append(
                AuditEvent.KEY_ROTATION,
                {
                    "session_id": event.session_id.hex(),
                    "key_id": event.key_id,
                    "previous_key_id": event.previous_key_id,
                },
            )
        elif isinstance(event, HeartbeatMissed):
            self._sink.append(
                AuditEvent.LINK_DOWN,
                {"session_id": event.session_id.hex(), "silent_for": round(event.silent_for, 6)},
            )
        elif isinstance(event, LinkUp):
            self._sink.append(
                AuditEvent.LINK_UP,
                {
                    "session_id": event.session_id.hex(),
                    "after_silence": (
                        round(event.after_silence, 6) if event.after_silence is not None else None
                    ),
                },
            )

    def _deliver(self, event: RecordsDelivered, now: float) -> None:
        if self._window_start is None:
            self._window_start = now
        # this block's records per source partition first: the ledger's common case (all
        # new, no open gap) then costs one call per partition, not one per record
        per: dict[tuple[str, int], _Range] = {}
        for r in event.records:
            key = (r.topic, r.partition)
            size = r.size
            span = per.get(key)
            if span is None:
                per[key] = _Range(r.offset, r.offset, 1, size)
            else:
                span.last_offset = r.offset
                span.count += 1
                span.bytes += size
        ledger = self.ledger
        session = event.session_id
        new = 0
        for key, span in per.items():
            unseen = ledger.first_sight(session, key, span.first_offset)
            if unseen is not None:
                self._unseen(session, key, unseen, now)
            if ledger.delivered_run(session, key, span.first_offset, span.last_offset):
                _merge(self._delivered, key, span)
                new += span.count
                continue
            for r in event.records:
                if (r.topic, r.partition) != key:
                    continue
                verdict = ledger.delivered(session, r.topic, r.partition, r.offset)
                one = _Range(r.offset, r.offset, 1, r.size)
                if verdict is False:
                    _merge(self._duplicates, key, one)
                    continue
                _merge(self._delivered, key, one)
                new += 1
                if verdict is not True:
                    got = self._recovered.get(id(verdict))
                    if got is None:
                        self._recovered[id(verdict)] = _Recovered(
                            r.topic, r.partition, verdict, r.offset, r.offset, 1
                        )
                    else:
                        got.last_offset = r.offset
                        got.count += 1
        self.records_delivered += new
        self.records_duplicate += len(event.records) - new

    def _unseen(self, session: bytes, key: tuple[str, int], span: OpenGap, now: float) -> None:
        """A ``gap`` for offsets no session showed (see ``LossLedger.first_sight``)."""
        self._flush_delivered(now)
        self._sink.append(
            AuditEvent.GAP,
            {
                "session_id": session.hex(),
                "topic": key[0],
                "partition": key[1],
                "first_offset": span.first_offset,
                "last_offset": span.last_offset,
                "count": span.remaining,
                "reason": UNSEEN,
                "count_is_bound": True,
            },
        )

    def tick(self, now: float) -> None:
        self._rejections.tick(now)
        if self._window_start is not None and now - self._window_start >= self._interval:
            self._flush_delivered(now)

    def close(self, now: float) -> None:
        self._flush_delivered(now)
        self._rejections.flush(now)

    def _flush_delivered(self, now: float) -> None:
        if self._window_start is None:
            return
        start = self._window_start
        delivered, duplicates, recovered = self._delivered, self._duplicates, self._recovered
        self._window_start = None
        self._delivered, self._duplicates, self._recovered = {}, {}, {}
        interval = {"interval_start": format_time(start), "interval_end": format_time(now)}
        for event, ranges in ((RECORDS_DELIVERED, delivered), (DUPLICATES_SKIPPED, duplicates)):
            for (topic, partition), span in sorted(ranges.items()):
                self._sink.append(
                    event,
                    {
                        "topic": topic,
                        "partition": partition,
                        "first_offset": span.first_offset,
                        "last_offset": span.last_offset,
                        "count": span.count,
                        "bytes": span.bytes,
                        **interval,
                    },
                )
        for got in recovered.values():
            self._sink.append(
                AuditEvent.GAP_RECOVERED,
                {
                    "topic": got.topic,
                    "partition": got.partition,
                    "first_offset": got.first_offset,
                    "last_offset": got.last_offset,
                    "count": got.count,
                    "gap_first_offset": got.gap.first_offset,
                    "gap_last_offset": got.gap.last_offset,
                    **interval,
                },
            )
