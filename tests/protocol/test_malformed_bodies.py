"""Authenticated datagrams whose content lies: every field of every body is checked after the
tag, and each bad one becomes a ``DatagramRejected`` with a reason and a message that names
the value and the limit, never an exception, never state, never a delivered record.

The datagrams here are sealed under a session key the test itself makes and announces
(signed with the sender's identity key), so they pass every check up to the one under test.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from diode.protocol.crypto import Cipher, SessionCipher, wrap_session_key
from diode.protocol.events import (
    BlocksLost,
    DatagramRejected,
    Event,
    GapDetected,
    HeartbeatReceived,
    ManifestVerified,
    PartitionMark,
    RecordsDelivered,
    SessionStarted,
)
from diode.protocol.fec import get_codec
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Compression, Record, encode_batch
from diode.protocol.sender import ANNOUNCE_DOMAIN
from diode.protocol.wire import (
    BLOCK_HEADER,
    HEADER,
    MAGIC,
    NONCE,
    VERSION,
    Announcement,
    DatagramType,
    Heartbeat,
    ManifestEntry,
    ProtocolConfig,
    Range,
    key_context,
    manifest_signed_message,
    pack_manifest_entries,
)
from tests.protocol.sessionkit import RECEIVER, SIGNING

CFG = ProtocolConfig(interleave=1)
SID = b"\x5e\x55\x10\x4e\x00\x00\x00\x01"
KEY = bytes(range(100, 132))
TOPIC = "plant.a"


class Sender:
    """A minimal honest sender: one announced key, control datagrams and blocks on demand."""

    def __init__(self, key_id: int = 1) -> None:
        self.key_id = key_id
        self.cipher = SessionCipher(Cipher.AES_256_GCM, KEY)

    def announcement(self, body: bytes | None = None, *, sid: bytes = SID) -> bytes:
        if body is None:
            ctx = key_context(sid, self.key_id, Cipher.AES_256_GCM, CFG.fingerprint)
            wrapped = wrap_session_key(RECEIVER.public_key, KEY, b"e" * 32, ctx)
            body = Announcement(Cipher.AES_256_GCM, wrapped).pack()
        fields = (DatagramType.ANNOUNCE, sid, self.key_id, CFG.fingerprint, 0, 0, 0, 0)
        header = HEADER.pack(MAGIC, VERSION, *fields, len(body))
        return header + body + SIGNING.sign(ANNOUNCE_DOMAIN + header + body)

    def control(self, dtype: DatagramType, number: int, plain: bytes) -> bytes:
        header = HEADER.pack(
            MAGIC, VERSION, dtype, SID, self.key_id, CFG.fingerprint, number, 0, 0, 0, len(plain)
        )
        return header + self.cipher.seal(NONCE.pack(dtype, number, 0), plain, header)

    def manifest(self, seq: int, entries: list[ManifestEntry]) -> bytes:
        body = pack_manifest_entries(entries)
        signature = SIGNING.sign(manifest_signed_message(SID, seq, body))
        return self.control(DatagramType.MANIFEST, seq, body + signature)

    def block(self, number: int, block: bytes, k: int = 1) -> list[bytes]:
        """Every DATA datagram (source and repair) of a block of ``k`` equal symbols."""
        symlen = len(block) // k
        m = CFG.repair_for(k)
        symbols = [block[i * symlen : (i + 1) * symlen] for i in range(k)]
        symbols += get_codec(CFG.codec).encode_block(block, k, m)
        out = []
        for index, symbol in enumerate(symbols):
            fields = (DatagramType.DATA, SID, self.key_id, CFG.fingerprint, number, index)
            header = HEADER.pack(MAGIC, VERSION, *fields, k, m, symlen)
            out.append(header + self.cipher.seal(NONCE.pack(1, number, index), symbol, header))
        return out


def started() -> tuple[ReceiverSession, Sender]:
    """A receiver that has verified the sender's announcement; its events drained."""
    sender = Sender()
    receiver = ReceiverSession(CFG, RECEIVER, SIGNING.verify_key)
    receiver.receive_datagram(sender.announcement(), 0.0)
    events = receiver.events()
    assert any(isinstance(e, SessionStarted) for e in events), events
    return receiver, sender


