"""The writer: chain, checkpoints, rotation, resume, fsync policy, threads and drops."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from diode.audit import AuditConfig, AuditEvent, AuditLog, FsyncPolicy, ProblemKind, verify
from diode.audit.entry import decode_line
from diode.audit.writer import _ChainWriter
from diode.errors import AuditError
from diode.protocol.crypto import SigningKey
from tests.audit.auditkit import (
    CHAIN_ID,
    ManualClock,
    entry_of,
    find,
    read_lines,
    refused,
    write_entries,
    write_lines,
)

MakeLog = Callable[..., AuditLog]


def events(path: Path) -> list[str]:
    return [str(entry_of(line)["event"]) for line in read_lines(path)]


def test_first_entry_is_chain_start(make_log: MakeLog, tmp_path: Path, key: SigningKey) -> None:
    log = make_log()
    log.close()
    first = entry_of(read_lines(tmp_path / "audit.jsonl")[0])
    assert first["event"] == "chain_start"
    assert first["seq"] == 0
    assert first["time"] == "2025-06-15T15:06:40.000000Z"  # the injected clock
    assert first["fields"] == {
        "chain_id": CHAIN_ID,
        "key": key.verify_key.fingerprint,
        "reason": "new",
        "version": 1,
    }


def test_checkpoint_every_n_entries(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log(checkpoint_entries=4)
    write_entries(log, 9)
    assert log.stats.checkpoints == 2
    log.close()
    evs = events(tmp_path / "audit.jsonl")
    # chain_start counts as an entry to be signed
    assert [i for i, e in enumerate(evs) if e == "checkpoint"] == [4, 9, 12]
    assert entry_of(read_lines(tmp_path / "audit.jsonl")[-1])["fields"]["reason"] == "close"  # type: ignore[index]


def test_checkpoint_after_seconds(make_log: MakeLog, tmp_path: Path, clock: ManualClock) -> None:
    log = make_log(checkpoint_entries=None, checkpoint_seconds=10.0)
    write_entries(log, 3, clock)  # 1.5 s
    assert log.stats.checkpoints == 0
    clock.advance(9.0)
    log.tick()
    assert log.stats.checkpoints == 1  # the chain_start entry is now 10.5 s old
    log.tick()
    assert log.stats.checkpoints == 1  # nothing new to sign
    log.append("link_down", {"reason": "heartbeat timeout"})
    clock.advance(10.0)
    log.tick()
    assert log.stats.checkpoints == 2
    log.close()
    assert verify([tmp_path / "audit.jsonl"], None).ok


def test_rotation_by_size_keeps_one_chain(
    make_log: MakeLog, tmp_path: Path, key: SigningKey, clock: ManualClock
) -> None:
    log = make_log(rotate_bytes=2000)
    write_entries(log, 40, clock)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "audit.jsonl"
    assert files[1:] == [f"audit.jsonl.{i:06d}" for i in range(1, len(files))]
    assert log.stats.rotations == len(files) - 1 >= 3
    ordered = [tmp_path / name for name in files[1:]] + [tmp_path / "audit.jsonl"]
    for older, newer in itertools.pairwise(ordered):
        last = entry_of(read_lines(older)[-1])
        assert last["event"] == "checkpoint"
        assert last["fields"]["reason"] == "rotation"  # type: ignore[index]
        assert entry_of(read_lines(newer)[0])["prev"] == last["hash"]
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    assert report.chains[0].entries == sum(len(read_lines(p)) for p in ordered)
    # the order of the arguments does not matter: the names order a series
    assert verify(list(reversed(ordered)), key.verify_key).ok


def test_missing_rotated_file_is_removed(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    log = make_log(rotate_bytes=2000)
    write_entries(log, 40)
    log.close()
    gone = tmp_path / "audit.jsonl.000002"
    first_missing = entry_of(read_lines(gone)[0])["seq"]
    gone.unlink()
    problem = verify([tmp_path], key.verify_key).problems[0]
    assert problem.kind == ProblemKind.REMOVED
    assert problem.file == str(tmp_path / "audit.jsonl.000003")
    assert f"seq {first_missing}.." in problem.message


def test_missing_last_file_is_truncated(make_log: MakeLog, tmp_path: Path, key: SigningKey) -> None:
    log = make_log(rotate_bytes=2000)
    write_entries(log, 40)
    log.close()
    (tmp_path / "audit.jsonl").unlink()
    kinds = [p.kind for p in verify([tmp_path], key.verify_key).problems]
    assert kinds == [ProblemKind.TRUNCATED]


def test_rotation_by_time(
    make_log: MakeLog, tmp_path: Path, clock: ManualClock, key: SigningKey
) -> None:
    log = make_log(rotate_seconds=60.0)
    write_entries(log, 3, clock)
    clock.advance(58.0)
    log.tick()
    assert log.stats.rotations == 0  # 59.5 s since the file was opened
    clock.advance(0.5)
    log.tick()
    write_entries(log, 3, clock)
    log.close()
    rotated = tmp_path / "audit.jsonl.000001"
    assert log.stats.rotations == 1
    last = entry_of(read_lines(rotated)[-1])
    assert (last["event"], last["fields"]["reason"]) == ("checkpoint", "rotation")  # type: ignore[index]
    first = entry_of(read_lines(tmp_path / "audit.jsonl")[0])
    assert (first["seq"], first["prev"]) == (int(str(last["seq"])) + 1, last["hash"])
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    assert report.chains[0].files == (str(rotated), str(tmp_path / "audit.jsonl"))


def test_end_cut_off_a_rotated_file_is_removed(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    """Cutting the end off a rotated file is caught by the next file's link."""
    log = make_log(rotate_bytes=2000, checkpoint_entries=None)
    write_entries(log, 20)
    log.close()
    rotated = tmp_path / "audit.jsonl.000001"
    lines = read_lines(rotated)
    assert [entry_of(x)["event"] for x in lines].count("checkpoint") == 1  # only the rotation
    write_lines(rotated, lines[:-2])
    problem = verify([tmp_path], key.verify_key).problems[0]
    assert (problem.kind, problem.file) == (
        ProblemKind.REMOVED,
        str(tmp_path / "audit.jsonl.000002"),
    )
    assert "2 entries" in problem.message


