"""A simulated run's audit log accounts for every loss and proves it was not edited."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from diode.audit import AuditConfig, AuditLog, decode_line, verify
from diode.cli import main
from diode.protocol.crypto import SigningKey
from diode.protocol.events import (
    DatagramRejected,
    GapDetected,
    HeartbeatMissed,
    RecordsDelivered,
    SessionStarted,
)
from diode.protocol.records import Record
from diode.services.protocol_audit import RECORDS_DELIVERED, ProtocolAuditor

SID = bytes.fromhex("0011223344556677")
EPOCH = 1_800_000_000.0


def _entries(path: Path) -> list[tuple[str, str, dict[str, object]]]:
    out = []
    for line in path.read_bytes().splitlines():
        e = decode_line(line)
        out.append((e.event, e.actor, e.fields))
    return out


def _log(path: Path, clock: list[float]) -> AuditLog:
    cfg = AuditConfig(path=path, actor="receiver", threaded=False, checkpoint_seconds=None)
    return AuditLog(cfg, SigningKey.from_seed(bytes(32)), clock=lambda: clock[0])


def _rec(offset: int, value: bytes = b"v" * 10) -> Record:
    return Record("plant.t", 3, offset, 1_700_000_000_000, b"k", value, (("h", b"x"),))


def test_deliveries_are_aggregated_per_partition_and_interval(tmp_path: Path) -> None:
    clock = [EPOCH]
    log = _log(tmp_path / "a.jsonl", clock)
    auditor = ProtocolAuditor(log, interval=10.0)
    auditor.handle(RecordsDelivered(SID, 0, (_rec(5), _rec(7))), EPOCH)
    auditor.handle(RecordsDelivered(SID, 1, (_rec(9),)), EPOCH + 1)
    # nothing written yet: the interval is still open
    assert [e for e, _, _ in _entries(tmp_path / "a.jsonl")] == ["chain_start"]
    auditor.handle(RecordsDelivered(SID, 2, (_rec(12),)), EPOCH + 11)
    auditor.close(EPOCH + 12)
    log.close()
    delivered = [f for e, _, f in _entries(tmp_path / "a.jsonl") if e == RECORDS_DELIVERED]
    assert [(f["first_offset"], f["last_offset"], f["count"]) for f in delivered] == [
        (5, 9, 3),
        (12, 12, 1),
    ]
    assert delivered[0]["bytes"] == 3 * _rec(0).size
    assert auditor.records_delivered == 4


def test_gap_flushes_deliveries_first_and_counts_loss(tmp_path: Path) -> None:
    clock = [EPOCH]
    log = _log(tmp_path / "a.jsonl", clock)
    auditor = ProtocolAuditor(log, interval=10.0)
    auditor.handle(SessionStarted(SID, False, None, 1), EPOCH)
    auditor.handle(RecordsDelivered(SID, 0, (_rec(1),)), EPOCH)
    auditor.handle(GapDetected(SID, "plant.t", 3, 2, 40, 30, "lost", 1), EPOCH + 0.5)
    for _ in range(5):
        auditor.handle(DatagramRejected("authentication", "tag did not verify", SID), EPOCH + 1)
    auditor.handle(HeartbeatMissed(SID, 0.4), EPOCH + 2)
    auditor.close(EPOCH + 3)
    log.close()
    events = [e for e, _, _ in _entries(tmp_path / "a.jsonl")]
    assert events.index(RECORDS_DELIVERED) < events.index("gap")
    assert "session_start" in events and "link_down" in events
    rejected = [f for e, _, f in _entries(tmp_path / "a.jsonl") if e == "datagrams_rejected"]
    assert rejected == [rejected[0]] and rejected[0]["count"] == 5
    assert rejected[0]["reason"] == "authentication"
    assert auditor.records_lost == 30


def test_simulate_audit_log_accounts_for_every_lost_record(tmp_path: Path) -> None:
    path = tmp_path / "sim" / "audit.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "--records",
            "6000",
            "--loss",
            "0.15",
            "--corrupt",
            "0.01",
            "--seed",
            "3",
            "--json",
            "--audit-log",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["records_lost"] > 0, "the scenario must lose something to be a test"
    entries = _entries(path)
    lost = sum(int(str(f["count"])) for e, _, f in entries if e == "gap")
    assert lost == summary["records_lost"]
    delivered = sum(int(str(f["count"])) for e, _, f in entries if e == RECORDS_DELIVERED)
    assert delivered == summary["records_delivered"]
    rejected = sum(int(str(f["count"])) for e, _, f in entries if e == "datagrams_rejected")
    assert rejected == summary["datagrams_rejected"] > 0
    actors = {a for e, a, _ in entries if e == "service_start"}
    assert actors == {"sender", "receiver"}

    pub = path.with_suffix(".pub")
    ok = CliRunner().invoke(main, ["audit", "verify", str(path), "--key", str(pub)])
    assert ok.exit_code == 0, ok.output
    report = verify([path], None)
    assert report.ok

    # an auditor editing a loss away is caught
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if b'"event":"gap"' in line)
    lines[i] = lines[i].replace(b'"count":', b'"count":1', 1)
    path.write_bytes(b"".join(lines))
    bad = CliRunner().invoke(main, ["audit", "verify", str(path), "--key", str(pub)])
    assert bad.exit_code == 1
    assert "edited" in bad.output


def test_every_event_the_services_write_is_in_the_audit_vocabulary() -> None:
    from diode.audit import AuditEvent
    from diode.services import receiver

    for name in (receiver.POLICY_CHANGED, receiver.PROVENANCE_INCOMPLETE, RECORDS_DELIVERED):
        assert AuditEvent(name) == name  # `diode audit show --event NAME` accepts it


def test_a_resend_after_a_restart_is_accounted_across_sessions(tmp_path: Path) -> None:
    """Old session: 0..9 delivered, 10..19 cut off by the restart. The new session resends
    5..29 and loses 25..29: duplicates are skipped, 10..19 recovered, only 25..29 lost."""
    old, new = SID, bytes.fromhex("8899aabbccddeeff")
    clock = [EPOCH]
    log = _log(tmp_path / "a.jsonl", clock)
    auditor = ProtocolAuditor(log, interval=10.0)
    auditor.handle(RecordsDelivered(old, 0, tuple(_rec(o) for o in range(10))), EPOCH)
    auditor.handle(GapDetected(old, "plant.t", 3, 10, 19, 10, "restart", 1), EPOCH)
    auditor.handle(SessionStarted(new, True, old, 1), EPOCH)
    auditor.handle(RecordsDelivered(new, 0, tuple(_rec(o) for o in range(5, 25))), EPOCH + 1)
    # a block of resent records all delivered before: no new loss
    auditor.handle(GapDetected(new, "plant.t", 3, 0, 4, 5, "lost", 2), EPOCH + 1)
    auditor.handle(GapDetected(new, "plant.t", 3, 25, 29, 5, "lost", 3), EPOCH + 2)
    auditor.close(EPOCH + 3)
    log.close()
    entries = _entries(tmp_path / "a.jsonl")
    by_event: dict[str, list[dict[str, object]]] = {}
    for e, _, f in entries:
        by_event.setdefault(e, []).append(f)
    assert [(f["first_offset"], f["count"]) for f in by_event["gap"]] == [(10, 10), (25, 5)]
    assert [(f["first_offset"], f["count"]) for f in by_event["resend_lost"]] == [(0, 5)]
    (dup,) = by_event["duplicates_skipped"]
    assert (dup["first_offset"], dup["last_offset"], dup["count"]) == (5, 9, 5)
    (rec,) = by_event["gap_recovered"]
    assert (rec["first_offset"], rec["last_offset"], rec["count"]) == (10, 19, 10)
    assert (rec["gap_first_offset"], rec["gap_last_offset"]) == (10, 19)
    assert auditor.records_lost == 5
    assert auditor.records_delivered == 25 and auditor.records_duplicate == 5

    # the review command agrees: gaps less recoveries
    out = CliRunner().invoke(main, ["audit", "stats", str(tmp_path / "a.jsonl"), "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.output)
    assert (stats["records_lost"], stats["records_recovered"]) == (5, 10)


def test_a_receiver_restart_knows_what_it_delivered_before(tmp_path: Path) -> None:
    clock = [EPOCH]
    log = _log(tmp_path / "a.jsonl", clock)
    auditor = ProtocolAuditor(log, interval=10.0)
    auditor.seed({("plant.t", 3): 99})  # learned from the IT topic's provenance headers
    auditor.handle(RecordsDelivered(SID, 0, tuple(_rec(o) for o in range(90, 110))), EPOCH)
    auditor.handle(GapDetected(SID, "plant.t", 3, 60, 89, 30, "lost", 1), EPOCH)
    auditor.close(EPOCH + 1)
    log.close()
    events = [e for e, _, _ in _entries(tmp_path / "a.jsonl")]
    assert "gap" not in events and "resend_lost" in events
    assert auditor.records_lost == 0 and auditor.records_duplicate == 10