def rejections(events: list[Event]) -> list[DatagramRejected]:
    return [e for e in events if isinstance(e, DatagramRejected)]


# --------------------------------------------------------------------------- heartbeats

_HB_HEAD = struct.pack(">QQQQ32s", 0, 0, 0, 0, bytes(32))
_MARK = struct.Struct(">HIQQQ")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_HB_HEAD[:10], ["heartbeat head needs 64 bytes", "only 10 left"]),
        (_HB_HEAD + b"\x00\x05", ["topic count 5 needs at least 10 bytes", "only 0 left"]),
        (_HB_HEAD + b"\x00\x01\x00" + b"\x00\x00", ["topic length 0 outside 1..249"]),
        (_HB_HEAD + b"\x00\x01\x02\xff\xfe\x00\x00", ["topic name is not UTF-8"]),
        (_HB_HEAD + b"\x00\x01\x01t", ["mark count needs 2 bytes", "only 0 left"]),
        (_HB_HEAD + b"\x00\x00\x00\x03", ["announces 3 marks", "0 bytes left"]),
        (
            _HB_HEAD + b"\x00\x01\x01t\x00\x01" + _MARK.pack(0, 0, 1, 0, 1) + b"x",
            ["announces 1 marks", "31 bytes left"],
        ),
        (
            _HB_HEAD + b"\x00\x01\x01t\x00\x01" + _MARK.pack(4, 0, 1, 0, 1),
            ["mark names topic 4 of 1"],
        ),
    ],
    ids=[
        "short-head",
        "topic-count-lies",
        "empty-topic",
        "topic-not-utf8",
        "no-mark-count",
        "mark-count-lies",
        "trailing-byte",
        "topic-index-out-of-range",
    ],
)
def test_authenticated_heartbeat_that_lies_is_rejected(body: bytes, words: list[str]) -> None:
    receiver, sender = started()
    before = receiver.state_size()
    receiver.receive_datagram(sender.control(DatagramType.HEARTBEAT, 1, body), 0.01)
    events = receiver.events()
    assert not any(isinstance(e, HeartbeatReceived) for e in events)
    (event,) = rejections(events)
    assert event.reason == "decode"
    for word in words:
        assert word in event.detail
    assert receiver.counters().rejected == {"decode": 1}
    assert receiver.state_size() == before
    # the sequence was not consumed: the same number, well formed, is taken
    good = Heartbeat(0, 0, 0, 0, bytes(32), ()).pack()
    receiver.receive_datagram(sender.control(DatagramType.HEARTBEAT, 1, good), 0.02)
    assert [e.sequence for e in receiver.events() if isinstance(e, HeartbeatReceived)] == [1]


# --------------------------------------------------------------------------- manifests

_SIG = bytes(64)
_ENTRY = struct.Struct(">Q32sH")
_RANGE = struct.Struct(">HIQQI")


def one_range(rng: bytes, tail: bytes = b"") -> bytes:
    """A manifest of one topic and one entry holding the packed range ``rng``, signature last."""
    return b"\x00\x01\x01t\x00\x01" + _ENTRY.pack(0, bytes(32), 1) + rng + tail + _SIG


