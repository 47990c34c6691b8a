"""Datagram layout: the fixed header, the bodies of control datagrams, and the shared config.

Owns every byte offset of the protocol (documented at length in docs/protocol.md) and the
``ProtocolConfig`` both ends must agree on, with its fingerprint. Parsers check every length
against a limit before they allocate and raise ``MalformedDatagramError`` / ``DecodeError``
with the value and the limit in the message. Encoders raise ``LocalProtocolError``.

Every datagram starts with the same 36-byte header (big-endian)::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +-------------------------------+---------------+---------------+
    |         magic 0xD10D          |   version 1   |     type      |
    +-------------------------------+---------------+---------------+
    |                                                               |
    +                  session id (8 random bytes)                  +
    |                                                               |
    +---------------------------------------------------------------+
    |                       key id (uint32)                         |
    +---------------------------------------------------------------+
    |               config fingerprint (4 bytes)                    |
    +---------------------------------------------------------------+
    |                                                               |
    +          number (uint64): block number, or sequence           +
    |                                                               |
    +-------------------------------+-------------------------------+
    |     symbol index (uint16)     |           k (uint16)          |
    +-------------------------------+-------------------------------+
    |           m (uint16)          |     body length (uint16)      |
    +-------------------------------+-------------------------------+
    |  body (body length bytes) ...                                 |
    +---------------------------------------------------------------+
    |  trailer: AEAD tag (16) or, for ANNOUNCE, Ed25519 signature (64)
    +---------------------------------------------------------------+

For DATA the body is one FEC symbol and ``number`` the block number; index, k and m describe
the block. For the control types index, k and m are zero and ``number`` counts datagrams of
that type in the session, so that (type, number, index) never repeats under one key: that
triple is the AEAD nonce.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from diode.errors import ConfigError, DecodeError, LocalProtocolError, MalformedDatagramError
from diode.protocol.crypto import (
    SIGNATURE_SIZE,
    TAG_SIZE,
    WRAPPED_KEY_SIZE,
    Buffer,
    Cipher,
)
from diode.protocol.events import PartitionMark
from diode.protocol.fec import DEFAULT_CODEC, get_codec
from diode.protocol.records import MAX_TOPIC_LENGTH, Compression

MAGIC: Final = 0xD10D
VERSION: Final = 1
HEADER: Final = struct.Struct(">HBB8sIIQHHHH")
HEADER_SIZE: Final = HEADER.size  # 36
#: the part of the header fixed for one (session, key): magic .. config fingerprint
HEADER_PREFIX: Final = struct.Struct(">HBB8sII")
HEADER_TAIL: Final = struct.Struct(">QHHHH")
SESSION_ID_SIZE: Final = 8
NONCE: Final = struct.Struct(">BQHx")  # type, number, index, zero: 12 bytes
MAX_UDP_PAYLOAD: Final = 65507
MIN_PAYLOAD_SIZE: Final = 508  # the UDP payload every IPv4 path must carry


class DatagramType(IntEnum):
    """Wire code of a datagram."""

    DATA = 1
    ANNOUNCE = 2
    MANIFEST = 3
    HEARTBEAT = 4


_TYPES: Final = frozenset(int(t) for t in DatagramType)


def make_nonce(dtype: int, number: int, index: int) -> bytes:
    return NONCE.pack(dtype, number, index)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """What both ends must agree on; the receiver rejects datagrams of a different config.

    ``k``/``m`` are the source/repair symbols of a full block; a block closed early by
    ``linger`` is shorter and gets ``ceil(k' * m / k)`` repair symbols, the same ratio, but at
    least ``min(m, 2)``; ``m`` may not exceed ``k``.
    """

    payload_size: int = 1472
    k: int = 32
    m: int = 8
    codec: str = DEFAULT_CODEC
    cipher: Cipher = Cipher.AES_256_GCM
    compression: Compression = Compression.NONE
    interleave: int = 4
    linger: float = 0.005
    heartbeat_interval: float = 0.1
    announce_interval: float = 1.0
    manifest_interval: float = 0.005
    manifest_copies: int = 3
    key_rotation_seconds: float = 3600.0
    key_rotation_bytes: int = 1 << 36
    #: largest k of one block (a record too big for k symbols gets a longer block);
    #: None: as many as the codec allows with the repair ratio, at most 200
    max_block_symbols: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not MIN_PAYLOAD_SIZE <= self.payload_size <= MAX_UDP_PAYLOAD:
            problems.append(
                f"payload_size {self.payload_size} outside {MIN_PAYLOAD_SIZE}..{MAX_UDP_PAYLOAD}"
            )
        if self.k < 1:
            problems.append(f"k={self.k}: a block needs at least 1 source symbol")
        if self.m < 0:
            problems.append(f"m={self.m} is negative")
        elif self.m > self.k:
            # the receiver refuses blocks with more than k+1 repair symbols (a shape no
            # honest sender makes); a ratio above 100% would make every long block such
            problems.append(
                f"m={self.m} exceeds k={self.k}: at most one repair symbol per source symbol "
                "(for a lossier link, raise both k and m, or the interleave depth)"
            )
        if self.interleave < 1:
            problems.append(f"interleave {self.interleave} must be at least 1")
        for name in ("linger", "heartbeat_interval", "announce_interval", "manifest_interval"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.manifest_copies < 1:
            problems.append(f"manifest_copies {self.manifest_copies} must be at least 1")
        if self.key_rotation_seconds <= 0 or self.key_rotation_bytes <= 0:
            problems.append("key rotation limits must be positive")
        if problems:
            raise ConfigError("invalid protocol config: " + "; ".join(problems))
        codec = get_codec(self.codec)
        full = self.k + self.repair_for(self.k)
        if full > codec.max_symbols:
            # said in terms of k and m, which the operator set, before max_block_symbols
            # (derived from them) would be blamed for it
            raise ConfigError(
                f"k={self.k} plus m={self.repair_for(self.k)} repair symbols is {full} symbols "
                f"per block, exceeds the {codec.name} limit of {codec.max_symbols}"
            )
        if self.max_block_symbols is None:
            most = min(200, codec.max_symbols)
            while most > self.k and most + self.repair_for(most) > codec.max_symbols:
                most -= 1
            object.__setattr__(self, "max_block_symbols", max(most, self.k))
        if self.max_k < self.k:
            raise ConfigError(f"max_block_symbols {self.max_block_symbols} is below k={self.k}")
        if self.max_k + self.repair_for(self.max_k) > codec.max_symbols:
            raise ConfigError(
                f"max_block_symbols {self.max_block_symbols} plus its repair symbols exceeds "
                f"the {codec.name} limit of {codec.max_symbols} symbols per block"
            )
        if self.symbol_size < 16:
            raise ConfigError(f"payload_size {self.payload_size} leaves no room for a symbol")

    @property
    def max_k(self) -> int:
        """``max_block_symbols`` once resolved."""
        assert self.max_block_symbols is not None  # set by __post_init__
        return self.max_block_symbols

    @property
    def symbol_size(self) -> int:
        """Largest symbol that fits one datagram, rounded down to the codec's alignment."""
        codec = get_codec(self.codec)
        room = min(self.payload_size - HEADER_SIZE - TAG_SIZE, codec.max_symbol_length)
        return room - room % codec.symbol_alignment

    def repair_for(self, k: int) -> int:
        """Repair symbols for a block of ``k`` source symbols: the configured ratio, rounded up.

        Short blocks (closed by ``linger`` at low rates) get at least ``min(m, 2)``: with the
        bare ratio a one-symbol block would get one repair symbol and be lost whenever both
        datagrams are, p^2 per block; two cost a few datagrams and make it p^3. Never more
        than ``k + 1``, which the receiver checks.
        """
        if self.m == 0:
            return 0
        return max(min(self.m, 2), math.ceil(k * self.m / self.k))

    @property
    def fingerprint(self) -> int:
        """32-bit digest of the settings the receiver depends on, carried in every header."""
        text = (
            f"v{VERSION}|payload={self.payload_size}|k={self.k}|m={self.m}|codec={self.codec}"
            f"|cipher={int(self.cipher)}|maxk={self.max_block_symbols}"
            f"|hb={self.heartbeat_interval!r}"
        )
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


# --------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed datagram header (the hot paths unpack ``HEADER`` directly instead)."""

    type: DatagramType
    session_id: bytes
    key_id: int
    config_fingerprint: int
    number: int
    index: int
    k: int
    m: int
    length: int

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            VERSION,
            self.type,
            self.session_id,
            self.key_id,
            self.config_fingerprint,
            self.number,
            self.index,
            self.k,
            self.m,
            self.length,
        )


