"""``ReceiverSession.receive_datagrams`` is ``receive_datagram`` in a loop, only faster; and
the deferred manifest verification covers every delivered block with a signature."""

from __future__ import annotations

import random

import pytest

from diode.protocol.crypto import SigningKey
from diode.protocol.events import (
    DatagramRejected,
    GapDetected,
    ManifestVerified,
    RecordsDelivered,
)
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.records import Compression
from diode.protocol.sender import SenderSession
from diode.protocol.wire import HEADER, DatagramType, ProtocolConfig
from tests.protocol.sessionkit import RECEIVER, SIGNING, records_for


def _stream(config: ProtocolConfig, seed: int, *, restart: bool) -> list[tuple[float, bytes]]:
    """(time, datagram) of one or two sender sessions, with timers, as a service sends them."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    now = 0.0
    records = records_for(900, size=rng.choice((150, 700)), partitions=3, seed=seed)
    senders = [SenderSession(config, SIGNING, RECEIVER.public_key, rng.randbytes, now)]
    for i in range(0, len(records), 60):
        if restart and i == 480:
            now += 0.05
            senders.append(SenderSession(config, SIGNING, RECEIVER.public_key, rng.randbytes, now))
        sender = senders[-1]
        out += [(now, d) for d in sender.add_many(records[i : i + 60], now)]
        now += rng.choice((0.0, 0.002, 0.02))
        out += [(now, d) for d in sender.poll(now)]
    for _ in range(40):
        now += 0.05
        out += [(now, d) for d in senders[-1].poll(now)]
    return out


def _damage(stream: list[tuple[float, bytes]], seed: int) -> list[tuple[float, bytes]]:
    """Loss, duplicates, local reordering, bit flips, truncation and junk."""
    rng = random.Random(seed)
    out: list[tuple[float, bytes]] = []
    for at, d in stream:
        roll = rng.random()
        if roll < 0.06:
            continue
        if roll < 0.09:
            out.append((at, d))  # duplicated
        elif roll < 0.11:
            buf = bytearray(d)
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            d = bytes(buf)
        elif roll < 0.12:
            d = d[: rng.randrange(len(d))]
        elif roll < 0.13:
            out.append((at, rng.randbytes(rng.randrange(1, 200))))
        out.append((at, d))
    # reorder within a small window, keeping each datagram's time
    for i in range(len(out) - 1):
        if rng.random() < 0.1:
            j = min(len(out) - 1, i + rng.randrange(1, 6))
            out[i], out[j] = (out[i][0], out[j][1]), (out[j][0], out[i][1])
    return out


def _chunks(stream: list[tuple[float, bytes]], seed: int) -> list[tuple[float, list[bytes]]]:
    """Split into batches of uneven size, each handed over at the time of its last datagram."""
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(stream):
        n = rng.choice((1, 2, 7, 64, 200))
        part = stream[i : i + n]
        out.append((part[-1][0], [d for _, d in part]))
        i += n
    return out


def _run(
    receiver: ReceiverSession, chunks: list[tuple[float, list[bytes]]], batch: bool
) -> list[object]:
    seen: list[object] = []
    for now, datagrams in chunks:
        if batch:
            receiver.receive_datagrams(datagrams, now)
        else:
            for d in datagrams:
                receiver.receive_datagram(d, now)
        seen.append(receiver.events())
        seen.append(receiver.state_size())
        if receiver.next_timer() is not None:
            receiver.poll(now)
    end = chunks[-1][0]
    for step in range(1, 30):
        receiver.poll(end + step * 0.1)
    seen += [receiver.events(), receiver.state_size(), receiver.counters()]
    return seen


CONFIGS = [
    ProtocolConfig(),
    ProtocolConfig(k=8, m=3, interleave=3, key_rotation_bytes=150_000),
    ProtocolConfig(k=4, m=1, compression=Compression.ZLIB, manifest_copies=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"k{c.k}-m{c.m}-c{c.compression}")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("strict", [True, False])
def test_batches_give_the_same_events_state_and_counters(
    config: ProtocolConfig, seed: int, strict: bool
) -> None:
    chunks = _chunks(_damage(_stream(config, seed, restart=seed == 2), seed), seed)
    options = ReceiverOptions(strict=strict)
    one = _run(
        ReceiverSession(config, RECEIVER, SIGNING.verify_key, options=options), chunks, False
    )
    many = _run(
        ReceiverSession(config, RECEIVER, SIGNING.verify_key, options=options), chunks, True
    )
    assert many == one
    counters = one[-1]
    delivered = [
        r
        for part in one
        if isinstance(part, list)
        for e in part
        if isinstance(e, RecordsDelivered)
        for r in e.records
    ]
    assert delivered and len(delivered) == len(set(delivered))
    assert counters.rejected  # type: ignore[attr-defined]  # the damage was seen


def test_a_batch_survives_every_kind_of_bad_datagram_and_counts_it() -> None:
    cfg = ProtocolConfig()
    sender = SenderSession(cfg, SIGNING, RECEIVER.public_key, random.Random(3).randbytes, 0.0)
    good = sender.add_many(records_for(200, size=900), 0.0) + sender.flush(0.0)
    first_data = next(d for d in good if d[3] == DatagramType.DATA)
    later = [d for d in good[5:] if d[3] == DatagramType.DATA][3]  # forged before it arrives
    bad_tag = bytearray(later)
    bad_tag[-1] ^= 1
    junk = [
        b"",
        b"\xd1",
        first_data[:30],  # truncated inside the header
        first_data + b"x",  # longer than its header says
        bytes(bad_tag),
        bytes(1472 + 1),  # oversized
        b"\x00" * 60,  # wrong magic
    ]
    receiver = ReceiverSession(cfg, RECEIVER, SIGNING.verify_key)
    receiver.receive_datagrams(good[:5] + junk + good[5:], 0.0)
    receiver.poll(1.0)
    events = receiver.events()
    rejected = [e.reason for e in events if isinstance(e, DatagramRejected)]
    assert sorted(rejected) == sorted(
        ["truncated", "truncated", "truncated", "length", "authentication", "oversized", "magic"]
    )
    assert receiver.counters().datagrams == len(good) + len(junk)
    assert receiver.counters().records_delivered == 200


def test_a_forged_symbol_leaves_no_trace_in_a_rebuilt_block() -> None:
    """A bad tag may leave bytes in the block buffer; FEC must rebuild that slot anyway."""
    cfg = ProtocolConfig(k=8, m=3)
    records = records_for(60, size=900)
    sender = SenderSession(cfg, SIGNING, RECEIVER.public_key, random.Random(5).randbytes, 0.0)
    out = sender.add_many(records, 0.0) + sender.flush(0.0)
    block0 = [d for d in out if d[3] == DatagramType.DATA and HEADER.unpack_from(d)[6] == 0]
    index = {HEADER.unpack_from(d)[7]: d for d in block0}
    forged = bytearray(index[2])
    forged[40] ^= 0xFF  # ciphertext changed: the tag fails, after the plaintext was written
    receiver = ReceiverSession(cfg, RECEIVER, SIGNING.verify_key)
    rest = [d for d in out if d not in block0]
    announcements = [d for d in out if d[3] == DatagramType.ANNOUNCE]
    receiver.receive_datagrams([*announcements, index[0], bytes(forged)], 0.0)
    assert receiver.counters().rejected == {"authentication": 1}
    # every symbol of block 0 but the forged index: FEC rebuilds slot 2
    receiver.receive_datagrams([d for i, d in index.items() if i not in (0, 2)] + rest, 0.0)
    receiver.poll(1.0)
    delivered = [r for e in receiver.events() if isinstance(e, RecordsDelivered) for r in e.records]
    assert delivered == records
    assert receiver.counters().blocks_recovered >= 1


def _load(config: ProtocolConfig, n: int = 2000) -> tuple[list[bytes], list[object]]:
    sender = SenderSession(config, SIGNING, RECEIVER.public_key, random.Random(8).randbytes, 0.0)
    records = records_for(n, size=1000, partitions=4)
    return sender.add_many(records, 0.0) + sender.flush(0.0), list(records)


def test_one_signature_check_covers_the_manifests_of_a_burst() -> None:
    cfg = ProtocolConfig()
    datagrams, records = _load(cfg)
    manifests = sum(1 for d in datagrams if d[3] == DatagramType.MANIFEST)
    results = {}
    for delay in (0.0, 0.005):
        receiver = ReceiverSession(
            cfg, RECEIVER, SIGNING.verify_key, options=ReceiverOptions(manifest_verify_delay=delay)
        )
        for i in range(0, len(datagrams), 64):
            receiver.receive_datagrams(datagrams[i : i + 64], 0.0)
        receiver.poll(1.0)
        events = receiver.events()
        delivered = [r for e in events if isinstance(e, RecordsDelivered) for r in e.records]
        assert delivered == records
        assert not any(isinstance(e, GapDetected) for e in events)
        verified = receiver.counters().manifests_verified
        assert verified == len([e for e in events if isinstance(e, ManifestVerified)])
        results[delay] = verified
    # verified as they come: every manifest brings a new entry
    assert results[0.0] >= manifests - 2
    # deferred: the newest of manifest_copies manifests covers the entries of all of them
    assert results[0.005] <= manifests // cfg.manifest_copies + 2


def test_a_rebuilt_block_waits_for_its_signature_at_most_the_verify_delay() -> None:
    cfg = ProtocolConfig()
    delay = 0.004
    datagrams, records = _load(cfg, n=30)  # one block, one manifest
    receiver = ReceiverSession(
        cfg, RECEIVER, SIGNING.verify_key, options=ReceiverOptions(manifest_verify_delay=delay)
    )
    receiver.receive_datagrams(datagrams, 1.0)
    assert not any(isinstance(e, RecordsDelivered) for e in receiver.events())
    assert receiver.state_size()["pending_manifests"] == 1
    timer = receiver.next_timer()
    assert timer is not None and timer <= 1.0 + delay
    receiver.poll(1.0 + delay / 2)
    assert not any(isinstance(e, RecordsDelivered) for e in receiver.events())
    receiver.poll(1.0 + delay)
    events = receiver.events()
    assert [r for e in events if isinstance(e, RecordsDelivered) for r in e.records] == records
    assert receiver.counters().manifests_verified == 1
    assert receiver.state_size()["pending_manifests"] == 0
    assert receiver.state_size()["manifest_claims"] == 0


@pytest.mark.parametrize("delay", [0.0, 0.005])
def test_manifests_with_a_bad_signature_deliver_nothing(delay: float) -> None:
    """The session key is genuine (its announcement was signed) but the manifests are not."""
    cfg = ProtocolConfig()
    sender = SenderSession(cfg, SIGNING, RECEIVER.public_key, random.Random(9).randbytes, 0.0)
    first = sender.poll(0.0)  # the signed announcements
    sender._signing_key = SigningKey.from_seed(b"x" * 32)  # from now on, a wrong signer
    records = records_for(400, size=1000)
    out = first + sender.add_many(records, 0.0) + sender.flush(0.0)
    receiver = ReceiverSession(
        cfg, RECEIVER, SIGNING.verify_key, options=ReceiverOptions(manifest_verify_delay=delay)
    )
    for i in range(0, len(out), 64):
        receiver.receive_datagrams(out[i : i + 64], 0.0)
    for step in range(1, 20):
        receiver.poll(step * 0.1)
    events = receiver.events()
    assert not any(isinstance(e, RecordsDelivered) for e in events)
    counters = receiver.counters()
    assert counters.rejected["authentication"] >= 1
    assert counters.manifests_verified == 0
    assert counters.blocks_lost >= 1 and counters.records_delivered == 0
    assert receiver.state_size()["pending_manifests"] == 0
