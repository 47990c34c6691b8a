"""Every kind of tampering is found and named; intact chains verify."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diode.audit import AuditLog, ProblemKind, Report, verify
from diode.audit.entry import checkpoint_message
from diode.errors import AuditError
from diode.protocol.crypto import SigningKey
from tests.audit.auditkit import (
    ManualClock,
    entry_of,
    find,
    read_lines,
    refused,
    rehash,
    write_entries,
    write_lines,
)

MakeLog = Callable[..., AuditLog]


@pytest.fixture
def closed_log(make_log: MakeLog, clock: ManualClock, tmp_path: Path) -> Path:
    """A closed log: chain_start, 12 entries, checkpoints every 5, close checkpoint."""
    log = make_log()
    write_entries(log, 12, clock)
    log.close()
    return tmp_path / "audit.jsonl"


def first(report: Report) -> tuple[ProblemKind, int | None, int]:
    problem = report.first_problem
    assert problem is not None, "expected a problem"
    return problem.kind, problem.seq, problem.line


def test_intact_log_verifies(closed_log: Path, key: SigningKey) -> None:
    report = verify([closed_log], key.verify_key)
    assert report.ok, report.problems
    chain = report.chains[0]
    lines = read_lines(closed_log)
    assert chain.entries == len(lines) == 1 + 12 + 3
    assert chain.checkpoints == 3  # after 5 and 10 entries, and at close
    assert chain.signatures_checked
    assert chain.unsigned == 0
    assert chain.head == entry_of(lines[-1])["hash"]


def test_entry_layout(closed_log: Path, key: SigningKey) -> None:
    lines = [entry_of(x) for x in read_lines(closed_log)]
    assert [e["seq"] for e in lines] == list(range(len(lines)))
    assert lines[0]["event"] == "chain_start"
    for before, after in itertools.pairwise(lines):
        assert after["prev"] == before["hash"]
    cp = lines[-1]
    assert cp["event"] == "checkpoint"
    fields = cp["fields"]
    assert isinstance(fields, dict)
    assert fields["reason"] == "close"
    assert fields["head"] == lines[-2]["hash"]
    assert fields["count"] == cp["seq"]
    assert fields["key"] == key.verify_key.fingerprint
    message = checkpoint_message(
        fields["chain_id"], fields["count"], fields["head"], "close", fields["key"]
    )
    assert key.verify_key.is_valid(bytes.fromhex(fields["signature"]), message)


def test_edited_entry_is_named(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[3] = lines[3].replace(b'"rule":"size_limit"', b'"rule":"allow_list"')
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert not report.ok
    assert first(report) == (ProblemKind.EDITED, 3, 4)
    assert len(report.problems) == 1  # the rest of the chain still links to its hash


def test_edited_and_rehashed_entry_is_named(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    obj = entry_of(lines[3])
    fields = obj["fields"]
    assert isinstance(fields, dict)
    fields["offset"] = 99
    lines[3] = rehash(obj)
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.EDITED, 3, 4)


def test_rewritten_history_fails_on_the_checkpoint(closed_log: Path, key: SigningKey) -> None:
    """Re-hashing every entry after an edit keeps the links, but not the signature."""
    lines = read_lines(closed_log)
    objs = [entry_of(x) for x in lines]
    fields = objs[2]["fields"]
    assert isinstance(fields, dict)
    fields["topic"] = "innocent"
    prev = objs[1]["hash"]
    for i in range(2, len(objs)):
        objs[i]["prev"] = prev
        cp_fields = objs[i]["fields"]
        if objs[i]["event"] == "checkpoint" and isinstance(cp_fields, dict):
            cp_fields["head"] = prev  # a forger would update what the checkpoint signs
        lines[i] = rehash(objs[i])
        prev = entry_of(lines[i])["hash"]
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    kind, seq, _ = first(report)
    assert kind == ProblemKind.FORGED
    assert entry_of(lines[seq or 0])["event"] == "checkpoint"
    # without a key only the links are checked, and they were all rebuilt
    assert verify([closed_log], None).ok


def test_removed_entry_is_named(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    del lines[4]
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    kind, seq, line = first(report)
    assert (kind, seq, line) == (ProblemKind.REMOVED, 5, 5)
    assert "seq 4" in report.problems[0].message


def test_several_removed_entries_are_counted(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    del lines[2:5]
    write_lines(closed_log, lines)
    problem = verify([closed_log], key.verify_key).problems[0]
    assert problem.kind == ProblemKind.REMOVED
    assert "3 entries (seq 2..4)" in problem.message


def test_swapped_entries_are_reordered(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.REORDERED, 4, 4)
    assert len(report.problems) == 1


def test_entry_moved_back_is_reordered(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    moved = lines.pop(2)
    lines.insert(6, moved)
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.REORDERED, 3, 3)
    assert f"{closed_log}:7" in report.problems[0].message  # where the moved entry is
    assert len(report.problems) == 1


def test_entries_moved_forward_are_reordered(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    moved = lines.pop(8)
    lines.insert(2, moved)
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.REORDERED, 8, 3)
    assert "seq 2..7" in report.problems[0].message
    assert len(report.problems) == 1


def test_duplicated_entry_is_inserted(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines.insert(5, lines[3])
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.INSERTED, 3, 6)
    assert "copy" in report.problems[0].message
    assert len(report.problems) == 1


def test_forged_entry_is_inserted(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    forged = entry_of(lines[3])
    forged["seq"] = 777
    forged["prev"] = "ab" * 32
    lines.insert(4, rehash(forged))
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.INSERTED, 777, 5)
    assert len(report.problems) == 1


def test_forged_entry_reusing_a_seq_is_inserted(closed_log: Path, key: SigningKey) -> None:
    """A forged entry that links correctly, put in front of the genuine one, is named."""
    lines = read_lines(closed_log)
    forged = entry_of(lines[3])
    forged["fields"] = refused(50, topic="forged")
    lines.insert(3, rehash(forged))
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.INSERTED, 3, 4)
    assert len(report.problems) == 1


def test_cut_after_last_checkpoint_is_truncated(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    cut = find(lines, "checkpoint", 1)
    write_lines(closed_log, lines[: cut + 3])
    report = verify([closed_log], key.verify_key)
    problem = report.problems[0]
    assert (problem.kind, problem.seq) == (ProblemKind.TRUNCATED, cut + 2)
    assert "2 entries after the last checkpoint" in problem.message
    assert report.chains[0].unsigned == 2
    # the same file is fine if it is the live file of a running writer
    live = verify([closed_log], key.verify_key, live=True)
    assert live.ok
    assert any("2 entries after the last checkpoint" in n for n in live.chains[0].notes)


def test_missing_close_checkpoint_is_truncated(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    write_lines(closed_log, lines[:-1])
    report = verify([closed_log], key.verify_key)
    assert first(report)[0] == ProblemKind.TRUNCATED


def test_relabelled_checkpoint_is_forged(closed_log: Path, key: SigningKey) -> None:
    """An interval checkpoint renamed "close" would hide a truncation: it fails."""
    lines = read_lines(closed_log)
    cut = find(lines, "checkpoint", 0)
    obj = entry_of(lines[cut])
    fields = obj["fields"]
    assert isinstance(fields, dict)
    fields["reason"] = "close"
    lines[cut] = rehash(obj)
    write_lines(closed_log, lines[: cut + 1])
    assert first(verify([closed_log], key.verify_key)) == (ProblemKind.FORGED, cut, cut + 1)


def test_checkpoint_with_bad_signature_is_forged(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    cut = find(lines, "checkpoint", 1)
    obj = entry_of(lines[cut])
    fields = obj["fields"]
    assert isinstance(fields, dict)
    sig = bytearray(bytes.fromhex(str(fields["signature"])))
    sig[10] ^= 1
    fields["signature"] = sig.hex()
    lines[cut] = rehash(obj)
    # the entry after it must link to the new hash for the chain itself to stay intact
    after = entry_of(lines[cut + 1])
    after["prev"] = entry_of(lines[cut])["hash"]
    lines[cut + 1] = rehash(after)
    final = entry_of(lines[cut + 2])
    final["prev"] = entry_of(lines[cut + 1])["hash"]
    lines[cut + 2] = rehash(final)
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.FORGED, cut, cut + 1)
    assert "signature does not verify" in report.problems[0].message


def test_log_signed_by_another_key_is_forged(
    make_log: MakeLog, other_key: SigningKey, key: SigningKey, tmp_path: Path
) -> None:
    log = make_log(key=other_key)
    write_entries(log, 7)
    log.close()
    report = verify([tmp_path / "audit.jsonl"], key.verify_key)
    problem = report.problems[0]
    assert problem.kind == ProblemKind.FORGED
    assert other_key.verify_key.fingerprint in problem.message
    assert verify([tmp_path / "audit.jsonl"], other_key.verify_key).ok


def test_without_key_signatures_are_not_checked(closed_log: Path) -> None:
    report = verify([closed_log], None)
    assert report.ok
    assert not report.chains[0].signatures_checked


def test_torn_last_line_is_reported(closed_log: Path, key: SigningKey) -> None:
    data = closed_log.read_bytes()
    closed_log.write_bytes(data[:-40])
    report = verify([closed_log], key.verify_key)
    kinds = [p.kind for p in report.problems]
    assert kinds[0] == ProblemKind.TORN
    assert report.problems[0].line == len(read_lines(closed_log))
    assert ProblemKind.TRUNCATED in kinds  # the closing checkpoint was the torn line
    assert verify([closed_log], key.verify_key, live=True).ok


def test_torn_last_line_does_not_hide_earlier_tampering(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[2] = lines[2].replace(b'"partition":1', b'"partition":2')
    lines[-1] = lines[-1][:50]
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    kinds = [p.kind for p in report.problems]
    assert first(report) == (ProblemKind.EDITED, 2, 3)
    assert ProblemKind.TORN in kinds


def test_garbage_line_is_edited(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[6] = b'{"not": "an entry"}\n'
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.EDITED, None, 7)
    assert len(report.problems) == 1


def test_non_canonical_line_is_edited(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[6] = json.dumps(entry_of(lines[6]), indent=None).encode() + b"\n"  # spaces
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.EDITED, 6, 7)
    assert "canonical" in report.problems[0].message


def test_missing_start_is_removed_unless_partial(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    write_lines(closed_log, lines[4:])
    assert first(verify([closed_log], key.verify_key)) == (ProblemKind.REMOVED, 4, 1)
    partial = verify([closed_log], key.verify_key, partial=True)
    assert partial.ok, partial.problems


def test_checkpoint_from_another_chain_is_forged(
    make_log: MakeLog, key: SigningKey, tmp_path: Path, clock: ManualClock
) -> None:
    log = make_log()
    write_entries(log, 6, clock)
    log.close()
    path = tmp_path / "audit.jsonl"
    lines = read_lines(path)
    cp = find(lines, "checkpoint")
    obj = entry_of(lines[cp])
    fields = obj["fields"]
    assert isinstance(fields, dict)
    fields["chain_id"] = "11" * 16
    fields["signature"] = key.sign(
        checkpoint_message("11" * 16, cp, str(fields["head"]), "interval", str(fields["key"]))
    ).hex()
    lines[cp] = rehash(obj)
    write_lines(path, lines[: cp + 1])
    problem = verify([path], key.verify_key).problems[0]
    assert (problem.kind, problem.seq) == (ProblemKind.FORGED, cp)
    assert "chain" in problem.message


def test_unknown_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify([tmp_path / "nope.jsonl"], None)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_tampering_is_found_where_it_happened(
    data: st.DataObject, closed_log: Path, key: SigningKey
) -> None:
    original = read_lines(closed_log)
    lines = list(original)
    op = data.draw(st.sampled_from(["delete", "swap", "duplicate", "edit", "cut"]))
    i = data.draw(st.integers(min_value=0, max_value=len(lines) - 2))
    expected = {
        "delete": ProblemKind.REMOVED,
        "swap": ProblemKind.REORDERED,
        "duplicate": ProblemKind.INSERTED,
        "edit": ProblemKind.EDITED,
        "cut": ProblemKind.TRUNCATED,
    }[op]
    if op == "delete":
        del lines[i]
    elif op == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif op == "duplicate":
        lines.insert(i + 1, lines[i])
    elif op == "edit":
        lines[i] = lines[i].replace(b'"seq":', b'"seq": ', 1)
    else:
        lines = lines[: i + 1]
    try:
        write_lines(closed_log, lines)
        report = verify([closed_log], key.verify_key)
        problem = report.first_problem
        assert problem is not None
        if op == "delete" and i == 0:
            expected = ProblemKind.REMOVED  # the chain_start itself
        assert problem.kind == expected, report.problems
        assert abs(problem.line - (i + 1)) <= 1, report.problems
    finally:
        write_lines(closed_log, original)


def test_problem_count_is_bounded(
    make_log: MakeLog, tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import random

    # the package exports the function under the module's name, so fetch the module itself
    verify_module = importlib.import_module("diode.audit.verify")

    monkeypatch.setattr(verify_module, "MAX_PROBLEMS", 5)
    log = make_log(checkpoint_entries=50)
    write_entries(log, 400)
    log.close()
    path = tmp_path / "audit.jsonl"
    lines = read_lines(path)
    random.Random(7).shuffle(lines)
    write_lines(path, lines)
    chain = verify([path], key.verify_key).chains[0]
    assert len(chain.problems) == 5
    assert chain.more_problems > 0
    assert not chain.ok
    assert chain.entries == len(lines)


@pytest.fixture
def rotated_log(make_log: MakeLog, clock: ManualClock, tmp_path: Path) -> list[Path]:
    """A closed log over several files, oldest first."""
    log = make_log(rotate_bytes=2500)
    write_entries(log, 30, clock)
    log.close()
    return [*sorted(tmp_path.glob("audit.jsonl.*")), tmp_path / "audit.jsonl"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_tampering_across_rotated_files_is_found_where_it_happened(
    data: st.DataObject, rotated_log: list[Path], key: SigningKey
) -> None:
    originals = [read_lines(p) for p in rotated_log]
    sizes = [len(x) for x in originals]
    lines = [line for file_lines in originals for line in file_lines]
    n = len(lines)
    op = data.draw(st.sampled_from(["delete", "move", "duplicate", "edit"]))
    i = data.draw(st.integers(min_value=0, max_value=n - 2))
    if op == "delete":
        del lines[i]
        expected, at = ProblemKind.REMOVED, i
    elif op == "move":
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
        lines.insert(j, lines.pop(i))
        expected, at = ProblemKind.REORDERED, min(i, j)
    elif op == "duplicate":
        j = data.draw(st.integers(min_value=i + 1, max_value=n))
        lines.insert(j, lines[i])
        expected, at = ProblemKind.INSERTED, j
    else:
        lines[i] = lines[i].replace(b'"actor":"sender"', b'"actor":"receiver"')
        expected, at = ProblemKind.EDITED, i
    # put the lines back into files of the same sizes (the last one takes the difference)
    sizes[-1] += len(lines) - n
    start = 0
    try:
        for path, size in zip(rotated_log, sizes, strict=True):
            write_lines(path, lines[start : start + size])
            start += size
        report = verify(rotated_log, key.verify_key)
        problem = report.first_problem
        assert problem is not None
        assert problem.kind == expected, report.problems
        index = rotated_log.index(Path(problem.file))
        position = sum(sizes[:index]) + problem.line - 1
        assert abs(position - at) <= 1, (at, report.problems)
    finally:
        for path, original in zip(rotated_log, originals, strict=True):
            write_lines(path, original)


def test_forged_entry_with_a_borrowed_prev_is_inserted(closed_log: Path, key: SigningKey) -> None:
    """A copy of an entry given a new seq links to a real hash, but not to its seq's place."""
    lines = read_lines(closed_log)
    forged = entry_of(lines[3])
    forged["seq"] = 900  # prev still the hash of seq 2
    lines.insert(4, rehash(forged))
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.INSERTED, 900, 5)
    assert len(report.problems) == 1


