"""Sender and receiver sessions driven directly, datagram by datagram, with explicit time."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import LocalProtocolError
from diode.protocol.crypto import Cipher, SessionCipher, SigningKey
from diode.protocol.events import (
    BlocksLost,
    DatagramRejected,
    GapDetected,
    HeartbeatMissed,
    HeartbeatReceived,
    KeyRotated,
    LinkUp,
    RecordsDelivered,
    SessionEnded,
    SessionStarted,
)
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.records import Compression, Record
from diode.protocol.sender import SenderSession
from diode.protocol.wire import (
    HEADER,
    HEADER_SIZE,
    NONCE,
    DatagramType,
    ProtocolConfig,
    make_nonce,
)
from tests.protocol.sessionkit import RECEIVER, SIGNING, Pair, records_for

MakePair = Callable[..., Pair]
ONE = ProtocolConfig(interleave=1)


def kind(d: bytes) -> tuple[int, int, int]:
    """(type, number, index) of a datagram."""
    fields = HEADER.unpack_from(d)
    return int(fields[2]), int(fields[6]), int(fields[7])


def is_data(d: bytes, block: int | None = None) -> bool:
    t, n, _ = kind(d)
    return t == DatagramType.DATA and (block is None or n == block)


def send_all(pair: Pair, records: list[Record], now: float = 0.0) -> list[bytes]:
    out: list[bytes] = pair.sender.add_many(records, now)
    out += pair.sender.flush(now)
    return out


def rejected(pair: Pair) -> dict[str, int]:
    counts: dict[str, int] = pair.receiver.counters().rejected
    return counts


def check_exact(pair: Pair, records: list[Record]) -> None:
    """Every record delivered once, equal to what was sent, in order per partition."""
    got = pair.delivered()
    assert got == sorted(got, key=lambda r: records.index(r))
    assert sorted(got, key=lambda r: (r.partition, r.offset)) == sorted(
        records, key=lambda r: (r.partition, r.offset)
    )


def check_accounted(pair: Pair, records: list[Record]) -> list[Record]:
    """The invariant of every lossy run: what was delivered is exactly what was sent, once
    and in order; what was not is inside a gap of its partition; delivered + lost == sent.
    Returns the records that were not delivered."""
    got = pair.delivered()
    position = {(r.topic, r.partition, r.offset): i for i, r in enumerate(records)}
    where = [position[(r.topic, r.partition, r.offset)] for r in got]
    assert where == sorted(set(where)), "delivered out of order, or twice"
    assert [records[i] for i in where] == got, "a delivered record differs from the one sent"
    missing = [r for i, r in enumerate(records) if i not in set(where)]
    gaps = pair.gaps()
    for r in missing:
        assert any(
            (g.topic, g.partition) == (r.topic, r.partition)
            and g.first_offset <= r.offset <= g.last_offset
            for g in gaps
        ), f"{r.topic}/{r.partition}@{r.offset} lost without a gap"
    assert len(got) + sum(g.count for g in gaps) == len(records)
    return missing


def flips(datagram: bytes, mask: int) -> list[bytes]:
    """``datagram`` with byte i xor-ed with ``mask``, for every i."""
    return [
        datagram[:i] + bytes([datagram[i] ^ mask]) + datagram[i + 1 :] for i in range(len(datagram))
    ]


def test_no_loss_round_trip(make_pair: MakePair) -> None:
    pair = make_pair()
    records = records_for(500)
    pair.feed(send_all(pair, records), 0.0)
    pair.settle(0.0, 0.3)
    check_exact(pair, records)
    assert not pair.gaps()
    started = pair.of(SessionStarted)
    assert len(started) == 1 and started[0].restart is False
    assert pair.receiver.counters().rejected == {}
    assert pair.receiver.counters().blocks_complete == pair.sender.counters().blocks


@pytest.mark.parametrize("lost", [1, 4, 8])
def test_loss_up_to_the_budget_in_one_block_loses_nothing(make_pair: MakePair, lost: int) -> None:
    pair = make_pair(ONE)
    records = records_for(400)
    out = send_all(pair, records)
    victims = [i for i, d in enumerate(out) if is_data(d, 1)]
    rng = random.Random(lost)
    drop = set(rng.sample(victims, lost))
    pair.feed([d for i, d in enumerate(out) if i not in drop], 0.0)
    pair.settle(0.0, 0.3)
    check_exact(pair, records)
    assert pair.receiver.counters().blocks_recovered == 1


def test_exactly_the_budget_of_source_symbols_lost_loses_nothing(make_pair: MakePair) -> None:
    """The worst case of m losses: every one a source symbol, so all m repairs are needed."""
    pair = make_pair(ONE)
    records = records_for(400)
    out = send_all(pair, records)
    m = pair.sender.config.m
    source = [i for i, d in enumerate(out) if is_data(d, 1) and kind(d)[2] < 32]
    drop = set(source[::4][:m])  # spread over the block
    assert len(drop) == m
    pair.feed([d for i, d in enumerate(out) if i not in drop], 0.0)
    pair.settle(0.0, 0.3)
    check_exact(pair, records)
    assert pair.receiver.counters().blocks_recovered == 1


@pytest.mark.parametrize(("lost", "survives"), [(2, True), (3, False)])
def test_a_short_block_survives_its_own_budget(
    make_pair: MakePair, lost: int, survives: bool
) -> None:
    """A block closed early by linger keeps at least two repair symbols: its budget."""
    pair = make_pair(ONE)
    pair.feed(pair.sender.poll(0.0), 0.0)
    records = records_for(6, size=400)  # about two symbols
    for r in records:
        assert pair.sender.add(r, 0.0) == []
    out = pair.sender.poll(pair.sender.config.linger)
    data = [d for d in out if is_data(d)]
    k, m = HEADER.unpack_from(data[0])[8:10]
    assert (k, m, len(data)) == (2, 2, 4)
    pair.feed([d for d in out if d not in data[:lost]], 0.01)
    pair.settle(0.01, 1.0)
    missing = check_accounted(pair, records)
    assert (missing == []) is survives
    if not survives:
        assert [g.reason for g in pair.gaps()] == ["lost"] * len(pair.gaps())


def test_budget_plus_one_in_one_block_is_a_gap_naming_exactly_its_records(
    make_pair: MakePair,
) -> None:
    pair = make_pair(ONE)
    records = records_for(600, partitions=3)
    out = send_all(pair, records)
    blocks = {kind(d)[1] for d in out if is_data(d)}
    assert len(blocks) >= 3  # a lost block with blocks on both sides
    m = pair.sender.config.m
    victims = [i for i, d in enumerate(out) if is_data(d, 1)][: m + 1]
    pair.feed([d for i, d in enumerate(out) if i not in set(victims)], 0.0)
    pair.settle(0.0, 1.5)
    delivered = pair.delivered()
    missing = check_accounted(pair, records)
    assert missing, "block 1 should be lost"
    # exactly the records of block 1: a contiguous run of what was sent
    first = records.index(missing[0])
    assert missing == records[first : first + len(missing)] and first > 0
    gaps = pair.gaps()
    assert {g.block for g in gaps} == {1}
    assert sum(g.count for g in gaps) == len(missing)
    for g in gaps:
        in_gap = [r for r in missing if r.partition == g.partition]
        assert (g.first_offset, g.last_offset, g.count) == (
            in_gap[0].offset,
            in_gap[-1].offset,
            len(in_gap),
        )
        assert g.reason == "lost"
    # blocks after the lost one are still delivered, in order
    assert len(delivered) + len(missing) == len(records)
    assert delivered[-1] == records[-1]


def test_corrupting_any_byte_of_any_kind_of_datagram_is_caught(make_pair: MakePair) -> None:
    """Every byte of a DATA, a MANIFEST and a HEARTBEAT datagram flipped in turn (header
    included, as it is the AEAD's associated data): each copy is rejected exactly once and
    nothing but the genuine records is delivered."""
    pair = make_pair(ONE)
    records = records_for(300)
    out = send_all(pair, records)
    targets = [
        next(d for d in out if kind(d)[0] == t)
        for t in (DatagramType.DATA, DatagramType.MANIFEST, DatagramType.HEARTBEAT)
    ]
    bad = [f for d in targets for mask in (0x01, 0x80) for f in flips(d, mask)]
    announcements = [d for d in out if kind(d)[0] == DatagramType.ANNOUNCE]
    pair.feed(announcements + bad, 0.0)
    pair.feed(out, 0.0)
    pair.settle(0.0, 3.0)  # past the early-datagram timeout: parked copies are dropped too
    check_exact(pair, records)
    counts = rejected(pair)
    assert sum(counts.values()) == len(bad), counts
    assert counts["authentication"] > len(bad) // 2
    assert pair.receiver.state_size()["early_datagrams"] == 0


def test_corrupting_any_byte_of_an_announcement_is_caught(make_pair: MakePair) -> None:
    pair = make_pair()
    announcement = next(d for d in pair.sender.poll(0.0) if kind(d)[0] == DatagramType.ANNOUNCE)
    bad = flips(announcement, 0x01) + flips(announcement, 0x80)
    now = 0.0
    for d in bad:
        now += 0.05  # the receiver verifies announcements at a bounded rate
        pair.feed([d], now)
    pair.receiver.poll(now + 1.0)
    pair.events.extend(pair.receiver.events())
    assert not pair.of(SessionStarted)
    assert sum(rejected(pair).values()) == len(bad)
    assert pair.receiver.counters().announcements_verified == 0


def test_a_replayed_datagram_of_a_delivered_block_delivers_nothing(make_pair: MakePair) -> None:
    pair = make_pair()
    records = records_for(300)
    out = send_all(pair, records)
    pair.feed(out, 0.0)
    now = pair.settle(0.0, 0.3)
    before = pair.receiver.counters()
    events = len(pair.events)
    replayed = [next(d for d in out if kind(d)[0] == t) for t in DatagramType]
    pair.feed(replayed, now)
    pair.receiver.poll(now)
    pair.events.extend(pair.receiver.events())
    assert pair.events[events:] == []
    after = pair.receiver.counters()
    assert after.redundant == before.redundant + len(replayed)
    assert after.records_delivered == before.records_delivered == len(records)
    check_exact(pair, records)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # partition
            st.sampled_from([0, 1, 100, 1419, 1420, 1421, 5_000, 50_000]),  # value size
            st.booleans(),  # null key
            st.integers(0, 3),  # headers
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**32 - 1),
    st.sampled_from([Compression.NONE, Compression.ZLIB]),
)
@settings(max_examples=40, deadline=None)
def test_any_records_cross_unchanged(
    shapes: list[tuple[int, int, bool, int]], seed: int, compression: Compression
) -> None:
    rng = random.Random(seed)
    offsets = [rng.randrange(2**40) for _ in range(4)]
    records = []
    for i, (partition, size, null_key, nheaders) in enumerate(shapes):
        offsets[partition] += rng.choice((1, 2, 1000))
        headers = tuple((f"h{j}", rng.randbytes(j) if j else None) for j in range(nheaders))
        key = None if null_key else rng.randbytes(rng.randrange(30))
        value = rng.randbytes(size) if size != 1 else None
        records.append(Record("plant.a", partition, offsets[partition], i, key, value, headers))
    cfg = ProtocolConfig(compression=compression)
    sender = SenderSession(cfg, SIGNING, RECEIVER.public_key, rng.randbytes, 0.0)
    pair = Pair(sender, ReceiverSession(cfg, RECEIVER, SIGNING.verify_key))
    pair.feed(send_all(pair, records), 0.0)
    pair.settle(0.0, 0.1, step=0.05)
    check_exact(pair, records)
    assert pair.receiver.counters().rejected == {}


def test_full_blocks_are_interleaved_on_the_wire(make_pair: MakePair) -> None:
    """Symbol i of every block of a group, then symbol i + 1: a burst of B datagrams costs
    each of the ``interleave`` blocks about B / interleave symbols."""
    pair = make_pair(ProtocolConfig(interleave=4))
    out = pair.sender.add_many(records_for(700), 0.0)  # a little over 4 full blocks
    data = [kind(d)[1:] for d in out if is_data(d)]  # (block, index)
    cfg = pair.sender.config
    n = cfg.k + cfg.m
    assert data == [(b, i) for i in range(n) for b in range(4)]
    # any run of 4 * m consecutive datagrams takes exactly m symbols from each block
    for start in range(len(data) - 4 * cfg.m + 1):
        run = data[start : start + 4 * cfg.m]
        assert all(sum(1 for blk, _ in run if blk == b) == cfg.m for b in range(4))


def test_duplicates_are_delivered_once(make_pair: MakePair) -> None:
    pair = make_pair()
    records = records_for(300)
    out = send_all(pair, records)
    pair.feed([d for d in out for _ in range(2)], 0.0)
    pair.settle(0.0, 0.3)
    check_exact(pair, records)
    assert pair.receiver.counters().duplicates + pair.receiver.counters().redundant > 0


def test_reordering_keeps_partition_order(make_pair: MakePair) -> None:
    pair = make_pair()
    records = records_for(600, partitions=3)
    out = send_all(pair, records)
    control = [d for d in out if not is_data(d)]
    data = [d for d in out if is_data(d)]
    random.Random(3).shuffle(data)
    pair.feed(control[:3] + data + control[3:], 0.0)
    pair.settle(0.0, 0.3)
    check_exact(pair, records)


def test_corrupted_datagrams_are_rejected_by_the_tag(make_pair: MakePair) -> None:
    pair = make_pair(ONE)
    records = records_for(300)
    out = send_all(pair, records)
    rng = random.Random(5)
    corrupted = 0
    fed = []
    for d in out:
        if is_data(d) and rng.random() < 0.1:
            buf = bytearray(d)
            buf[rng.randrange(HEADER_SIZE, len(buf))] ^= 0x40  # body or tag
            fed.append(bytes(buf))
            corrupted += 1
        else:
            fed.append(d)
    pair.feed(fed, 0.0)
    pair.settle(0.0, 0.5)
    check_exact(pair, records)
    assert rejected(pair).get("authentication") == corrupted


def test_forged_datagram_under_a_wrong_key_is_rejected(make_pair: MakePair) -> None:
    pair = make_pair()
    records = records_for(100)
    out = send_all(pair, records)
    pair.feed(out[:4], 0.0)  # announcements: the receiver knows the session and its keys
    genuine = next(d for d in out if is_data(d))
    forger = SessionCipher(Cipher.AES_256_GCM, bytes(32))
    header = HEADER.pack(*HEADER.unpack_from(genuine)[:6], 50, 5, 6, 2, 200)
    forged = header + forger.seal(NONCE.pack(DatagramType.DATA, 50, 5), bytes(200), header)
    before = pair.receiver.state_size()
    pair.feed([forged], 0.0)
    assert pair.receiver.state_size() == before
    assert pair.events[-1] == DatagramRejected(
        "authentication", "datagram tag did not verify", None
    )


def test_forged_announcement_from_another_signer_is_rejected(make_pair: MakePair) -> None:
    pair = make_pair(signing=SigningKey.from_seed(b"x" * 32))
    out = send_all(pair, records_for(100))
    pair.feed(out, 0.0)
    pair.settle(0.0, 3.0)
    assert not pair.delivered()
    assert not pair.of(SessionStarted)
    assert rejected(pair)["authentication"] >= 2
    # everything else waited for a key that never came, then was dropped and counted
    assert rejected(pair)["unknown-key"] > 0
    assert (
        0 < pair.receiver.state_size()["early_datagrams"] <= ReceiverOptions().max_early_datagrams
    )


def test_announcement_repeats_are_verified_once(make_pair: MakePair) -> None:
    pair = make_pair()
    out = pair.sender.poll(0.0)
    announcements = [d for d in out if kind(d)[0] == DatagramType.ANNOUNCE]
    for _ in range(5):
        pair.feed(announcements, 0.0)
    assert pair.receiver.counters().announcements_verified == len(announcements)


def test_sender_restart_mid_stream(make_pair: MakePair) -> None:
    pair = make_pair()
    first = records_for(300, seed=1)
    pair.feed(send_all(pair, first), 0.0)
    now = pair.settle(0.0, 0.2)
    old_session = pair.sender.session_id
    lost = [
        Record(r.topic, r.partition, r.offset + 5_000, r.timestamp, r.key, r.value)
        for r in records_for(50, seed=9)
    ]
    old_out = send_all(pair, lost, now)  # never reaches the receiver
    second = [
        Record(r.topic, r.partition, r.offset + 10_000, r.timestamp, r.key, r.value)
        for r in records_for(300, seed=2)
    ]
    pair.sender = type(pair.sender)(
        pair.sender.config,
        pair.sender._signing_key,
        pair.sender._receiver_public,
        random.Random(99).randbytes,
        now,
    )
    pair.feed(send_all(pair, second, now), now)
    pair.settle(now, 0.3)
    started = pair.of(SessionStarted)
    assert [s.restart for s in started] == [False, True]
    assert started[1].previous_session_id == old_session
    ended = pair.of(SessionEnded)
    assert ended and ended[0].session_id == old_session
    assert pair.delivered() == first + second
    # the old session's datagrams are replays now
    before = rejected(pair).get("replay", 0)
    pair.feed(old_out[:10], now + 1)
    assert rejected(pair)["replay"] == before + 10


def test_blocks_open_at_a_restart_become_gaps_with_reason_restart(make_pair: MakePair) -> None:
    pair = make_pair()
    first = records_for(300, seed=1)
    pair.feed(send_all(pair, first), 0.0)
    now = pair.settle(0.0, 0.2)
    cut = [
        Record(r.topic, r.partition, r.offset + 5_000, r.timestamp, r.key, r.value)
        for r in records_for(50, seed=9)
    ]
    out = send_all(pair, cut, now)
    # the receiver sees part of the block and its manifests, not enough symbols to rebuild
    data = [d for d in out if is_data(d)]
    pair.feed([d for d in out if not is_data(d)] + data[:2], now)
    pair.sender = type(pair.sender)(
        pair.sender.config,
        pair.sender._signing_key,
        pair.sender._receiver_public,
        random.Random(98).randbytes,
        now,
    )
    pair.feed(send_all(pair, records_for(10, seed=3), now), now)
    pair.settle(now, 0.3)
    gaps = pair.gaps()
    assert gaps, "the half-received block must become a gap"
    assert {g.reason for g in gaps} == {"restart"}
    assert sum(g.count for g in gaps) == len(cut)
    assert min(g.first_offset for g in gaps) == min(r.offset for r in cut)
    assert max(g.last_offset for g in gaps) == max(r.offset for r in cut)


def test_replayed_datagrams_do_not_deliver_twice(make_pair: MakePair) -> None:
    pair = make_pair(options=ReceiverOptions(receive_window=4))
    records = records_for(1500)
    out = send_all(pair, records)
    pair.feed(out, 0.0)
    now = pair.settle(0.0, 0.2)
    pair.feed(out, now)  # everything again
    pair.settle(now, 0.2)
    check_exact(pair, records)
    # blocks far behind the receive window are rejected as replays
    assert rejected(pair)["replay"] > 0


def test_lost_tail_block_is_found_through_the_heartbeat(make_pair: MakePair) -> None:
    pair = make_pair(ONE)
    records = records_for(400)
    out = send_all(pair, records)
    last = max(kind(d)[1] for d in out if is_data(d))
    pair.feed([d for d in out if not is_data(d, last)], 0.0)
    pair.settle(0.0, 1.5)
    gaps = pair.gaps()
    assert gaps and {g.block for g in gaps} == {last}
    delivered = pair.delivered()
    assert len(delivered) + sum(g.count for g in gaps) == len(records)
    assert pair.of(HeartbeatReceived)[-1].next_block == last + 1


def test_lost_tail_block_and_all_its_manifests_are_found_by_the_heartbeat_alone(
    make_pair: MakePair,
) -> None:
    """No end marker, no manifest: only the heartbeat's next block and high-water marks tell
    the receiver that a last block existed and which records it held."""
    pair = make_pair(ONE)
    first = records_for(300, partitions=2, seed=1)
    pair.feed(send_all(pair, first), 0.0)
    now = pair.settle(0.0, 0.3)  # every manifest copy of these blocks is out
    assert pair.sender.pending_manifests() == 0
    tail = [
        Record(r.topic, r.partition, r.offset + 5_000, r.timestamp, r.key, r.value)
        for r in records_for(40, partitions=2, seed=5)
    ]
    out = send_all(pair, tail, now)
    assert len({kind(d)[1] for d in out if is_data(d)}) == 1  # one block

    def heartbeats_only(ds: list[bytes]) -> list[bytes]:
        return [d for d in ds if kind(d)[0] == DatagramType.HEARTBEAT]

    pair.feed(heartbeats_only(out), now)
    pair.settle(now, 1.5, link=heartbeats_only)
    assert pair.delivered() == first
    (lost,) = pair.of(BlocksLost)
    tail_block = pair.sender.next_block - 1
    assert (lost.first_block, lost.last_block) == (tail_block, tail_block)
    check_accounted(pair, first + tail)
    gaps = {g.partition: g for g in pair.gaps()}
    assert set(gaps) == {0, 1}
    for partition, gap in gaps.items():
        sent = [r.offset for r in tail if r.partition == partition]
        seen = [r.offset for r in first if r.partition == partition]
        assert gap.reason == "unaccounted" and gap.count == len(sent)
        assert gap.last_offset == sent[-1] and seen[-1] < gap.first_offset <= sent[0]


def test_blocks_lost_with_their_manifests_are_counted_from_heartbeats(
    make_pair: MakePair,
) -> None:
    pair = make_pair(ONE)
    records = records_for(400, partitions=2)
    out = send_all(pair, records)

    def no_manifests(ds: list[bytes]) -> list[bytes]:
        return [d for d in ds if kind(d)[0] != DatagramType.MANIFEST]

    pair.feed([d for d in no_manifests(out) if not is_data(d, 1)], 0.0)
    pair.settle(0.0, 1.5, link=no_manifests)
    assert pair.of(BlocksLost)
    gaps = pair.gaps()
    # the rebuilt blocks are named from their content (unsigned); block 1, never rebuilt,
    # from the heartbeat's counts (unaccounted)
    assert {g.reason for g in gaps} == {"unsigned", "unaccounted"}
    # strict provenance: nothing without a signed manifest is delivered
    assert not pair.delivered()
    assert sum(g.count for g in gaps) == len(records)


def test_non_strict_mode_delivers_without_manifests(make_pair: MakePair) -> None:
    pair = make_pair(options=ReceiverOptions(strict=False))
    records = records_for(300)
    out = send_all(pair, records)
    pair.feed([d for d in out if kind(d)[0] != DatagramType.MANIFEST], 0.0)
    check_exact(pair, records)


def test_key_rotation(make_pair: MakePair) -> None:
    pair = make_pair(ProtocolConfig(key_rotation_bytes=100_000))
    records = records_for(2000)
    out = send_all(pair, records)
    rng = random.Random(1)
    pair.feed([d for d in out if rng.random() > 0.05], 0.0)
    pair.settle(0.0, 1.0)
    check_exact(pair, records)
    rotated = pair.of(KeyRotated)
    assert len(rotated) >= 3
    assert pair.receiver.state_size()["keys"] <= 3
    assert [e.key_id for e in pair.sender.events() if isinstance(e, KeyRotated)]


def test_keys_rotate_by_time_with_overlap(make_pair: MakePair) -> None:
    """Each key is announced while its predecessor is still in use, so a stream that crosses
    rotations loses nothing and the receiver never waits for a key."""
    pair = make_pair(ProtocolConfig(key_rotation_seconds=1.0))
    records = records_for(350)
    used: list[int] = []
    now = 0.0
    for r in records:
        now += 0.01
        out = pair.sender.add(r, now) + pair.sender.poll(now)
        used += [HEADER.unpack_from(d)[4] for d in out if is_data(d)]
        pair.feed(out, now)
        pair.receiver.poll(now)
    out = pair.sender.flush(now)
    used += [HEADER.unpack_from(d)[4] for d in out if is_data(d)]
    pair.feed(out, now)
    pair.settle(now, 0.5)
    check_exact(pair, records)
    assert used == sorted(used) and set(used) == {1, 2, 3, 4}  # 3.5 s: three rotations
    sender_rotations = [e for e in pair.sender.events() if isinstance(e, KeyRotated)]
    assert [(e.previous_key_id, e.key_id) for e in sender_rotations] == [(1, 2), (2, 3), (3, 4)]
    # the receiver installs each key one rotation early: key 5 is known while 4 is in use
    installed = [(e.previous_key_id, e.key_id) for e in pair.of(KeyRotated)]
    assert installed == [(1, 2), (2, 3), (3, 4), (4, 5)]
    assert rejected(pair) == {}
    assert pair.receiver.state_size()["keys"] <= ReceiverOptions().max_keys


def test_no_nonce_repeats_under_one_key(make_pair: MakePair) -> None:
    """Across full and linger-closed blocks, manifests, heartbeats, flushes and rotations, every
    AEAD nonce (type, number, index) is used once per key; an announcement is signed, not
    sealed, and its repeats are the very same bytes."""
    pair = make_pair(ProtocolConfig(key_rotation_bytes=200_000, interleave=2))
    records = records_for(1500)
    out: list[bytes] = pair.sender.poll(0.0)
    now = 0.0
    for i in range(0, len(records), 50):
        now += 0.003 if i % 200 else 0.05  # bursts and pauses: both ways of closing blocks
        out += pair.sender.add_many(records[i : i + 50], now) + pair.sender.poll(now)
        if i % 500 == 0:
            out += pair.sender.flush(now)
    out += pair.sender.flush(now)
    sealed = [d for d in out if kind(d)[0] != DatagramType.ANNOUNCE]
    used = [(HEADER.unpack_from(d)[4], make_nonce(*kind(d))) for d in sealed]
    assert len(used) == len(set(used))
    assert len({key for key, _ in used}) >= 3  # the run crossed rotations
    announcements = [d for d in out if kind(d)[0] == DatagramType.ANNOUNCE]
    assert len(set(announcements)) == pair.sender.counters().keys


def test_lost_announcements_are_repeated(make_pair: MakePair) -> None:
    """The first announcements may be lost: data waits (bounded) for a repeat."""
    pair = make_pair()
    records = records_for(200)
    out = pair.sender.poll(0.0) + pair.sender.add_many(records, 0.0) + pair.sender.flush(0.0)
    pair.feed([d for d in out if kind(d)[0] != DatagramType.ANNOUNCE], 0.0)
    assert not pair.delivered() and pair.receiver.state_size()["early_datagrams"] > 0
    pair.settle(0.0, 0.5)  # the repeat at +20 ms brings the keys
    check_exact(pair, records)
    assert rejected(pair) == {}
    assert pair.receiver.state_size()["early_datagrams"] == 0


def test_a_full_block_closes_without_waiting_for_linger(make_pair: MakePair) -> None:
    pair = make_pair(ONE)
    pair.feed(pair.sender.poll(0.0), 0.0)
    records = records_for(400)
    added = 0
    out: list[bytes] = []
    while not out:
        out = pair.sender.add(records[added], 0.0)  # time stands still: linger never expires
        added += 1
    data = [d for d in out if is_data(d)]
    shapes = {HEADER.unpack_from(d)[6:10:2] for d in data}  # (block, k)
    cfg = pair.sender.config
    assert shapes == {(0, cfg.k)} and len(data) == cfg.k + cfg.m
    pair.feed(out, 0.0)
    pair.settle(0.0, 0.3)
    # the record that did not fit opened the next block, which linger then closed
    assert pair.delivered() == records[:added]
    assert pair.of(RecordsDelivered)[0].records == tuple(records[: added - 1])


def test_heartbeat_missed_then_link_up(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.feed(pair.sender.poll(0.0), 0.0)
    pair.receiver.poll(1.0)
    pair.events.extend(pair.receiver.events())
    missed = pair.of(HeartbeatMissed)
    assert len(missed) == 1 and missed[0].silent_for == pytest.approx(1.0)
    pair.feed(pair.sender.poll(1.05), 1.05)
    ups = pair.of(LinkUp)
    assert ups[-1].after_silence == pytest.approx(1.05)


def test_config_mismatch_is_rejected_with_a_reason(make_pair: MakePair) -> None:
    pair = make_pair(ProtocolConfig(k=16, m=4))
    from diode.protocol.receiver import ReceiverSession
    from tests.protocol.sessionkit import RECEIVER, SIGNING

    pair.receiver = ReceiverSession(ProtocolConfig(), RECEIVER, SIGNING.verify_key)
    pair.feed(send_all(pair, records_for(50)), 0.0)
    assert not pair.delivered()
    reasons = {e.reason for e in pair.of(DatagramRejected) if isinstance(e, DatagramRejected)}
    assert reasons == {"config"}


def test_linger_closes_a_block_and_commits_after_manifests(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.feed(pair.sender.poll(0.0), 0.0)
    rec = records_for(1)[0]
    assert pair.sender.add(rec, 0.001) == []
    assert pair.sender.committable() == {}
    timer = pair.sender.next_timer()
    assert timer is not None and timer <= 0.001 + pair.sender.config.linger
    pair.feed(pair.sender.poll(0.001 + pair.sender.config.linger), 0.01)
    pair.settle(0.01, 0.1)
    assert pair.delivered() == [rec]
    assert pair.sender.committable() == {(rec.topic, rec.partition): rec.offset + 1}
    assert pair.sender.counters().padding_bytes < 8


@pytest.mark.parametrize(
    "config",
    [
        ProtocolConfig(cipher=Cipher.CHACHA20_POLY1305),
        ProtocolConfig(compression=Compression.ZLIB),
        ProtocolConfig(codec="raptorq"),
        ProtocolConfig(payload_size=8972, k=16, m=4),
    ],
    ids=["chacha", "zlib", "raptorq", "jumbo"],
)
def test_variants_round_trip_with_loss(make_pair: MakePair, config: ProtocolConfig) -> None:
    pair = make_pair(config)
    records = records_for(800)
    out = send_all(pair, records)
    rng = random.Random(2)
    pair.feed([d for d in out if rng.random() > 0.03], 0.0)
    pair.settle(0.0, 0.5)
    check_exact(pair, records)


def test_a_record_bigger_than_a_block_gets_a_longer_block(make_pair: MakePair) -> None:
    pair = make_pair()
    big = Record("plant.a", 0, 10_000, 0, None, bytes(range(256)) * 800)  # ~200 KB
    small = records_for(3)
    pair.feed(send_all(pair, [*small, big]), 0.0)
    pair.settle(0.0, 0.3)
    assert pair.delivered() == [*small, big]
    too_big = Record("plant.a", 0, 10_001, 0, None, bytes(pair.sender.max_record_size + 1))
    with pytest.raises(LocalProtocolError, match="exceeds the largest block payload"):
        pair.sender.add(too_big, 1.0)


def test_offsets_must_increase_per_partition(make_pair: MakePair) -> None:
    pair = make_pair()
    rec = records_for(1)[0]
    pair.sender.add(rec, 0.0)
    with pytest.raises(LocalProtocolError, match="is not after offset"):
        pair.sender.add(rec, 0.0)


def test_gap_event_fields(make_pair: MakePair) -> None:
    pair = make_pair(ONE)
    records = records_for(200, partitions=1)
    out = send_all(pair, records)
    pair.feed([d for d in out if not is_data(d, 0)], 0.0)
    pair.settle(0.0, 1.0)
    (gap,) = pair.gaps()
    assert isinstance(gap, GapDetected)
    assert gap.session_id == pair.sender.session_id and gap.topic == "plant.a"
    assert gap.first_offset == records[0].offset


def test_an_idle_sender_heard_only_by_heartbeats_loses_nothing(make_pair: MakePair) -> None:
    """A real sender idles while its Kafka consumer joins: heartbeats come before any data."""
    pair = make_pair()
    now = 0.0
    # announcements and heartbeats only, for longer than the block timeout
    while now < 2.5:
        pair.feed(pair.sender.poll(now), now)
        pair.receiver.poll(now)
        pair.events.extend(pair.receiver.events())
        now += 0.05
    records = records_for(200, seed=4)
    pair.feed(send_all(pair, records, now), now)
    pair.settle(now, 1.0)
    assert pair.gaps() == []
    check_exact(pair, records)
