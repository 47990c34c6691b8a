"""Rejected datagrams are aggregated: one entry per reason per interval."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from diode.audit import AuditLog, MemoryAuditSink, RejectionAggregator, verify
from diode.audit.entry import format_time
from diode.errors import AuditError
from tests.audit.auditkit import T0, ManualClock, entry_of, read_lines


def test_one_entry_per_reason_per_interval() -> None:
    sink = MemoryAuditSink()
    agg = RejectionAggregator(sink, interval=10.0)
    for i in range(50):
        agg.reject("authentication" if i % 5 else "replay", T0 + i * 0.1, detail=f"d{i}")
    assert sink.events == []  # the interval (4.9 s so far) is not over
    agg.reject("malformed", T0 + 10.0)  # a new interval begins with this one
    entries = sink.of("datagrams_rejected")
    assert [e["reason"] for e in entries] == ["authentication", "replay"]
    assert [e["count"] for e in entries] == [40, 10]
    assert entries[0]["interval_start"] == format_time(T0)
    assert entries[0]["interval_end"] == format_time(T0 + 10.0)
    assert entries[0]["examples"] == ["d1", "d2", "d3"]  # capped
    assert entries[1]["examples"] == ["d0", "d5", "d10"]
    agg.tick(T0 + 15.0)
    assert len(sink.events) == 2  # the malformed interval is still open
    agg.tick(T0 + 20.0)
    assert sink.of("datagrams_rejected")[-1] == {
        "reason": "malformed",
        "count": 1,
        "interval_start": format_time(T0 + 10.0),
        "interval_end": format_time(T0 + 20.0),
        "seconds": 10.0,
    }
    assert agg.total == 51


def test_flush_writes_what_is_pending_and_nothing_twice() -> None:
    sink = MemoryAuditSink()
    agg = RejectionAggregator(sink, interval=60.0)
    agg.flush(T0)
    assert sink.events == []
    agg.reject("replay", T0)
    agg.flush(T0 + 1)
    agg.flush(T0 + 2)
    assert [e["count"] for e in sink.of("datagrams_rejected")] == [1]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        RejectionAggregator(MemoryAuditSink(), interval=0)


def test_memory_sink_refuses_bytes_like_the_log() -> None:
    with pytest.raises(AuditError, match="bytes"):
        MemoryAuditSink().append("anomaly", {"detector": "x", "reason": "y", "v": b"1"})


def test_aggregator_writes_into_a_real_log(
    make_log: Callable[..., AuditLog], clock: ManualClock, tmp_path: Path
) -> None:
    log = make_log()
    agg = RejectionAggregator(log, interval=5.0)
    for _ in range(30):
        clock.advance(0.5)
        agg.reject("authentication", clock.now)
    agg.flush(clock.now)
    log.close()
    path = tmp_path / "audit.jsonl"
    counts = [
        entry_of(x)["fields"]["count"]  # type: ignore[index]
        for x in read_lines(path)
        if entry_of(x)["event"] == "datagrams_rejected"
    ]
    assert sum(counts) == 30
    assert len(counts) == 3
    assert verify([path], None).ok
