"""Kafka records as the diode carries them, and their batch encoding.

``Record`` is the one representation of a Kafka record inside the diode: the sender builds
it from a consumed message, the policy engine judges it, the protocol carries it, and the
receiver produces it. Everything Kafka lets a producer set crosses unchanged: key, value,
headers (order and duplicates kept; a header value may be null) and timestamp.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from enum import IntEnum
from typing import Annotated, Final

import msgspec

from diode.errors import DecodeError, LocalProtocolError

#: a Kafka header: name and value; the value may be null
Header = tuple[str, bytes | None]
#: what the decoders read: a rebuilt block is a view of the receiver's buffer, not a copy
Buffer = bytes | bytearray | memoryview


class Record(msgspec.Struct, frozen=True, array_like=True, gc=False, forbid_unknown_fields=True):
    """One Kafka record, as read from a source partition.

    ``timestamp`` is milliseconds since the UNIX epoch, as Kafka stores it.
    """

    # the constraints are checked by msgspec while it decodes a batch (never on construction)
    topic: _Topic
    partition: _Partition
    offset: _Offset
    timestamp: _Timestamp
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what a size limit is measured against."""
        n = len(self.key or b"") + len(self.value or b"")
        for name, value in self.headers:
            n += len(name) + len(value or b"")
        return n


# --- batch codec -------------------------------------------------------------------------
#
# A batch is a MessagePack array of records, each record a 7-element array in field order
# (``Record`` is ``array_like``): compact, and msgspec encodes and decodes it at C speed.
# The sender encodes each record once (to learn its size before it picks a block), then
# joins the encoded records into a block with ``join_encoded``, which must produce the very
# bytes ``encode_batch`` would.


class Compression(IntEnum):
    """How a batch is compressed on the wire. Only the standard library's zlib: it is always
    there, and the sender's budget is spent on FEC and AEAD, not on a better ratio."""

    NONE = 0
    ZLIB = 1


#: Kafka's own limit on a topic name (kafka.common.internals.Topic.MAX_NAME_LENGTH)
MAX_TOPIC_LENGTH: Final = 249
#: Kafka partitions are int32, offsets and timestamps int64
MAX_PARTITION: Final = 2**31 - 1
MAX_INT64: Final = 2**63 - 1
#: Kafka reports -1 when a record carries no timestamp (message format v0); anything
#: lower is not a Kafka timestamp
MIN_TIMESTAMP: Final = -1

_TOPIC_RE: Final = re.compile(r"[a-zA-Z0-9._-]+")

# Record's field types with the limits above, so decoding checks them at C speed;
# ``_LooseRecord`` decodes without them, only to name what a refused batch got wrong.
# The topic's characters are not a msgspec pattern: that runs a regex on every record (a
# third of the decode time), where ``decode_batch`` checks each distinct topic of a batch
# once, through the cached ``_legal_topic``
_Topic = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOPIC_LENGTH)]
_Partition = Annotated[int, msgspec.Meta(ge=0, le=MAX_PARTITION)]
_Offset = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
_Timestamp = Annotated[int, msgspec.Meta(ge=MIN_TIMESTAMP, le=MAX_INT64)]


class _LooseRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()


#: zlib level 1: the block is compressed on the sender's hot path, and on JSON values level 1
#: ran at 131 MB/s for a ratio of 0.38 where level 6 ran at 31 MB/s for 0.33
#: (bench/records.py); random values barely shrink (0.87) at either level
ZLIB_LEVEL: Final = 1

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(list[Record])
_loose_decoder: Final = msgspec.msgpack.Decoder(list[_LooseRecord])


def encode_record(record: Record) -> bytes:
    """One record as MessagePack: the unit ``join_encoded`` puts into a batch."""
    return _encoder.encode(record)


def encode_batch(records: Sequence[Record]) -> bytes:
    """A batch of records as one MessagePack array."""
    return _encoder.encode(records if isinstance(records, list | tuple) else list(records))


def batch_header(n: int) -> bytes:
    """The bytes a batch of ``n`` records starts with: ``join_encoded`` without the records.

    MessagePack's smallest array header for n elements, as every encoder writes it.
    """
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xdd" + n.to_bytes(4, "big")
    raise LocalProtocolError(f"batch of {n} records exceeds MessagePack's limit of {(1 << 32) - 1}")


def join_encoded(encoded: Sequence[bytes]) -> bytes:
    """A batch from records already encoded by ``encode_record``; equal to ``encode_batch``."""
    return b"".join((batch_header(len(encoded)), *encoded))


def _batch_length(data: Buffer) -> int:
    """The record count announced by a batch's array header, read before decoding."""
    if not data:
        raise DecodeError("record batch is empty: no MessagePack array header")
    first = data[0]
    if first & 0xF0 == 0x90:
        return first & 0x0F
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    raise DecodeError(
        f"record batch does not start with a MessagePack array header (0x{first:02x})"
    )


