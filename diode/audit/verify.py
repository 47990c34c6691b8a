"""Verifying an audit chain: what was edited, removed, reordered, inserted or cut off.

Owns ``verify(paths, verify_keys) -> Report``. It reads a series of files (see ``files``)
as one stream of lines, holding only a bounded look-ahead window, and checks for every
entry that

* its content hashes to its ``hash`` and it is written canonically (else: **edited**),
* its ``seq`` is the next one and its ``prev`` is the hash of the entry before it (a jump:
  **removed**; an entry that belongs elsewhere in the chain: **reordered**; one that does
  not belong at all, or a second entry with a seq already used: **inserted**; the right
  seq but the wrong ``prev``: the entry before it was **edited** and re-hashed),
* every checkpoint is internally consistent, belongs to this chain, and carries a valid
  Ed25519 signature by one of the expected keys (else: **forged**),
* nothing but ``chain_resumed`` follows a closing checkpoint (else: **inserted**: a writer
  that closed wrote nothing more, and one restarted later would have signed over it),
* the chain ends with the checkpoint written at close (else: **truncated**, with the
  number of entries after the last checkpoint, which no signature covers), unless the
  caller says the last file is the live file of a running program,
* no file ends inside a line (a crash mid-write: **torn**), except a file after which the
  writer recorded that it resumed the chain.

Every problem is reported, in file order, so a torn last line never hides an earlier edit;
the first one is "the first broken entry". After a problem the verifier resynchronises on
the chain so one tampering does not become a cascade of reports.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from diode.errors import AuditError
from diode.protocol.crypto import VerifyKey

from .entry import Entry, checkpoint_message, decode_line, genesis
from .events import AuditEvent
from .files import Series, expand_inputs, iter_lines

#: entries read ahead to tell a reordering from an insertion or a removal
LOOKAHEAD = 1024
#: entries remembered behind, to recognise a duplicate or a late entry
HISTORY = 4096
#: problems kept per chain; beyond this they are only counted
MAX_PROBLEMS = 1000


class ProblemKind(StrEnum):
    EDITED = "edited"
    REMOVED = "removed"
    REORDERED = "reordered"
    INSERTED = "inserted"
    TRUNCATED = "truncated"
    TORN = "torn"
    FORGED = "forged"


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken place in the chain."""

    kind: ProblemKind
    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        entry = f"entry seq {self.seq}" if self.seq is not None else "line"
        return f"{where}: {entry}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result for one series of files."""

    series: str
    files: tuple[str, ...]
    entries: int
    checkpoints: int
    signatures_checked: bool
    #: fingerprints of the keys whose signatures verified, in the order first met
    signed_by: tuple[str, ...]
    #: entries after the last checkpoint (no signature covers them)
    unsigned: int
    last_seq: int | None
    head: str | None
    chain_ids: tuple[str, ...]
    problems: tuple[Problem, ...]
    #: problems beyond ``MAX_PROBLEMS`` that were counted but not kept
    more_problems: int
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Report:
    """The result of ``verify``: one ``ChainReport`` per series given."""

    chains: tuple[ChainReport, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for c in self.chains for p in c.problems)

    @property
    def first_problem(self) -> Problem | None:
        problems = self.problems
        return problems[0] if problems else None


def verify(
    paths: Sequence[str | Path],
    verify_keys: VerifyKey | Sequence[VerifyKey] | None,
    *,
    live: bool = False,
    partial: bool = False,
) -> Report:
    """Verify the audit files, directories or globs in ``paths``.

    ``verify_keys``: the Ed25519 public key that must have signed every checkpoint, or
    several (a sender's and a receiver's log checked together; a log whose key was replaced
    between two runs): each checkpoint must carry a valid signature by the key it names, and
    that key must be one of them. Without a key only the hash chain is checked (and the
    report says so). ``live``: the newest file
    of each series belongs to a running program, so a missing closing checkpoint or a
    half-written last line is expected. ``partial``: a series may start in the middle of
    its chain (older files archived elsewhere); trust then starts at its first entry.
    """
    series = expand_inputs(paths)
    if not series:
        raise AuditError("no audit files given")
    if verify_keys is None:
        keys: dict[str, VerifyKey] | None = None
    elif isinstance(verify_keys, VerifyKey):
        keys = {verify_keys.fingerprint: verify_keys}
    else:
        keys = {k.fingerprint: k for k in verify_keys}
        if not keys:
            raise AuditError("no verify key given (pass None to check the hash chain only)")
    return Report(tuple(_ChainVerifier(s, keys, live, partial).run() for s in series))


