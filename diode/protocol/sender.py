"""``SenderSession``: Kafka records in, datagrams out. Sans-IO: no sockets, no clocks.

Owns the sender half of the protocol: packing records into blocks (closed when full or when
``linger`` expires), FEC encoding, per-datagram AEAD, interleaving blocks on the wire, session
keys (made from the ``random`` it is given, wrapped to the receiver, signed, announced,
rotated by time and volume), signed manifests of block digests and record ranges, heartbeats
with high-water marks, and the offsets that are safe to commit on the source cluster.

The driver calls ``add``/``add_many`` for each record, ``poll`` whenever ``next_timer`` is
due, and sends every datagram it gets back, in order. ``committable()`` names, per source
partition, the offset to commit: every record before it has been handed out in datagrams.

Block size: records fill a block of ``k`` symbols; a record too big to fit an empty block of
``k`` symbols gets a block of its own with up to ``max_block_symbols`` symbols. A larger
record is refused with ``LocalProtocolError`` (``max_record_size`` says where the limit is).
"""

from __future__ import annotations

import hashlib
import struct
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from diode.errors import LocalProtocolError
from diode.protocol.crypto import (
    SIGNATURE_SIZE,
    TAG_SIZE,
    ReceiverPublicKey,
    SessionCipher,
    SigningKey,
    wrap_session_key,
)
from diode.protocol.events import KeyRotated, PartitionMark, SenderCounters, SessionStarted
from diode.protocol.fec import Buffer, FecWorker, get_codec
from diode.protocol.records import Compression, Record, batch_header, compress, encode_record
from diode.protocol.wire import (
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    HEADER,
    HEADER_PREFIX,
    HEADER_SIZE,
    MAGIC,
    NONCE,
    SESSION_ID_SIZE,
    VERSION,
    Announcement,
    DatagramType,
    Heartbeat,
    ManifestEntry,
    ProtocolConfig,
    Range,
    entry_size,
    key_context,
    manifest_signed_message,
    pack_manifest_entries,
)

SenderEvent = SessionStarted | KeyRotated
ANNOUNCE_DOMAIN = b"kafka-data-diode v1 announce"
#: worst-case MessagePack array header in front of a batch
_BATCH_HEADER_MAX = 5
#: extra announcements right after the start, in seconds after it: the first may be lost
_START_ANNOUNCE_AT = (0.0, 0.02, 0.1, 0.3)
#: data datagrams between two repeats of the key announcements (about 0.2% overhead)
_ANNOUNCE_EVERY = 1024
#: ... but the first ``_DENSE_ANNOUNCES`` repeats of a session come every
#: ``_ANNOUNCE_EVERY_AT_START`` data datagrams: a sender that crashes soon after it started
#: must not leave a session whose every announcement was lost (its datagrams could never be
#: read). Bounded by count, so a fast link pays for 16 repeats, not for a time span
_ANNOUNCE_EVERY_AT_START = 64
_DENSE_ANNOUNCES = 16

_DATA = int(DatagramType.DATA)
_MANIFEST = int(DatagramType.MANIFEST)
_HEARTBEAT = int(DatagramType.HEARTBEAT)
#: DATA header after the symbol index (k, m, symbol length) and the nonce's first byte; the
#: rest of both is fixed per block, so each datagram only joins precomputed pieces
_SHAPE = struct.Struct(">HHH")
_DATA_NONCE_TYPE = bytes((_DATA,))


class _Key:
    __slots__ = ("announcement", "bytes_used", "cipher", "created", "key_id", "prefix", "seal")

    def __init__(
        self, key_id: int, cipher: SessionCipher, prefix: bytes, announcement: bytes, now: float
    ) -> None:
        self.key_id = key_id
        self.cipher = cipher
        self.seal = cipher.seal
        self.prefix = prefix  # header bytes up to the config fingerprint, for DATA
        self.announcement = announcement
        self.created = now
        self.bytes_used = 0