def test_closed_log_refuses_entries(make_log: MakeLog) -> None:
    log = make_log()
    log.close()
    log.close()  # closing twice is harmless
    with pytest.raises(AuditError, match="closed"):
        log.append("link_up", {})


def test_restart_after_clean_close_continues_the_chain(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    log = make_log()
    write_entries(log, 3)
    log.close()
    before = read_lines(tmp_path / "audit.jsonl")
    log = make_log()
    write_entries(log, 2)
    log.close()
    lines = read_lines(tmp_path / "audit.jsonl")
    assert lines[: len(before)] == before  # appended, nothing rewritten
    resumed = entry_of(lines[len(before)])
    assert resumed["event"] == "chain_resumed"
    assert resumed["prev"] == entry_of(before[-1])["hash"]
    assert resumed["fields"]["clean"] is True  # type: ignore[index]
    assert not (tmp_path / "audit.jsonl.000001").exists()
    assert verify([tmp_path], key.verify_key).ok


def test_restart_after_crash_between_lines(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    log = make_log()
    write_entries(log, 7)  # chain_start + 4, checkpoint, then 3 more entries
    log2 = make_log()  # the first writer "crashed": it never closed
    log2.close()
    lines = read_lines(tmp_path / "audit.jsonl")
    resumed = entry_of(lines[find(lines, "chain_resumed")])
    assert resumed["fields"] == {
        "chain_id": CHAIN_ID,
        "clean": False,
        "key": key.verify_key.fingerprint,
        "previous_file": "audit.jsonl",
        "previous_seq": 8,
        "torn": False,
        "unsigned": 3,
    }
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    assert any("unclean stop" in note for note in report.chains[0].notes)


def test_restart_after_torn_write(make_log: MakeLog, tmp_path: Path, key: SigningKey) -> None:
    live = tmp_path / "audit.jsonl"
    log = make_log()
    write_entries(log, 7)
    log._core.flush()
    live.write_bytes(live.read_bytes()[:-25])  # the crash cut the last line
    torn_copy = live.read_bytes()
    log2 = make_log()
    write_entries(log2, 2)
    log2.close()
    # the torn file was moved aside untouched, the chain goes on in a new file
    assert (tmp_path / "audit.jsonl.000001").read_bytes() == torn_copy
    first = entry_of(read_lines(live)[0])
    assert first["event"] == "chain_resumed"
    assert first["fields"]["torn"] is True  # type: ignore[index]
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    assert any("crash mid-write" in note for note in report.chains[0].notes)
    # without the file that records the restart, the torn line is a problem
    alone = verify([tmp_path / "audit.jsonl.000001"], key.verify_key)
    assert alone.problems[0].kind == ProblemKind.TORN


def test_restart_after_unreadable_end_starts_a_new_chain(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    live = tmp_path / "audit.jsonl"
    log = make_log()
    write_entries(log, 3)
    log.close()
    lines = read_lines(live)
    write_lines(live, [*lines, b"garbage\n"])
    log2 = make_log()
    log2.close()
    first = entry_of(read_lines(live)[0])
    assert first["event"] == "chain_start"
    assert first["fields"]["reason"] == "previous_unreadable"  # type: ignore[index]
    report = verify([tmp_path], key.verify_key)
    problem = report.problems[0]
    assert (problem.kind, problem.file, problem.line) == (
        ProblemKind.EDITED,
        str(tmp_path / "audit.jsonl.000001"),
        len(lines) + 1,
    )
    assert verify([live], key.verify_key).ok  # the new chain on its own is intact


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(FsyncPolicy.NEVER, 0), (FsyncPolicy.CHECKPOINT, 4), (FsyncPolicy.ENTRY, 13)],
)
def test_fsync_policy(
    make_log: MakeLog, monkeypatch: pytest.MonkeyPatch, policy: FsyncPolicy, expected: int
) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    log = make_log(fsync=policy)  # chain_start: 1 entry
    calls.clear()
    write_entries(log, 9)  # 9 entries + 2 checkpoints
    log.close()  # close checkpoint + the final sync of the file
    # never: none; checkpoint: 3 checkpoints + the file at close; entry: 12 entries + the file
    assert len(calls) == expected


def test_bad_fields_are_refused(make_log: MakeLog) -> None:
    log = make_log()
    with pytest.raises(AuditError, match=r"fields\.value: is bytes; payloads never enter"):
        log.append("anomaly", {"detector": "size", "reason": "big", "value": b"\x00"})
    with pytest.raises(AuditError, match="not a finite number"):
        log.append("anomaly", {"detector": "size", "reason": "big", "z": [float("nan")]})
    with pytest.raises(AuditError, match="keys must be str"):
        log.append("anomaly", {"detector": "size", "reason": "big", "m": {1: 2}})
    with pytest.raises(AuditError, match="not a JSON type"):
        log.append("anomaly", {"detector": "size", "reason": "big", "s": {1, 2}})
    with pytest.raises(AuditError, match="missing fields: offset, rule"):
        log.append("record_refused", {"topic": "t", "partition": 0, "reason": "r"})
    with pytest.raises(AuditError, match="written by the audit log itself"):
        log.append("checkpoint", {})
    with pytest.raises(AuditError, match="not a valid name"):
        log.append("Bad Event", {})
    with pytest.raises(AuditError, match="exceeding limit"):
        log.append("link_down", {"reason": "x" * 300_000})
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    with pytest.raises(AuditError, match="nesting depth"):
        log.append("link_down", {"reason": "deep", "d": deep})
    log.append("link_down", {"reason": "hex on purpose", "sample": b"\x01\x02".hex()})
    log.close()
    assert log.stats.written == 3  # chain_start, the one good entry, close checkpoint


def test_actor_per_entry(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log(actor="simulate")
    log.append(AuditEvent.LINK_DOWN, {"reason": "test"}, actor="receiver")
    log.close()
    actors = [entry_of(x)["actor"] for x in read_lines(tmp_path / "audit.jsonl")]
    assert actors == ["simulate", "receiver", "simulate"]


def test_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="checkpoint_entries is 0"):
        AuditConfig(path=tmp_path / "a.jsonl", checkpoint_entries=0)
    with pytest.raises(AuditError, match="rotate_seconds is -1"):
        AuditConfig(path=tmp_path / "a.jsonl", rotate_seconds=-1)
    with pytest.raises(AuditError, match="actor"):
        AuditConfig(path=tmp_path / "a.jsonl", actor="Sender!")


# --------------------------------------------------------------------------- threads


def test_many_threads_keep_order_and_seq(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=path, checkpoint_entries=100, rotate_bytes=50_000), key)
    threads, per_thread = 8, 400
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            log.append("anomaly", {"detector": f"t{t}", "reason": "load", "i": i})

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    assert log.stats.dropped == 0
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    files = [*sorted(tmp_path.glob("audit.jsonl.*")), path]
    entries = [decode_line(x.rstrip(b"\n")) for f in files for x in read_lines(f)]
    assert [e.seq for e in entries] == list(range(len(entries)))
    seen: dict[str, list[object]] = {}
    for e in entries:
        if e.event == "anomaly":
            seen.setdefault(str(e.fields["detector"]), []).append(e.fields["i"])
    assert seen == {f"t{t}": list(range(per_thread)) for t in range(threads)}