def trailer_size(dtype: int) -> int:
    return SIGNATURE_SIZE if dtype == DatagramType.ANNOUNCE else TAG_SIZE


def parse_header(data: bytes | memoryview, *, payload_size: int, max_k: int) -> Header:
    """Parse and check a header; every field is validated against the datagram and limits.

    ``max_k`` bounds k and, with the repair symbols, the symbol index.
    """
    size = len(data)
    if size > payload_size:
        raise MalformedDatagramError(
            f"datagram of {size} bytes exceeds payload size {payload_size}", reason="oversized"
        )
    if size < HEADER_SIZE:
        raise MalformedDatagramError(
            f"datagram of {size} bytes is shorter than the {HEADER_SIZE}-byte header",
            reason="truncated",
        )
    magic, version, dtype, sid, key_id, fp, number, index, k, m, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedDatagramError(f"magic 0x{magic:04x}, expected 0x{MAGIC:04x}", reason="magic")
    if version != VERSION:
        raise MalformedDatagramError(
            f"protocol version {version}, this receiver speaks {VERSION}", reason="version"
        )
    if dtype not in _TYPES:
        raise MalformedDatagramError(
            f"unknown datagram type {dtype}, expected {min(_TYPES)}..{max(_TYPES)}",
            reason="type",
        )
    expected = HEADER_SIZE + length + trailer_size(dtype)
    if size != expected:
        raise MalformedDatagramError(
            f"datagram of {size} bytes, but its header announces {length} body bytes "
            f"({expected} in all)",
            reason="length",
        )
    if dtype == DatagramType.DATA:
        check_block_shape(number, index, k, m, length, max_k=max_k)
    elif index or k or m:
        raise MalformedDatagramError(
            f"{DatagramType(dtype).name} datagram has index={index} k={k} m={m}, expected zeros",
            reason="field",
        )
    return Header(DatagramType(dtype), sid, key_id, fp, number, index, k, m, length)