class _Closed:
    """A closed block's datagrams, waiting in the interleave group.

    With a worker thread the repair symbols are computed there: ``waiting`` is set and the
    header pieces are kept to seal them once the result is taken.
    """

    __slots__ = ("datagrams", "k", "npre", "pending", "post", "pre", "seal", "size", "waiting")

    def __init__(
        self,
        datagrams: list[bytes],
        pending: _Pending,
        size: int,
        waiting: bool,
        k: int,
        pre: bytes,
        post: bytes,
        npre: bytes,
        seal: Callable[[bytes, Buffer, Buffer | None], bytes],
    ) -> None:
        self.datagrams = datagrams
        self.pending = pending
        self.size = size  # bytes of one datagram
        self.waiting = waiting
        self.k = k
        self.pre = pre
        self.post = post
        self.npre = npre
        self.seal = seal


@dataclass(slots=True)
class _Pending:
    """A closed block: its manifest entry, still owed ``copies`` more transmissions."""

    entry: ManifestEntry
    size: int
    topics: frozenset[str]
    copies: int
    #: last offset per partition in the block: committable once on the wire and signed
    last: dict[tuple[str, int], int]
    on_wire: bool = False


class SenderSession:
    """One sender session: a random session id and its keys, from construction until discard."""

    def __init__(
        self,
        config: ProtocolConfig,
        signing_key: SigningKey,
        receiver_public_key: ReceiverPublicKey,
        random: Callable[[int], bytes],
        now: float,
        *,
        policy_fingerprint: bytes = bytes(32),
        fec_thread: bool = False,
    ) -> None:
        """``fec_thread``: run the FEC encode on a worker thread (a second core); the
        datagrams are the same, call by call. Call ``close`` to stop the thread."""
        if len(policy_fingerprint) != 32:
            raise LocalProtocolError(
                f"policy fingerprint is {len(policy_fingerprint)} bytes, expected 32"
            )
        self.config = config
        self._signing_key = signing_key
        self._receiver_public = receiver_public_key
        self._random = random
        self._policy_fingerprint = policy_fingerprint
        self._codec = get_codec(config.codec)
        self._fp = config.fingerprint
        self._symbol = config.symbol_size
        self._align = self._codec.symbol_alignment
        self.session_id = random(SESSION_ID_SIZE)
        if len(self.session_id) != SESSION_ID_SIZE:
            raise LocalProtocolError("random() returned the wrong number of bytes")

        # a full block holds this many bytes of encoded records
        self._capacity = config.k * self._symbol - BLOCK_HEADER_SIZE - _BATCH_HEADER_MAX
        self.max_record_size = config.max_k * self._symbol - BLOCK_HEADER_SIZE - _BATCH_HEADER_MAX
        # a manifest entry must fit one manifest datagram: bounds partitions per block
        self._manifest_room = config.payload_size - HEADER_SIZE - TAG_SIZE - SIGNATURE_SIZE - 4

        # per symbol index: its bytes in the header and in the nonce
        most = config.max_k + config.repair_for(config.max_k)
        self._index_bytes = [i.to_bytes(2, "big") for i in range(most)]
        self._nonce_index = [i.to_bytes(2, "big") + b"\0" for i in range(most)]

        self._events: deque[SenderEvent] = deque()
        self._outbox: list[bytes] = []
        # worker mode: groups whose repair symbols are still computed, each with what was
        # emitted before it; ``_ready`` holds what was released while others still wait
        self._worker: FecWorker | None = None
        self._held: deque[tuple[list[bytes], list[_Closed]]] = deque()
        self._ready: list[bytes] = []
        self._next_block = 0
        self._manifest_seq = 0
        self._heartbeat_seq = 0
        self._key_seq = 0

        # the open block
        self._enc: list[bytes] = []
        self._enc_bytes = 0
        self._ranges: dict[tuple[str, int], list[int]] = {}
        self._range_bytes = 0
        self._opened_at = 0.0

        # closed blocks waiting to be interleaved
        self._group: list[_Closed] = []
        self._group_started = 0.0

        self._manifest_queue: deque[_Pending] = deque()
        self._unsent_manifest_bytes = 0
        self._next_manifest_at = now

        self._marks: dict[tuple[str, int], list[int]] = {}  # last offset, last block, records
        self._mark_cursor = 0
        self._committable: dict[tuple[str, int], int] = {}

        self._n_records = 0
        self._n_record_bytes = 0
        self._n_blocks = 0
        self._n_padding = 0
        self._n_block_bytes = 0
        self._n_datagrams = 0
        self._n_bytes = 0
        self._n_data = 0
        self._n_repair = 0
        self._n_announce = 0
        self._n_manifest = 0
        self._n_heartbeat = 0

        self._since_announce = 0
        self._dense_announces = _DENSE_ANNOUNCES
        self._current = self._make_key(now)
        self._next = self._make_key(now)
        self._events.append(SessionStarted(self.session_id, False, None, self._current.key_id))
        self._start = now
        self._announce_plan = deque(now + t for t in _START_ANNOUNCE_AT)
        self._next_announce = now
        self._next_heartbeat = now
        self._control(now)
        if fec_thread:
            self._worker = FecWorker("diode-sender-fec")
            self._finalizer = weakref.finalize(self, self._worker.close)

    def close(self) -> None:
        """Stop the FEC worker thread, if any (the session stays usable, without it)."""
        if self._worker is not None:
            self._release()
            for closed in self._group:
                self._collect(closed)
            self._finalizer()
            self._worker = None

    # ------------------------------------------------------------------ keys

    def _make_key(self, now: float) -> _Key:
        self._key_seq += 1
        key_id = self._key_seq
        cfg = self.config
        session_key = self._random(32)
        ctx = key_context(self.session_id, key_id, cfg.cipher, self._fp)
        wrapped = wrap_session_key(self._receiver_public, session_key, self._random(32), ctx)
        body = Announcement(cfg.cipher, wrapped).pack()
        header = HEADER.pack(
            MAGIC,
            VERSION,
            DatagramType.ANNOUNCE,
            self.session_id,
            key_id,
            self._fp,
            0,
            0,
            0,
            0,
            len(body),
        )
        signature = self._signing_key.sign(ANNOUNCE_DOMAIN + header + body)
        prefix = HEADER_PREFIX.pack(MAGIC, VERSION, _DATA, self.session_id, key_id, self._fp)
        return _Key(
            key_id, SessionCipher(cfg.cipher, session_key), prefix, header + body + signature, now
        )

    def _rotate(self, now: float) -> None:
        previous = self._current
        self._current = self._next
        self._current.created = now
        self._next = self._make_key(now)
        self._events.append(KeyRotated(self.session_id, self._current.key_id, previous.key_id))
        # announce both at once and a few times soon after: the pre-announcement of the
        # key now in use may have been lost, and fast volume rotation leaves little time
        self._announce()
        self._announce_plan = deque(now + t for t in _START_ANNOUNCE_AT[1:])
        self._since_announce = 0

    def _announce(self) -> None:
        self._since_announce = 0
        for key in (self._current, self._next):
            self._emit(key.announcement)
            self._n_announce += 1

    # ------------------------------------------------------------------ records

    def add(self, record: Record, now: float) -> list[bytes]:
        """Queue one record; returns datagrams ready to send (often none)."""
        self._add(record, encode_record(record), now)
        return self._take()

    def add_many(self, records: Iterable[Record], now: float) -> list[bytes]:
        """Queue records in order; returns datagrams ready to send."""
        # the common case inline: the record fits the open block and extends a range it
        # already holds; anything else (new range, full block, errors) goes through _add
        encode = encode_record
        capacity = self._capacity
        enc_list = self._enc
        ranges = self._ranges
        room = capacity - self._enc_bytes
        taken = 0
        try:
            for record in records:
                enc = encode(record)
                n = len(enc)
                if n <= room:
                    rng = ranges.get((record.topic, record.partition))
                    if rng is not None and record.offset > rng[1]:
                        rng[1] = record.offset
                        rng[2] += 1
                        enc_list.append(enc)
                        room -= n
                        taken += 1
                        continue
                self._enc_bytes = capacity - room
                self._n_records += taken
                taken = 0
                room = -1  # while _add runs, self._enc_bytes is the truth
                self._add(record, enc, now)
                enc_list = self._enc
                ranges = self._ranges
                room = capacity - self._enc_bytes
        finally:
            if room >= 0:
                self._enc_bytes = capacity - room
            self._n_records += taken
        return self._take()

    def _take(self) -> list[bytes]:
        """Everything emitted so far, in order, for the caller to send."""
        if self._held:
            self._release()
        out = self._outbox
        if not out:
            return []
        self._outbox = []
        return out

    def _add(self, record: Record, enc: bytes, now: float) -> None:
        n = len(enc)
        if n > self._capacity - self._enc_bytes:
            if n > self.max_record_size:
                raise LocalProtocolError(
                    f"record {record.topic}/{record.partition}@{record.offset} encodes to "
                    f"{n} bytes, exceeds the largest block payload {self.max_record_size}"
                )
            if self._enc:
                self._close_block(now)
        tp = (record.topic, record.partition)
        rng = self._ranges.get(tp)
        offset = record.offset
        if rng is None:
            mark = self._marks.get(tp)
            if mark is not None and offset <= mark[0]:
                raise LocalProtocolError(
                    f"record {tp[0]}/{tp[1]}@{offset} is not after offset {mark[0]} already sent"
                )
            # a new range costs manifest room: close the block first if it would not fit
            need = 26 + len(tp[0].encode()) + 1
            if self._range_bytes + need > self._manifest_room - 42 and self._enc:
                self._close_block(now)
            self._ranges[tp] = [offset, offset, 1]
            self._range_bytes += need
        else:
            if offset <= rng[1]:
                raise LocalProtocolError(
                    f"record {tp[0]}/{tp[1]}@{offset} is not after offset {rng[1]} in the block"
                )
            rng[1] = offset
            rng[2] += 1
        if not self._enc:
            self._opened_at = now
        self._enc.append(enc)
        self._enc_bytes += n
        self._n_records += 1
        if n > self._capacity:
            self._close_block(now)

    # ------------------------------------------------------------------ blocks

    def _close_block(self, now: float) -> None:
        cfg = self.config
        enc = self._enc
        records = len(enc)
        head = batch_header(records)
        raw_length = len(head) + self._enc_bytes
        self._n_record_bytes += raw_length
        if cfg.compression != Compression.NONE:
            parts: list[bytes] = [compress(b"".join((head, *enc)), cfg.compression)]
            batch_length = len(parts[0])
        else:
            parts = enc
            batch_length = raw_length
        length = BLOCK_HEADER_SIZE + batch_length
        symbol = self._symbol
        k = -(-length // symbol)
        symlen = -(-length // k)
        symlen += -symlen % self._align
        m = cfg.repair_for(k)
        padding = k * symlen - length
        header = BLOCK_HEADER.pack(batch_length, raw_length, records, cfg.compression, 0)
        if parts is enc:
            block = b"".join((header, head, *enc, bytes(padding)))
        else:
            block = b"".join((header, parts[0], bytes(padding)))
        digest = hashlib.sha256(block).digest()
        worker = self._worker
        if worker is not None and m:
            worker.submit(self._codec.encode_block, block, k, m)
            repair: list[bytes] = []
        else:
            repair = self._codec.encode_block(block, k, m) if m else []

        number = self._next_block
        self._next_block = number + 1
        key = self._current
        if (
            key.bytes_used >= cfg.key_rotation_bytes
            or now - key.created >= cfg.key_rotation_seconds
        ):
            self._rotate(now)
            key = self._current
        number_bytes = number.to_bytes(8, "big")
        pre = key.prefix + number_bytes
        post = _SHAPE.pack(k, m, symlen)
        npre = _DATA_NONCE_TYPE + number_bytes
        seal = key.seal
        view = memoryview(block)
        source: list[Buffer] = [view[i : i + symlen] for i in range(0, k * symlen, symlen)]
        datagrams = self._seal(source, 0, pre, post, npre, seal)
        if repair:
            datagrams += self._seal(repair, k, pre, post, npre, seal)
        key.bytes_used += (k + m) * symlen
        # under load, time-based repeats are far apart in datagrams: repeat by count too
        self._since_announce += k + m
        every = _ANNOUNCE_EVERY_AT_START if self._dense_announces else _ANNOUNCE_EVERY
        if self._since_announce >= every:
            self._announce()
            if self._dense_announces:
                self._dense_announces -= 1

        last: dict[tuple[str, int], int] = {}
        ranges = []
        marks = self._marks
        for tp, (first, last_offset, count) in self._ranges.items():
            ranges.append(Range(tp[0], tp[1], first, last_offset, count))
            last[tp] = last_offset
            mark = marks.get(tp)
            if mark is None:
                marks[tp] = [last_offset, number, count]
            else:
                mark[0] = last_offset
                mark[1] = number
                mark[2] += count
        entry = ManifestEntry(number, digest, tuple(ranges))
        size = entry_size(entry)
        pending = _Pending(
            entry, size, frozenset(tp[0] for tp in self._ranges), cfg.manifest_copies, last
        )
        self._manifest_queue.append(pending)
        self._unsent_manifest_bytes += size

        self._n_blocks += 1
        self._n_padding += padding
        self._n_block_bytes += k * symlen
        self._n_data += k
        self._n_repair += m
        self._enc = []
        self._enc_bytes = 0
        self._ranges = {}
        self._range_bytes = 0

        if not self._group:
            self._group_started = now
        self._group.append(
            _Closed(
                datagrams,
                pending,
                HEADER_SIZE + symlen + TAG_SIZE,
                bool(m) and worker is not None,
                k,
                pre,
                post,
                npre,
                seal,
            )
        )
        if len(self._group) >= cfg.interleave:
            self._flush_group()
        # under load, a manifest goes out as soon as its share of new entries is there
        if self._unsent_manifest_bytes * cfg.manifest_copies >= self._manifest_room:
            self._emit_manifest(now)

    def _seal(
        self,
        symbols: Sequence[Buffer],
        first: int,
        pre: bytes,
        post: bytes,
        npre: bytes,
        seal: Callable[[bytes, Buffer, Buffer | None], bytes],
    ) -> list[bytes]:
        """DATA datagrams for ``symbols``, the first of which has index ``first``."""
        end = first + len(symbols)
        headers = [pre + ib + post for ib in self._index_bytes[first:end]]
        return [
            h + seal(npre + nb, sym, h)
            for h, nb, sym in zip(headers, self._nonce_index[first:end], symbols, strict=True)
        ]

    def _flush_group(self) -> None:
        group = self._group
        if not group:
            return
        self._group = []
        if self._worker is None:
            self._emit_group(group, self._outbox)
            return
        # hold the group, behind what was emitted before it, until its repair symbols are
        # back; one group stays in flight while the next fills, so the two overlap
        self._held.append((self._outbox, group))
        self._outbox = []
        if len(self._held) > 1:
            self._release(1)

    def _release(self, keep: int = 0) -> None:
        """Emit held groups, oldest first, until ``keep`` are left (waits for the worker)."""
        held = self._held
        ready = self._ready
        while len(held) > keep:
            before, group = held.popleft()
            ready += before
            self._emit_group(group, ready)
        if not held:
            ready += self._outbox
            self._outbox = ready
            self._ready = []

    def _collect(self, closed: _Closed) -> None:
        """Seal the repair symbols of a block encoded on the worker (results come in order)."""
        if closed.waiting:
            assert self._worker is not None  # waiting is only set with a worker
            closed.datagrams += self._seal(
                self._worker.result(), closed.k, closed.pre, closed.post, closed.npre, closed.seal
            )
            closed.waiting = False

    def _emit_group(self, group: list[_Closed], out: list[bytes]) -> None:
        for closed in group:
            self._collect(closed)
        if len(group) == 1:
            out += group[0].datagrams
        else:
            lists = [closed.datagrams for closed in group]
            if all(len(d) == len(lists[0]) for d in lists):
                for row in zip(*lists, strict=True):
                    out += row
            else:
                for row in zip_longest(*lists):
                    out += [d for d in row if d is not None]
        n = 0
        nbytes = 0
        for closed in group:
            count = len(closed.datagrams)
            n += count
            nbytes += count * closed.size
            pending = closed.pending
            pending.on_wire = True
            if pending.copies <= 0:
                self._commit(pending)
        self._n_datagrams += n
        self._n_bytes += nbytes

    def _commit(self, pending: _Pending) -> None:
        committable = self._committable
        for tp, offset in pending.last.items():
            committable[tp] = offset + 1

    # ------------------------------------------------------------------ control datagrams

    def _emit(self, datagram: bytes) -> None:
        self._outbox.append(datagram)
        self._n_datagrams += 1
        self._n_bytes += len(datagram)

    def _seal_control(self, dtype: int, number: int, plain: bytes) -> bytes:
        key = self._current
        header = HEADER.pack(
            MAGIC,
            VERSION,
            dtype,
            self.session_id,
            key.key_id,
            self._fp,
            number,
            0,
            0,
            0,
            len(plain),
        )
        return header + key.seal(NONCE.pack(dtype, number, 0), plain, header)

    def _emit_manifest(self, now: float) -> None:
        queue = self._manifest_queue
        if not queue:
            return
        chosen: list[_Pending] = []
        topics: set[str] = set()
        used = 4  # topic count + entry count
        for pending in queue:
            new_topics = pending.topics - topics
            extra = pending.size + sum(len(t.encode()) + 1 for t in new_topics)
            if used + extra > self._manifest_room:
                break
            chosen.append(pending)
            topics |= new_topics
            used += extra
        if not chosen:  # cannot happen: _add keeps every entry within one manifest
            raise LocalProtocolError("manifest entry larger than a datagram")
        seq = self._manifest_seq
        self._manifest_seq = seq + 1
        body = pack_manifest_entries([p.entry for p in chosen])
        signature = self._signing_key.sign(manifest_signed_message(self.session_id, seq, body))
        self._emit(self._seal_control(_MANIFEST, seq, body + signature))
        self._n_manifest += 1
        for pending in chosen:
            if pending.copies == self.config.manifest_copies:
                self._unsent_manifest_bytes -= pending.size
            pending.copies -= 1
            if pending.copies <= 0 and pending.on_wire:
                self._commit(pending)
        while queue and queue[0].copies <= 0:
            queue.popleft()
        if any(p.copies <= 0 for p in queue):
            self._manifest_queue = deque(p for p in queue if p.copies > 0)
        self._next_manifest_at = now + self.config.manifest_interval

    def _emit_heartbeat(self) -> None:
        if self._held:
            self._release()  # the heartbeat counts datagrams: every held one goes first
        room = self.config.payload_size - HEADER_SIZE - TAG_SIZE - Heartbeat.head_size()
        items = list(self._marks.items())
        marks: list[PartitionMark] = []
        used = 0
        topics: set[str] = set()
        # many partitions do not fit one heartbeat: rotate through them
        for i in range(len(items)):
            (topic, partition), (last_offset, last_block, count) = items[
                (self._mark_cursor + i) % len(items)
            ]
            need = Heartbeat.mark_size() + (0 if topic in topics else len(topic.encode()) + 1)
            if used + need > room:
                break
            used += need
            topics.add(topic)
            marks.append(PartitionMark(topic, partition, last_offset, last_block, count))
        if items:
            self._mark_cursor = (self._mark_cursor + len(marks)) % len(items)
        body = Heartbeat(
            self._next_block,
            self._n_records,
            self._n_record_bytes,
            self._n_datagrams,
            self._policy_fingerprint,
            tuple(marks),
        ).pack()
        seq = self._heartbeat_seq
        self._heartbeat_seq = seq + 1
        self._emit(self._seal_control(_HEARTBEAT, seq, body))
        self._n_heartbeat += 1

    def _control(self, now: float) -> None:
        cfg = self.config
        if now - self._current.created >= cfg.key_rotation_seconds:
            self._rotate(now)
        plan = self._announce_plan
        if plan and now >= plan[0]:
            while plan and now >= plan[0]:
                plan.popleft()
            self._announce()
            self._next_announce = now + cfg.announce_interval
        elif now >= self._next_announce:
            self._announce()
            self._next_announce = now + cfg.announce_interval
        if self._manifest_queue and now >= self._next_manifest_at:
            self._emit_manifest(now)
        if now >= self._next_heartbeat:
            self._emit_heartbeat()
            self._next_heartbeat = now + cfg.heartbeat_interval

    # ------------------------------------------------------------------ driver API

    def poll(self, now: float) -> list[bytes]:
        """Handle due timers: linger expiry, manifests, heartbeats, announcements, rotation."""
        linger = self.config.linger
        if self._enc and now >= self._opened_at + linger:
            self._close_block(now)
            # a block closed by linger means the stream is slow: do not hold it for a group
            self._flush_group()
        if self._group and now >= self._group_started + linger:
            self._flush_group()
        self._control(now)
        return self._take()

    def poll_control(self, now: float) -> list[bytes]:
        """Handle due control timers only (manifests, heartbeats, announcements, rotation),
        leaving the open block open: for a driver in the middle of handing over records,
        which keeps the control datagrams on time while its link paces data out slowly."""
        self._control(now)
        return self._take()

    def next_control_timer(self) -> float:
        """When ``poll_control`` should next be called."""
        cfg = self.config
        times = [
            self._next_heartbeat,
            self._next_announce,
            self._current.created + cfg.key_rotation_seconds,
        ]
        if self._announce_plan:
            times.append(self._announce_plan[0])
        if self._manifest_queue:
            times.append(self._next_manifest_at)
        return min(times)

    def flush(self, now: float) -> list[bytes]:
        """Close the open block and send everything held, with a manifest and a heartbeat."""
        if self._enc:
            self._close_block(now)
        self._flush_group()
        # every block owed a manifest gets one now; remaining copies follow from poll
        while self._manifest_queue and any(
            p.copies == self.config.manifest_copies for p in self._manifest_queue
        ):
            self._emit_manifest(now)
        self._emit_heartbeat()
        self._next_heartbeat = now + self.config.heartbeat_interval
        self._control(now)
        return self._take()

    def next_timer(self) -> float | None:
        """When ``poll`` should next be called."""
        cfg = self.config
        times = [self.next_control_timer()]
        if self._enc:
            times.append(self._opened_at + cfg.linger)
        if self._group:
            times.append(self._group_started + cfg.linger)
        return min(times)

    def committable(self) -> dict[tuple[str, int], int]:
        """Per source partition, the next offset to commit (Kafka's convention: last + 1).

        A record counts once every datagram of its block has been returned by this session
        and the block's manifest entry has been sent all ``manifest_copies`` times: a sender
        that crashes later never leaves a committed record without signed coverage.
        """
        return dict(self._committable)

    def pending_manifests(self) -> int:
        """Blocks still owed a manifest transmission; zero once the tail is fully covered."""
        return len(self._manifest_queue)

    @property
    def next_block(self) -> int:
        return self._next_block

    @property
    def key_id(self) -> int:
        return self._current.key_id

    @property
    def policy_fingerprint(self) -> bytes:
        return self._policy_fingerprint

    def set_policy_fingerprint(self, fp: bytes) -> None:
        """Name the policy now in force (after a reload) in every following heartbeat."""
        if len(fp) != 32:
            raise LocalProtocolError(f"policy fingerprint is {len(fp)} bytes, expected 32")
        self._policy_fingerprint = bytes(fp)

    def next_event(self) -> SenderEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[SenderEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    def counters(self) -> SenderCounters:
        return SenderCounters(
            records=self._n_records,
            record_bytes=self._n_record_bytes,
            blocks=self._n_blocks,
            padding_bytes=self._n_padding,
            block_bytes=self._n_block_bytes,
            datagrams=self._n_datagrams,
            bytes=self._n_bytes,
            data_datagrams=self._n_data,
            repair_datagrams=self._n_repair,
            announce_datagrams=self._n_announce,
            manifest_datagrams=self._n_manifest,
            heartbeat_datagrams=self._n_heartbeat,
            keys=self._key_seq,
        )
