"""Loss accounting across sender sessions: what a gap newly loses, and what a resend recovers.

A ``ReceiverSession`` reports the gaps of each sender session on their own. Across a sender
restart that is not the whole truth: the new session resends from the OT side's committed
offsets, so it may fill a gap the old session left (its tail blocks were cut off by the
restart), and it may lose a block of records the old session had already delivered. The
receiver keeps records in order by one rule: per source partition, a record at or below the
highest offset delivered so far is a duplicate and is skipped. ``LossLedger`` applies the same
rule to losses:

* everything at or below a partition's ``high`` offset is already accounted for (delivered,
  or reported lost): a gap lying entirely there loses nothing new;
* a gap reported above ``high`` stays *open*: a later delivery above ``high`` that lands inside
  it is a record recovered, and is subtracted from the loss;
* a gap that overlaps what is accounted for loses only its other records: none if every
  offset it spans is accounted for (an offset holds the same record whichever session sent
  it); otherwise their number is exact when the gap's offsets are contiguous
  (``count == last - first + 1``), and else an upper bound, the smaller of its count and its
  unaccounted offsets (the ledger never under-reports a loss).

* the first time a session shows a partition whose history is known (delivered or reported
  before, or learned at start), offsets between that history and what the session shows
  are *unseen* (``first_sight``): records sent while the receiver was down, or in datagrams
  it could never read, or refused by the sender's policy. They are counted as lost, as an
  upper bound (offsets, not records), and a resend may still recover them.

Within one session, with no restart, every gap is new and nothing is recovered: the ledger's
total equals the sum of the session's gaps. Pure and deterministic; no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: open gaps kept per source partition; past this the oldest is forgotten (a record it
#: would have recovered then stays counted as lost: over-reported, never under-reported)
MAX_OPEN_GAPS = 4096

_Key = tuple[str, int]


@dataclass(slots=True)
class OpenGap:
    """A reported loss above the partition's high offset that a resend may still fill."""

    first_offset: int
    last_offset: int
    #: records of this gap counted as lost and not yet recovered
    remaining: int
    #: the session that reported it
    session: bytes


@dataclass(frozen=True, slots=True)
class GapVerdict:
    """What one gap of a session means once earlier sessions are taken into account."""

    #: records newly lost (0: all of them were already delivered or reported lost)
    lost: int
    #: True if ``lost`` is an upper bound (a non-contiguous gap overlapping accounted offsets)
    bound: bool