def check_block_shape(number: int, index: int, k: int, m: int, length: int, *, max_k: int) -> None:
    """Check the FEC fields of a DATA header; the symbol-length check is done by the caller."""
    if not 1 <= k <= max_k:
        raise MalformedDatagramError(f"k={k} outside 1..{max_k}", reason="field")
    # the ratio is fixed by the config, so m can never exceed k (plus rounding)
    if m > k + 1:
        raise MalformedDatagramError(f"m={m} exceeds k+1={k + 1}", reason="field")
    if index >= k + m:
        raise MalformedDatagramError(
            f"symbol index {index} outside 0..{k + m - 1} (k={k}, m={m})", reason="field"
        )
    if length < 1:
        raise MalformedDatagramError("DATA datagram with an empty symbol", reason="length")
    if number >= 1 << 63:
        raise MalformedDatagramError(f"block number {number} beyond 2**63", reason="field")


# --------------------------------------------------------------------------- bodies


class _Reader:
    """Bounds-checked sequential reader; every read names what it wanted and what is left."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct, field: str) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size, field))

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what}: {len(self.data) - self.pos} bytes after the end")


_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")


def _pack_topics(topics: list[str]) -> bytes:
    parts = [_U16.pack(len(topics))]
    for topic in topics:
        raw = topic.encode()
        if len(raw) > 255:
            raise LocalProtocolError(f"topic name of {len(raw)} bytes exceeds 255")
        parts.append(_U8.pack(len(raw)) + raw)
    return b"".join(parts)


def _read_topics(r: _Reader) -> list[str]:
    (count,) = r.unpack(_U16, "topic count")
    left = len(r.data) - r.pos
    if count * 2 > left:
        # each topic takes at least 2 bytes: refuse before looping over a count that lies
        raise DecodeError(
            f"{r.what}: topic count {count} needs at least {count * 2} bytes, only {left} left"
        )
    topics: list[str] = []
    for _ in range(count):
        (n,) = r.unpack(_U8, "topic length")
        if not 1 <= n <= MAX_TOPIC_LENGTH:
            raise DecodeError(f"{r.what}: topic length {n} outside 1..{MAX_TOPIC_LENGTH}")
        raw = r.take(n, "topic name")
        try:
            topics.append(raw.decode())
        except UnicodeDecodeError:
            raise DecodeError(f"{r.what}: topic name is not UTF-8") from None
    return topics


# ---- announcement: ephemeral key + wrapped session key, then the Ed25519 signature


@dataclass(frozen=True, slots=True)
class Announcement:
    """Body of an ANNOUNCE datagram (signed as a whole with the header)."""

    cipher: Cipher
    wrapped_key: bytes

    _FMT = struct.Struct(f">B3x{WRAPPED_KEY_SIZE}s")

    def pack(self) -> bytes:
        return self._FMT.pack(self.cipher, self.wrapped_key)

    @classmethod
    def unpack(cls, body: bytes) -> Announcement:
        if len(body) != cls._FMT.size:
            raise DecodeError(f"announcement body is {len(body)} bytes, expected {cls._FMT.size}")
        code, wrapped = cls._FMT.unpack(body)
        try:
            cipher = Cipher(code)
        except ValueError:
            raise DecodeError(f"announcement names unknown cipher {code}") from None
        return cls(cipher, wrapped)


ANNOUNCE_BODY_SIZE: Final = struct.calcsize(f">B3x{WRAPPED_KEY_SIZE}s")


def key_context(session_id: bytes, key_id: int, cipher: Cipher, config_fingerprint: int) -> bytes:
    """What a wrapped key is bound to: it cannot be moved to another session, id or cipher."""
    return struct.pack(">8sIBI", session_id, key_id, cipher, config_fingerprint)


# ---- manifest: signed digests and record ranges of blocks

DIGEST_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class Range:
    """Records of one partition in one block: offsets need not be contiguous inside."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    count: int


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    block: int
    digest: bytes
    ranges: tuple[Range, ...]