@pytest.mark.parametrize(
    ("plain", "words"),
    [
        (b"x" * 10, ["manifest of 10 bytes is shorter than its signature"]),
        (
            b"\x00\x00\x00\x64" + _SIG,
            [f"lists 100 blocks, exceeds limit {CFG.payload_size // 40 + 1}"],
        ),
        (b"\x00\x00\x00\x01" + _SIG, ["entry needs 42 bytes at offset 4", "only 0 left"]),
        (
            b"\x00\x00\x00\x01" + _ENTRY.pack(0, bytes(32), 5) + _SIG,
            ["announces 5 ranges (130 bytes)", "only 0 left"],
        ),
        (
            one_range(_RANGE.pack(3, 0, 1, 2, 2)),
            ["range names topic 3 of 1"],
        ),
        (
            one_range(_RANGE.pack(0, 0, 9, 5, 1)),
            ["range 9..5 count 1 is inconsistent"],
        ),
        (
            one_range(_RANGE.pack(0, 0, 1, 2, 3)),
            ["range 1..2 count 3 is inconsistent"],
        ),
        (
            one_range(_RANGE.pack(0, 0, 1, 2, 2), b"zz"),
            ["manifest: 2 bytes after the end"],
        ),
        (b"\x00\x09" + _SIG, ["topic count 9 needs at least 18 bytes", "only 0 left"]),
    ],
    ids=[
        "shorter-than-signature",
        "too-many-entries",
        "entry-missing",
        "range-count-lies",
        "topic-index-out-of-range",
        "first-after-last",
        "count-beyond-range",
        "trailing-bytes",
        "topic-count-lies",
    ],
)
def test_authenticated_manifest_that_lies_is_rejected(plain: bytes, words: list[str]) -> None:
    receiver, sender = started()
    before = receiver.state_size()
    receiver.receive_datagram(sender.control(DatagramType.MANIFEST, 0, plain), 0.01)
    receiver.poll(1.0)
    events = receiver.events()
    assert not any(isinstance(e, ManifestVerified) for e in events)
    (event,) = rejections(events)
    assert event.reason == "decode"
    for word in words:
        assert word in event.detail
    assert receiver.counters().rejected == {"decode": 1}
    assert receiver.state_size() == before


# --------------------------------------------------------------------------- announcements

_GOOD_ANNOUNCEMENT = Announcement(Cipher.AES_256_GCM, bytes(80)).pack()


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (_GOOD_ANNOUNCEMENT[:-1], "decode", ["announcement body is 83 bytes, expected 84"]),
        (_GOOD_ANNOUNCEMENT + b"x", "decode", ["announcement body is 85 bytes, expected 84"]),
        (b"\x09" + _GOOD_ANNOUNCEMENT[1:], "decode", ["unknown cipher 9"]),
        (
            Announcement(Cipher.CHACHA20_POLY1305, bytes(80)).pack(),
            "config",
            ["CHACHA20_POLY1305", "AES_256_GCM"],
        ),
        (_GOOD_ANNOUNCEMENT, "authentication", ["key exchange failed"]),  # all-zero point
        (
            Announcement(Cipher.AES_256_GCM, RECEIVER.public_key.raw + bytes(48)).pack(),
            "authentication",
            ["wrapped key did not verify"],
        ),
    ],
    ids=["short", "long", "unknown-cipher", "other-cipher", "zero-point", "bad-wrap"],
)
def test_signed_announcement_that_lies_starts_no_session(
    body: bytes, reason: str, words: list[str]
) -> None:
    receiver = ReceiverSession(CFG, RECEIVER, SIGNING.verify_key)
    before = receiver.state_size()
    receiver.receive_datagram(Sender().announcement(body), 0.0)
    events = receiver.events()
    (event,) = events
    assert isinstance(event, DatagramRejected) and event.reason == reason
    for word in words:
        assert word in event.detail
    assert receiver.session_id is None
    assert receiver.counters().announcements_verified == 0
    assert receiver.state_size() == before


# --------------------------------------------------------------------------- blocks

RECORDS = [
    Record(TOPIC, 0, 10, 1_700_000_000_000, b"k0", b"v" * 40),
    Record(TOPIC, 0, 12, 1_700_000_000_001, None, b"w" * 40, (("h", None),)),
    Record(TOPIC, 3, 7, 1_700_000_000_002, b"k2", None),
]
RANGES = (Range(TOPIC, 0, 10, 12, 2), Range(TOPIC, 3, 7, 7, 1))


