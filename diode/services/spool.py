"""The receiver's spool: records accepted from the diode and not yet acknowledged by IT Kafka.

Owns the on-disk format, the bounds and the bookkeeping of what is still owed to Kafka:

* every accepted record is appended (before it is handed to the producer) to the active
  segment file of a spool directory; a segment is deleted as soon as every record in it is
  *resolved*: acknowledged by Kafka, or reported as a gap;
* a restarted receiver replays the unresolved records in the order they were appended, so
  records a stopped or crashed receiver had not delivered are delivered on the next start;
* bounded: at most ``max_records`` records and ``max_bytes`` bytes (entry bytes as written)
  are unresolved at once; ``append`` returns None when a record does not fit, and the caller
  turns that into an audited loss;
* ``path`` None keeps the same bookkeeping in memory only (nothing survives a stop).

Segment file layout (``segment-<20-digit id>.spool``)::

    +----------------------+  8 bytes: b"DSPOOL1\\n"
    | magic                |
    +----------------------+
    | length  (u32, BE)    |  one entry: length of the payload, CRC-32 of the payload,
    | crc32   (u32, BE)    |  then the payload: a msgpack array (``SpoolEntry``)
    | payload (length)     |
    +----------------------+
    | ... more entries ... |

A torn tail (a crash or power loss in the middle of a write: a short header, a short payload
or a CRC mismatch) ends the readable part of a segment: the entries before it are replayed,
the rest is truncated away and reported (``torn_bytes``), never parsed.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import msgspec

from diode.errors import SpoolError

log = logging.getLogger(__name__)

MAGIC = b"DSPOOL1\n"
_ENTRY_HEAD = struct.Struct(">II")
_SEGMENT_RE = re.compile(r"segment-(\d{20})\.spool")
#: largest entry read back: far above any record the protocol carries, far below memory
MAX_ENTRY_BYTES = 64 * 1024 * 1024


class SpoolFsync(StrEnum):
    """When appended entries are forced to disk."""

    NEVER = "never"  # the OS decides; a power loss may lose the last seconds
    BATCH = "batch"  # once per ``sync()`` call: the receiver calls it once per loop turn
    ENTRY = "entry"  # after every entry: slowest, nothing accepted is ever lost


class SpoolEntry(msgspec.Struct, array_like=True, frozen=True):
    """One spooled record: the IT topic it goes to, its session and the record itself."""

    target: str
    session: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpoolEntry)


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """``path`` None: in memory only. Bounds count unresolved records (spooled + in flight)."""

    path: Path | None
    max_records: int
    max_bytes: int
    fsync: SpoolFsync = SpoolFsync.BATCH
    segment_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise SpoolError(f"spool max_records is {self.max_records}, must be at least 1")
        if self.max_bytes < 1:
            raise SpoolError(f"spool max_bytes is {self.max_bytes}, must be at least 1")
        if self.segment_bytes < len(MAGIC) + 1:
            raise SpoolError(f"spool segment_bytes is {self.segment_bytes}, too small")


class _Segment:
    __slots__ = ("id", "outstanding", "path", "sealed", "size")

    def __init__(self, seg_id: int, path: Path | None, size: int) -> None:
        self.id = seg_id
        self.path = path
        self.outstanding = 0
        self.size = size
        self.sealed = False


@dataclass(slots=True, eq=False)
class SpoolItem:
    """An unresolved record; hand it back to ``resolve`` once Kafka acknowledged it."""

    seq: int
    entry: SpoolEntry
    size: int
    segment: _Segment
    resolved: bool = False


@dataclass(slots=True)
class SpoolStats:
    appended: int = 0
    resolved: int = 0
    refused_full: int = 0
    replayed: int = 0
    torn_bytes: int = 0
    torn_segments: int = 0
    segments_deleted: int = 0
    fsyncs: int = 0


def _encode(entry: SpoolEntry) -> bytes:
    payload = _encoder.encode(entry)
    return _ENTRY_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def read_segment(
    data: bytes, limit: int = MAX_ENTRY_BYTES
) -> tuple[list[tuple[SpoolEntry, int]], int]:
    """The entries (with their sizes) of one segment's bytes, and where the valid part ends.

    Everything from the returned position on is a torn tail; raises ``SpoolError`` if the
    file is not a spool segment at all.
    """
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            return [], 0  # torn while writing the magic itself
        raise SpoolError("not a spool segment (bad magic)")
    pos = len(MAGIC)
    out: list[tuple[SpoolEntry, int]] = []
    while pos < len(data):
        if pos + _ENTRY_HEAD.size > len(data):
            break
        length, crc = _ENTRY_HEAD.unpack_from(data, pos)
        if length > limit:
            log.warning("spool entry length %d exceeds limit %d: treated as torn", length, limit)
            break
        end = pos + _ENTRY_HEAD.size + length
        if end > len(data):
            break
        payload = data[pos + _ENTRY_HEAD.size : end]
        if zlib.crc32(payload) != crc:
            break
        try:
            entry = _decoder.decode(payload)
        except msgspec.DecodeError:
            break  # a matching CRC over garbage: written by something else, stop trusting it
        out.append((entry, end - pos))
        pos = end
    return out, pos


class Spool:
    """A bounded FIFO of records owed to Kafka; ``open`` replays what a previous run left."""

    def __init__(self, config: SpoolConfig) -> None:
        self.config = config
        self.stats = SpoolStats()
        self._queue: deque[SpoolItem] = deque()  # appended, not yet handed to the producer
        self._unresolved = 0
        self._bytes = 0
        self._seq = 0
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._file: BinaryIO | None = None
        self._out: dict[int, SpoolItem] = {}  # handed to the producer, not yet resolved
        self._next_segment = 0
        self._dirty = False
        self._closed = False
        if config.path is not None:
            try:
                config.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create spool directory {config.path}: {exc}") from exc
            self._replay(config.path)

    # ------------------------------------------------------------------ replay

    def _replay(self, directory: Path) -> None:
        names = sorted(
            (int(m.group(1)), p)
            for p in directory.iterdir()
            if (m := _SEGMENT_RE.fullmatch(p.name)) is not None
        )
        self._next_segment = names[-1][0] + 1 if names else 0
        for seg_id, path in names:
            try:
                data = path.read_bytes()
                entries, end = read_segment(data)
            except (OSError, SpoolError) as exc:
                raise SpoolError(f"cannot read spool segment {path}: {exc}") from exc
            if end < len(data):
                self.stats.torn_bytes += len(data) - end
                self.stats.torn_segments += 1
                log.warning(
                    "spool segment %s: %d torn byte(s) after %d entries truncated",
                    path,
                    len(data) - end,
                    len(entries),
                )
                try:
                    os.truncate(path, end)
                except OSError as exc:
                    raise SpoolError(f"cannot truncate torn spool segment {path}: {exc}") from exc
            segment = _Segment(seg_id, path, end)
            segment.sealed = True  # never appended to again: a new run starts a new segment
            self._segments[seg_id] = segment
            for entry, size in entries:
                self._push(entry, size, segment)
                self.stats.replayed += 1
            if segment.outstanding == 0:
                self._delete(segment)

    # ------------------------------------------------------------------ queue

    def __len__(self) -> int:
        """Unresolved records (waiting plus handed to the producer)."""
        return self._unresolved

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def waiting(self) -> int:
        """Records not yet handed to the producer."""
        return len(self._queue)

    def full(self) -> bool:
        return self._unresolved >= self.config.max_records or self._bytes >= self.config.max_bytes

    def _push(self, entry: SpoolEntry, size: int, segment: _Segment) -> SpoolItem:
        item = SpoolItem(self._seq, entry, size, segment)
        self._seq += 1
        segment.outstanding += 1
        self._unresolved += 1
        self._bytes += size
        self._queue.append(item)
        return item

    def append(self, entry: SpoolEntry) -> SpoolItem | None:
        """Spool ``entry`` (written before this returns); None if it does not fit the bounds."""
        if self._closed:
            raise SpoolError("spool is closed")
        blob = _encode(entry)
        size = len(blob)
        if (
            self._unresolved + 1 > self.config.max_records
            or self._bytes + size > self.config.max_bytes
        ):
            self.stats.refused_full += 1
            return None
        segment = self._writable(size)
        if self._file is not None:
            try:
                self._file.write(blob)
            except OSError as exc:
                raise SpoolError(f"cannot write spool segment {segment.path}: {exc}") from exc
            self._dirty = True
            if self.config.fsync is SpoolFsync.ENTRY:
                self._sync_file()
        segment.size += size
        self.stats.appended += 1
        return self._push(entry, size, segment)

    def _writable(self, size: int) -> _Segment:
        active = self._active
        if active is not None and active.size + size <= self.config.segment_bytes:
            return active
        if active is not None:
            self._seal(active)
        seg_id = self._next_segment
        self._next_segment = seg_id + 1
        if self.config.path is None:
            segment = _Segment(seg_id, None, len(MAGIC))
        else:
            path = self.config.path / f"segment-{seg_id:020d}.spool"
            try:
                self._file = path.open("xb", buffering=1 << 16)
                self._file.write(MAGIC)
            except OSError as exc:
                raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
            if self.config.fsync is not SpoolFsync.NEVER:
                self._sync_dir()
            segment = _Segment(seg_id, path, len(MAGIC))
        self._segments[seg_id] = segment
        self._active = segment
        return segment

    def peek(self) -> SpoolItem | None:
        """The oldest record not yet handed to the producer."""
        return self._queue[0] if self._queue else None

    def take(self) -> SpoolItem:
        """Mark the oldest waiting record as handed to the producer (it stays unresolved)."""
        item = self._queue.popleft()
        self._out[item.seq] = item
        return item

    def discard_waiting(self, keep: Callable[[SpoolItem], bool]) -> int:
        """Resolve every waiting record ``keep`` rejects (e.g. already in Kafka); how many."""
        kept: deque[SpoolItem] = deque()
        dropped = 0
        for item in self._queue:
            if keep(item):
                kept.append(item)
            else:
                dropped += 1
                self._resolve(item)
        self._queue = kept
        return dropped

    def unresolved(self) -> Iterator[SpoolItem]:
        """Every unresolved record, handed out or not, in no particular order."""
        yield from list(self._out.values())
        yield from list(self._queue)

    def resolve(self, item: SpoolItem) -> None:
        """``item`` is in Kafka (or was reported lost): it need not survive a restart."""
        self._resolve(item)

    def _resolve(self, item: SpoolItem) -> None:
        if item.resolved:
            return
        item.resolved = True
        self._out.pop(item.seq, None)
        self._unresolved -= 1
        self._bytes -= item.size
        self.stats.resolved += 1
        segment = item.segment
        segment.outstanding -= 1
        if segment.outstanding == 0 and (segment.sealed or segment is self._active):
            if segment is self._active:
                self._close_active()
            self._delete(segment)

    # ------------------------------------------------------------------ files

    def _seal(self, segment: _Segment) -> None:
        if segment is self._active:
            self._close_active()
        segment.sealed = True
        if segment.outstanding == 0:
            self._delete(segment)

    def _close_active(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                if self.config.fsync is not SpoolFsync.NEVER:
                    os.fsync(self._file.fileno())
                    self.stats.fsyncs += 1
                self._file.close()
            except OSError as exc:
                raise SpoolError(f"cannot close spool segment: {exc}") from exc
            self._file = None
        self._dirty = False
        if self._active is not None:
            self._active.sealed = True
        self._active = None

    def _delete(self, segment: _Segment) -> None:
        self._segments.pop(segment.id, None)
        if segment.path is None:
            return
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot delete spool segment {segment.path}: {exc}") from exc
        self.stats.segments_deleted += 1

    def _sync_file(self) -> None:
        assert self._file is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise SpoolError(f"cannot sync spool segment: {exc}") from exc
        self.stats.fsyncs += 1
        self._dirty = False

    def _sync_dir(self) -> None:
        assert self.config.path is not None
        fd = os.open(self.config.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Push appended entries to the OS, and to the disk unless ``fsync`` is ``never``."""
        if self._file is None or not self._dirty:
            return
        if self.config.fsync is SpoolFsync.NEVER:
            try:
                self._file.flush()
            except OSError as exc:
                raise SpoolError(f"cannot write spool segment: {exc}") from exc
            self._dirty = False
        else:
            self._sync_file()

    def segment_files(self) -> list[Path]:
        """The segment files on disk now, oldest first (for tests and operators)."""
        if self.config.path is None:
            return []
        return sorted(p for p in self.config.path.iterdir() if _SEGMENT_RE.fullmatch(p.name))

    def close(self) -> None:
        """Sync and close; unresolved records stay on disk for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._close_active()


__all__ = [
    "MAGIC",
    "MAX_ENTRY_BYTES",
    "Spool",
    "SpoolConfig",
    "SpoolEntry",
    "SpoolFsync",
    "SpoolItem",
    "SpoolStats",
    "read_segment",
]