_ENTRY_HEAD: Final = struct.Struct(f">Q{DIGEST_SIZE}sH")
_RANGE: Final = struct.Struct(">HIQQI")
_MANIFEST_HEAD: Final = struct.Struct(">H")
MANIFEST_DOMAIN: Final = b"kafka-data-diode v1 manifest"


def entry_size(entry: ManifestEntry) -> int:
    """Bytes the entry takes in a manifest, topic table excluded."""
    return _ENTRY_HEAD.size + _RANGE.size * len(entry.ranges)


def pack_manifest_entries(entries: list[ManifestEntry]) -> bytes:
    """Manifest body without its signature: topic table, then entries."""
    topics: dict[str, int] = {}
    for entry in entries:
        for rng in entry.ranges:
            topics.setdefault(rng.topic, len(topics))
    parts = [_pack_topics(list(topics)), _MANIFEST_HEAD.pack(len(entries))]
    for entry in entries:
        parts.append(_ENTRY_HEAD.pack(entry.block, entry.digest, len(entry.ranges)))
        for rng in entry.ranges:
            parts.append(
                _RANGE.pack(
                    topics[rng.topic], rng.partition, rng.first_offset, rng.last_offset, rng.count
                )
            )
    return b"".join(parts)


def manifest_signed_message(session_id: bytes, sequence: int, body: bytes) -> bytes:
    return MANIFEST_DOMAIN + session_id + sequence.to_bytes(8, "big") + body