def test_entry_moved_far_forward_is_reordered_not_inserted(
    make_log: MakeLog, tmp_path: Path, key: SigningKey
) -> None:
    """An entry moved ahead past an edit still links to its predecessor: reordered."""
    log = make_log(checkpoint_entries=50)
    write_entries(log, 40)
    log.close()
    path = tmp_path / "audit.jsonl"
    lines = read_lines(path)
    lines[30] = lines[30].replace(b'"rule":"size_limit"', b'"rule":"allow_list"')
    lines.insert(5, lines.pop(20))  # seq 20 now stands before seq 5
    write_lines(path, lines)
    problems = verify([path], key.verify_key).problems
    assert [(p.kind, p.seq, p.line) for p in problems] == [
        (ProblemKind.REORDERED, 20, 6),
        (ProblemKind.EDITED, 30, 31),
    ]


@pytest.mark.parametrize("restarted", [False, True], ids=["closed", "restarted"])
def test_entry_appended_after_close_is_inserted(
    make_log: MakeLog, closed_log: Path, key: SigningKey, restarted: bool
) -> None:
    """Someone who knows the format appends a linked entry to a closed log. Even after a
    restarted writer has linked to it and signed over it, it is named."""
    lines = read_lines(closed_log)
    last = entry_of(lines[-1])
    fake = {
        "actor": "sender",
        "event": "record_refused",
        "fields": refused(77, topic="plant.alarms"),
        "prev": last["hash"],
        "seq": int(str(last["seq"])) + 1,
        "time": last["time"],
        "hash": "",
    }
    write_lines(closed_log, [*lines, rehash(fake)])
    if restarted:
        log = make_log()
        write_entries(log, 2)
        log.close()
    report = verify([closed_log], key.verify_key)
    problem = report.problems[0]
    assert (problem.kind, problem.seq, problem.line) == (
        ProblemKind.INSERTED,
        fake["seq"],
        len(lines) + 1,
    )
    assert "closing checkpoint" in problem.message
    if restarted:
        assert len(report.problems) == 1  # the resumed chain is otherwise intact