class _Gate:
    """Holds the writer thread inside its first write until released."""

    def __init__(self, log: AuditLog, fail: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        core: _ChainWriter = log._core
        real = core.write

        def write(now: float, event: str, actor: str, fields_json: bytes) -> None:
            if not self.entered.is_set():
                self.entered.set()
                assert self.release.wait(30), "test did not release the writer"
                if fail:
                    raise OSError(28, "No space left on device")
            real(now, event, actor, fields_json)

        core.write = write  # type: ignore[method-assign]


def test_full_queue_drops_are_counted_and_recorded(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=path, queue_size=10, checkpoint_entries=None), key)
    gate = _Gate(log)
    log.append("link_down", {"reason": "first"})
    assert gate.entered.wait(30)  # the writer holds the first entry; the queue is empty
    for i in range(10 + 7):
        log.append("anomaly", {"detector": "d", "reason": "r", "i": i})
    assert log.stats.dropped == 7
    assert log.stats.queued == 10
    gate.release.set()
    log.close()
    lines = [entry_of(x) for x in read_lines(path)]
    kept = [x["fields"]["i"] for x in lines if x["event"] == "anomaly"]  # type: ignore[index]
    assert kept == list(range(10))
    drops = [x["fields"] for x in lines if x["event"] == "audit_dropped"]
    assert drops == [{"count": 7, "total": 7, "reason": "queue_full"}]
    assert verify([path], key.verify_key).ok


