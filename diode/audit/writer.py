"""The audit log writer: hash chain, signed checkpoints, rotation, fsync, writer thread.

Owns ``AuditLog``, the one object the services (and ``diode simulate``) write through::

    log = AuditLog(AuditConfig(path=Path("audit.jsonl"), actor=Actor.SENDER), signing_key)
    log.append(AuditEvent.GAP, {"topic": "t", "partition": 0, ...})
    log.close()

``append`` checks and encodes the fields in the caller's thread (so a bad field is the
caller's error, raised at once) and hands the line to a writer thread through a bounded
queue; it never waits for the disk. When the queue is full the entry is dropped and counted,
and the writer records an ``audit_dropped`` entry with the count as soon as it catches up.
``threaded=False`` writes in the caller's thread instead (simulations, tests, tools).

On start the writer continues the chain it finds at ``path`` (see ``_find_resume``), so a
restart cannot silently cut a run out of the record.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from diode.errors import AuditError
from diode.protocol.crypto import SigningKey

from .entry import (
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    build_line,
    canonical,
    check_fields,
    checkpoint_message,
    decode_line,
    format_time,
    genesis,
)
from .events import NAME_RE, REQUIRED_FIELDS, RESERVED_EVENTS, Actor, AuditEvent
from .files import iter_lines, rotated_files, rotated_path

Clock = Callable[[], float]

#: room left in a line for everything but the fields (keys, hashes, seq, time)
_LINE_OVERHEAD = 512
_CHAIN_EVENTS = frozenset({AuditEvent.CHAIN_START, AuditEvent.CHAIN_RESUMED, AuditEvent.CHECKPOINT})


class FsyncPolicy(StrEnum):
    """When the writer forces entries to stable storage."""

    NEVER = "never"  # leave it to the OS (fastest; a power cut may lose recent entries)
    CHECKPOINT = "checkpoint"  # at every checkpoint, rotation and close
    ENTRY = "entry"  # after every entry (slowest; nothing written is ever lost)


class CheckpointReason(StrEnum):
    INTERVAL = "interval"
    ROTATION = "rotation"
    CLOSE = "close"
    REQUEST = "request"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """How one program writes its audit log. ``None`` switches a trigger off."""

    path: Path
    actor: str = Actor.SENDER
    #: checkpoint after this many entries since the last one ...
    checkpoint_entries: int | None = 1000
    #: ... or when the oldest unsigned entry is this old (also checked while idle)
    checkpoint_seconds: float | None = 60.0
    #: rotate when the live file reaches this size ...
    rotate_bytes: int | None = 64 * 1024 * 1024
    #: ... or this age
    rotate_seconds: float | None = None
    fsync: FsyncPolicy = FsyncPolicy.CHECKPOINT
    #: entries waiting for the writer thread; beyond this they are dropped and counted
    queue_size: int = 65536
    #: False: write in the caller's thread (no queue, never drops)
    threaded: bool = True

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.actor):
            raise AuditError(f"actor {self.actor!r} is not a valid name")
        for name in ("checkpoint_entries", "rotate_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AuditError(f"{name} is {value}, must be at least 1 (or None for off)")
        for name in ("checkpoint_seconds", "rotate_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise AuditError(f"{name} is {value}, must be positive (or None for off)")
        if self.queue_size < 1:
            raise AuditError(f"queue_size is {self.queue_size}, must be at least 1")


@dataclass(frozen=True, slots=True)
class AuditStats:
    """Counters of one log, for metrics and tests."""

    written: int  # entries written, including checkpoints and the log's own entries
    dropped: int  # entries refused because the queue was full or the writer failed
    checkpoints: int
    rotations: int
    queued: int  # entries waiting for the writer thread
    next_seq: int
    head: str  # hash of the last entry written
    chain_id: str


# --------------------------------------------------------------------------- resume


@dataclass(frozen=True, slots=True)
class _Resume:
    """What a previous run left at the end of the series."""

    file: Path
    last_seq: int = -1
    last_hash: str = ""
    chain_id: str = ""
    clean: bool = False  # ends with a close checkpoint and a complete line
    torn: bool = False  # ends inside a line (crash mid-write)
    unsigned: int = 0  # entries after the last checkpoint
    error: str | None = None  # the end of the chain could not be read


def _scan_file(path: Path) -> tuple[bytes | None, bool, bytes | None, int]:
    """(last complete line, torn, last chain-bearing line, entries after last checkpoint)."""
    last: bytes | None = None
    torn = False
    chain_line: bytes | None = None
    unsigned = 0
    for raw in iter_lines(path):
        if not raw.complete:
            torn = True
            break
        last = raw.data
        unsigned += 1
        # cheap filter first; decoded below only for the few lines that may qualify
        if b'"chain_id":"' in raw.data:
            try:
                entry = decode_line(raw.data)
            except AuditError:
                continue
            if entry.event in _CHAIN_EVENTS:
                chain_line = raw.data
                if entry.event == AuditEvent.CHECKPOINT:
                    unsigned = 0
    return last, torn, chain_line, unsigned


def _find_resume(live: Path) -> _Resume | None:
    candidates = [p for _, p in reversed(rotated_files(live))]
    if live.exists():
        candidates.insert(0, live)
    candidates = [p for p in candidates if p.stat().st_size > 0]
    if not candidates:
        return None
    newest = candidates[0]
    last, torn, chain_line, unsigned = _scan_file(newest)
    for older in candidates[1:]:
        if chain_line is not None:
            break
        _, _, chain_line, _ = _scan_file(older)
    if last is None:
        return _Resume(newest, torn=torn, error="no complete entry in the file")
    try:
        entry = decode_line(last)
    except AuditError as exc:
        return _Resume(newest, torn=torn, error=f"last entry unreadable: {exc}")
    if not entry.intact:
        return _Resume(newest, torn=torn, error="last entry does not match its hash")
    if chain_line is None:
        return _Resume(newest, torn=torn, error="no chain_start or checkpoint found")
    chain_id = decode_line(chain_line).fields.get("chain_id")
    if not isinstance(chain_id, str):
        return _Resume(newest, torn=torn, error="chain id unreadable")
    clean = (
        not torn
        and entry.event == AuditEvent.CHECKPOINT
        and entry.fields.get("reason") == CheckpointReason.CLOSE
    )
    return _Resume(newest, entry.seq, entry.hash, chain_id, clean, torn, unsigned)


# --------------------------------------------------------------------------- chain


class _ChainWriter:
    """Writes entries to the live file, checkpoints and rotates. Not thread-safe."""

    def __init__(self, cfg: AuditConfig, key: SigningKey, now: float, chain_id: str | None) -> None:
        self._cfg = cfg
        self._key = key
        self._key_fp = key.verify_key.fingerprint
        self._actor = str(cfg.actor)
        self._file: BinaryIO | None = None
        self.seq = 0
        self.prev = ""
        self.chain_id = ""
        self.written = 0
        self.checkpoints = 0
        self.rotations = 0
        self._since_checkpoint = 0
        self._oldest_unsigned = now
        self._file_bytes = 0
        self._file_opened = now
        self._start(now, chain_id)

    # ---- opening

    def _start(self, now: float, chain_id: str | None) -> None:
        live = self._cfg.path
        try:
            live.parent.mkdir(parents=True, exist_ok=True)
            resume = _find_resume(live)
            # never append after a torn or unreadable end: move that file aside untouched
            if resume is not None and resume.file == live and (resume.torn or resume.error):
                self._rename_live()
            self._open_live(now)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {live}: {exc.strerror}") from None
        if resume is None or resume.error is not None:
            self.chain_id = chain_id or os.urandom(16).hex()
            self.prev = genesis(self.chain_id)
            fields: dict[str, object] = {
                "chain_id": self.chain_id,
                "version": FORMAT_VERSION,
                "key": self._key_fp,
                "reason": "new" if resume is None else "previous_unreadable",
            }
            if resume is not None:
                fields["previous_file"] = resume.file.name
                fields["error"] = resume.error
            self._write(now, AuditEvent.CHAIN_START, self._actor, canonical(fields))
        else:
            self.chain_id = resume.chain_id
            self.seq = resume.last_seq + 1
            self.prev = resume.last_hash
            fields = {
                "chain_id": self.chain_id,
                "key": self._key_fp,
                "previous_file": resume.file.name,
                "previous_seq": resume.last_seq,
                "clean": resume.clean,
                "torn": resume.torn,
                "unsigned": resume.unsigned,
            }
            self._write(now, AuditEvent.CHAIN_RESUMED, self._actor, canonical(fields))
        self._sync(force=True)

    def _open_live(self, now: float) -> None:
        live = self._cfg.path
        self._file = live.open("ab", buffering=1 << 16)
        self._file_bytes = self._file.tell()
        self._file_opened = now

    def _rename_live(self) -> None:
        live = self._cfg.path
        existing = rotated_files(live)
        index = existing[-1][0] + 1 if existing else 1
        os.rename(live, rotated_path(live, index))
        if self._cfg.fsync != FsyncPolicy.NEVER:
            _fsync_dir(live.parent)

    # ---- writing

    def _write(self, now: float, event: str, actor: str, fields_json: bytes) -> None:
        assert self._file is not None, "audit log is closed"
        line, digest = build_line(self.seq, format_time(now), event, actor, fields_json, self.prev)
        self._file.write(line)
        if self._since_checkpoint == 0:
            self._oldest_unsigned = now
        self._file_bytes += len(line)
        self.seq += 1
        self.prev = digest
        self.written += 1
        self._since_checkpoint += 1
        if self._cfg.fsync == FsyncPolicy.ENTRY:
            self._sync(force=True)

    def write(self, now: float, event: str, actor: str, fields_json: bytes) -> None:
        """Write one entry, then checkpoint and rotate if a threshold is reached."""
        self._write(now, event, actor, fields_json)
        limit = self._cfg.checkpoint_entries
        if limit is not None and self._since_checkpoint >= limit:
            self.checkpoint(now, CheckpointReason.INTERVAL)
        self.tick(now)

    def tick(self, now: float) -> None:
        """Checkpoint and rotate on time; also called while the log is idle."""
        cfg = self._cfg
        if (
            cfg.checkpoint_seconds is not None
            and self._since_checkpoint > 0
            and now - self._oldest_unsigned >= cfg.checkpoint_seconds
        ):
            self.checkpoint(now, CheckpointReason.INTERVAL)
        if (cfg.rotate_bytes is not None and self._file_bytes >= cfg.rotate_bytes) or (
            cfg.rotate_seconds is not None and now - self._file_opened >= cfg.rotate_seconds
        ):
            self.rotate(now)

    def seconds_until_due(self, now: float) -> float | None:
        """How long the writer thread may sleep before ``tick`` has work to do."""
        cfg = self._cfg
        waits: list[float] = []
        if cfg.checkpoint_seconds is not None and self._since_checkpoint > 0:
            waits.append(self._oldest_unsigned + cfg.checkpoint_seconds - now)
        if cfg.rotate_seconds is not None:
            waits.append(self._file_opened + cfg.rotate_seconds - now)
        return max(0.0, min(waits)) if waits else None

    def checkpoint(self, now: float, reason: CheckpointReason) -> None:
        head, count = self.prev, self.seq
        signature = self._key.sign(
            checkpoint_message(self.chain_id, count, head, reason, self._key_fp)
        )
        fields = {
            "chain_id": self.chain_id,
            "count": count,
            "head": head,
            "key": self._key_fp,
            "reason": str(reason),
            "signature": signature.hex(),
        }
        self._write(now, AuditEvent.CHECKPOINT, self._actor, canonical(fields))
        self._since_checkpoint = 0
        self.checkpoints += 1
        self._sync(force=False)

    def rotate(self, now: float) -> None:
        self.checkpoint(now, CheckpointReason.ROTATION)
        self._close_file()
        try:
            self._rename_live()
            self._open_live(now)
        except OSError as exc:
            raise AuditError(f"cannot rotate audit log {self._cfg.path}: {exc.strerror}") from None
        self.rotations += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _sync(self, *, force: bool) -> None:
        """Flush to the OS; fsync unless the policy is never (or only per entry and not forced)."""
        if self._file is None:
            return
        self._file.flush()
        policy = self._cfg.fsync
        if policy == FsyncPolicy.CHECKPOINT or (force and policy == FsyncPolicy.ENTRY):
            os.fsync(self._file.fileno())

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self._cfg.fsync != FsyncPolicy.NEVER:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self, now: float) -> None:
        if self._file is None:
            return
        self.checkpoint(now, CheckpointReason.CLOSE)
        self._close_file()

    @property
    def closed(self) -> bool:
        return self._file is None


def _fsync_dir(directory: Path) -> None:
    # a rename is durable only once the directory is synced
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- AuditLog


@dataclass(slots=True)
class _Control:
    """A request to the writer thread, answered by setting ``done``."""

    kind: str  # "flush", "checkpoint" or "stop"
    done: threading.Event = field(default_factory=threading.Event)


_Item = tuple[float, str, str, bytes]


class AuditLog:
    """A tamper-evident, append-only audit log; see the module docstring.

    ``clock`` gives the time of each entry (seconds since the epoch; inject one in tests and
    simulations). ``chain_id`` fixes the id of a new chain instead of drawing 16 random
    bytes, for reproducible tests; it is ignored when an existing chain is resumed.
    Opening writes ``chain_start`` or ``chain_resumed`` at once and raises ``AuditError``
    if the file cannot be opened.
    """

    def __init__(
        self,
        config: AuditConfig,
        signing_key: SigningKey,
        *,
        clock: Clock = time.time,
        chain_id: str | None = None,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._actor = str(config.actor)
        self._lock = threading.Lock()
        self._known: set[tuple[str, frozenset[str]]] = set()
        self._dropped_pending = 0
        self._dropped_total = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._core = _ChainWriter(config, signing_key, clock(), chain_id)
        self._queue: deque[_Item | _Control] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if config.threaded:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    # ---- the caller's side

    def append(self, event: str, fields: Mapping[str, object], *, actor: str | None = None) -> None:
        """Record one event. Raises ``AuditError`` for bad input or a failed/closed log.

        Never waits for the disk in threaded mode: if the queue is full the entry is
        dropped, counted, and an ``audit_dropped`` entry records the count.
        """
        if self._closed:
            raise AuditError("audit log is closed")
        if self._failure is not None:
            raise AuditError(f"audit log writer failed: {self._failure}")
        name = str(event)
        who = self._actor if actor is None else str(actor)
        self._check_event(name, who, fields)
        check_fields(fields)
        fields_json = canonical(fields)
        if len(fields_json) > MAX_LINE_BYTES - _LINE_OVERHEAD:
            raise AuditError(
                f"{name} fields encode to {len(fields_json)} bytes, exceeding limit "
                f"{MAX_LINE_BYTES - _LINE_OVERHEAD}"
            )
        now = self._clock()
        if self._thread is None:
            with self._lock:
                self._core.write(now, name, who, fields_json)
                self._core.flush()
            return
        # deque operations are atomic; the bound may be overshot by one entry per thread
        # racing here, which is harmless
        if len(self._queue) >= self._cfg.queue_size:
            with self._lock:
                self._dropped_pending += 1
                self._dropped_total += 1
            return
        self._queue.append((now, name, who, fields_json))
        if not self._wake.is_set():
            self._wake.set()

    def _check_event(self, name: str, who: str, fields: Mapping[str, object]) -> None:
        key = (name + "\x00" + who, frozenset(fields.keys()))
        if key in self._known:
            return
        if not NAME_RE.fullmatch(name):
            raise AuditError(f"event {name!r} is not a valid name (lowercase, digits, _)")
        if not NAME_RE.fullmatch(who):
            raise AuditError(f"actor {who!r} is not a valid name (lowercase, digits, _)")
        if name in RESERVED_EVENTS:
            raise AuditError(f"event {name!r} is written by the audit log itself")
        missing = REQUIRED_FIELDS.get(name, frozenset()) - fields.keys()
        if missing:
            raise AuditError(f"event {name!r} is missing fields: {', '.join(sorted(missing))}")
        if len(self._known) < 4096:  # a cache, bounded against callers with odd field sets
            self._known.add(key)

    def checkpoint(self) -> None:
        """Write a signed checkpoint now (after everything appended so far)."""
        if self._thread is None:
            with self._lock:
                self._core.checkpoint(self._clock(), CheckpointReason.REQUEST)
        else:
            self._request("checkpoint")

    def tick(self) -> None:
        """Synchronous mode: checkpoint/rotate on time. The writer thread does this itself."""
        if self._thread is None:
            with self._lock:
                if not self._core.closed:
                    self._core.tick(self._clock())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is written to the OS; False on timeout."""
        if self._thread is None:
            with self._lock:
                self._core.flush()
            return True
        return self._request("flush", timeout)

    def _request(self, kind: str, timeout: float | None = None) -> bool:
        if self._failure is not None:
            raise AuditError(f"audit log writer failed: {self._failure}")
        control = _Control(kind)
        self._queue.append(control)
        self._wake.set()
        return control.done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, a closing checkpoint, and stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            control = _Control("stop")
            self._queue.append(control)
            self._wake.set()
            self._thread.join()
        with self._lock:
            if self._failure is None:
                try:
                    # an append racing with close may have queued behind the stop
                    # request: it was accepted, so it is written, not dropped
                    self._write_queued()
                    self._core.close(self._clock())
                except (OSError, AuditError) as exc:
                    self._failure = exc
        # count what can no longer be written: everything still queued after a failure, or
        # an append that got past the closed check after the last look at the queue
        self._count_leftovers()
        if self._failure is not None:
            raise AuditError(f"audit log writer failed: {self._failure}")

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> AuditStats:
        core = self._core
        return AuditStats(
            written=core.written,
            dropped=self._dropped_total,
            checkpoints=core.checkpoints,
            rotations=core.rotations,
            queued=len(self._queue),
            next_seq=core.seq,
            head=core.prev,
            chain_id=core.chain_id,
        )

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the writer thread, if any."""
        return self._failure

    # ---- the writer thread

    def _run(self) -> None:
        core, queue, wake = self._core, self._queue, self._wake
        stop = False
        try:
            while not stop:
                wake.clear()
                if not queue:
                    wake.wait(core.seconds_until_due(self._clock()))
                    if not queue:
                        core.tick(self._clock())
                        core.flush()
                        continue
                while True:
                    try:
                        item = queue.popleft()
                    except IndexError:
                        break
                    if isinstance(item, _Control):
                        # a busy writer may not have looked at the clock since its last
                        # entry: a checkpoint or rotation due by time happens before the
                        # request is answered, so flush() leaves the log up to date
                        core.tick(self._clock())
                        if item.kind == "stop":
                            stop = True
                        elif item.kind == "checkpoint":
                            core.checkpoint(self._clock(), CheckpointReason.REQUEST)
                        self._report_drops()
                        core.flush()
                        item.done.set()
                        if stop:
                            break
                        continue
                    core.write(*item)
                self._report_drops()
                core.flush()
        except (OSError, AuditError) as exc:
            self._fail(exc)

    def _write_queued(self) -> None:
        """After the writer thread stopped: write what is still queued. Under ``_lock``."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Control):
                item.done.set()
            else:
                self._core.write(*item)
        self._report_drops(locked=True)

    def _count_leftovers(self) -> None:
        """Count what is queued as dropped (it will never be written), release any waiter."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Control):
                item.done.set()
            else:
                with self._lock:
                    self._dropped_total += 1

    def _report_drops(self, *, locked: bool = False) -> None:
        if not self._dropped_pending:
            return
        if locked:
            count, self._dropped_pending = self._dropped_pending, 0
            total = self._dropped_total
        else:
            with self._lock:
                count, self._dropped_pending = self._dropped_pending, 0
                total = self._dropped_total
        fields = {"count": count, "total": total, "reason": "queue_full"}
        self._core.write(self._clock(), AuditEvent.AUDIT_DROPPED, self._actor, canonical(fields))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._count_leftovers()
