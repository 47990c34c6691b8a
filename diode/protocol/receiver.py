"""``ReceiverSession``: datagrams in, events out. Sans-IO: no sockets, no clocks.

Owns the receiver half of the protocol: header checks, key announcements (verified at a
bounded rate, cached by digest), per-datagram AEAD, block reassembly and FEC decoding,
signed manifests (provenance and the record ranges of lost blocks), heartbeats (liveness,
tail blocks, sender restarts), replay rejection, delivery in block order and gap reports.

Driver API, in the style of aioquic: ``receive_datagram(data, now)`` for each datagram, or
``receive_datagrams(batch, now)`` for what one socket read returned (the same result, faster),
``poll(now)`` when ``next_timer()`` is due, then drain ``next_event()`` / ``events()``.
No input raises: every bad datagram becomes a ``DatagramRejected`` event and a counter.

Provenance is strict by default: a rebuilt block is held until a signed manifest names its
digest, and is delivered only if the digest matches. A block that no manifest covers within
``block_timeout`` becomes a gap (reason ``"unsigned"``) naming its records from its content:
that content passed the AEAD under the session key, so it is the sender's, though without
the signature that delivery requires. Each manifest entry is repeated in
``manifest_copies`` manifests spaced over time, so a lost manifest datagram costs nothing.
A manifest's signature is checked when a block needs its entry, and a rebuilt block may wait
up to ``manifest_verify_delay`` for a later manifest that repeats its entry: under load one
Ed25519 verify then covers the new entries of ``manifest_copies`` manifests.

State is bounded: at most ``max_open_blocks`` blocks (open or rebuilt) and verified manifest
entries of the receive window, ``max_keys`` keys, ``max_pending_announcements`` unverified
announcements, ``max_early_datagrams`` datagrams waiting for their key, and
``max_retired_sessions`` remembered old session ids. Nothing is stored for a DATA datagram
before its tag verifies.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from diode.errors import (
    AuthenticationError,
    DecodeError,
    DiodeError,
    FECError,
    MalformedDatagramError,
    RemoteProtocolError,
    ReplayError,
)
from diode.protocol.crypto import (
    SIGNATURE_SIZE,
    TAG_SIZE,
    Buffer,
    ReceiverPrivateKey,
    SessionCipher,
    TagMismatch,
    VerifyKey,
    unwrap_session_key,
)
from diode.protocol.events import (
    BlocksLost,
    DatagramRejected,
    Event,
    GapDetected,
    HeartbeatMissed,
    HeartbeatReceived,
    KeyRotated,
    LinkUp,
    ManifestVerified,
    PartitionUnseen,
    ReceiverCounters,
    RecordsDelivered,
    SessionEnded,
    SessionStarted,
)
from diode.protocol.fec import get_codec
from diode.protocol.records import Compression, Record, decode_batch, decompress
from diode.protocol.sender import ANNOUNCE_DOMAIN
from diode.protocol.wire import (
    HEADER,
    HEADER_PREFIX,
    HEADER_SIZE,
    HEADER_TAIL,
    MAGIC,
    NONCE,
    VERSION,
    Announcement,
    DatagramType,
    EntryTuple,
    Header,
    Heartbeat,
    ParsedManifest,
    ProtocolConfig,
    key_context,
    manifest_signed_message,
    parse_header,
    parse_manifest,
    unpack_block,
)

_DATA = int(DatagramType.DATA)
_ANNOUNCE = int(DatagramType.ANNOUNCE)
_MANIFEST = int(DatagramType.MANIFEST)
_HEARTBEAT = int(DatagramType.HEARTBEAT)
_MIN_DATA = HEADER_SIZE + 1 + TAG_SIZE
_PREFIX_SIZE = HEADER_PREFIX.size
_TAIL_AT = HEADER_PREFIX.size
_OVERHEAD = HEADER_SIZE + TAG_SIZE
_BLOCK_LIMIT = 1 << 63
_TAG_FAILED = str(AuthenticationError("datagram tag did not verify"))


@dataclass(frozen=True, slots=True)
class ReceiverOptions:
    """Receiver-only limits and timeouts (not part of the config fingerprint)."""

    #: hold rebuilt blocks until a signed manifest covers them (see the module docstring)
    strict: bool = True
    #: how long a known block may stay incomplete (or unsigned) before it becomes a gap, on
    #: a fast link; on a slow one it is stretched by twice the time an interleaved group of
    #: blocks takes to arrive at the measured rate, up to ``max_block_wait`` in all
    block_timeout: float = 0.5
    max_block_wait: float = 30.0
    #: silence after which ``HeartbeatMissed`` is raised; None: 3 heartbeat intervals + 0.1 s
    heartbeat_timeout: float | None = None
    max_open_blocks: int = 512
    #: blocks ahead of the oldest unresolved one that are accepted; older ones are replays
    receive_window: int = 4096
    max_keys: int = 3
    max_pending_announcements: int = 8
    #: Ed25519 verifications of announcements per second (each costs ~140 us)
    announce_verify_rate: float = 50.0
    announce_verify_burst: int = 8
    max_early_datagrams: int = 1024
    #: how long a datagram may wait for its key announcement
    early_timeout: float = 2.0
    max_retired_sessions: int = 64
    #: verified announcement digests remembered, so repeats cost a hash, not a verify
    announcement_cache: int = 64
    #: how long a rebuilt block may wait for a later copy of its manifest entry, so that one
    #: Ed25519 verify covers the new entries of up to ``manifest_copies`` manifests instead
    #: of one (each verify costs ~120 us); 0: verify every manifest that brings a new entry
    #: as it arrives
    manifest_verify_delay: float = 0.005


class _Block:
    """An open block: its source symbols are decrypted in place into one buffer, so a block
    that arrives whole needs neither an FEC call nor a join, and a rebuilt one only has its
    missing symbols written in. A slot is meaningful only once its index is in ``symbols``
    (a datagram whose tag fails may leave unauthenticated bytes in its slot; a genuine
    symbol, or the FEC decode, overwrites them before the slot is ever read)."""

    __slots__ = ("buf", "data", "k", "m", "repairs", "symbols", "symlen")

    def __init__(self, k: int, m: int, symlen: int) -> None:
        self.k = k
        self.m = m
        self.symlen = symlen
        self.buf = memoryview(bytearray(k * symlen))
        # index -> its plaintext: a slice of ``buf`` for a source symbol, bytes for a repair
        self.symbols: dict[int, Buffer] = {}
        self.repairs = 0
        self.data: memoryview | None = None

    def put(self, index: int, plain: Buffer) -> None:
        """Store an authenticated symbol (decrypted elsewhere, e.g. into ``bytes``)."""
        if index < self.k:
            at = index * self.symlen
            slot = self.buf[at : at + self.symlen]
            slot[:] = plain
            self.symbols[index] = slot
        else:
            self.symbols[index] = plain
            self.repairs += 1


class _Session:
    __slots__ = (
        "accounted",
        "base",
        "blocks",
        "blocks_delivered",
        "blocks_lost",
        "claims",
        "floor",
        "head",
        "heartbeat_seq",
        "id",
        "key_floor",
        "keys",
        "known",
        "known_max",
        "last_heard",
        "last_heartbeat",
        "manifest",
        "pending",
        "pending_since",
        "rate_at",
        "rate_n",
        "silent",
        "stretch",
        "unaccounted",
        "unseen",
    )

    def __init__(self, session_id: bytes, now: float) -> None:
        self.id = session_id
        self.keys: OrderedDict[int, SessionCipher] = OrderedDict()
        self.key_floor = 0  # highest key id evicted: it and older ones are replays now
        self.base: int | None = None
        self.head = 0
        self.blocks: dict[int, _Block] = {}
        self.manifest: dict[int, EntryTuple] = {}  # verified entries only
        # manifests that passed the AEAD, their signatures not checked yet, by sequence, with
        # the entries new when they came; bounded by ``manifest_copies`` (see ``_on_manifest``)
        self.pending: dict[int, ParsedManifest] = {}
        self.pending_since = 0.0  # arrival of the oldest pending manifest
        # block -> the newest pending manifest naming it, for blocks without a verified entry
        self.claims: dict[int, int] = {}
        self.known_max = -1
        self.known: deque[tuple[int, float]] = deque()  # (up to block, learnt at)
        self.last_heard = now
        self.silent = False
        self.heartbeat_seq = -1
        self.last_heartbeat: Heartbeat | None = None
        self.blocks_delivered = 0
        self.blocks_lost = 0
        # per partition: [records delivered or reported lost, last such offset]
        self.accounted: dict[tuple[str, int], list[int]] = {}
        self.unaccounted = 0  # records owed a GapDetected once a heartbeat tells the counts
        self.floor: dict[tuple[str, int], int] | None = None
        # partitions a heartbeat showed sent before this receiver joined (PartitionUnseen)
        self.unseen: set[tuple[str, int]] = set()
        # the link's pace, measured: when the accepted-datagram count was last sampled, and
        # the seconds added to ``block_timeout`` for the time an interleaved group takes
        self.rate_at = now
        self.rate_n = -1
        self.stretch = 0.0


class ReceiverSession:
    """The receiving end: one object for the receiver's lifetime, across sender sessions."""

    def __init__(
        self,
        config: ProtocolConfig,
        private_key: ReceiverPrivateKey,
        sender_key: VerifyKey,
        *,
        options: ReceiverOptions | None = None,
    ) -> None:
        self.config = config
        self.options = opts = options or ReceiverOptions()
        self._private = private_key
        self._sender_key = sender_key
        self._codec = get_codec(config.codec)
        self._overhead = self._codec.overhead()
        self._fp = config.fingerprint
        self._payload = config.payload_size
        self._symbol = config.symbol_size
        self._max_k = config.max_k
        self._max_block = config.max_k * config.symbol_size
        self._hb_timeout = (
            opts.heartbeat_timeout
            if opts.heartbeat_timeout is not None
            else 3 * config.heartbeat_interval + 0.1
        )
        self._events: deque[Event] = deque()
        self._session: _Session | None = None
        # DATA header prefix (magic .. config fingerprint) of each key of the current session
        # -> its decrypt: one lookup checks magic, version, type, session, key and config
        self._fast: dict[bytes, SessionCipher] = {}
        self._retired: OrderedDict[bytes, None] = OrderedDict()
        self._good: OrderedDict[bytes, None] = OrderedDict()  # verified announcement digests
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._pending: OrderedDict[bytes, tuple[bytes, Header]] = OrderedDict()
        self._early: deque[tuple[bytes, bytes, int, float]] = deque()  # data, sid, key, at
        self._tokens = float(opts.announce_verify_burst)
        self._tokens_at: float | None = None
        self._rejected: Counter[str] = Counter()
        self._n_datagrams = 0
        self._n_bytes = 0
        self._n_accepted = 0
        self._n_duplicates = 0
        self._n_redundant = 0
        self._n_complete = 0
        self._n_recovered = 0
        self._n_lost = 0
        self._n_delivered = 0
        self._n_records_lost = 0
        self._n_manifests = 0
        self._n_announcements = 0
        self._n_heartbeats = 0
        self._n_sessions = 0

    # ------------------------------------------------------------------ driver API

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Handle one datagram. Never raises: problems become ``DatagramRejected``."""
        self._n_datagrams += 1
        size = len(data)
        self._n_bytes += size
        try:
            # the common case, straight: DATA of a known key of the current session, for an
            # open block in the window; anything else, valid or not, takes the full path
            cipher = self._fast.get(data[:_PREFIX_SIZE])
            if cipher is not None and size >= HEADER_SIZE:
                number, index, k, m, length = HEADER_TAIL.unpack_from(data, _TAIL_AT)
                s = self._session
                assert s is not None  # _fast is empty without a session
                block = s.blocks.get(number)
                if (
                    block is not None
                    and number >= s.head
                    and size == _OVERHEAD + length
                    and k == block.k
                    and m == block.m
                    and length == block.symlen
                    and index < k + m
                ):
                    if block.data is not None:
                        self._n_redundant += 1
                        return
                    symbols = block.symbols
                    if index in symbols:
                        self._n_duplicates += 1
                        return
                    view = memoryview(data)
                    if index < k:
                        at = index * length
                        slot = block.buf[at : at + length]
                        cipher.decrypt_into(
                            NONCE.pack(_DATA, number, index),
                            view[HEADER_SIZE:],
                            view[:HEADER_SIZE],
                            slot,
                        )
                        symbols[index] = slot
                    else:
                        symbols[index] = cipher.decrypt(
                            NONCE.pack(_DATA, number, index),
                            view[HEADER_SIZE:],
                            view[:HEADER_SIZE],
                        )
                        block.repairs += 1
                    if s.silent:
                        self._heard(s, now)
                    else:
                        s.last_heard = now
                    self._n_accepted += 1
                    if len(symbols) >= k + self._overhead and self._rebuild(block, number):
                        self._advance(s, now)
                    return
            self._receive(data, now)
        except TagMismatch:
            self._reject("authentication", _TAG_FAILED)
        except RemoteProtocolError as exc:
            self._reject(exc.reason, str(exc))
        except FECError as exc:
            self._reject("fec", str(exc))
        except DiodeError as exc:
            self._reject("decode", str(exc))

    def receive_datagrams(self, datagrams: Sequence[bytes], now: float) -> None:
        """Handle datagrams that arrived together, at ``now``. Never raises.

        The same events, counters and state as ``receive_datagram`` for each in turn, in
        less time: the straight path of a DATA datagram runs inline, with the session's
        state and the counters in local variables.
        """
        self._n_datagrams += len(datagrams)
        self._n_bytes += sum(map(len, datagrams))
        accepted = redundant = duplicates = 0
        fast = self._fast
        s = self._session
        blocks = s.blocks if s is not None else {}
        need = self._overhead
        tail = HEADER_TAIL.unpack_from
        nonce = NONCE.pack
        try:
            for data in datagrams:
                try:
                    cipher = fast.get(data[:_PREFIX_SIZE])
                    if cipher is not None and s is not None:
                        size = len(data)
                        if size >= HEADER_SIZE:
                            number, index, k, m, length = tail(data, _TAIL_AT)
                            block = blocks.get(number)
                            if (
                                block is not None
                                and number >= s.head
                                and size == _OVERHEAD + length
                                and k == block.k
                                and m == block.m
                                and length == block.symlen
                                and index < k + m
                            ):
                                if block.data is not None:
                                    redundant += 1
                                    continue
                                symbols = block.symbols
                                if index in symbols:
                                    duplicates += 1
                                    continue
                                view = memoryview(data)
                                if index < k:
                                    at = index * length
                                    slot = block.buf[at : at + length]
                                    cipher.decrypt_into(
                                        nonce(_DATA, number, index),
                                        view[HEADER_SIZE:],
                                        view[:HEADER_SIZE],
                                        slot,
                                    )
                                    symbols[index] = slot
                                else:
                                    symbols[index] = cipher.decrypt(
                                        nonce(_DATA, number, index),
                                        view[HEADER_SIZE:],
                                        view[:HEADER_SIZE],
                                    )
                                    block.repairs += 1
                                if s.silent:
                                    self._heard(s, now)
                                else:
                                    s.last_heard = now
                                accepted += 1
                                if len(symbols) >= k + need and self._rebuild(block, number):
                                    self._advance(s, now)
                                continue
                    self._receive(data, now)
                except TagMismatch:
                    self._reject("authentication", _TAG_FAILED)
                except RemoteProtocolError as exc:
                    self._reject(exc.reason, str(exc))
                except FECError as exc:
                    self._reject("fec", str(exc))
                except DiodeError as exc:
                    self._reject("decode", str(exc))
                # the full path may have started a session or changed its keys
                fast = self._fast
                s = self._session
                blocks = s.blocks if s is not None else {}
        finally:
            self._n_accepted += accepted
            self._n_redundant += redundant
            self._n_duplicates += duplicates

    def poll(self, now: float) -> None:
        """Handle timers: block timeouts, liveness, queued announcements, early datagrams."""
        self._verify_pending(now)
        early = self._early
        limit = now - self.options.early_timeout
        while early and early[0][3] < limit:
            early.popleft()
            self._reject("unknown-key", "no verified key announcement arrived in time")
        s = self._session
        if s is None:
            return
        if not s.silent and now - s.last_heard > self._hb_timeout:
            s.silent = True
            self._events.append(HeartbeatMissed(s.id, now - s.last_heard))
        self._advance(s, now)

    def next_timer(self) -> float | None:
        """When ``poll`` should next be called (a coarse bound is fine)."""
        times: list[float] = []
        if self._early:
            times.append(self._early[0][3] + self.options.early_timeout)
        if self._pending:
            wait = max(0.0, 1.0 - self._tokens) / self.options.announce_verify_rate
            times.append((self._tokens_at or 0.0) + wait)
        s = self._session
        if s is not None:
            if not s.silent:
                times.append(s.last_heard + self._hb_timeout)
            if s.known and s.head <= s.known_max:
                times.append(s.known[0][1] + self.options.block_timeout + s.stretch)
            if s.pending:
                times.append(s.pending_since + self.options.manifest_verify_delay)
        return min(times) if times else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    @property
    def session_id(self) -> bytes | None:
        return self._session.id if self._session else None

    def counters(self) -> ReceiverCounters:
        return ReceiverCounters(
            datagrams=self._n_datagrams,
            bytes=self._n_bytes,
            accepted=self._n_accepted,
            duplicates=self._n_duplicates,
            redundant=self._n_redundant,
            blocks_complete=self._n_complete,
            blocks_recovered=self._n_recovered,
            blocks_lost=self._n_lost,
            records_delivered=self._n_delivered,
            records_lost=self._n_records_lost,
            manifests_verified=self._n_manifests,
            announcements_verified=self._n_announcements,
            heartbeats=self._n_heartbeats,
            sessions=self._n_sessions,
            rejected=dict(self._rejected),
        )

    def state_size(self) -> dict[str, int]:
        """Sizes of every bounded structure, for tests and metrics."""
        s = self._session
        return {
            "blocks": len(s.blocks) if s else 0,
            "symbols": sum(len(b.symbols) for b in s.blocks.values()) if s else 0,
            "manifest_entries": len(s.manifest) if s else 0,
            "pending_manifests": len(s.pending) if s else 0,
            "manifest_claims": len(s.claims) if s else 0,
            "keys": len(s.keys) if s else 0,
            "known_segments": len(s.known) if s else 0,
            "pending_announcements": len(self._pending),
            "early_datagrams": len(self._early),
            "retired_sessions": len(self._retired),
            "announcement_digests": len(self._good) + len(self._bad),
        }

    # ------------------------------------------------------------------ dispatch

    def _reject(self, reason: str, detail: str, session_id: bytes | None = None) -> None:
        self._rejected[reason] += 1
        self._events.append(DatagramRejected(reason, detail, session_id))

    def _receive(self, data: bytes, now: float) -> None:
        size = len(data)
        if size < _MIN_DATA or size > self._payload:
            parse_header(data, payload_size=self._payload, max_k=self._max_k)
            raise MalformedDatagramError(
                f"datagram of {size} bytes is shorter than the smallest valid one ({_MIN_DATA})",
                reason="length",
            )
        magic, version, dtype, sid, key_id, fp, number, index, k, m, length = HEADER.unpack_from(
            data
        )
        if dtype != _DATA or magic != MAGIC or version != VERSION:
            header = parse_header(data, payload_size=self._payload, max_k=self._max_k)
            self._check_fingerprint(header.config_fingerprint)
            if dtype == _ANNOUNCE:
                self._on_announcement(data, header, now)
            else:
                self._on_control(data, header, now)
            return
        if size != HEADER_SIZE + length + TAG_SIZE or length > self._symbol:
            if length > self._symbol:
                raise MalformedDatagramError(
                    f"symbol length {length} exceeds the symbol size {self._symbol}",
                    reason="length",
                )
            parse_header(data, payload_size=self._payload, max_k=self._max_k)
        if fp != self._fp:
            self._check_fingerprint(fp)
        if not 0 < k <= self._max_k or m > k + 1 or index >= k + m or number >= 1 << 63:
            parse_header(data, payload_size=self._payload, max_k=self._max_k)
        s = self._session
        cipher = s.keys.get(key_id) if s is not None and s.id == sid else None
        if cipher is None or s is None:
            self._unknown_key(data, sid, key_id, now)
            return
        head = s.head
        if number < head:
            if (
                s.base is not None
                and number >= s.base
                and head - number <= self.options.receive_window
            ):
                # a late repair symbol of a block already resolved: normal, not an attack
                self._n_redundant += 1
                return
            raise ReplayError(
                f"block {number} is before the receive window (next block {head})", reason="replay"
            )
        block = s.blocks.get(number)
        if block is not None:
            if block.data is not None:
                self._n_redundant += 1
                return
            if index in block.symbols:
                self._n_duplicates += 1
                return
            if k != block.k or m != block.m or length != block.symlen:
                raise MalformedDatagramError(
                    f"block {number} shape k={k} m={m} len={length} differs from "
                    f"k={block.k} m={block.m} len={block.symlen}",
                    reason="field",
                )
        view = memoryview(data)
        plain = cipher.open(
            NONCE.pack(_DATA, number, index), view[HEADER_SIZE:], view[:HEADER_SIZE]
        )
        self._heard(s, now)
        self._n_accepted += 1
        if s.base is None:
            self._set_base(s, number)
        if number >= s.head + self.options.receive_window:
            # authenticated, so the sender really is that far ahead: give up on the old ones
            self._advance(
                s, now, force_upto=number - self.options.receive_window // 2, why="window"
            )
        if block is None:
            if len(s.blocks) >= self.options.max_open_blocks:
                self._advance(s, now, force_upto=min(number, s.head + 1), why="overload")
            block = _Block(k, m, length)
            s.blocks[number] = block
            if number > s.known_max:
                s.known.append((number, now))
                s.known_max = number
        block.put(index, plain)
        if len(block.symbols) >= k + self._overhead and self._rebuild(block, number):
            self._advance(s, now)

    def _set_base(self, s: _Session, number: int, *, exists: bool = True) -> None:
        """First sign of life of a session: expect blocks from a little before ``number``.

        Blocks interleaved or reordered with the first one we see may be older; the slack
        makes them wanted (delivered or reported lost) instead of rejected as replays.
        ``exists`` is false when ``number`` comes from a heartbeat's next block: that block
        has not been sent yet, so it must not be waited for (or declared lost).
        """
        base = max(0, number - 2 * self.config.interleave - 2)
        s.base = s.head = base
        for b in [b for b in s.manifest if b < base]:
            del s.manifest[b]
        for b in [b for b in s.claims if b < base]:
            del s.claims[b]
        if exists:
            self._learn(s, number, s.last_heard)

    def _check_fingerprint(self, fp: int) -> None:
        if fp != self._fp:
            raise MalformedDatagramError(
                f"sender config fingerprint {fp:08x} differs from ours {self._fp:08x}: "
                "the two ends are configured differently (payload size, k, m, codec, cipher, "
                "max block symbols or heartbeat interval)",
                reason="config",
            )

    def _heard(self, s: _Session, now: float) -> None:
        if s.silent:
            s.silent = False
            self._events.append(LinkUp(s.id, now - s.last_heard))
        s.last_heard = now

    def _unknown_key(self, data: bytes, sid: bytes, key_id: int, now: float) -> None:
        if sid in self._retired:
            raise ReplayError("datagram of an ended session", reason="replay")
        s = self._session
        if s is not None and s.id == sid and key_id <= s.key_floor:
            raise ReplayError(f"key {key_id} was retired", reason="replay")
        # the announcement may still come (or wait for its verification): keep it, bounded
        if len(self._early) >= self.options.max_early_datagrams:
            self._early.popleft()
            self._reject("unknown-key", "early-datagram buffer full; oldest dropped")
        self._early.append((data, sid, key_id, now))

    # ------------------------------------------------------------------ blocks

    def _rebuild(self, block: _Block, number: int) -> bool:
        k = block.k
        symbols = block.symbols
        buf = block.buf
        if len(symbols) - block.repairs < k:
            try:
                source = self._codec.decode(k, block.m, symbols)
            except FECError:
                if len(symbols) >= k + block.m:
                    raise
                return False  # a non-MDS code may need one more symbol
            length = block.symlen
            for i, symbol in enumerate(source):
                if i not in symbols:
                    buf[i * length : (i + 1) * length] = symbol
            self._n_recovered += 1
        else:
            self._n_complete += 1  # every source symbol is in place: nothing to decode
        block.data = buf
        block.symbols = {}
        return True

    def _deadline_passed(self, s: _Session, number: int, now: float) -> bool:
        known = s.known
        while len(known) > 1 and known[0][0] < s.head:
            known.popleft()
        for upto, at in known:
            if upto >= number:
                return now >= at + self.options.block_timeout + s.stretch
        return False

    def _pace(self, s: _Session, now: float) -> None:
        """Measure the rate datagrams are accepted at, over windows of 64 of them (a window
        restarts whenever nothing arrived since the last look, so idle time is not counted),
        so that a slow link's blocks are waited for as long as the link needs to carry an
        interleaved group of them."""
        n = self._n_accepted
        got = n - s.rate_n
        if s.rate_n < 0 or got <= 0:
            s.rate_at, s.rate_n = now, n
            return
        if got < 64:
            return
        elapsed = now - s.rate_at
        s.rate_at, s.rate_n = now, n
        cfg = self.config
        opts = self.options
        group = cfg.interleave * (cfg.k + cfg.m)
        s.stretch = max(
            0.0, min(opts.max_block_wait - opts.block_timeout, 2.0 * group * elapsed / got)
        )

    def _learn(self, s: _Session, number: int, now: float) -> None:
        if number > s.known_max:
            s.known.append((number, now))
            s.known_max = number

    def _advance(
        self, s: _Session, now: float, force_upto: int = -1, why: str = "overload"
    ) -> None:
        """Resolve blocks in block order as far as possible; ``force_upto``: resolve below it.

        ``why`` is the gap reason for blocks given up because of the force: ``restart`` (the
        sender started a new session), ``window`` (it is a whole receive window ahead) or
        ``overload`` (too many open blocks).
        """
        self._pace(s, now)
        strict = self.options.strict
        blocks = s.blocks
        manifest = s.manifest
        while True:
            b = s.head
            forced = b < force_upto
            block = blocks.get(b)
            entry = manifest.get(b)
            if block is not None and block.data is not None:
                if entry is None and strict and b in s.claims:
                    if not forced and self._may_defer(s, now):
                        return
                    self._confirm(s)
                    continue
                if entry is None and strict:
                    if not forced and not self._deadline_passed(s, b, now):
                        return
                    self._lose_unsigned(s, b, block.data)
                    continue
                if entry is not None and hashlib.sha256(block.data).digest() != entry[1]:
                    self._lose(s, b, entry, "digest")
                    continue
                self._deliver(s, b, block, entry)
                continue
            if not forced and (b > s.known_max or not self._deadline_passed(s, b, now)):
                return
            if block is not None and len(block.symbols) >= block.k and self._try_last(block, b):
                continue
            if entry is None and b in s.claims:
                self._confirm(s)  # a gap names its records: the entry must be verified first
                continue
            if block is not None or entry is not None:
                self._lose(s, b, entry, "lost" if not forced else why)
                continue
            # a run of blocks nothing is known about: one event, jump over it
            end = s.known_max if not forced else force_upto - 1
            if blocks:
                end = min(end, min(blocks) - 1)
            if manifest:
                end = min(end, min(manifest) - 1)
            if s.claims:
                end = min(end, min(s.claims) - 1)
            if not forced:
                for upto, _at in s.known:
                    if upto >= b:
                        end = min(end, upto)
                        break
            self._lose_run(s, b, max(b, end), "lost" if not forced else why)

    def _try_last(self, block: _Block, number: int) -> bool:
        try:
            return self._rebuild(block, number)
        except FECError:
            return False

    def _finish(self, s: _Session, b: int) -> None:
        s.blocks.pop(b, None)
        s.manifest.pop(b, None)
        s.claims.pop(b, None)
        s.head = b + 1

    def _deliver(self, s: _Session, b: int, block: _Block, entry: EntryTuple | None) -> None:
        assert block.data is not None
        try:
            records = self._parse_block(block.data)
        except DecodeError as exc:
            self._reject("decode", f"block {b}: {exc}", s.id)
            self._lose(s, b, entry, "decode")
            return
        self._finish(s, b)
        s.blocks_delivered += 1
        self._n_delivered += len(records)
        accounted = s.accounted
        if entry is not None:
            for topic, partition, _first, last, count in entry[2]:
                acc = accounted.setdefault((topic, partition), [0, -1])
                acc[0] += count
                acc[1] = last
        else:
            for tp, count in Counter((r.topic, r.partition) for r in records).items():
                acc = accounted.setdefault(tp, [0, -1])
                acc[0] += count
            for r in records:
                accounted[(r.topic, r.partition)][1] = r.offset
        self._events.append(RecordsDelivered(s.id, b, tuple(records)))

    def _parse_block(self, data: Buffer) -> list[Record]:
        batch, raw_length, count, compression = unpack_block(data, max_size=self._max_block)
        if count > raw_length:
            raise DecodeError(f"block announces {count} records in {raw_length} bytes")
        if compression != Compression.NONE:
            batch = decompress(batch, compression, max_size=raw_length)
        if len(batch) != raw_length:
            raise DecodeError(f"batch is {len(batch)} bytes, block header says {raw_length}")
        records = decode_batch(batch, max_records=count)
        if len(records) != count:
            raise DecodeError(f"batch holds {len(records)} records, block header says {count}")
        return records

    def _lose(self, s: _Session, b: int, entry: EntryTuple | None, reason: str) -> None:
        self._finish(s, b)
        s.blocks_lost += 1
        self._n_lost += 1
        if entry is None:
            self._events.append(BlocksLost(s.id, b, b, reason))
            self._note_unaccounted(s)
            return
        for topic, partition, first, last, count in entry[2]:
            acc = s.accounted.setdefault((topic, partition), [0, -1])
            acc[0] += count
            acc[1] = last
            self._n_records_lost += count
            self._events.append(GapDetected(s.id, topic, partition, first, last, count, reason, b))

    def _lose_unsigned(self, s: _Session, b: int, data: Buffer) -> None:
        """A rebuilt block no verified manifest names: never delivered, but its gap names its
        records exactly (what the AEAD let through came from the sender)."""
        try:
            records = self._parse_block(data)
        except DecodeError as exc:
            self._reject("decode", f"block {b}: {exc}", s.id)
            self._lose(s, b, None, "unsigned")
            return
        ranges: dict[tuple[str, int], list[int]] = {}
        for r in records:
            span = ranges.get((r.topic, r.partition))
            if span is None:
                ranges[(r.topic, r.partition)] = [r.offset, r.offset, 1]
            else:
                span[1] = r.offset
                span[2] += 1
        entry: EntryTuple = (
            b,
            b"",
            tuple((t, p, first, last, n) for (t, p), (first, last, n) in ranges.items()),
        )
        self._lose(s, b, entry, "unsigned")

    def _lose_run(self, s: _Session, first: int, last: int, reason: str) -> None:
        # the caller stops the run before any block or manifest entry we hold
        n = last - first + 1
        s.head = last + 1
        s.blocks_lost += n
        self._n_lost += n
        self._events.append(BlocksLost(s.id, first, last, reason))
        self._note_unaccounted(s)

    def _note_unaccounted(self, s: _Session) -> None:
        if s.floor is None:
            s.floor = {tp: acc[1] for tp, acc in s.accounted.items()}
        s.unaccounted += 1

    # ------------------------------------------------------------------ control datagrams

    def _on_control(self, data: bytes, header: Header, now: float) -> None:
        s = self._session
        cipher = s.keys.get(header.key_id) if s is not None and s.id == header.session_id else None
        if cipher is None or s is None:
            self._unknown_key(data, header.session_id, header.key_id, now)
            return
        view = memoryview(data)
        plain = cipher.open(
            NONCE.pack(header.type, header.number, 0), view[HEADER_SIZE:], view[:HEADER_SIZE]
        )
        self._heard(s, now)
        self._n_accepted += 1
        if header.type == DatagramType.MANIFEST:
            self._on_manifest(s, header.number, plain, now)
        else:
            self._on_heartbeat(s, header.number, plain, now)

    def _on_manifest(self, s: _Session, seq: int, plain: bytes, now: float) -> None:
        window_end = s.head + self.options.receive_window
        floor = s.head if s.base is not None else -1
        manifest = s.manifest
        claims = s.claims

        def new_to_us(b: int) -> bool:
            # no verified entry, and no newer manifest waiting to be verified names it
            return floor <= b < window_end and b not in manifest and claims.get(b, -1) < seq

        parsed = parse_manifest(plain, max_entries=self._payload // 40 + 1, wanted=new_to_us)
        fresh = parsed.entries
        body = parsed.body
        signature = parsed.signature
        if not fresh:
            self._n_redundant += 1
            return
        if self.options.manifest_verify_delay > 0:
            # the manifest already passed the AEAD under a signed key, so only the sender (or
            # we) could have made it: its entries may tell which blocks exist now, and wait
            # for their signature check until a block needs one (see ``_may_defer``)
            if not s.pending:
                s.pending_since = now
            s.pending[seq] = parsed
            for e in fresh:
                claims[e[0]] = seq
                self._learn(s, e[0], now)
            if len(s.pending) >= self.config.manifest_copies:
                # the newest names every entry the others brought: one verify for them all
                self._confirm(s)
            if s.base is not None:
                self._advance(s, now)
            return
        # not a flood risk either way: only the holder of the session key gets here
        self._sender_key.verify(signature, manifest_signed_message(s.id, seq, body))
        self._n_manifests += 1
        for e in fresh:
            s.manifest[e[0]] = e
            self._learn(s, e[0], now)
        self._events.append(
            ManifestVerified(
                s.id,
                seq,
                min(parsed.blocks),
                max(parsed.blocks),
                len(parsed.blocks),
            )
        )
        if s.base is not None:
            self._advance(s, now)

    def _may_defer(self, s: _Session, now: float) -> bool:
        """Whether a rebuilt block may still wait for a later manifest naming it.

        Each entry is repeated in ``manifest_copies`` consecutive manifests, so once that many
        wait, the newest covers the new entries of all of them; under load they come within
        a few blocks. Bounded by ``manifest_verify_delay`` for a quiet link.
        """
        return (
            len(s.pending) < self.config.manifest_copies
            and now < s.pending_since + self.options.manifest_verify_delay
        )

    def _confirm(self, s: _Session) -> None:
        """Verify the waiting manifests, newest first, skipping those a newer one covers."""
        pending = s.pending
        claims = s.claims
        while pending:
            seq = max(pending)
            parsed = pending.pop(seq)
            mine = [e for e in parsed.entries if claims.get(e[0]) == seq]
            if not mine:
                continue  # every block it named is covered by a newer one, or resolved
            if not self._sender_key.is_valid(
                parsed.signature, manifest_signed_message(s.id, seq, parsed.body)
            ):
                self._reject("authentication", f"manifest {seq} signature did not verify", s.id)
                # an older waiting manifest may still name the block
                for e in mine:
                    b = e[0]
                    del claims[b]
                    older = [q for q, p in pending.items() if any(x[0] == b for x in p.entries)]
                    if older:
                        claims[b] = max(older)
                continue
            self._n_manifests += 1
            for e in mine:
                del claims[e[0]]
                s.manifest[e[0]] = e
            self._events.append(
                ManifestVerified(
                    s.id,
                    seq,
                    min(parsed.blocks),
                    max(parsed.blocks),
                    len(parsed.blocks),
                )
            )

    def _on_heartbeat(self, s: _Session, seq: int, plain: bytes, now: float) -> None:
        hb = Heartbeat.unpack(plain)
        if seq <= s.heartbeat_seq:
            self._n_redundant += 1  # reordered: an older view than one we already have
            return
        s.heartbeat_seq = seq
        s.last_heartbeat = hb
        self._n_heartbeats += 1
        self._events.append(
            HeartbeatReceived(
                s.id,
                seq,
                hb.next_block,
                hb.records_sent,
                hb.record_bytes_sent,
                hb.datagrams_sent,
                hb.policy_fingerprint,
                hb.marks,
            )
        )
        if s.base is None:
            self._set_base(s, hb.next_block, exists=False)
        if hb.next_block > 0:
            self._learn(s, hb.next_block - 1, now)
        self._advance(s, now)
        if s.unaccounted and s.base == 0:
            self._reconcile(s, hb)
        elif s.base:
            self._note_unseen(s, hb)

    def _note_unseen(self, s: _Session, hb: Heartbeat) -> None:
        """A session joined after its start: name the partitions it sent only before."""
        for mark in hb.marks:
            tp = (mark.topic, mark.partition)
            if mark.last_block >= s.head or tp in s.accounted or tp in s.unseen:
                continue  # still open, or this receiver saw some of it
            s.unseen.add(tp)
            self._events.append(
                PartitionUnseen(s.id, mark.topic, mark.partition, mark.last_offset, mark.last_block)
            )

    def _reconcile(self, s: _Session, hb: Heartbeat) -> None:
        """Name the records of blocks lost without a manifest, from the heartbeat's counts."""
        floor = s.floor or {}
        for mark in hb.marks:
            if s.head <= mark.last_block:
                continue  # blocks of this partition are still open
            tp = (mark.topic, mark.partition)
            acc = s.accounted.setdefault(tp, [0, -1])
            missing = mark.records - acc[0]
            if missing <= 0:
                continue
            acc[0] += missing
            self._n_records_lost += missing
            self._events.append(
                GapDetected(
                    s.id,
                    mark.topic,
                    mark.partition,
                    floor.get(tp, -1) + 1,
                    mark.last_offset,
                    missing,
                    "unaccounted",
                    mark.last_block,
                )
            )

    # ------------------------------------------------------------------ announcements

    def _on_announcement(self, data: bytes, header: Header, now: float) -> None:
        digest = hashlib.sha256(data).digest()
        if digest in self._good:
            self._n_redundant += 1
            return
        if digest in self._bad:
            raise AuthenticationError("announcement signature did not verify (seen before)")
        if header.session_id in self._retired:
            raise ReplayError("announcement of an ended session", reason="replay")
        if digest in self._pending:
            self._n_duplicates += 1
            return
        self._refill(now)
        if self._tokens >= 1 and not self._pending:
            self._tokens -= 1
            self._verify_announcement(data, header, digest, now)
            return
        if len(self._pending) >= self.options.max_pending_announcements:
            raise RemoteProtocolError(
                f"{len(self._pending)} announcements already wait for verification, "
                f"limit {self.options.max_pending_announcements}",
                reason="rate-limited",
            )
        self._pending[digest] = (data, header)

    def _refill(self, now: float) -> None:
        opts = self.options
        if self._tokens_at is not None:
            self._tokens = min(
                float(opts.announce_verify_burst),
                self._tokens + (now - self._tokens_at) * opts.announce_verify_rate,
            )
        self._tokens_at = now

    def _verify_pending(self, now: float) -> None:
        if not self._pending:
            return
        self._refill(now)
        while self._pending and self._tokens >= 1:
            self._tokens -= 1
            digest, (data, header) = self._pending.popitem(last=False)
            try:
                self._verify_announcement(data, header, digest, now)
            except RemoteProtocolError as exc:
                self._reject(exc.reason, str(exc))
        if self._pending:
            self._tokens_at = now

    def _remember(self, cache: OrderedDict[bytes, None], digest: bytes) -> None:
        cache[digest] = None
        while len(cache) > self.options.announcement_cache:
            cache.popitem(last=False)

    def _verify_announcement(self, data: bytes, header: Header, digest: bytes, now: float) -> None:
        body = data[HEADER_SIZE:-SIGNATURE_SIZE]
        signature = data[-SIGNATURE_SIZE:]
        if not self._sender_key.is_valid(signature, ANNOUNCE_DOMAIN + data[:HEADER_SIZE] + body):
            self._remember(self._bad, digest)
            raise AuthenticationError("announcement signature did not verify")
        announcement = Announcement.unpack(body)
        if announcement.cipher != self.config.cipher:
            raise MalformedDatagramError(
                f"announcement is for cipher {announcement.cipher.name}, we use "
                f"{self.config.cipher.name}",
                reason="config",
            )
        sid = header.session_id
        if sid in self._retired:
            raise ReplayError("announcement of an ended session", reason="replay")
        ctx = key_context(sid, header.key_id, announcement.cipher, header.config_fingerprint)
        key = unwrap_session_key(self._private, announcement.wrapped_key, ctx)
        self._remember(self._good, digest)
        self._n_announcements += 1
        s = self._session
        if s is None or s.id != sid:
            s = self._start_session(sid, header.key_id, now)
        if header.key_id in s.keys or header.key_id <= s.key_floor:
            return  # known, or an old key of this session re-announced late
        newest = next(reversed(s.keys)) if s.keys else None
        s.keys[header.key_id] = SessionCipher(announcement.cipher, key)
        s.keys = OrderedDict(sorted(s.keys.items()))
        while len(s.keys) > self.options.max_keys:
            s.key_floor = s.keys.popitem(last=False)[0]
        self._refresh_fast(s)
        if newest is not None and header.key_id > newest:
            self._events.append(KeyRotated(sid, header.key_id, newest))
        self._replay_early(sid, header.key_id, now)

    def _refresh_fast(self, s: _Session) -> None:
        self._fast = {
            HEADER_PREFIX.pack(MAGIC, VERSION, _DATA, s.id, key_id, self._fp): cipher
            for key_id, cipher in s.keys.items()
        }

    def _start_session(self, sid: bytes, key_id: int, now: float) -> _Session:
        old = self._session
        previous = None
        if old is not None:
            previous = old.id
            self._advance(old, now, force_upto=old.known_max + 1, why="restart")
            # no heartbeat of the old session will come to name what its lost blocks held:
            # name it from the last one it sent
            if old.unaccounted and old.base == 0 and old.last_heartbeat is not None:
                self._reconcile(old, old.last_heartbeat)
            self._events.append(SessionEnded(old.id, old.blocks_delivered, old.blocks_lost))
            self._retired[old.id] = None
            while len(self._retired) > self.options.max_retired_sessions:
                self._retired.popitem(last=False)
        s = _Session(sid, now)
        self._session = s
        self._refresh_fast(s)
        self._n_sessions += 1
        self._events.append(SessionStarted(sid, old is not None, previous, key_id))
        self._events.append(LinkUp(sid, None))
        # datagrams of other sessions waiting for a key: the old one's are replays now
        if previous is not None:
            kept: deque[tuple[bytes, bytes, int, float]] = deque()
            for item in self._early:
                if item[1] == previous:
                    self._reject("replay", "datagram of an ended session", previous)
                else:
                    kept.append(item)
            self._early = kept
        return s

    def _replay_early(self, sid: bytes, key_id: int, now: float) -> None:
        waiting = [item for item in self._early if item[1] == sid and item[2] == key_id]
        if not waiting:
            return
        self._early = deque(
            item for item in self._early if not (item[1] == sid and item[2] == key_id)
        )
        for data, _, _, _ in waiting:
            try:
                self._receive(data, now)
            except RemoteProtocolError as exc:
                self._reject(exc.reason, str(exc), sid)
            except FECError as exc:
                self._reject("fec", str(exc), sid)
            except DiodeError as exc:
                self._reject("decode", str(exc), sid)