def test_removed_chain_resumed_is_named_once(
    make_log: MakeLog, closed_log: Path, key: SigningKey
) -> None:
    log = make_log()
    write_entries(log, 2)
    log.close()
    lines = read_lines(closed_log)
    resumed = find(lines, "chain_resumed")
    del lines[resumed]
    write_lines(closed_log, lines)
    problems = verify([closed_log], key.verify_key).problems
    assert [(p.kind, p.line) for p in problems] == [(ProblemKind.REMOVED, resumed + 1)]


def test_swapped_rotated_files_are_named_once(rotated_log: list[Path], key: SigningKey) -> None:
    first_file, second_file = rotated_log[0], rotated_log[1]
    a, b = first_file.read_bytes(), second_file.read_bytes()
    first_file.write_bytes(b)
    second_file.write_bytes(a)
    problems = verify(rotated_log, key.verify_key).problems
    assert [(p.kind, p.file, p.line) for p in problems] == [
        (ProblemKind.REORDERED, str(first_file), 1)
    ]
    assert f"{second_file}:" in problems[0].message


def test_chain_start_moved_is_reordered(closed_log: Path, key: SigningKey) -> None:
    lines = read_lines(closed_log)
    lines[0], lines[1] = lines[1], lines[0]
    write_lines(closed_log, lines)
    report = verify([closed_log], key.verify_key)
    assert first(report) == (ProblemKind.REORDERED, 1, 1)
    assert "chain_start" in report.problems[0].message
    assert len(report.problems) == 1


def test_chain_signed_by_two_keys_verifies_with_both(
    make_log: MakeLog, closed_log: Path, key: SigningKey, other_key: SigningKey
) -> None:
    """The signing key was replaced between two runs: give both keys."""
    log = make_log(key=other_key)
    write_entries(log, 7)
    log.close()
    both = verify([closed_log], [key.verify_key, other_key.verify_key])
    assert both.ok, both.problems
    assert both.chains[0].signed_by == (
        key.verify_key.fingerprint,
        other_key.verify_key.fingerprint,
    )
    problems = verify([closed_log], key.verify_key).problems
    assert problems and {p.kind for p in problems} == {ProblemKind.FORGED}
    assert all(p.seq is not None and p.seq > 16 for p in problems)  # only the second run's
    with pytest.raises(AuditError, match="no verify key"):
        verify([closed_log], [])
