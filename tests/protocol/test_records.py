"""The record batch codec: exact round trips, join_encoded == encode_batch, and DecodeError
(and nothing else) for every malformed batch or compressed payload."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import DecodeError
from diode.protocol.records import (
    MAX_INT64,
    MAX_PARTITION,
    MAX_TOPIC_LENGTH,
    Compression,
    Record,
    compress,
    decode_batch,
    decompress,
    encode_batch,
    encode_record,
    join_encoded,
)

_TOPIC_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

topics = st.text(alphabet=_TOPIC_CHARS, min_size=1, max_size=MAX_TOPIC_LENGTH).filter(
    lambda t: t not in (".", "..")
)
optional_bytes = st.none() | st.binary(max_size=64)
headers = st.lists(st.tuples(st.text(max_size=12), optional_bytes), max_size=4).map(tuple)
records = st.builds(
    Record,
    topic=topics,
    partition=st.integers(min_value=0, max_value=MAX_PARTITION),
    offset=st.integers(min_value=0, max_value=MAX_INT64),
    timestamp=st.integers(min_value=-1, max_value=MAX_INT64),
    key=optional_bytes,
    value=optional_bytes,
    headers=headers,
)
batches = st.lists(records, max_size=20)


def _record(**changes: object) -> Record:
    fields: dict[str, object] = {
        "topic": "plant.line-1_temps",
        "partition": 3,
        "offset": 42,
        "timestamp": 1_700_000_000_000,
        "key": b"sensor-7",
        "value": b'{"t": 21.5}',
        "headers": (("unit", b"C"), ("empty", b""), ("null", None)),
    }
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(batch=batches)
def test_batch_round_trip_and_join_matches(batch: list[Record]) -> None:
    data = encode_batch(batch)
    assert join_encoded([encode_record(r) for r in batch]) == data
    assert decode_batch(data, max_records=len(batch)) == batch


@pytest.mark.parametrize(
    "record",
    [
        _record(key=None, value=None, headers=()),
        _record(key=b"", value=b""),
        _record(headers=(("ünïcødé-名前", b"\x00\xff"), ("dup", b"1"), ("dup", None))),
        _record(offset=2**63 - 1, timestamp=2**63 - 1, partition=2**31 - 1),
        _record(offset=0, partition=0, timestamp=0),
        _record(timestamp=-1),  # Kafka's "no timestamp" crosses as it is
        _record(topic="a" * MAX_TOPIC_LENGTH),
    ],
    ids=["nulls", "empty", "unicode-headers", "max-ints", "zeros", "no-timestamp", "long-topic"],
)
def test_edge_records_round_trip(record: Record) -> None:
    assert decode_batch(encode_batch([record]), max_records=1) == [record]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_join_encoded_array_header_sizes(n: int) -> None:
    record = _record(headers=(), value=b"")
    encoded = encode_record(record)
    joined = join_encoded([encoded] * n)
    assert joined == encode_batch([record] * n)
    assert len(decode_batch(joined, max_records=n)) == n


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_record(topic=""), "topic is empty"),
        (_record(topic="a" * 250), "250 characters, exceeds Kafka's limit of 249"),
        (_record(topic="bad topic"), "not a legal Kafka topic name"),
        (_record(topic="tö"), "not a legal Kafka topic name"),
        (_record(topic=".."), "not a legal Kafka topic name"),
        (_record(partition=-1), "partition -1 outside"),
        (_record(partition=2**31), "partition 2147483648 outside"),
        (_record(offset=-5), "offset -5 outside"),
        (_record(offset=2**63), "offset 9223372036854775808 outside"),
        (_record(timestamp=-2), "timestamp -2 outside"),
        (_record(timestamp=2**64 - 1), "timestamp 18446744073709551615 outside"),
    ],
)
def test_invalid_records_are_refused(record: Record, message: str) -> None:
    good = _record()
    with pytest.raises(DecodeError, match=rf"record 1: .*{message}"):
        decode_batch(encode_batch([good, record]), max_records=10)


def test_too_many_records_refused_before_decoding() -> None:
    data = encode_batch([_record()] * 5)
    assert len(decode_batch(data, max_records=5)) == 5
    with pytest.raises(DecodeError, match="announces 5 records, exceeds limit 4"):
        decode_batch(data, max_records=4)
    # a header that lies about a huge count is refused before any allocation
    lying = b"\xdd\xff\xff\xff\xff" + encode_record(_record())
    with pytest.raises(DecodeError, match="announces 4294967295 records"):
        decode_batch(lying, max_records=1000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc0",
        b"\x80",
        b"\xdc\x00",
        b"\xdd\x00\x00",
        b"\x91",
        b"\x91\x96",  # truncated record
        b"\x91\x95\xa1t\x00\x00\x00\xc0",  # five fields: value missing
        b"\x91\x97\xa1t\xc3\x00\x00\xc0\xc0\x90",  # bool partition
        b"\x91\x97\xa1t\x00\x00\x00\xa1k\xc0\x90",  # str key
        b"\x91\x97\xa1t\x00\x00\x00\xc0\xc0\x91\x91\xa1h",  # header without a value
    ],
)
def test_malformed_batches_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_batch(data, max_records=10)


def test_trailing_bytes_and_truncation_raise() -> None:
    data = encode_batch([_record(), _record(offset=43)])
    with pytest.raises(DecodeError, match="malformed"):
        decode_batch(data + b"\x00", max_records=10)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_batch(data[:cut], max_records=10)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_garbage_raises_decode_error_only(data: bytes, seed: int) -> None:
    # random bytes, and a valid batch with random bytes flipped: a result or DecodeError
    mutated = bytearray(encode_batch([_record(), _record(offset=43, key=None)]))
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    for candidate in (data, bytes(mutated)):
        try:
            decoded = decode_batch(candidate, max_records=10)
        except DecodeError:
            continue
        assert all(isinstance(r, Record) for r in decoded)


def test_deeply_nested_garbage_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_batch(b"\x91" * 100_000, max_records=10)


# --- compression ------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), method=st.sampled_from(Compression))
def test_compression_round_trip(data: bytes, method: Compression) -> None:
    packed = compress(data, method)
    assert decompress(packed, method, max_size=len(data)) == data
    if data:
        with pytest.raises(DecodeError, match=f"limit {len(data) - 1}"):
            decompress(packed, method, max_size=len(data) - 1)


def test_compression_shrinks_repetitive_batches() -> None:
    batch = encode_batch([_record(offset=i) for i in range(100)])
    assert len(compress(batch, Compression.ZLIB)) < len(batch) // 4
    assert compress(batch, Compression.NONE) is batch


def test_decompression_bomb_refused() -> None:
    bomb = zlib.compress(bytes(20_000_000), 9)
    assert len(bomb) < 50_000
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="inflates beyond limit 65536"):
            decompress(bomb, Compression.ZLIB, max_size=65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # refused after inflating just past the limit, not after inflating the 20 MB
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not zlib at all", "malformed"),
        (zlib.compress(b"x" * 1000)[:-3], "truncated"),
        (zlib.compress(b"x" * 1000) + b"tail", "4 bytes after its end"),
        (b"", "truncated"),
    ],
)
def test_bad_zlib_raises_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decompress(data, Compression.ZLIB, max_size=10_000)


def test_decoder_error_is_msgspec_independent() -> None:
    # the only error type a caller must handle is DecodeError, not msgspec's own
    with pytest.raises(DecodeError) as info:
        decode_batch(b"\x91\x01", max_records=1)
    assert not isinstance(info.value, msgspec.DecodeError)
    assert isinstance(info.value.__cause__, msgspec.DecodeError)