def unpack_manifest(plain: bytes, *, max_entries: int) -> tuple[bytes, list[ManifestEntry], bytes]:
    """Split a decrypted manifest into (signed body, entries, signature)."""
    parsed = parse_manifest(plain, max_entries=max_entries)
    entries = [
        ManifestEntry(block, digest, tuple(Range(*rng) for rng in ranges))
        for block, digest, ranges in parsed.entries
    ]
    return parsed.body, entries, parsed.signature


#: a ``Range`` as a plain tuple: (topic, partition, first offset, last offset, count)
RangeTuple = tuple[str, int, int, int, int]
#: a ``ManifestEntry`` as a plain tuple: (block, digest, ranges). The receiver reads a few
#: thousand ranges a second; building frozen dataclasses for them cost more than the parse
EntryTuple = tuple[int, bytes, tuple[RangeTuple, ...]]


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A decrypted manifest, checked whole; ``entries`` only those the caller wanted."""

    body: bytes
    signature: bytes
    #: the block number of every entry, in manifest order
    blocks: list[int]
    entries: list[EntryTuple]


_ENTRY_HEAD_SIZE: Final = _ENTRY_HEAD.size
_RANGE_SIZE: Final = _RANGE.size


def parse_manifest(
    plain: bytes, *, max_entries: int, wanted: Callable[[int], bool] | None = None
) -> ParsedManifest:
    """Parse and check a decrypted manifest: signed body, signature, entries.

    Every entry and range is checked, but entries are kept only for the blocks ``wanted``
    accepts (all if None): each entry is repeated in several manifests and a receiver needs
    only those new to it.
    """
    if len(plain) < SIGNATURE_SIZE:
        raise DecodeError(f"manifest of {len(plain)} bytes is shorter than its signature")
    body, signature = plain[:-SIGNATURE_SIZE], plain[-SIGNATURE_SIZE:]
    r = _Reader(body, "manifest")
    topics = _read_topics(r)
    (count,) = r.unpack(_MANIFEST_HEAD, "entry count")
    if count > max_entries:
        raise DecodeError(f"manifest lists {count} blocks, exceeds limit {max_entries}")
    ntopics = len(topics)
    end = len(body)
    pos = r.pos
    entry_head = _ENTRY_HEAD.unpack_from
    range_at = _RANGE.unpack_from
    blocks: list[int] = []
    entries: list[EntryTuple] = []
    for _ in range(count):
        if end - pos < _ENTRY_HEAD_SIZE:
            raise DecodeError(
                f"manifest: entry needs {_ENTRY_HEAD_SIZE} bytes at offset {pos}, "
                f"only {end - pos} left"
            )
        block, digest, nranges = entry_head(body, pos)
        pos += _ENTRY_HEAD_SIZE
        if nranges * _RANGE_SIZE > end - pos:
            raise DecodeError(
                f"manifest entry announces {nranges} ranges ({nranges * _RANGE_SIZE} bytes), "
                f"only {end - pos} left"
            )
        blocks.append(block)
        keep = wanted is None or wanted(block)
        ranges: list[RangeTuple] = []
        for _ in range(nranges):
            tix, partition, first, last, n = range_at(body, pos)
            pos += _RANGE_SIZE
            if tix >= ntopics:
                raise DecodeError(f"manifest range names topic {tix} of {ntopics}")
            if first > last or n < 1 or n > last - first + 1:
                raise DecodeError(f"manifest range {first}..{last} count {n} is inconsistent")
            if keep:
                ranges.append((topics[tix], partition, first, last, n))
        if keep:
            entries.append((block, digest, tuple(ranges)))
    if pos != end:
        raise DecodeError(f"manifest: {end - pos} bytes after the end")
    return ParsedManifest(body, signature, blocks, entries)


# ---- heartbeat

_HB_HEAD: Final = struct.Struct(">QQQQ32s")
_MARK: Final = struct.Struct(">HIQQQ")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Body of a HEARTBEAT datagram (AEAD-protected, not signed)."""

    next_block: int
    records_sent: int
    record_bytes_sent: int
    datagrams_sent: int
    policy_fingerprint: bytes
    marks: tuple[PartitionMark, ...]

    def pack(self) -> bytes:
        topics: dict[str, int] = {}
        for mark in self.marks:
            topics.setdefault(mark.topic, len(topics))
        parts = [
            _HB_HEAD.pack(
                self.next_block,
                self.records_sent,
                self.record_bytes_sent,
                self.datagrams_sent,
                self.policy_fingerprint,
            ),
            _pack_topics(list(topics)),
            _U16.pack(len(self.marks)),
        ]
        for mark in self.marks:
            parts.append(
                _MARK.pack(
                    topics[mark.topic],
                    mark.partition,
                    mark.last_offset,
                    mark.last_block,
                    mark.records,
                )
            )
        return b"".join(parts)

    @classmethod
    def unpack(cls, body: bytes) -> Heartbeat:
        r = _Reader(body, "heartbeat")
        next_block, records, nbytes, datagrams, policy = r.unpack(_HB_HEAD, "heartbeat head")
        topics = _read_topics(r)
        (count,) = r.unpack(_U16, "mark count")
        if count * _MARK.size != len(body) - r.pos:
            raise DecodeError(
                f"heartbeat announces {count} marks, body has {len(body) - r.pos} bytes left"
            )
        marks = []
        for _ in range(count):
            tix, partition, last_offset, last_block, n = r.unpack(_MARK, "mark")
            if tix >= len(topics):
                raise DecodeError(f"heartbeat mark names topic {tix} of {len(topics)}")
            marks.append(PartitionMark(topics[tix], partition, last_offset, last_block, n))
        r.done()
        return cls(next_block, records, nbytes, datagrams, bytes(policy), tuple(marks))

    @staticmethod
    def mark_size() -> int:
        return _MARK.size

    @staticmethod
    def head_size() -> int:
        return _HB_HEAD.size + 2 + 2


