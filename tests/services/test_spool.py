"""The receiver's spool: order, bounds, replay after a restart, torn tails, segment deletion."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import SpoolError
from diode.services.spool import (
    MAGIC,
    Spool,
    SpoolConfig,
    SpoolEntry,
    SpoolFsync,
    read_segment,
)


def _entry(offset: int, partition: int = 0, size: int = 10) -> SpoolEntry:
    return SpoolEntry(
        target="ot.plant.tel",
        session=b"\x01" * 8,
        topic="plant.tel",
        partition=partition,
        offset=offset,
        timestamp=1_700_000_000_000 + offset,
        key=None if offset % 3 == 0 else b"k%d" % offset,
        value=bytes([offset % 256]) * size,
        headers=(("seq", str(offset).encode()), ("empty", None)),
    )


def _config(path: Path | None, **kw: object) -> SpoolConfig:
    base: dict[str, object] = {
        "path": path,
        "max_records": 1000,
        "max_bytes": 1 << 20,
        "segment_bytes": 512,
    }
    base.update(kw)
    return SpoolConfig(**base)  # type: ignore[arg-type]


def test_fifo_and_replay_of_unresolved_in_order(tmp_path: Path) -> None:
    spool = Spool(_config(tmp_path))
    items = [spool.append(_entry(i)) for i in range(40)]
    assert all(i is not None for i in items)
    assert len(spool.segment_files()) > 3  # small segments: several files
    taken = [spool.take() for _ in range(25)]
    assert [t.entry.offset for t in taken] == list(range(25))
    for t in taken[:20]:
        spool.resolve(t)
    assert len(spool) == 20 and spool.waiting == 15
    spool.sync()
    spool.close()

    again = Spool(_config(tmp_path))
    replayed = []
    while again.peek() is not None:
        replayed.append(again.take().entry)
    # a segment is deleted only once all its records are resolved: some resolved records of
    # the oldest live segment come back, then every unresolved one in order, with content
    offsets = [e.offset for e in replayed]
    assert offsets == sorted(offsets) and offsets[-20:] == list(range(20, 40))
    assert len(offsets) < 40  # fully resolved segments were deleted
    assert replayed[-1] == _entry(39)
    assert again.stats.replayed == len(offsets) and again.stats.torn_bytes == 0


def test_segments_are_deleted_once_resolved(tmp_path: Path) -> None:
    spool = Spool(_config(tmp_path))
    for i in range(30):
        spool.append(_entry(i))
    out = [spool.take() for _ in range(30)]
    for item in reversed(out):  # Kafka acknowledges partitions in any order
        spool.resolve(item)
        spool.resolve(item)  # twice is harmless
    assert len(spool) == 0 and spool.bytes == 0
    assert spool.segment_files() == []
    spool.close()
    assert Spool(_config(tmp_path)).peek() is None


def test_bounds_records_and_bytes() -> None:
    spool = Spool(_config(None, max_records=5))
    assert all(spool.append(_entry(i)) is not None for i in range(5))
    assert spool.append(_entry(5)) is None and spool.full()
    item = spool.take()
    assert spool.append(_entry(6)) is None  # handed to the producer still counts
    spool.resolve(item)
    assert spool.append(_entry(7)) is not None
    assert spool.stats.refused_full == 2

    one = len(MAGIC)  # any entry is larger than this
    by_bytes = Spool(_config(None, max_bytes=200))
    sizes: list[int] = []
    while (it := by_bytes.append(_entry(len(sizes), size=50))) is not None:
        sizes.append(it.size)
    assert sum(sizes) <= 200 < sum(sizes) + sizes[0] and by_bytes.bytes == sum(sizes) > one


@pytest.mark.parametrize("cut", ["short_header", "short_payload", "bad_crc", "huge_length"])
def test_torn_tail_is_truncated_and_reported(tmp_path: Path, cut: str) -> None:
    spool = Spool(_config(tmp_path, segment_bytes=1 << 20))
    for i in range(5):
        spool.append(_entry(i))
    spool.close()
    (seg,) = spool.segment_files()
    good = seg.read_bytes()
    tail = {
        "short_header": b"\x00\x00",
        "short_payload": struct.pack(">II", 100, 0) + b"x" * 20,
        "bad_crc": struct.pack(">II", 3, 12345) + b"abc",
        "huge_length": struct.pack(">II", 0xFFFFFFF0, 0) + b"y" * 8,
    }[cut]
    seg.write_bytes(good + tail)

    again = Spool(_config(tmp_path, segment_bytes=1 << 20))
    assert again.stats.torn_bytes == len(tail) and again.stats.torn_segments == 1
    assert [again.take().entry.offset for _ in range(again.waiting)] == list(range(5))
    assert seg.read_bytes() == good  # truncated back to the last whole entry


def test_corrupt_last_entry_drops_only_it(tmp_path: Path) -> None:
    spool = Spool(_config(tmp_path, segment_bytes=1 << 20))
    for i in range(3):
        spool.append(_entry(i))
    spool.close()
    (seg,) = spool.segment_files()
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # a bit flipped in the last payload: its CRC no longer matches
    seg.write_bytes(bytes(data))
    entries, end = read_segment(bytes(data))
    assert [e.offset for e, _ in entries] == [0, 1] and end < len(data)
    again = Spool(_config(tmp_path, segment_bytes=1 << 20))
    assert again.waiting == 2 and again.stats.torn_bytes == len(data) - end


def test_not_a_segment_is_an_error(tmp_path: Path) -> None:
    (tmp_path / f"segment-{0:020d}.spool").write_bytes(b"something else entirely")
    with pytest.raises(SpoolError, match="bad magic"):
        Spool(_config(tmp_path))


def test_new_run_never_appends_to_an_old_segment(tmp_path: Path) -> None:
    spool = Spool(_config(tmp_path, segment_bytes=1 << 20))
    spool.append(_entry(0))
    spool.close()
    again = Spool(_config(tmp_path, segment_bytes=1 << 20))
    again.append(_entry(1))
    again.sync()
    files = again.segment_files()
    assert len(files) == 2
    first = again.take()
    again.resolve(first)  # the old segment's only record: that file goes
    assert again.segment_files() == files[1:]


def test_fsync_policy(tmp_path: Path) -> None:
    every = Spool(_config(tmp_path / "e", fsync=SpoolFsync.ENTRY, segment_bytes=1 << 20))
    never = Spool(_config(tmp_path / "n", fsync=SpoolFsync.NEVER, segment_bytes=1 << 20))
    batch = Spool(_config(tmp_path / "b", fsync=SpoolFsync.BATCH, segment_bytes=1 << 20))
    for i in range(10):
        for s in (every, never, batch):
            s.append(_entry(i))
    batch.sync()
    batch.sync()  # nothing new: no second fsync
    never.sync()
    assert every.stats.fsyncs == 10
    assert batch.stats.fsyncs == 1
    assert never.stats.fsyncs == 0
    # what ``never`` wrote is still readable once handed to the OS
    entries, _ = read_segment(never.segment_files()[0].read_bytes())
    assert len(entries) == 10


def test_discard_waiting_resolves(tmp_path: Path) -> None:
    spool = Spool(_config(tmp_path))
    for i in range(10):
        spool.append(_entry(i))
    dropped = spool.discard_waiting(lambda item: item.entry.offset >= 6)
    assert dropped == 6 and len(spool) == 4
    assert [i.entry.offset for i in spool.unresolved()] == [6, 7, 8, 9]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=60))
def test_replay_holds_every_unresolved_record(ops: list[tuple[int, bool]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d)
        spool = Spool(_config(path, segment_bytes=300))
        out = []
        for n, (take, resolve) in enumerate(ops):
            spool.append(_entry(n, size=n % 40))
            for _ in range(min(take, spool.waiting)):
                out.append(spool.take())
            if resolve and out:
                spool.resolve(out.pop(0))
        unresolved = sorted(i.entry.offset for i in spool.unresolved())
        spool.close()
        again = Spool(_config(path, segment_bytes=300))
        replayed = [again.take().entry.offset for _ in range(again.waiting)]
        assert replayed == sorted(replayed)
        assert set(unresolved) <= set(replayed)
        assert len(again) == len(replayed)
