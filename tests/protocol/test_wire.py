"""Header and body layout: round trips, and every malformed field rejected with a reason."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import AuthenticationError, ConfigError, DecodeError, MalformedDatagramError
from diode.protocol.crypto import (
    Cipher,
    ReceiverPrivateKey,
    SessionCipher,
    unwrap_session_key,
    wrap_session_key,
)
from diode.protocol.events import DatagramRejected, PartitionMark
from diode.protocol.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    DatagramType,
    Header,
    Heartbeat,
    ManifestEntry,
    ProtocolConfig,
    Range,
    make_nonce,
    pack_manifest_entries,
    parse_header,
    unpack_manifest,
)
from tests.protocol.sessionkit import Pair

CFG = ProtocolConfig()
SID = bytes(range(8))


def build(
    dtype: int = 1,
    number: int = 3,
    index: int = 0,
    k: int = 4,
    m: int = 1,
    length: int = 100,
    *,
    magic: int = MAGIC,
    version: int = VERSION,
    body: int | None = None,
    trailer: int = 16,
) -> bytes:
    header = HEADER.pack(
        magic, version, dtype, SID, 1, CFG.fingerprint, number, index, k, m, length
    )
    return header + bytes(length if body is None else body) + bytes(trailer)


def parse(data: bytes) -> Header:
    return parse_header(data, payload_size=CFG.payload_size, max_k=CFG.max_k)


@given(
    st.sampled_from(list(DatagramType)),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(1, 1000),
)
@settings(max_examples=100, deadline=None)
def test_header_round_trip(
    dtype: DatagramType, sid: bytes, key_id: int, number: int, length: int
) -> None:
    data_shape = dtype == DatagramType.DATA
    header = Header(
        dtype,
        sid,
        key_id,
        CFG.fingerprint,
        number,
        3 if data_shape else 0,
        8 if data_shape else 0,
        2 if data_shape else 0,
        length,
    )
    trailer = 64 if dtype == DatagramType.ANNOUNCE else 16
    datagram = header.pack() + bytes(length + trailer)
    assert parse(datagram) == header


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (build()[: HEADER_SIZE - 1], "truncated"),
        (build(length=1420, body=1430), "oversized"),
        (build(magic=0xBEEF), "magic"),
        (build(version=2), "version"),
        (build(dtype=0), "type"),
        (build(dtype=9), "type"),
        (build(body=99), "length"),
        (build(body=101), "length"),
        (build(trailer=15), "length"),
        (build(k=0), "field"),
        (build(k=CFG.max_k + 1), "field"),
        (build(k=4, m=9), "field"),
        (build(index=5, k=4, m=1), "field"),
        (build(length=0), "length"),
        (build(number=2**63), "field"),
        (build(dtype=DatagramType.HEARTBEAT, index=1), "field"),
        (build(dtype=DatagramType.MANIFEST, k=1, m=0), "field"),
        (build(dtype=DatagramType.ANNOUNCE, k=1, m=0, trailer=64), "field"),
        (build(dtype=DatagramType.HEARTBEAT, length=2000, body=2000), "oversized"),
    ],
)
def test_malformed_headers(data: bytes, reason: str, make_pair: Callable[..., Pair]) -> None:
    with pytest.raises(MalformedDatagramError) as info:
        parse(data)
    assert info.value.reason == reason
    # the session turns the same input into an event with the same reason and message
    pair = make_pair()
    pair.receiver.receive_datagram(data, 0.0)
    assert pair.receiver.events() == [DatagramRejected(reason, str(info.value))]
    assert pair.receiver.counters().rejected == {reason: 1}
    assert pair.receiver.state_size() == make_pair().receiver.state_size()


@pytest.mark.parametrize(
    ("data", "numbers"),
    [
        (b"\x00" * 20, ["20", "36"]),
        (build(length=1420, body=1430), ["1482", "1472"]),
        (build(magic=0xBEEF), ["0xbeef", "0xd10d"]),
        (build(version=2), ["2", "1"]),
        (build(dtype=9), ["9", "1..4"]),
        (build(body=99), ["151", "100", "152"]),
        (build(k=CFG.max_k + 1), [str(CFG.max_k + 1), str(CFG.max_k)]),
        (build(k=4, m=9), ["m=9", "k+1=5"]),
        (build(index=5, k=4, m=1), ["5", "0..4"]),
        (build(number=2**63), [str(2**63), "2**63"]),
    ],
)
def test_header_errors_name_the_value_and_the_limit(data: bytes, numbers: list[str]) -> None:
    with pytest.raises(MalformedDatagramError) as info:
        parse(data)
    for number in numbers:
        assert number in str(info.value)


@pytest.mark.parametrize("dtype", [DatagramType.DATA, DatagramType.HEARTBEAT])
def test_a_body_length_far_beyond_the_datagram_is_rejected(
    dtype: DatagramType, make_pair: Callable[..., Pair]
) -> None:
    shape = {"index": 0, "k": 4, "m": 1} if dtype == DatagramType.DATA else {"k": 0, "m": 0}
    data = build(dtype=dtype, length=65535, body=100, **shape)
    with pytest.raises(MalformedDatagramError, match="65535") as info:
        parse(data)
    assert info.value.reason == "length"
    pair = make_pair()
    pair.receiver.receive_datagram(data, 0.0)
    (event,) = pair.receiver.events()
    assert isinstance(event, DatagramRejected) and event.reason == "length"
    assert "65535" in event.detail
    assert pair.receiver.state_size() == make_pair().receiver.state_size()


@pytest.mark.parametrize("dtype", [DatagramType.HEARTBEAT, DatagramType.MANIFEST])
def test_control_datagram_without_a_body_is_rejected_before_its_tag(
    dtype: DatagramType, make_pair: Callable[..., Pair]
) -> None:
    data = build(dtype=dtype, index=0, k=0, m=0, length=0)
    parse(data)  # a well-formed header: only the session knows a body cannot be empty
    pair = make_pair()
    pair.receiver.receive_datagram(data, 0.0)
    (event,) = pair.receiver.events()
    assert isinstance(event, DatagramRejected) and event.reason == "length"
    assert f"{len(data)} bytes" in event.detail and "53" in event.detail


def test_symbol_longer_than_the_symbol_size_is_rejected(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(ProtocolConfig(payload_size=1472))
    data = build(length=1421)[:1472]
    pair.receiver.receive_datagram(data, 0.0)
    assert pair.receiver.events() == [
        DatagramRejected("length", "symbol length 1421 exceeds the symbol size 1420")
    ]


def test_other_config_fingerprint_is_rejected_naming_both(make_pair: Callable[..., Pair]) -> None:
    other = ProtocolConfig(k=16, m=4).fingerprint
    header = HEADER.pack(MAGIC, VERSION, 1, SID, 1, other, 3, 0, 4, 1, 100)
    pair = make_pair()
    pair.receiver.receive_datagram(header + bytes(116), 0.0)
    (event,) = pair.receiver.events()
    assert isinstance(event, DatagramRejected) and event.reason == "config"
    assert f"{other:08x}" in event.detail and f"{CFG.fingerprint:08x}" in event.detail


def test_nonces_are_unique_per_type_number_index() -> None:
    seen = {make_nonce(t, n, i) for t in DatagramType for n in (0, 1, 2**40) for i in (0, 1, 255)}
    assert len(seen) == len(DatagramType) * 9
    assert all(len(n) == 12 for n in seen)


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz._-0123456789", min_size=1, max_size=40)
_U32 = st.integers(0, 2**31 - 1)
_U64 = st.integers(0, 2**63 - 1)


@st.composite
def _ranges(draw: st.DrawFn) -> Range:
    first = draw(_U64)
    last = draw(st.integers(first, min(first + 10**6, 2**63 - 1)))
    count = draw(st.integers(1, min(last - first + 1, 2**32 - 1)))
    return Range(draw(_NAMES), draw(_U32), first, last, count)


_ENTRIES = st.lists(
    st.builds(
        ManifestEntry,
        _U64,
        st.binary(min_size=32, max_size=32),
        st.lists(_ranges(), max_size=4).map(tuple),
    ),
    max_size=8,
)
_HEARTBEATS = st.builds(
    Heartbeat,
    _U64,
    _U64,
    _U64,
    _U64,
    st.binary(min_size=32, max_size=32),
    st.lists(st.builds(PartitionMark, _NAMES, _U32, _U64, _U64, _U64), max_size=12).map(tuple),
)


@given(_ENTRIES, st.binary(min_size=64, max_size=64))
@settings(max_examples=100, deadline=None)
def test_manifest_round_trip(entries: list[ManifestEntry], signature: bytes) -> None:
    body = pack_manifest_entries(entries)
    assert unpack_manifest(body + signature, max_entries=len(entries)) == (
        body,
        entries,
        signature,
    )


@given(_HEARTBEATS)
@settings(max_examples=100, deadline=None)
def test_heartbeat_round_trip(heartbeat: Heartbeat) -> None:
    assert Heartbeat.unpack(heartbeat.pack()) == heartbeat


def test_manifest_round_trip_and_truncation() -> None:
    entries = [
        ManifestEntry(7, b"d" * 32, (Range("a", 1, 10, 20, 5), Range("bb", 0, 3, 3, 1))),
        ManifestEntry(8, b"e" * 32, (Range("a", 1, 21, 40, 19),)),
    ]
    body = pack_manifest_entries(entries)
    got_body, got, signature = unpack_manifest(body + b"s" * 64, max_entries=10)
    assert got == entries and got_body == body and signature == b"s" * 64
    for cut in range(0, len(body), 7):
        with pytest.raises(DecodeError):
            unpack_manifest(body[:cut] + b"s" * 64, max_entries=10)
    with pytest.raises(DecodeError, match="exceeds limit 1"):
        unpack_manifest(body + b"s" * 64, max_entries=1)
    bad = pack_manifest_entries([ManifestEntry(1, b"d" * 32, (Range("a", 1, 9, 5, 1),))])
    with pytest.raises(DecodeError, match="inconsistent"):
        unpack_manifest(bad + b"s" * 64, max_entries=10)


def test_heartbeat_round_trip_and_truncation() -> None:
    hb = Heartbeat(5, 100, 20000, 300, b"p" * 32, (PartitionMark("t", 2, 99, 4, 50),))
    body = hb.pack()
    assert Heartbeat.unpack(body) == hb
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            Heartbeat.unpack(body[:cut])
    with pytest.raises(DecodeError):
        Heartbeat.unpack(body + b"x")


def test_config_fingerprint_and_validation() -> None:
    assert ProtocolConfig().fingerprint == ProtocolConfig().fingerprint
    assert ProtocolConfig(k=16).fingerprint != ProtocolConfig().fingerprint
    assert ProtocolConfig(cipher=Cipher.CHACHA20_POLY1305).fingerprint != CFG.fingerprint
    assert CFG.symbol_size == 1472 - HEADER_SIZE - 16
    assert ProtocolConfig(payload_size=8972).symbol_size == 8972 - HEADER_SIZE - 16
    assert CFG.repair_for(32) == 8 and CFG.repair_for(5) == 2 and CFG.repair_for(12) == 3
    # short blocks get two repair symbols, never more than k+1
    assert CFG.repair_for(1) == 2
    assert ProtocolConfig(k=8, m=1).repair_for(1) == 1
    assert all(ProtocolConfig(k=16, m=16).repair_for(n) <= n + 1 for n in range(1, 201))
    for bad in (
        dict(payload_size=100),
        dict(k=0),
        dict(m=-1),
        dict(k=8, m=16),
        dict(linger=0.0),
        dict(max_block_symbols=250),
        dict(codec="nope"),
    ):
        with pytest.raises(ConfigError):
            ProtocolConfig(**bad)


def test_key_wrap() -> None:
    receiver = ReceiverPrivateKey.from_seed(b"r" * 32)
    other = ReceiverPrivateKey.from_seed(b"o" * 32)
    wrapped = wrap_session_key(receiver.public_key, b"k" * 32, b"e" * 32, b"ctx")
    assert unwrap_session_key(receiver, wrapped, b"ctx") == b"k" * 32
    with pytest.raises(AuthenticationError):
        unwrap_session_key(other, wrapped, b"ctx")
    with pytest.raises(AuthenticationError):
        unwrap_session_key(receiver, wrapped, b"other context")
    with pytest.raises(AuthenticationError):
        unwrap_session_key(receiver, wrapped[:-1], b"ctx")


@pytest.mark.parametrize("cipher", list(Cipher))
def test_session_cipher(cipher: Cipher) -> None:
    c = SessionCipher(cipher, b"k" * 32)
    nonce = make_nonce(1, 2, 3)
    sealed = c.seal(nonce, b"body", b"aad")
    assert c.open(nonce, sealed, b"aad") == b"body"
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[1:]):
        with pytest.raises(AuthenticationError):
            c.open(nonce, bad, b"aad")
    with pytest.raises(AuthenticationError):
        c.open(make_nonce(1, 2, 4), sealed, b"aad")
    assert struct.calcsize(">BQHx") == 12
