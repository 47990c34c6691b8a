"""Reading an audit log back for people: filtering, statistics, export rows.

Owns what ``diode audit show``, ``stats`` and ``export`` compute. Reading is not
verifying: lines that cannot be parsed are skipped and counted (``Reader.skipped``), and
the commands point at ``diode audit verify`` for proof.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diode.errors import AuditError

from .entry import Entry, canonical, decode_line, format_time, parse_time
from .events import AuditEvent
from .files import expand_inputs, iter_lines


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries to keep. Empty means "all"; ``topics`` are glob patterns."""

    events: frozenset[str] = frozenset()
    topics: tuple[str, ...] = ()
    since: str | None = None  # canonical time text, inclusive
    until: str | None = None  # canonical time text, exclusive

    @classmethod
    def build(
        cls,
        events: Sequence[str] = (),
        topics: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
    ) -> Filter:
        """From user input; times are RFC 3339 / ISO 8601 (naive means UTC)."""
        known = {str(e) for e in AuditEvent}
        for name in events:
            if name not in known:
                raise AuditError(
                    f"unknown event {name!r}; known events: {', '.join(sorted(known))}"
                )
        # entry times are fixed-width UTC text, so they compare correctly as strings
        return cls(
            events=frozenset(events),
            topics=tuple(topics),
            since=format_time(parse_time(since)) if since else None,
            until=format_time(parse_time(until)) if until else None,
        )

    def matches(self, entry: Entry) -> bool:
        if self.events and entry.event not in self.events:
            return False
        if self.since is not None and entry.time < self.since:
            return False
        if self.until is not None and entry.time >= self.until:
            return False
        if self.topics:
            topic = entry.fields.get("topic")
            if not isinstance(topic, str):
                return False
            return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)
        return True


@dataclass(frozen=True, slots=True)
class Located:
    """An entry with where it was read, and its line as written."""

    file: Path
    line: int
    raw: bytes
    entry: Entry