class LossLedger:
    """Per source partition: the high offset delivered and the open gaps above it.

    Only other sessions' deliveries make a gap "already accounted for", and only other
    sessions' gaps can be recovered: within one session a block is delivered whole or
    reported once, though a block found lost late (from a heartbeat) may be reported after
    later blocks were delivered."""

    __slots__ = (
        "_high",
        "_open",
        "_prior",
        "_reported",
        "_session",
        "_sighted",
        "bounded",
        "forgotten",
        "records_lost",
        "records_recovered",
    )

    def __init__(self) -> None:
        self._high: dict[_Key, int] = {}
        #: per partition, the session that delivered its high offset, and the high offset
        #: of the sessions before it
        self._session: dict[_Key, bytes] = {}
        self._prior: dict[_Key, int] = {}
        self._open: dict[_Key, list[OpenGap]] = {}
        #: per partition, the highest offset a gap has named
        self._reported: dict[_Key, int] = {}
        #: per partition, the last session seen delivering or losing its records
        self._sighted: dict[_Key, bytes] = {}
        #: losses counted as an upper bound (``GapVerdict.bound`` or an unseen range)
        self.bounded = 0
        #: open gaps dropped because a partition had ``MAX_OPEN_GAPS`` of them
        self.forgotten = 0
        #: records counted lost by ``gap`` (before recoveries)
        self.records_lost = 0
        #: records a resend delivered after their gap was reported
        self.records_recovered = 0

    @property
    def net_lost(self) -> int:
        """Records lost and never recovered."""
        return self.records_lost - self.records_recovered

    def seed(
        self, last_delivered: Mapping[_Key, int], last_reported: Mapping[_Key, int] | None = None
    ) -> None:
        """Start from offsets already delivered (the receiver learns them from IT Kafka) and
        already reported lost (from its own audit log)."""
        for key, offset in last_delivered.items():
            if offset > self._high.get(key, -1):
                self._high[key] = offset
        for key, offset in (last_reported or {}).items():
            if offset > self._reported.get(key, -1):
                self._reported[key] = offset

    def first_sight(self, session: bytes, key: _Key, first: int) -> OpenGap | None:
        """Call before handing over a session's records or gap of a partition, with the
        lowest offset it names. The first time a session shows a partition whose history is
        known, the offsets between what is accounted for and ``first`` are *unseen*: sent
        while this receiver was down or while its datagrams could not be read, or refused by
        the sender's policy. Returned as a loss (an upper bound: the offsets, not records),
        which a later resend may still recover."""
        if self._sighted.get(key) == session:
            return None
        self._sighted[key] = session
        known = max(self._high.get(key, -1), self._reported.get(key, -1))
        if known < 0 or first <= known + 1:
            return None
        span = OpenGap(known + 1, first - 1, first - 1 - known, b"")
        spans = self._open.setdefault(key, [])
        spans.append(span)
        if len(spans) > MAX_OPEN_GAPS:
            del spans[0]
            self.forgotten += 1
        self._reported[key] = span.last_offset
        self.records_lost += span.remaining
        self.bounded += 1
        return span

    def high(self, topic: str, partition: int) -> int:
        """The highest offset of the partition delivered so far (-1: none)."""
        return self._high.get((topic, partition), -1)

    def accounted(self, topic: str, partition: int) -> int:
        """The highest offset of the partition delivered or reported lost (-1: none)."""
        key = (topic, partition)
        return max(self._high.get(key, -1), self._reported.get(key, -1))

    def _accounted(self, key: _Key, session: bytes) -> int:
        """The highest offset other sessions delivered (or the seed)."""
        if self._session.get(key) == session:
            return self._prior.get(key, -1)
        return self._high.get(key, -1)

    def _raise(self, key: _Key, session: bytes, high: int, offset: int) -> None:
        """``session`` delivered up to ``offset``, above the old ``high``: when a new session
        takes over a partition, what the others delivered becomes its prior."""
        self._high[key] = offset
        if self._session.get(key) != session:
            self._prior[key] = high
            self._session[key] = session

    def delivered_run(self, session: bytes, key: _Key, first: int, last: int) -> bool:
        """The fast path for a block's records of one partition (``first`` to ``last``, in
        order): True, and recorded, if all are new and none can fill an open gap; False if
        the caller must go through ``delivered`` record by record."""
        high = self._high.get(key, -1)
        if first <= high or key in self._open:
            return False
        self._raise(key, session, high, last)
        return True

    def delivered(self, session: bytes, topic: str, partition: int, offset: int) -> OpenGap | bool:
        """One record ``session`` delivered, in order. False: a duplicate (at or below the
        high offset: already accounted for); True: a new record; an ``OpenGap``: a new
        record that recovers one counted in that gap of another session."""
        key = (topic, partition)
        high = self._high.get(key, -1)
        if offset <= high:
            return False
        self._raise(key, session, high, offset)
        spans = self._open.get(key)
        if not spans:
            return True
        hit: OpenGap | None = None
        keep: list[OpenGap] = []
        for span in spans:
            if (
                hit is None
                and span.session != session
                and span.remaining
                and span.first_offset <= offset <= span.last_offset
            ):
                span.remaining -= 1
                hit = span
            if span.last_offset > offset and span.remaining:
                keep.append(span)
        if keep:
            self._open[key] = keep
        else:
            del self._open[key]
        if hit is None:
            return True
        self.records_recovered += 1
        return hit

    def gap(
        self, session: bytes, topic: str, partition: int, first: int, last: int, count: int
    ) -> GapVerdict:
        """A gap ``session`` reported (``count`` records between ``first`` and ``last``)."""
        key = (topic, partition)
        accounted = self._accounted(key, session)
        if last <= accounted:
            return GapVerdict(0, False)
        spans = self._open.get(key, [])
        low = max(first, accounted + 1)
        overlapping = [
            s
            for s in spans
            if s.session != session and s.first_offset <= last and low <= s.last_offset
        ]
        bound = False
        if first > accounted and not overlapping:
            lost = count
        else:
            # the same offsets hold the same records whichever session sent them
            outside = _outside(low, last, overlapping)
            if outside == 0 or count == last - first + 1:
                lost = outside
            else:
                lost, bound = min(count, outside), True
        if lost:
            spans.append(OpenGap(first, last, lost, session))
            if len(spans) > MAX_OPEN_GAPS:
                del spans[0]
                self.forgotten += 1
            self._open[key] = spans
            self.records_lost += lost
            self.bounded += bound
        if last > self._reported.get(key, -1):
            self._reported[key] = last
        return GapVerdict(lost, bound)


def _outside(low: int, last: int, spans: list[OpenGap]) -> int:
    """Offsets in ``low..last`` that no span covers."""
    covered = 0
    cursor = low
    for s in sorted(spans, key=lambda s: s.first_offset):
        start = max(s.first_offset, cursor)
        end = min(s.last_offset, last)
        if start <= end:
            covered += end - start + 1
            cursor = end + 1
    return (last - low + 1) - covered


__all__ = ["MAX_OPEN_GAPS", "GapVerdict", "LossLedger", "OpenGap"]
