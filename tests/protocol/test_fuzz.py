"""Hostile input: arbitrary bytes, mutated datagrams and floods never crash or grow the receiver."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from diode.protocol.events import DatagramRejected, Event, RecordsDelivered
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.sender import SenderSession
from diode.protocol.wire import HEADER, HEADER_SIZE, DatagramType, ProtocolConfig
from tests.protocol.sessionkit import RECEIVER, SIGNING, records_for

CFG = ProtocolConfig()
RECORDS = records_for(120, size=200)
_sender = SenderSession(CFG, SIGNING, RECEIVER.public_key, random.Random(4).randbytes, 0.0)
VALID = _sender.add_many(RECORDS, 0.0) + _sender.flush(0.0)
SENT = set(RECORDS)


#: (which valid datagram, byte position (past the end: truncate), xor mask) per change
MUTATIONS = st.lists(
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 1600), st.integers(1, 255)),
    max_size=30,
)


def fresh() -> ReceiverSession:
    return ReceiverSession(CFG, RECEIVER, SIGNING.verify_key)


def mutate(datagram: bytes, pos: int, xor: int) -> bytes:
    """``datagram`` with byte ``pos`` flipped by ``xor``, or cut short if ``pos`` is past it."""
    buf = bytearray(datagram)
    if pos < len(buf):
        buf[pos] ^= xor
    else:
        buf = buf[: pos % (len(buf) + 1)]
    return bytes(buf)


def assert_nothing_delivered(receiver: ReceiverSession, datagrams: int) -> None:
    """Garbage was counted and at most rejected, never delivered."""
    events = receiver.events()
    assert not any(isinstance(e, RecordsDelivered) for e in events)
    rejected = sum(1 for e in events if isinstance(e, DatagramRejected))
    assert rejected <= datagrams and receiver.counters().datagrams == datagrams


def assert_only_sent_once(events: list[Event]) -> None:
    """Every delivered record is one that was sent, delivered once."""
    delivered = [r for e in events if isinstance(e, RecordsDelivered) for r in e.records]
    assert set(delivered) <= SENT
    assert len(delivered) == len(set(delivered))


@given(st.lists(st.binary(max_size=1600), max_size=20))
@settings(max_examples=200, deadline=None)
def test_any_bytes_become_events_never_exceptions(datagrams: list[bytes]) -> None:
    receiver = fresh()
    for i, d in enumerate(datagrams):
        receiver.receive_datagram(d, float(i))
        receiver.poll(float(i))
    assert_nothing_delivered(receiver, len(datagrams))


@given(MUTATIONS, st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_mutated_datagrams_never_deliver_wrong_records(
    mutations: list[tuple[int, int, int]], seed: int
) -> None:
    receiver = fresh()
    rng = random.Random(seed)
    datagrams = list(VALID)
    for which, pos, xor in mutations:
        datagrams[which] = mutate(datagrams[which], pos, xor)
    rng.shuffle(datagrams)
    for d in datagrams:
        receiver.receive_datagram(d, 0.0)
    for t in range(1, 30):
        receiver.poll(t * 0.1)
    assert_only_sent_once(receiver.events())


def test_flood_of_valid_looking_headers_keeps_state_bounded() -> None:
    options = ReceiverOptions(max_early_datagrams=64, max_pending_announcements=4)
    receiver = ReceiverSession(CFG, RECEIVER, SIGNING.verify_key, options=options)
    for d in VALID[:3]:
        receiver.receive_datagram(d, 0.0)  # a real session is up
    sid, key_id = HEADER.unpack_from(VALID[0])[3:5]
    rng = random.Random(1)
    fp = CFG.fingerprint
    for i in range(20_000):
        choice = i % 3
        if choice == 0:  # the real session and key, junk body: fails the tag
            header = HEADER.pack(0xD10D, 1, 1, sid, key_id, fp, rng.randrange(4000), 0, 32, 8, 1400)
        elif choice == 1:  # random sessions: parked, bounded, then dropped
            header = HEADER.pack(0xD10D, 1, 1, rng.randbytes(8), 7, fp, i, 0, 32, 8, 1400)
        else:  # forged announcements of new sessions: rate-limited, bounded
            header = HEADER.pack(
                0xD10D, 1, DatagramType.ANNOUNCE, rng.randbytes(8), 1, fp, 0, 0, 0, 0, 84
            )
        trailer = 64 if choice == 2 else 16
        length = HEADER.unpack_from(header)[10]
        receiver.receive_datagram(header + rng.randbytes(length + trailer), i * 1e-4)
        if i % 500 == 0:
            receiver.poll(i * 1e-4)
    size = receiver.state_size()
    assert size["blocks"] <= 1 and size["symbols"] <= 1
    assert size["early_datagrams"] <= 64
    assert size["pending_announcements"] <= 4
    assert size["announcement_digests"] <= options.announcement_cache * 2
    rejected = receiver.counters().rejected
    assert rejected["authentication"] >= 6_000
    assert rejected["rate-limited"] > 0 and rejected["unknown-key"] > 0
    assert len(VALID[0]) > HEADER_SIZE


@given(st.lists(st.binary(max_size=1600), max_size=20), st.integers(1, 8))
@settings(max_examples=150, deadline=None)
def test_any_bytes_in_batches_become_events_never_exceptions(
    datagrams: list[bytes], size: int
) -> None:
    receiver = fresh()
    for i in range(0, len(datagrams), size):
        receiver.receive_datagrams(datagrams[i : i + size], float(i))
        receiver.poll(float(i))
    assert_nothing_delivered(receiver, len(datagrams))


@given(MUTATIONS, st.integers(0, 2**32), st.integers(1, 64))
@settings(max_examples=100, deadline=None)
def test_mutated_datagrams_in_batches_match_one_by_one(
    mutations: list[tuple[int, int, int]], seed: int, size: int
) -> None:
    rng = random.Random(seed)
    datagrams = list(VALID)
    for which, pos, xor in mutations:
        # and keep the original
        datagrams.insert(rng.randrange(len(datagrams) + 1), mutate(datagrams[which], pos, xor))
    rng.shuffle(datagrams)
    one, many = fresh(), fresh()
    for i in range(0, len(datagrams), size):
        for d in datagrams[i : i + size]:
            one.receive_datagram(d, i * 1e-4)
        many.receive_datagrams(datagrams[i : i + size], i * 1e-4)
    for t in range(1, 30):
        one.poll(t * 0.1)
        many.poll(t * 0.1)
    events = many.events()
    assert events == one.events()
    assert many.counters() == one.counters()
    assert_only_sent_once(events)