# --------------------------------------------------------------------------- stream


@dataclass(slots=True)
class _Item:
    file: Path
    line: int
    entry: Entry | None
    error: str | None = None
    torn: bool = False
    first_in_file: bool = False


def _stream(files: Sequence[Path]) -> Iterator[_Item]:
    for path in files:
        first = True
        for raw in iter_lines(path):
            if not raw.complete and not raw.oversize:
                yield _Item(path, raw.number, None, torn=True, first_in_file=first)
            elif raw.oversize:
                yield _Item(path, raw.number, None, "line too long to be an entry", False, first)
            else:
                try:
                    yield _Item(path, raw.number, decode_line(raw.data), first_in_file=first)
                except AuditError as exc:
                    yield _Item(path, raw.number, None, f"not a valid entry: {exc}", False, first)
            first = False


class _Peekable:
    def __init__(self, items: Iterator[_Item]) -> None:
        self._items = items
        self._buffer: deque[_Item] = deque()

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> _Item:
        if self._buffer:
            return self._buffer.popleft()
        return next(self._items)

    def peek(self, n: int) -> list[_Item]:
        while len(self._buffer) < n:
            try:
                self._buffer.append(next(self._items))
            except StopIteration:
                break
        return list(self._buffer)[:n]


# --------------------------------------------------------------------------- verifier


@dataclass(slots=True)
class _Seen:
    hash: str
    prev: str
    file: Path
    line: int


@dataclass(slots=True)
class _State:
    expect: int | None = None  # next seq; None before the first entry
    prev: str | None = None  # hash the next entry must link to; None: unknown
    chain_id: str | None = None
    since_checkpoint: int = 0
    last: _Item | None = None
    last_checkpoint: _Item | None = None
    #: the head is a closing checkpoint: the writer's next entry can only be chain_resumed
    closed: _Item | None = None
    chain_ids: list[str] = field(default_factory=list)