def make_block(
    batch: bytes,
    *,
    batch_length: int | None = None,
    raw_length: int | None = None,
    count: int = len(RECORDS),
    compression: int = Compression.NONE,
    reserved: int = 0,
    padding: bytes = bytes(7),
) -> bytes:
    """A block as the sender lays it out, with any field of its header overridden."""
    head = BLOCK_HEADER.pack(
        len(batch) if batch_length is None else batch_length,
        len(batch) if raw_length is None else raw_length,
        count,
        compression,
        reserved,
    )
    return head + batch + padding


BATCH = encode_batch(RECORDS)
BOMB = zlib.compress(bytes(1_000_000))


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (b"\x00" * 10, ["block of 10 bytes is shorter than its header"]),
        (
            make_block(BATCH, batch_length=len(BATCH) + 100),
            [f"announces {len(BATCH) + 100} batch bytes", f"holds {len(BATCH) + 7}"],
        ),
        (make_block(BATCH, reserved=5), ["reserved field is 5, expected 0"]),
        (make_block(BATCH, raw_length=CFG.max_k * CFG.symbol_size + 1), ["exceeds limit 284000"]),
        (make_block(BATCH, padding=b"\x00\x01"), ["padding is not zero"]),
        (make_block(BATCH, compression=7), ["unknown compression 7"]),
        (make_block(BATCH, count=1000), [f"announces 1000 records in {len(BATCH)} bytes"]),
        (
            make_block(BATCH, raw_length=len(BATCH) - 1),
            [f"batch is {len(BATCH)} bytes", f"says {len(BATCH) - 1}"],
        ),
        (make_block(BATCH, count=2), ["announces 3 records, exceeds limit 2"]),
        (make_block(b"\xc1" * 20, count=1), ["does not start with a MessagePack array"]),
        (
            make_block(BOMB, raw_length=4096, compression=Compression.ZLIB),
            ["inflates beyond limit 4096"],
        ),
        (
            make_block(zlib.compress(BATCH)[:-4], raw_length=len(BATCH), compression=1),
            ["zlib batch is truncated"],
        ),
        (
            make_block(encode_batch([*RECORDS[:2], Record(TOPIC, 3, -1, 0, None, None)])),
            ["record 2: offset -1 outside 0.."],
        ),
        (
            make_block(encode_batch([*RECORDS[:2], Record("no way", 3, 7, 0, None, None)])),
            ["record 2: topic 'no way' is not a legal Kafka topic name"],
        ),
    ],
    ids=[
        "shorter-than-header",
        "batch-length-lies",
        "reserved",
        "raw-length-beyond-limit",
        "padding",
        "unknown-compression",
        "count-beyond-bytes",
        "raw-length-lies",
        "count-lies",
        "not-msgpack",
        "zlib-bomb",
        "zlib-truncated",
        "bad-offset",
        "bad-topic",
    ],
)
def test_signed_block_whose_content_lies_is_a_gap_naming_its_records(
    block: bytes, words: list[str]
) -> None:
    receiver, sender = started()
    good = make_block(BATCH)
    later = [Record(TOPIC, 0, 20 + i, 0, None, b"x") for i in range(3)]
    after = make_block(encode_batch(later), count=3)
    entries = [
        ManifestEntry(0, hashlib.sha256(block).digest(), RANGES),
        ManifestEntry(1, hashlib.sha256(after).digest(), (Range(TOPIC, 0, 20, 22, 3),)),
    ]
    assert len(good) < CFG.symbol_size
    receiver.receive_datagram(sender.manifest(0, entries), 0.0)
    for d in sender.block(0, block) + sender.block(1, after):
        receiver.receive_datagram(d, 0.0)
    receiver.poll(1.0)
    events = receiver.events()
    (event,) = rejections(events)
    assert event.reason == "decode" and event.detail.startswith("block 0: ")
    for word in words:
        assert word in event.detail
    gaps = [e for e in events if isinstance(e, GapDetected)]
    assert [(g.topic, g.partition, g.first_offset, g.last_offset, g.count) for g in gaps] == [
        (r.topic, r.partition, r.first_offset, r.last_offset, r.count) for r in RANGES
    ]
    assert {g.reason for g in gaps} == {"decode"} and {g.block for g in gaps} == {0}
    # nothing of the bad block is delivered; the next block is, whole
    delivered = [e for e in events if isinstance(e, RecordsDelivered)]
    assert [(e.block, list(e.records)) for e in delivered] == [(1, later)]
    counters = receiver.counters()
    assert counters.records_lost == len(RECORDS) and counters.records_delivered == len(later)
    assert receiver.state_size()["blocks"] == 0