@functools.lru_cache(maxsize=1024)
def _legal_topic(topic: str) -> bool:
    # few distinct topics cross a diode: cache the verdict instead of matching every record
    # (only names already known to be short reach here, so the cache stays small)
    return topic not in (".", "..") and _TOPIC_RE.fullmatch(topic) is not None


def _topic_problem(topic: str) -> str | None:
    if not topic:
        return "topic is empty"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"topic is {len(topic)} characters, exceeds Kafka's limit of {MAX_TOPIC_LENGTH}"
    if not _legal_topic(topic):
        return f"topic {topic!r} is not a legal Kafka topic name"
    return None


def _record_problem(index: int, record: Record | _LooseRecord) -> DecodeError:
    """The error for a record the fast check in ``decode_batch`` refused."""
    problem = _topic_problem(record.topic)
    if problem is not None:
        return DecodeError(f"record {index}: {problem}")
    if not 0 <= record.partition <= MAX_PARTITION:
        return DecodeError(
            f"record {index}: partition {record.partition} outside 0..{MAX_PARTITION}"
        )
    if not 0 <= record.offset <= MAX_INT64:
        return DecodeError(f"record {index}: offset {record.offset} outside 0..{MAX_INT64}")
    return DecodeError(
        f"record {index}: timestamp {record.timestamp} outside {MIN_TIMESTAMP}..{MAX_INT64}"
    )


def decode_batch(data: Buffer, *, max_records: int) -> list[Record]:
    """Decode and validate a batch; raise ``DecodeError`` (only) for anything malformed.

    The announced record count is checked against ``max_records`` before anything is
    decoded. Trailing elements after a record's seven fields are ignored (a later format
    may append fields); missing ones other than ``headers`` are an error.
    """
    count = _batch_length(data)
    if count > max_records:
        raise DecodeError(f"record batch announces {count} records, exceeds limit {max_records}")
    failure: Exception
    try:
        records: list[Record] = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        failure = exc
    except (msgspec.DecodeError, ValueError) as exc:
        # ValueError: msgspec lets UnicodeDecodeError through for a str that is not UTF-8
        raise DecodeError(f"record batch is malformed: {exc}") from exc
    else:
        # few distinct topics per batch: one cached verdict each instead of a regex per record
        bad = [topic for topic in {r.topic for r in records} if not _legal_topic(topic)]
        if bad:
            index = next(i for i, r in enumerate(records) if r.topic in bad)
            raise _record_problem(index, records[index])
        return records
    # a field outside its limits, or of the wrong type: decode again without the limits
    # to name the record and the problem
    try:
        loose = _loose_decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:
        raise DecodeError(f"record batch is malformed: {exc}") from exc
    for index, record in enumerate(loose):
        if not (
            0 < len(record.topic) <= MAX_TOPIC_LENGTH
            and _legal_topic(record.topic)
            and 0 <= record.partition <= MAX_PARTITION
            and 0 <= record.offset <= MAX_INT64
            and MIN_TIMESTAMP <= record.timestamp <= MAX_INT64
        ):
            raise _record_problem(index, record)
    raise DecodeError(f"record batch is malformed: {failure}") from failure


def compress(data: bytes, method: Compression) -> bytes:
    """Compress a batch with ``method``."""
    if method is Compression.NONE:
        return data
    if method is Compression.ZLIB:
        return zlib.compress(data, ZLIB_LEVEL)
    raise LocalProtocolError(f"unknown compression method {method!r}")


def decompress(data: Buffer, method: Compression, *, max_size: int) -> Buffer:
    """Undo ``compress``; raise ``DecodeError`` if the output would exceed ``max_size``.

    Never inflates more than ``max_size + 1`` bytes, whatever the input claims: a small
    datagram cannot make the receiver allocate a large buffer.
    """
    if method == Compression.NONE:
        if len(data) > max_size:
            raise DecodeError(f"batch of {len(data)} bytes exceeds limit {max_size}")
        return data
    if method != Compression.ZLIB:
        raise DecodeError(f"unknown compression method {method!r}")
    inflater = zlib.decompressobj()
    try:
        # one byte beyond the limit tells "too big" apart from "exactly max_size"
        out = inflater.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise DecodeError(f"zlib batch is malformed: {exc}") from exc
    if len(out) > max_size:
        raise DecodeError(f"zlib batch inflates beyond limit {max_size}")
    if not inflater.eof:
        raise DecodeError(f"zlib batch is truncated after {len(data)} bytes")
    if inflater.unused_data:
        raise DecodeError(f"zlib batch has {len(inflater.unused_data)} bytes after its end")
    return out
