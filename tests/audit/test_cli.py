"""``diode audit verify/show/stats/export`` through the command line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diode.audit import Actor, AuditConfig, AuditLog, RejectionAggregator
from diode.cli import main
from diode.protocol import crypto
from tests.audit.auditkit import (
    ManualClock,
    entry_of,
    find,
    read_lines,
    refused,
    rehash,
    write_lines,
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    crypto.generate_key_files(directory)
    return directory


@pytest.fixture
def logs(tmp_path: Path, keys: Path) -> Path:
    """A sender log over three files and a receiver log, side by side in one directory."""
    directory = tmp_path / "logs"
    clock = ManualClock()
    sender = AuditLog(
        AuditConfig(path=directory / "sender.jsonl", threaded=False, rotate_bytes=3000),
        crypto.load_signing_key(keys / "sender.key"),
        clock=clock,
    )
    sender.append("service_start", {"config_fingerprint": "c1", "policy_fingerprint": "p1"})
    for i in range(12):
        clock.advance(60)
        rule = "size_limit" if i % 3 else "deny_pattern"
        topic = "plant.alarms" if i % 2 else "plant.sensors"
        sender.append("record_refused", refused(i, topic=topic, rule=rule))
    sender.append(
        "gap",
        {
            "topic": "plant.sensors",
            "partition": 1,
            "first_offset": 10,
            "last_offset": 29,
            "count": 20,
            "reason": "fec",
        },
    )
    sender.close()
    receiver = AuditLog(
        AuditConfig(path=directory / "receiver.jsonl", actor=Actor.RECEIVER, threaded=False),
        crypto.load_signing_key(keys / "receiver-audit.key"),
        clock=clock,
    )
    agg = RejectionAggregator(receiver, interval=10)
    for _ in range(7):
        agg.reject("authentication", clock.now)
    agg.flush(clock.now + 1)
    receiver.append(
        "gap",
        {
            "topic": "plant.alarms",
            "partition": 0,
            "first_offset": 5,
            "last_offset": 6,
            "count": 2,
            "reason": "timeout",
        },
    )
    receiver.close()
    return directory


def run(*args: str | Path) -> tuple[int, str, str]:
    # a wide terminal, so table cells are not folded in the middle of a word
    result = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_verify_intact_logs(logs: Path, keys: Path) -> None:
    assert len(list(logs.glob("sender.jsonl.*"))) >= 2
    code, out, _ = run(
        "audit",
        "verify",
        logs / "sender.jsonl",
        *logs.glob("sender.jsonl.*"),
        "--key",
        keys / "sender.pub",
    )
    assert code == 0, out
    assert out.startswith("OK  ")
    assert "signatures verified" in out


def test_verify_directory_holds_two_chains(logs: Path) -> None:
    code, out, err = run("audit", "verify", logs)
    assert code == 0
    assert out.count("OK  ") == 2
    assert "NOT checked" in err


def test_verify_two_chains_with_their_two_keys(logs: Path, keys: Path) -> None:
    sender = crypto.load_verify_key(keys / "sender.pub").fingerprint
    receiver = crypto.load_verify_key(keys / "receiver-audit.pub").fingerprint
    both = ("--key", keys / "sender.pub", "--key", keys / "receiver-audit.pub")
    code, out, err = run("audit", "verify", logs, *both, "--json")
    assert code == 0, out
    chains = {Path(c["series"]).name: c for c in json.loads(out)["chains"]}
    assert chains["sender.jsonl"]["signed_by"] == [sender]
    assert chains["receiver.jsonl"]["signed_by"] == [receiver]
    # with only one of the keys, the other log's checkpoints are named as forged
    code, out, err = run("audit", "verify", logs, "--key", keys / "sender.pub")
    assert code == 1
    assert f"OK  {logs / 'sender.jsonl'}" in out
    assert f"signatures verified, key {sender}" in out
    assert f"names signing key {receiver}, expected {sender}" in err


def test_verify_names_the_first_broken_entry(logs: Path, keys: Path) -> None:
    live = logs / "sender.jsonl"
    lines = read_lines(live)
    del lines[1]
    write_lines(live, lines)
    code, out, err = run("audit", "verify", logs / "sender.jsonl*", "--key", keys / "sender.pub")
    assert code == 1
    assert "BROKEN" in out
    assert f"first broken entry: {live}:2: " in err
    assert ": removed: " in err


def test_verify_wrong_key_fails(logs: Path, keys: Path) -> None:
    code, out, _ = run(
        "audit", "verify", logs / "receiver.jsonl", "--key", keys / "sender.pub", "--json"
    )
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert {p["kind"] for p in report["chains"][0]["problems"]} == {"forged"}


def test_verify_live_file(logs: Path, keys: Path) -> None:
    live = logs / "receiver.jsonl"
    write_lines(live, read_lines(live)[:-1])  # the closing checkpoint is not there yet
    key = keys / "receiver-audit.pub"
    assert run("audit", "verify", live, "--key", key)[0] == 1
    code, out, _ = run("audit", "verify", live, "--key", key, "--live")
    assert code == 0
    assert "not signed yet" in out


def test_verify_missing_file_or_key_is_a_usage_error(logs: Path, tmp_path: Path) -> None:
    code, _, err = run("audit", "verify", tmp_path / "nope.jsonl")
    assert code == 2
    assert "does not exist" in err
    code, _, err = run("audit", "verify", logs, "--key", tmp_path / "nope.pub")
    assert code == 2


def test_show_filters(logs: Path) -> None:
    code, out, _ = run(
        "audit", "show", logs, "--event", "record_refused", "--topic", "plant.a*", "--json"
    )
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    assert len(entries) == 6
    assert {e["fields"]["topic"] for e in entries} == {"plant.alarms"}
    code, out, _ = run(
        "audit",
        "show",
        logs / "sender.jsonl*",
        "--since",
        "2025-06-15T15:10:40Z",
        "--until",
        "2025-06-15T15:12:40Z",
        "--event",
        "record_refused",
        "--json",
    )
    assert [json.loads(line)["time"] for line in out.splitlines()] == [
        "2025-06-15T15:10:40.000000Z",
        "2025-06-15T15:11:40.000000Z",
    ]
    code, out, _ = run("audit", "show", logs, "--event", "gap", "--limit", "1")
    assert code == 0
    assert "reason=timeout" in out  # the receiver's log comes first in the directory
    assert "reason=fec" not in out


def test_show_rejects_unknown_event(logs: Path) -> None:
    code, _, err = run("audit", "show", logs, "--event", "gapp")
    assert code == 2
    assert "unknown event 'gapp'" in err


def test_stats(logs: Path) -> None:
    code, out, _ = run("audit", "stats", logs, "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["gaps"] == 2
    assert stats["records_lost"] == 22
    assert stats["records_lost_by_topic"] == {"plant.sensors": 20, "plant.alarms": 2}
    assert stats["refusals_by_rule"] == {"size_limit": 8, "deny_pattern": 4}
    assert stats["by_event"]["record_refused"] == 12
    assert stats["by_actor"]["receiver"] >= 4
    assert stats["datagrams_rejected_by_reason"] == {"authentication": 7}
    assert stats["by_topic"] == {"plant.sensors": 7, "plant.alarms": 7}
    code, out, _ = run("audit", "stats", logs)
    assert code == 0
    assert "22 records lost" in out


def test_export_csv_and_jsonl(logs: Path, tmp_path: Path, keys: Path) -> None:
    out_file = tmp_path / "refused.csv"
    code, _, err = run(
        "audit", "export", logs, "--format", "csv", "--event", "record_refused", "--out", out_file
    )
    assert code == 0
    assert "12 entries written" in err
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert len(rows) == 12
    assert rows[0]["event"] == "record_refused"
    assert rows[0]["rule"] == "deny_pattern"
    assert json.loads(rows[0]["fields"])["offset"] == int(rows[0]["offset"]) == 1000
    # an unfiltered jsonl export is the log itself: it still verifies
    code, out, _ = run("audit", "export", logs / "receiver.jsonl", "--format", "jsonl")
    copy = tmp_path / "copy" / "receiver.jsonl"
    copy.parent.mkdir()
    copy.write_text(out)
    assert copy.read_bytes() == (logs / "receiver.jsonl").read_bytes()
    assert run("audit", "verify", copy, "--key", keys / "receiver-audit.pub")[0] == 0


def test_help_teaches(logs: Path) -> None:
    code, out, _ = run("audit", "verify", "--help")
    assert code == 0
    for word in ("edited", "removed", "reordered", "inserted", "truncated", "torn", "forged"):
        assert word in out
    assert "--live" in out


def test_readers_skip_unreadable_lines_and_say_so(logs: Path) -> None:
    live = logs / "receiver.jsonl"
    lines = read_lines(live)
    lines[2] = b"this is not an entry\n"
    write_lines(live, lines)
    code, out, err = run("audit", "stats", live, "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["unreadable_lines"] == 1
    assert stats["entries"] == len(lines) - 1
    assert "1 unreadable line(s) skipped" in err


def _tamper(kind: str, lines: list[bytes]) -> tuple[list[bytes], int]:
    """Apply one kind of tampering by hand; the 1-based line verify must name."""
    if kind == "edited":
        lines[2] = lines[2].replace(b'"rule":"', b'"rule":"x', 1)
        return lines, 3
    if kind == "removed":
        del lines[2]
        return lines, 3
    if kind == "reordered":
        lines[2], lines[3] = lines[3], lines[2]
        return lines, 3
    if kind == "inserted":
        lines.insert(4, lines[2])
        return lines, 5
    if kind == "truncated":
        return lines[:-2], len(lines) - 2
    if kind == "torn":
        lines[-1] = lines[-1][:40]
        return lines, len(lines)
    assert kind == "forged"
    cp = find(lines, "checkpoint", 1)  # an interval checkpoint, signed over by the close
    obj = entry_of(lines[cp])
    fields = obj["fields"]
    assert isinstance(fields, dict)
    fields["signature"] = "00" * 64
    lines[cp] = rehash(obj)
    return lines, cp + 1


@pytest.mark.parametrize(
    "kind", ["edited", "removed", "reordered", "inserted", "truncated", "torn", "forged"]
)
def test_verify_names_each_kind_of_tampering(tmp_path: Path, keys: Path, kind: str) -> None:
    live = tmp_path / "one" / "audit.jsonl"
    log = AuditLog(
        AuditConfig(path=live, threaded=False, checkpoint_entries=4),
        crypto.load_signing_key(keys / "sender.key"),
        clock=ManualClock(),
    )
    for i in range(10):
        log.append("record_refused", refused(i))
    log.close()
    lines, line = _tamper(kind, read_lines(live))
    write_lines(live, lines)
    code, out, err = run("audit", "verify", live, "--key", keys / "sender.pub")
    assert code == 1
    assert out.startswith("BROKEN  ")
    assert f"first broken entry: {live}:{line}: " in err
    assert f": {kind}: " in err.splitlines()[-1]


def test_simulated_run_can_be_reviewed(tmp_path: Path) -> None:
    """`diode simulate --audit-log` writes a log every review command reads back."""
    path = tmp_path / "sim" / "audit.jsonl"
    code, out, _ = run(
        "simulate",
        "--records",
        "3000",
        "--loss",
        "0.2",
        "--corrupt",
        "0.01",
        "--restart-after",
        "1500",
        "--seed",
        "5",
        "--json",
        "--audit-log",
        path,
    )
    assert code == 0, out
    summary = json.loads(out)
    key = path.with_suffix(".pub")
    code, out, _ = run("audit", "verify", path, "--key", key)
    assert code == 0, out
    assert "signatures verified" in out

    code, out, _ = run("audit", "stats", path, "--json")
    stats = json.loads(out)
    # across the restart, the gaps less what the resend recovered are exactly the loss; a
    # gap of resent records that were all accounted for already is resend_lost
    assert stats["records_lost"] == summary["records_lost"] > 0
    resend_lost = stats["by_event"].get("resend_lost", 0)
    assert stats["gaps"] + resend_lost == len(summary["gaps"])
    assert stats["by_event"]["service_start"] == stats["by_event"]["service_stop"] == 2
    assert stats["by_event"]["session_restart"] == 1
    assert stats["datagrams_rejected_by_reason"] == summary["rejected"]
    assert stats["by_actor"]["sender"] >= 2 and stats["by_actor"]["receiver"] >= 2

    code, out, _ = run("audit", "show", path, "--json")
    gaps = [
        entry["fields"]
        for entry in map(json.loads, out.splitlines())
        if entry["event"] in ("gap", "resend_lost")
    ]
    assert [(g["topic"], g["partition"], g["first_offset"], g["last_offset"]) for g in gaps] == [
        (g["topic"], g["partition"], g["first_offset"], g["last_offset"]) for g in summary["gaps"]
    ]
    code, out, _ = run("audit", "show", path, "--event", "session_restart")
    assert code == 0
    assert "previous_session_id=" in out

    code, out, _ = run("audit", "export", path, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == stats["entries"] == len(read_lines(path))
    code, out, _ = run("audit", "export", path, "--format", "jsonl")
    assert out.encode() == path.read_bytes()


def test_bad_time_is_a_usage_error(logs: Path) -> None:
    code, _, err = run("audit", "show", logs, "--since", "yesterday")
    assert code == 2
    assert "cannot read time 'yesterday'" in err