def test_the_same_block_well_formed_is_delivered() -> None:
    """The control for the test above: only the field under test made those blocks fail."""
    for compression in (Compression.NONE, Compression.ZLIB):
        receiver, sender = started()
        batch = BATCH if compression == Compression.NONE else zlib.compress(BATCH)
        block = make_block(batch, raw_length=len(BATCH), compression=compression)
        entry = ManifestEntry(0, hashlib.sha256(block).digest(), RANGES)
        receiver.receive_datagram(sender.manifest(0, [entry]), 0.0)
        for d in sender.block(0, block):
            receiver.receive_datagram(d, 0.0)
        receiver.poll(1.0)
        events = receiver.events()
        assert not rejections(events) and not any(isinstance(e, GapDetected) for e in events)
        assert [r for e in events if isinstance(e, RecordsDelivered) for r in e.records] == RECORDS


# --------------------------------------------------------------------------- provenance


def test_a_block_whose_digest_differs_from_its_signed_entry_is_a_gap() -> None:
    """The tag and the manifest signature are genuine, the block is not the one signed."""
    receiver, sender = started()
    block = make_block(BATCH)
    other = make_block(encode_batch(RECORDS[:2]), count=2)
    entry = ManifestEntry(0, hashlib.sha256(other).digest(), RANGES)
    receiver.receive_datagram(sender.manifest(0, [entry]), 0.0)
    for d in sender.block(0, block):
        receiver.receive_datagram(d, 0.0)
    receiver.poll(1.0)
    events = receiver.events()
    assert not any(isinstance(e, RecordsDelivered) for e in events)
    gaps = [e for e in events if isinstance(e, GapDetected)]
    assert [(g.partition, g.first_offset, g.last_offset, g.count, g.reason) for g in gaps] == [
        (0, 10, 12, 2, "digest"),
        (3, 7, 7, 1, "digest"),
    ]


def test_a_block_no_manifest_covers_is_never_delivered() -> None:
    """Strict provenance: authenticated but unsigned is not enough to deliver; its gap names
    its records from the authenticated content at once, and a later heartbeat counts them
    once, not twice."""
    receiver, sender = started()
    for d in sender.block(0, make_block(BATCH)):
        receiver.receive_datagram(d, 0.0)
    receiver.poll(0.2)
    assert not any(isinstance(e, RecordsDelivered) for e in receiver.events())
    receiver.poll(1.0)  # past the block timeout
    events = receiver.events()
    assert not any(isinstance(e, (RecordsDelivered, BlocksLost)) for e in events)
    gaps = [e for e in events if isinstance(e, GapDetected)]
    assert [(g.partition, g.first_offset, g.last_offset, g.count, g.reason) for g in gaps] == [
        (0, 10, 12, 2, "unsigned"),
        (3, 7, 7, 1, "unsigned"),
    ]
    marks = (PartitionMark(TOPIC, 0, 12, 0, 2), PartitionMark(TOPIC, 3, 7, 0, 1))
    heartbeat = Heartbeat(1, 3, 0, 3, bytes(32), marks).pack()
    receiver.receive_datagram(sender.control(DatagramType.HEARTBEAT, 0, heartbeat), 1.1)
    assert not any(isinstance(e, GapDetected) for e in receiver.events())
    assert receiver.counters().records_delivered == 0
    assert receiver.counters().records_lost == 3
