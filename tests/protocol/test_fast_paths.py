"""The speed paths give the same answers as the plain ones: block encode, the FEC worker
thread, the sender with its encode on that thread, the receiver's straight path for DATA,
and the batch limits msgspec checks while decoding."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import DecodeError, FECError
from diode.protocol.crypto import Cipher, SessionCipher, TagMismatch
from diode.protocol.fec import CODECS, FecWorker, get_codec
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Record, decode_batch, encode_batch
from diode.protocol.sender import SenderSession
from diode.protocol.wire import (
    ManifestEntry,
    ProtocolConfig,
    Range,
    pack_manifest_entries,
    parse_manifest,
)
from tests.protocol.sessionkit import RECEIVER, SIGNING, records_for


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(min_value=1, max_value=40),
    m=st.integers(min_value=0, max_value=12),
    units=st.integers(min_value=1, max_value=24),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_encode_block_equals_encode_of_its_symbols(
    name: str, k: int, m: int, units: int, seed: int
) -> None:
    codec = get_codec(name)
    length = units * codec.symbol_alignment
    block = random.Random(seed).randbytes(k * length)
    source = [block[i * length : (i + 1) * length] for i in range(k)]
    assert codec.encode_block(block, k, m) == codec.encode(source, m)
    assert codec.encode_block(memoryview(block), k, m) == codec.encode(source, m)


@pytest.mark.parametrize("name", CODECS)
def test_encode_block_refuses_a_block_that_does_not_split(name: str) -> None:
    codec = get_codec(name)
    size = 3 * codec.symbol_alignment * 4 + 1
    with pytest.raises(FECError, match=f"block of {size} bytes does not split into k=3"):
        codec.encode_block(bytes(size), 3, 1)
    with pytest.raises(FECError, match="k=0"):
        codec.encode_block(b"", 0, 1)


def test_worker_returns_results_in_submission_order_and_reraises() -> None:
    worker = FecWorker()
    try:
        for i in range(20):
            worker.submit(pow, i, 2)
        worker.submit(get_codec().encode, [b"ab", b"abc"], 1)  # unequal lengths
        worker.submit(len, b"xyz")
        assert worker.outstanding == 22
        assert [worker.result() for _ in range(20)] == [i * i for i in range(20)]
        with pytest.raises(FECError, match="all symbols of a block must have one length"):
            worker.result()
        assert worker.result() == 3
        with pytest.raises(FECError, match="no call is outstanding"):
            worker.result()
    finally:
        worker.close()
    worker.close()  # idempotent
    with pytest.raises(FECError, match="closed"):
        worker.submit(len, b"")


def _drive(sender: SenderSession, records: list[Record], seed: int) -> list[object]:
    """Feed records in uneven batches with timers; everything observable after each call."""
    rng = random.Random(seed)
    seen: list[object] = []
    now = 0.0
    i = 0
    while i < len(records):
        n = rng.choice((1, 3, 17, 60, 250))
        batch = records[i : i + n]
        out = sender.add(batch[0], now) if n == 1 else sender.add_many(batch, now)
        i += n
        seen += [out, sender.committable(), sender.pending_manifests(), sender.next_timer()]
        now += rng.choice((0.0, 0.001, 0.004, 0.02))
        seen += [sender.poll(now), sender.committable()]
    seen += [sender.flush(now), sender.committable(), sender.counters(), sender.events()]
    return seen


@pytest.mark.parametrize(
    "config",
    [
        ProtocolConfig(),
        ProtocolConfig(k=8, m=3, interleave=3, key_rotation_bytes=300_000),
        ProtocolConfig(k=4, m=0, interleave=2),
        *([ProtocolConfig(codec="raptorq", k=16, m=6)] if "raptorq" in CODECS else []),
    ],
    ids=lambda c: f"{c.codec}-k{c.k}-m{c.m}",
)
def test_sender_with_fec_thread_emits_the_same_datagrams_call_by_call(
    config: ProtocolConfig,
) -> None:
    records = records_for(1200, size=700, partitions=3)
    plain = SenderSession(config, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0)
    threaded = SenderSession(
        config, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0, fec_thread=True
    )
    try:
        expected = _drive(plain, records, seed=9)
        got = _drive(threaded, records, seed=9)
    finally:
        threaded.close()
    assert got == expected
    # and the stream is one a receiver takes in whole
    receiver = ReceiverSession(config, RECEIVER, SIGNING.verify_key)
    for item in got:
        if isinstance(item, list) and item and isinstance(item[0], bytes):
            for datagram in item:
                receiver.receive_datagram(datagram, 0.0)
    receiver.poll(5.0)
    assert receiver.counters().records_delivered == len(records)
    assert not receiver.counters().rejected


def test_closed_sender_keeps_working_without_its_thread() -> None:
    cfg = ProtocolConfig()
    records = records_for(300, size=900)
    plain = SenderSession(cfg, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0)
    threaded = SenderSession(
        cfg, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0, fec_thread=True
    )
    assert threaded.add_many(records[:150], 0.0) == plain.add_many(records[:150], 0.0)
    threaded.close()
    threaded.close()
    assert threaded.add_many(records[150:], 0.0) == plain.add_many(records[150:], 0.0)
    assert threaded.flush(0.0) == plain.flush(0.0)


def test_receiver_straight_path_counts_duplicates_and_rejects_forgeries() -> None:
    cfg = ProtocolConfig()
    sender = SenderSession(cfg, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0)
    out = sender.add_many(records_for(200, size=900), 0.0) + sender.flush(0.0)
    data = [d for d in out if d[3] == 1]
    block0 = [d for d in data if d[20:28] == bytes(8)]  # every symbol of block 0
    receiver = ReceiverSession(cfg, RECEIVER, SIGNING.verify_key)
    for d in out:
        if d[3] != 1:
            receiver.receive_datagram(d, 0.0)
    first = block0[0]
    receiver.receive_datagram(first, 0.0)  # opens the block: the full path
    receiver.receive_datagram(first, 0.0)  # same symbol again: the straight path
    assert receiver.counters().duplicates == 1
    second = bytearray(block0[1])
    second[-1] ^= 1  # bad tag on a symbol of the open block
    receiver.receive_datagram(bytes(second), 0.0)
    rejected = receiver.counters().rejected
    assert rejected == {"authentication": 1}
    assert receiver.state_size()["symbols"] == 1  # nothing stored for the forgery
    wrong_shape = bytearray(block0[1])
    wrong_shape[33] ^= 1  # m differs from the block's first symbol
    receiver.receive_datagram(bytes(wrong_shape), 0.0)
    assert receiver.counters().rejected["field"] == 1
    # cut inside the header, right after the prefix the straight path looks up
    for cut in range(20, 36):
        receiver.receive_datagram(block0[2][:cut], 0.0)
    assert receiver.counters().rejected["truncated"] == 16
    for d in data:
        receiver.receive_datagram(d, 0.0)
    receiver.poll(1.0)
    assert receiver.counters().records_delivered == 200


@pytest.mark.parametrize(
    ("topic", "message"),
    [(".", "not a legal Kafka topic name"), ("plant\n", "not a legal Kafka topic name")],
)
def test_batch_limits_checked_while_decoding_name_the_record(topic: str, message: str) -> None:
    good = Record("plant.a", 0, 1, 0, None, b"v")
    bad = Record(topic, 0, 2, 0, None, b"v")
    with pytest.raises(DecodeError, match=rf"record 2: .*{message}"):
        decode_batch(encode_batch([good, good, bad]), max_records=10)
    assert decode_batch(encode_batch([good, good]), max_records=10) == [good, good]


def test_batch_topic_check_names_the_first_bad_record_of_several() -> None:
    good = Record("plant.a", 0, 1, 0, None, b"v")
    batch = [good, Record("..", 0, 2, 0, None, b"v"), good, Record("a b", 0, 3, 0, None, b"v")]
    with pytest.raises(DecodeError, match=r"record 1: topic '\.\.' is not a legal"):
        decode_batch(encode_batch(batch), max_records=10)
    with pytest.raises(DecodeError, match=r"record 2: topic 'a b' is not a legal"):
        decode_batch(encode_batch([good, good, *batch[3:], batch[1]]), max_records=10)
    # a view of a larger buffer decodes like bytes (the receiver decodes blocks in place)
    data = encode_batch([good, good])
    assert decode_batch(memoryview(b"xx" + data)[2:], max_records=2) == [good, good]


def test_parse_manifest_checks_every_entry_but_keeps_only_the_wanted() -> None:
    entries = [
        ManifestEntry(b, bytes([b]) * 32, (Range("a", 1, 10 * b, 10 * b + 5, 3),)) for b in range(5)
    ]
    body = pack_manifest_entries(entries)
    parsed = parse_manifest(body + b"s" * 64, max_entries=10, wanted=lambda b: b % 2 == 1)
    assert parsed.blocks == [0, 1, 2, 3, 4]
    assert parsed.body == body and parsed.signature == b"s" * 64
    assert [(e[0], e[1], tuple(Range(*r) for r in e[2])) for e in parsed.entries] == [
        (e.block, e.digest, e.ranges) for e in entries if e.block % 2 == 1
    ]
    # an inconsistent range in an entry nobody wants still refuses the manifest
    bad = pack_manifest_entries([*entries, ManifestEntry(9, b"d" * 32, (Range("a", 1, 9, 5, 1),))])
    with pytest.raises(DecodeError, match="inconsistent"):
        parse_manifest(bad + b"s" * 64, max_entries=10, wanted=lambda b: False)
    for cut in range(0, len(body), 5):
        with pytest.raises(DecodeError):
            parse_manifest(body[:cut] + b"s" * 64, max_entries=10, wanted=lambda b: False)


@pytest.mark.parametrize("cipher", list(Cipher))
def test_decrypt_into_equals_decrypt_with_or_without_library_support(cipher: Cipher) -> None:
    sealer = SessionCipher(cipher, b"k" * 32)
    nonce, aad = bytes(12), b"header"
    sealed = sealer.seal(nonce, b"p" * 100, aad)
    for into in (sealer.decrypt_into, sealer._decrypt_copy):
        out = memoryview(bytearray(120))
        assert into(nonce, sealed, aad, out[10:110]) == 100
        assert bytes(out[10:110]) == sealer.decrypt(nonce, sealed, aad)
        assert bytes(out[:10]) == bytes(10) and bytes(out[110:]) == bytes(10)
        with pytest.raises(TagMismatch):
            into(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad, out[10:110])
        with pytest.raises(ValueError, match="100"):
            into(nonce, sealed, aad, out[:99])