# ---- block: what the FEC symbols of a DATA block carry, before padding

BLOCK_HEADER: Final = struct.Struct(">IIIBxH")  # batch length, raw length, records, compression
BLOCK_HEADER_SIZE: Final = BLOCK_HEADER.size


def unpack_block(block: Buffer, *, max_size: int) -> tuple[Buffer, int, int, Compression]:
    """Split a rebuilt block into (batch, raw length, record count, compression).

    The batch is a slice of ``block``, of its type: a memoryview stays a view, no copy.
    """
    if len(block) < BLOCK_HEADER_SIZE:
        raise DecodeError(f"block of {len(block)} bytes is shorter than its header")
    length, raw_length, count, method, reserved = BLOCK_HEADER.unpack_from(block)
    if reserved:
        raise DecodeError(f"block header reserved field is {reserved}, expected 0")
    if length > len(block) - BLOCK_HEADER_SIZE:
        raise DecodeError(
            f"block header announces {length} batch bytes, block holds "
            f"{len(block) - BLOCK_HEADER_SIZE}"
        )
    if raw_length > max_size:
        raise DecodeError(f"block announces {raw_length} raw bytes, exceeds limit {max_size}")
    if any(block[BLOCK_HEADER_SIZE + length :]):
        raise DecodeError("block padding is not zero")
    try:
        compression = Compression(method)
    except ValueError:
        raise DecodeError(f"block uses unknown compression {method}") from None
    return block[BLOCK_HEADER_SIZE : BLOCK_HEADER_SIZE + length], raw_length, count, compression