class Reader:
    """Iterates the entries of files, directories or globs, series by series, in order."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self._series = expand_inputs(paths)
        self.skipped = 0  # lines that are not entries (torn, edited beyond parsing)

    def __iter__(self) -> Iterator[Located]:
        for series in self._series:
            for path in series.files:
                for raw in iter_lines(path):
                    if not raw.complete or raw.oversize:
                        self.skipped += 1
                        continue
                    try:
                        entry = decode_line(raw.data)
                    except AuditError:
                        self.skipped += 1
                        continue
                    yield Located(path, raw.number, raw.data, entry)

    def matching(self, flt: Filter) -> Iterator[Located]:
        return (item for item in self if flt.matches(item.entry))


def _int(value: object) -> int:
    return value if type(value) is int else 0


@dataclass(slots=True)
class Stats:
    """Totals over the entries read."""

    entries: int = 0
    first_time: str | None = None
    last_time: str | None = None
    by_event: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    by_actor: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    records_lost: int = 0
    records_recovered: int = 0
    lost_by_topic: Counter[str] = field(default_factory=Counter)
    refusals_by_rule: Counter[str] = field(default_factory=Counter)
    quarantined_by_rule: Counter[str] = field(default_factory=Counter)
    datagrams_rejected: Counter[str] = field(default_factory=Counter)
    audit_dropped: int = 0
    skipped_lines: int = 0

    def add(self, entry: Entry) -> None:
        self.entries += 1
        if self.first_time is None or entry.time < self.first_time:
            self.first_time = entry.time
        if self.last_time is None or entry.time > self.last_time:
            self.last_time = entry.time
        self.by_event[entry.event] += 1
        self.by_actor[entry.actor] += 1
        f = entry.fields
        topic = f.get("topic")
        if isinstance(topic, str):
            self.by_topic[topic] += 1
        event = entry.event
        if event == AuditEvent.GAP:
            self.gaps += 1
            lost = _int(f.get("count"))
            self.records_lost += lost
            if isinstance(topic, str):
                self.lost_by_topic[topic] += lost
        elif event == AuditEvent.GAP_RECOVERED:
            # a restarted sender's resend filled part of a reported gap
            recovered = _int(f.get("count"))
            self.records_recovered += recovered
            self.records_lost -= recovered
            if isinstance(topic, str):
                self.lost_by_topic[topic] -= recovered
        elif event == AuditEvent.RECORD_REFUSED:
            self.refusals_by_rule[str(f.get("rule"))] += 1
        elif event == AuditEvent.RECORD_QUARANTINED:
            self.quarantined_by_rule[str(f.get("rule"))] += 1
        elif event == AuditEvent.DATAGRAMS_REJECTED:
            self.datagrams_rejected[str(f.get("reason"))] += _int(f.get("count"))
        elif event == AuditEvent.AUDIT_DROPPED:
            self.audit_dropped += _int(f.get("count"))

    def as_dict(self) -> dict[str, object]:
        def top(c: Counter[str]) -> dict[str, int]:
            return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

        return {
            "entries": self.entries,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "by_event": top(self.by_event),
            "by_actor": top(self.by_actor),
            "by_topic": top(self.by_topic),
            "gaps": self.gaps,
            "records_lost": self.records_lost,
            "records_recovered": self.records_recovered,
            "records_lost_by_topic": top(+self.lost_by_topic),
            "refusals_by_rule": top(self.refusals_by_rule),
            "quarantined_by_rule": top(self.quarantined_by_rule),
            "datagrams_rejected_by_reason": top(self.datagrams_rejected),
            "audit_entries_dropped": self.audit_dropped,
            "unreadable_lines": self.skipped_lines,
        }


#: the entries whose offsets a restarted receiver must not report as lost a second time
_LOSS_EVENTS = (b'"event":"gap"', b'"event":"resend_lost"')


def last_reported_losses(path: Path) -> dict[tuple[str, int], int]:
    """Per source partition, the highest offset a ``gap`` or ``resend_lost`` entry of the
    live file at ``path`` names: what a restarted receiver already reported lost. Lines
    that cannot be read are passed over (this is not verifying); a missing file is empty."""
    out: dict[tuple[str, int], int] = {}
    if not path.exists():
        return out
    for raw in iter_lines(path):
        if not raw.complete or raw.oversize or not any(m in raw.data for m in _LOSS_EVENTS):
            continue
        try:
            entry = decode_line(raw.data)
        except AuditError:
            continue
        f = entry.fields
        topic, partition, last = f.get("topic"), f.get("partition"), f.get("last_offset")
        if (
            isinstance(topic, str)
            and isinstance(partition, int)
            and isinstance(last, int)
            and entry.event in (AuditEvent.GAP, AuditEvent.RESEND_LOST)
            and last > out.get((topic, partition), -1)
        ):
            out[(topic, partition)] = last
    return out


def compute_stats(reader: Reader, flt: Filter | None = None) -> Stats:
    stats = Stats()
    for item in reader if flt is None else reader.matching(flt):
        stats.add(item.entry)
    stats.skipped_lines = reader.skipped
    return stats


#: the fields most events share get their own CSV column; the rest go in ``fields``
CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "time",
    "actor",
    "event",
    "topic",
    "partition",
    "offset",
    "first_offset",
    "last_offset",
    "count",
    "rule",
    "reason",
    "fields",
    "hash",
)
_HEX = re.compile(r"[0-9a-f]+")
_FIELD_COLUMNS = ("topic", "partition", "offset", "first_offset", "last_offset", "count")
_FIELD_COLUMNS_2 = ("rule", "reason")


def csv_row(entry: Entry) -> list[str]:
    f = entry.fields
    row = [str(entry.seq), entry.time, entry.actor, entry.event]
    for name in (*_FIELD_COLUMNS, *_FIELD_COLUMNS_2):
        value = f.get(name)
        row.append("" if value is None else value if isinstance(value, str) else str(value))
    row.append(canonical(f).decode("utf-8"))
    row.append(entry.hash)
    return row


def summary(entry: Entry, width: int = 120) -> str:
    """``key=value`` pairs of an entry's fields, shortened for a table cell."""
    parts: list[str] = []
    for name, value in entry.fields.items():
        if isinstance(value, str) and len(value) >= 32 and _HEX.fullmatch(value):
            text = value[:12] + "…"  # hashes, ids, signatures: enough to tell them apart
        elif isinstance(value, str):
            text = value
        else:
            text = canonical(value).decode("utf-8")
        parts.append(f"{name}={text}")
    out = " ".join(parts)
    return out if len(out) <= width else out[: width - 1] + "…"