def test_writer_failure_is_raised_not_hidden(tmp_path: Path, key: SigningKey) -> None:
    log = AuditLog(AuditConfig(path=tmp_path / "audit.jsonl", queue_size=100), key)
    gate = _Gate(log, fail=True)
    log.append("link_down", {"reason": "first"})
    assert gate.entered.wait(30)
    for i in range(5):
        log.append("anomaly", {"detector": "d", "reason": "r", "i": i})
    gate.release.set()
    assert log.flush(30)  # answered even though the writer stopped
    assert isinstance(log.failure, OSError)
    with pytest.raises(AuditError, match="No space left"):
        log.append("link_up", {})
    with pytest.raises(AuditError, match="No space left"):
        log.close()
    assert log.stats.dropped == 5


def test_threaded_flush_and_checkpoint(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=path, checkpoint_entries=None), key)
    try:
        write_entries(log, 3)
        log.checkpoint()
        assert log.flush(30)
        evs = events(path)
        assert evs == [
            "chain_start",
            "record_refused",
            "record_refused",
            "record_refused",
            "checkpoint",
        ]
        assert verify([path], key.verify_key, live=True).ok
    finally:
        log.close()


def test_refused_helper_matches_required_fields(make_log: MakeLog) -> None:
    log = make_log()
    log.append("record_quarantined", refused(1))
    log.append(
        "gap",
        {
            "topic": "t",
            "partition": 0,
            "first_offset": 5,
            "last_offset": 9,
            "count": 5,
            "reason": "fec",
        },
    )
    log.close()
    assert log.stats.written == 4


def test_threaded_flush_runs_checkpoints_and_rotation_due_by_time(
    tmp_path: Path, key: SigningKey, clock: ManualClock
) -> None:
    """A writer busy with entries still checkpoints and rotates on time, and flush() waits
    for it: no sleeping needed to see it."""
    path = tmp_path / "audit.jsonl"
    config = AuditConfig(
        path=path,
        checkpoint_entries=None,
        checkpoint_seconds=10.0,
        rotate_bytes=None,
        rotate_seconds=100.0,
    )
    log = AuditLog(config, key, clock=clock, chain_id=CHAIN_ID)
    try:
        write_entries(log, 3)
        assert log.flush(30)
        assert log.stats.checkpoints == 0
        clock.advance(10.0)
        assert log.flush(30)
        assert log.stats.checkpoints == 1  # the chain_start is 10 s old
        clock.advance(90.0)
        assert log.flush(30)
        assert log.stats.rotations == 1
        rotated = read_lines(tmp_path / "audit.jsonl.000001")
        assert entry_of(rotated[-1])["fields"]["reason"] == "rotation"  # type: ignore[index]
    finally:
        log.close()
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems


def test_entry_queued_behind_close_is_written(tmp_path: Path, key: SigningKey) -> None:
    """An append that raced with close() and landed behind the stop request is not lost."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(path=path, checkpoint_entries=None), key)
    gate = _Gate(log)
    log.append("link_down", {"reason": "first"})
    assert gate.entered.wait(30)
    thread = log._thread
    assert thread is not None

    class LateAppend:
        """close() joins the writer once its stop request is queued: slip an entry in."""

        def join(self) -> None:
            # what an append that passed the closed check just before close() queues
            log._queue.append((log._clock(), "link_up", "sender", b'{"late":true}'))
            gate.release.set()
            assert thread is not None
            thread.join()

    log._thread = LateAppend()  # type: ignore[assignment]
    log.close()
    evs = events(path)
    assert evs[-3:] == ["link_down", "link_up", "checkpoint"]
    assert log.stats.dropped == 0
    assert verify([path], key.verify_key).ok