class _ChainVerifier:
    def __init__(
        self, series: Series, keys: dict[str, VerifyKey] | None, live: bool, partial: bool
    ) -> None:
        self._series = series
        self._keys = keys
        self._signed_by: dict[str, None] = {}
        self._live = live
        self._partial = partial
        self._problems: list[Problem] = []
        self._more = 0
        self._notes: list[str] = []
        self._state = _State()
        self._history: dict[int, _Seen] = {}
        self._history_order: deque[int] = deque()
        self._displaced: dict[int, _Item] = {}
        # ids of entries taken out of the stream early to fill a hole (a reordering); they
        # are skipped when the stream reaches them
        self._taken: set[int] = set()
        self._entries = 0
        self._checkpoints = 0

    # ---- reporting

    def _problem(self, kind: ProblemKind, item: _Item, seq: int | None, message: str) -> None:
        if len(self._problems) >= MAX_PROBLEMS:
            self._more += 1
            return
        self._problems.append(Problem(kind, str(item.file), item.line, seq, message))

    def _remember(self, item: _Item, entry: Entry) -> None:
        if entry.seq not in self._history:
            self._history_order.append(entry.seq)
            if len(self._history_order) > HISTORY:
                self._history.pop(self._history_order.popleft(), None)
        self._history[entry.seq] = _Seen(entry.hash, entry.prev, item.file, item.line)

    # ---- main loop

    def run(self) -> ChainReport:
        stream = _Peekable(_stream(self._series.files))
        torn: _Item | None = None
        for item in stream:
            if item.torn:
                torn = item
                continue
            if torn is not None:
                self._after_torn(torn, item)
                torn = None
            self._entries += 1
            if id(item) in self._taken:
                self._taken.discard(id(item))
                continue
            if item.entry is None:
                self._unreadable(item)
                continue
            self._entry(item, item.entry, stream)
        # problems found by looking back or ahead are reported in file order
        order = {path: i for i, path in enumerate(self._series.files)}
        self._problems.sort(key=lambda p: (order.get(Path(p.file), 0), p.line))
        self._finish(torn)
        st = self._state
        last_entry = st.last.entry if st.last is not None else None
        return ChainReport(
            series=self._series.name,
            files=tuple(str(p) for p in self._series.files),
            entries=self._entries,
            checkpoints=self._checkpoints,
            signatures_checked=self._keys is not None,
            signed_by=tuple(self._signed_by),
            unsigned=st.since_checkpoint,
            last_seq=last_entry.seq if last_entry is not None else None,
            head=last_entry.hash if last_entry is not None else None,
            chain_ids=tuple(st.chain_ids),
            problems=tuple(self._problems),
            more_problems=self._more,
            notes=tuple(self._notes),
        )

    def _after_torn(self, torn: _Item, item: _Item) -> None:
        entry = item.entry
        if (
            item.first_in_file
            and entry is not None
            and entry.event == AuditEvent.CHAIN_RESUMED
            and entry.fields.get("torn") is True
        ):
            self._notes.append(
                f"{torn.file}:{torn.line}: last line was cut by a crash mid-write; the writer "
                f"resumed the chain at {item.file}:{item.line}"
            )
        else:
            self._problem(
                ProblemKind.TORN,
                torn,
                None,
                "the file ends inside a line (crash mid-write, or cut) and the chain goes on "
                "without recording a restart",
            )

    def _unreadable(self, item: _Item) -> None:
        self._problem(ProblemKind.EDITED, item, None, item.error or "not a valid entry")
        st = self._state
        # assume the line stood for one entry: the next one is checked for its seq, but
        # the hash it must link to is unknown
        if st.expect is not None:
            st.expect += 1
        st.prev = None
        st.since_checkpoint += 1

    def _entry(self, item: _Item, entry: Entry, stream: _Peekable) -> None:
        st = self._state
        if not entry.intact:
            what = (
                "its content does not match its hash"
                if entry.computed_hash != entry.hash
                else "it is not written in canonical form"
            )
            self._problem(ProblemKind.EDITED, item, entry.seq, f"the entry was changed: {what}")
            self._accept(item, entry)
            return
        if (
            entry.event == AuditEvent.CHAIN_START
            and self._starts_chain(entry)
            and entry.fields.get("chain_id") not in st.chain_ids
        ):
            self._new_chain(item, entry)
            return
        moved_start: str | None = None
        if st.expect is None:
            moved_start = self._start_found_later(stream)
            if moved_start is None:
                self._first_entry(item, entry)
                self._accept(item, entry)
                return
        assert st.expect is not None
        links = entry.seq == st.expect and (st.prev is None or entry.prev == st.prev)
        if links:
            if moved_start is not None:
                self._problem(ProblemKind.REORDERED, item, entry.seq, moved_start)
        elif len(self._problems) >= MAX_PROBLEMS:
            # past the report limit: count, and follow the file without classifying
            self._more += 1
        else:
            reported = len(self._problems)
            keep = self._out_of_place(item, entry, stream)
            # one report per place: the classification usually names the moved start too
            if moved_start is not None and len(self._problems) == reported:
                self._problem(ProblemKind.REORDERED, item, entry.seq, moved_start)
            if not keep:
                return  # skipped: the entry does not belong here
        self._accept(item, entry)

    def _start_found_later(self, stream: _Peekable) -> str | None:
        """The series does not begin with its chain_start: is it a little further on?

        If so, the chain is started from it, and what to report about the entry that
        stands in its place is returned.
        """
        if self._partial:
            return None
        for a in stream.peek(LOOKAHEAD):
            start = a.entry
            if (
                start is not None
                and start.intact
                and start.event == AuditEvent.CHAIN_START
                and self._starts_chain(start)
            ):
                self._taken.add(id(a))
                self._new_chain(a, start)
                return f"out of order: the chain begins with chain_start at {a.file}:{a.line}"
        return None

    def _starts_chain(self, entry: Entry) -> bool:
        chain_id = entry.fields.get("chain_id")
        return entry.seq == 0 and isinstance(chain_id, str) and entry.prev == genesis(chain_id)

    def _new_chain(self, item: _Item, entry: Entry) -> None:
        st = self._state
        chain_id = str(entry.fields["chain_id"])
        if st.expect is not None:
            reason = entry.fields.get("reason", "?")
            self._notes.append(
                f"{item.file}:{item.line}: a new chain {chain_id} starts (reason: {reason})"
            )
            self._end_of_chain(final=False)
        st.chain_id = chain_id
        st.chain_ids.append(chain_id)
        st.last_checkpoint = None
        st.since_checkpoint = 0
        self._accept(item, entry)

    def _first_entry(self, item: _Item, entry: Entry) -> None:
        st = self._state
        if self._partial:
            self._notes.append(
                f"{item.file}:{item.line}: the files given start at seq {entry.seq}; "
                "nothing before it was checked"
            )
        else:
            self._problem(
                ProblemKind.REMOVED,
                item,
                entry.seq,
                f"the chain does not begin with chain_start: entries before seq {entry.seq} "
                "are missing (give all files of the series, or --partial to check from here)",
            )
        chain_id = entry.fields.get("chain_id")
        if isinstance(chain_id, str) and entry.event in (
            AuditEvent.CHECKPOINT,
            AuditEvent.CHAIN_RESUMED,
        ):
            st.chain_id = chain_id
            st.chain_ids.append(chain_id)

    def _accept(self, item: _Item, entry: Entry) -> None:
        """Make ``entry`` the new head and check what its event implies."""
        st = self._state
        closed, st.closed = st.closed, None
        if (
            closed is not None
            and closed.entry is not None
            and entry.intact
            and entry.prev == closed.entry.hash  # else already reported as removed or moved
            and entry.event not in (AuditEvent.CHAIN_RESUMED, AuditEvent.CHAIN_START)
        ):
            # a writer that closed writes nothing more; on restart its first entry is
            # chain_resumed. Anything else was added to the closed log, and a restarted
            # writer would sign over it
            self._problem(
                ProblemKind.INSERTED,
                item,
                entry.seq,
                f"follows the closing checkpoint at {closed.file}:{closed.line}: the log was "
                "closed, and a writer's first entry after closing is chain_resumed",
            )
        st.expect = entry.seq + 1
        st.prev = entry.hash
        st.last = item
        self._remember(item, entry)
        if entry.event == AuditEvent.CHECKPOINT and entry.intact:
            self._checkpoint(item, entry)
        else:
            st.since_checkpoint += 1
            if entry.event == AuditEvent.CHAIN_RESUMED and entry.intact:
                self._resumed(item, entry)

    # ---- classification of an entry that is not the next one

    def _out_of_place(self, item: _Item, entry: Entry, stream: _Peekable) -> bool:
        """Report why ``entry`` is not the expected next one; True to accept it as head."""
        st = self._state
        assert st.expect is not None
        # an earlier reordering may have left the missing entries aside: take them back
        while st.expect in self._displaced and entry.seq > st.expect:
            back = self._displaced[st.expect]
            if back.entry is None or (st.prev is not None and back.entry.prev != st.prev):
                break
            del self._displaced[st.expect]
            self._accept(back, back.entry)
        expect = st.expect
        if entry.seq == expect and (st.prev is None or entry.prev == st.prev):
            return True
        if entry.seq == expect:
            return self._replaced(item, entry, stream)
        ahead = [
            a
            for a in stream.peek(LOOKAHEAD)
            if a.entry is not None and a.entry.intact and id(a) not in self._taken
        ]
        if entry.seq > expect:
            run = self._run_before(entry, ahead)
            if run:
                self._report_moved(item, entry, run)
                for a in run:
                    assert a.entry is not None
                    self._taken.add(id(a))
                    self._accept(a, a.entry)
                return True
            if any(a.entry is not None and a.entry.seq == expect for a in ahead):
                if self._follows_its_predecessor(entry, ahead):
                    self._problem(
                        ProblemKind.REORDERED,
                        item,
                        entry.seq,
                        f"appears before seq {expect}, which comes later in the file",
                    )
                    self._displaced[entry.seq] = item
                else:
                    self._problem(
                        ProblemKind.INSERTED,
                        item,
                        entry.seq,
                        f"does not belong to the chain: seq {expect} follows it and it does not "
                        f"link to the entry with seq {entry.seq - 1}",
                    )
                return False
            missing = entry.seq - expect
            span = f"seq {expect}" if missing == 1 else f"seq {expect}..{entry.seq - 1}"
            self._problem(
                ProblemKind.REMOVED,
                item,
                entry.seq,
                f"{missing} entr{'y' if missing == 1 else 'ies'} ({span}) missing before it",
            )
            return True
        seen = self._history.get(entry.seq)
        if seen is not None and seen.hash == entry.hash:
            message = f"a copy of the entry at {seen.file}:{seen.line}"
            self._problem(ProblemKind.INSERTED, item, entry.seq, message)
        elif seen is not None and seen.hash == st.prev and seen.prev == entry.prev:
            nxt = stream.peek(1)
            follow = nxt[0].entry if nxt else None
            if follow is not None and follow.prev == entry.hash:
                # two entries claim the same place and the chain goes on from this one:
                # the one before it was inserted
                self._problem(
                    ProblemKind.INSERTED,
                    _Item(seen.file, seen.line, None),
                    entry.seq,
                    f"does not belong to the chain: the genuine seq {entry.seq} follows it at "
                    f"{item.file}:{item.line} and the chain continues from that one",
                )
                return True
            self._problem(
                ProblemKind.INSERTED,
                item,
                entry.seq,
                f"a second, different entry with seq {entry.seq} (the first is at "
                f"{seen.file}:{seen.line}): one of them was inserted",
            )
        elif seen is not None:
            self._problem(
                ProblemKind.INSERTED,
                item,
                entry.seq,
                f"a second, different entry with seq {entry.seq} (the first is at "
                f"{seen.file}:{seen.line}): one of them was inserted",
            )
        elif self._follows_its_predecessor(entry, ahead):
            self._problem(
                ProblemKind.REORDERED,
                item,
                entry.seq,
                f"appears after seq {expect - 1}, later than its place in the chain",
            )
        else:
            self._problem(
                ProblemKind.INSERTED,
                item,
                entry.seq,
                "does not belong to the chain: its seq is behind and it does not link to "
                f"the entry with seq {entry.seq - 1}",
            )
        return False

    def _replaced(self, item: _Item, entry: Entry, stream: _Peekable) -> bool:
        """``entry`` has the expected seq but does not link to the entry before it."""
        st = self._state
        before = st.last
        nxt = stream.peek(1)
        follow = nxt[0].entry if nxt else None
        if (
            before is not None
            and before.entry is not None
            and follow is not None
            and follow.seq == entry.seq
            and follow.prev == st.prev
        ):
            # the next line has the same seq and links where this one should: this one
            # was inserted in front of the genuine entry
            self._problem(
                ProblemKind.INSERTED,
                item,
                entry.seq,
                f"does not link to the entry before it, and the entry after it "
                f"({nxt[0].file}:{nxt[0].line}) is the genuine seq {entry.seq}",
            )
            return False
        if before is not None and before.entry is not None:
            self._problem(
                ProblemKind.EDITED,
                before,
                before.entry.seq,
                f"the next entry (seq {entry.seq}, {item.file}:{item.line}) does not link "
                "to it: it was changed and re-hashed, or the next entry was replaced",
            )
        else:
            self._problem(
                ProblemKind.EDITED, item, entry.seq, "does not link to the entry before it"
            )
        return True

    def _run_before(self, entry: Entry, ahead: list[_Item]) -> list[_Item]:
        """Entries found later that fill the hole before ``entry`` exactly, or []."""
        st = self._state
        assert st.expect is not None
        by_seq: dict[int, _Item] = {}
        for a in ahead:
            if a.entry is not None:
                by_seq.setdefault(a.entry.seq, a)
        run: list[_Item] = []
        prev, seq = st.prev, st.expect
        while seq < entry.seq and seq in by_seq:
            candidate = by_seq[seq].entry
            assert candidate is not None
            if prev is not None and candidate.prev != prev:
                return []
            run.append(by_seq[seq])
            prev, seq = candidate.hash, seq + 1
        if seq == entry.seq and entry.prev == prev:
            return run
        return []

    def _report_moved(self, item: _Item, entry: Entry, run: list[_Item]) -> None:
        head, tail = run[0], run[-1]
        assert head.entry is not None and tail.entry is not None
        if len(run) == 1:
            what = f"entry seq {head.entry.seq} belongs before it but is at {head.file}:{head.line}"
        else:
            together = all(
                b.file == a.file and b.line == a.line + 1 for a, b in itertools.pairwise(run)
            )
            where = (
                f"at {head.file}:{head.line}..{tail.line}"
                if together
                else f"scattered further on, the first at {head.file}:{head.line}"
            )
            what = (
                f"entries seq {head.entry.seq}..{tail.entry.seq} belong before it but are {where}"
            )
        self._problem(ProblemKind.REORDERED, item, entry.seq, f"out of order: {what}")

    def _follows_its_predecessor(self, entry: Entry, ahead: list[_Item]) -> bool:
        """``entry`` links to the entry with the seq before its own, wherever that one is.

        A moved entry still links to its predecessor; a forged one that merely copied some
        ``prev`` of the chain does not, unless it also took the matching seq.
        """
        want = entry.seq - 1
        if any(
            a.entry is not None and a.entry.seq == want and a.entry.hash == entry.prev
            for a in ahead
        ):
            return True
        seen = self._history.get(want)
        if seen is not None:
            return seen.hash == entry.prev
        displaced = self._displaced.get(want)
        if displaced is not None and displaced.entry is not None:
            return displaced.entry.hash == entry.prev
        order = self._history_order
        if order and want < order[0]:
            # the predecessor is older than the history kept: settle for any known link
            return entry.prev in self._known_hashes(ahead)
        return False

    def _known_hashes(self, ahead: list[_Item]) -> set[str]:
        known = {a.entry.hash for a in ahead if a.entry is not None}
        known |= {s.hash for s in self._history.values()}
        known |= {d.entry.hash for d in self._displaced.values() if d.entry is not None}
        return known

    # ---- events with a meaning for the chain

    def _checkpoint(self, item: _Item, entry: Entry) -> None:
        st = self._state
        self._checkpoints += 1
        f = entry.fields
        chain_id, count, head = f.get("chain_id"), f.get("count"), f.get("head")
        reason, key_fp, signature = f.get("reason"), f.get("key"), f.get("signature")
        if not (
            isinstance(chain_id, str)
            and type(count) is int
            and isinstance(head, str)
            and isinstance(reason, str)
            and isinstance(key_fp, str)
            and isinstance(signature, str)
        ):
            self._problem(ProblemKind.FORGED, item, entry.seq, "checkpoint fields are malformed")
            st.since_checkpoint += 1
            return
        if st.chain_id is None:
            st.chain_id = chain_id
            st.chain_ids.append(chain_id)
        if chain_id != st.chain_id:
            self._problem(
                ProblemKind.FORGED,
                item,
                entry.seq,
                f"checkpoint belongs to chain {chain_id}, not to this chain {st.chain_id}",
            )
        elif count != entry.seq or head != entry.prev:
            self._problem(
                ProblemKind.EDITED,
                item,
                entry.seq,
                f"checkpoint signs {count} entries ending in {head[:16]}..., but the chain "
                f"before it has {entry.seq} ending in {entry.prev[:16]}...: entries before it "
                "were rewritten",
            )
        elif self._keys is not None:
            key = self._keys.get(key_fp)
            if key is None:
                expected = ", ".join(self._keys)
                self._problem(
                    ProblemKind.FORGED,
                    item,
                    entry.seq,
                    f"checkpoint names signing key {key_fp}, expected "
                    f"{'one of ' if len(self._keys) > 1 else ''}{expected}",
                )
            else:
                try:
                    sig = bytes.fromhex(signature)
                except ValueError:
                    sig = b""
                message = checkpoint_message(chain_id, count, head, reason, key_fp)
                if key.is_valid(sig, message):
                    self._signed_by.setdefault(key_fp)
                else:
                    self._problem(
                        ProblemKind.FORGED,
                        item,
                        entry.seq,
                        "checkpoint signature does not verify: the checkpoint or the entries "
                        "it covers were forged",
                    )
        st.since_checkpoint = 0
        st.last_checkpoint = item
        if reason == "close":
            st.closed = item

    def _resumed(self, item: _Item, entry: Entry) -> None:
        f = entry.fields
        if f.get("clean") is not True:
            self._notes.append(
                f"{item.file}:{item.line}: the chain was resumed after an unclean stop "
                f"(torn last line: {f.get('torn')}, entries after the last checkpoint: "
                f"{f.get('unsigned')})"
            )

    # ---- the end

    def _end_of_chain(self, *, final: bool) -> None:
        st = self._state
        last = st.last
        if last is None or last.entry is None:
            if last is not None:
                self._problem(
                    ProblemKind.TRUNCATED, last, None, "the chain ends with an unreadable line"
                )
            return
        entry = last.entry
        closed = (
            entry.event == AuditEvent.CHECKPOINT
            and entry.fields.get("reason") == "close"
            and st.last_checkpoint is last
        )
        if closed:
            return
        if final and self._live:
            self._notes.append(
                f"{st.since_checkpoint} entries after the last checkpoint are not signed yet "
                "(live file)"
            )
            return
        where = (
            f"seq {st.last_checkpoint.entry.seq}"
            if st.last_checkpoint is not None and st.last_checkpoint.entry is not None
            else "none"
        )
        self._problem(
            ProblemKind.TRUNCATED,
            last,
            entry.seq,
            f"the chain ends without its closing checkpoint: {st.since_checkpoint} entries "
            f"after the last checkpoint ({where}) are unsigned, and entries may have been cut "
            "from the end (if this is the live file of a running program, use --live)",
        )

    def _finish(self, torn: _Item | None) -> None:
        for item in self._displaced.values():
            if item.entry is not None and item.entry.seq >= (self._state.expect or 0):
                self._problem(
                    ProblemKind.REORDERED,
                    item,
                    item.entry.seq,
                    "was found out of place and the chain never reached it",
                )
        if torn is not None:
            if self._live:
                self._notes.append(
                    f"{torn.file}:{torn.line}: last line is incomplete (being written, or "
                    "cut by a crash)"
                )
            else:
                self._problem(
                    ProblemKind.TORN,
                    torn,
                    None,
                    "the last line is incomplete: the writer crashed mid-write or the file was cut",
                )
        if self._state.expect is not None:
            self._end_of_chain(final=True)
