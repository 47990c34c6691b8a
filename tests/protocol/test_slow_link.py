"""A slow link: the sender paces its datagrams to a few Mbit/s, so an interleaved group of
blocks takes longer to arrive than ``block_timeout``. The receiver measures the rate it is
fed at and waits for a group as long as the link needs to carry it: nothing is declared lost
on a link that loses nothing, and real loss is still found."""

from __future__ import annotations

import random

import pytest

from diode.protocol.crypto import ReceiverPrivateKey, SigningKey
from diode.protocol.events import GapDetected, RecordsDelivered
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Record
from diode.protocol.sender import SenderSession
from diode.protocol.wire import HEADER, DatagramType, ProtocolConfig

#: datagrams between two looks at the sender's timers (what the sender service does)
CHUNK = 256


def _run(rate: float, drop_block: int | None = None) -> tuple[int, list[GapDetected], int]:
    """3000 records of 1000 bytes through a link of ``rate`` datagrams/s; optionally every
    datagram of one block is dropped. Returns records delivered, gaps, and records sent."""
    cfg = ProtocolConfig()
    sk = SigningKey.from_seed(bytes(32))
    rk = ReceiverPrivateKey.from_seed(bytes([7]) * 32)
    rng = random.Random(5)
    now = 0.0
    sender = SenderSession(cfg, sk, rk.public_key, rng.randbytes, now)
    receiver = ReceiverSession(cfg, rk, sk.verify_key)
    delivered = 0
    gaps: list[GapDetected] = []

    def drain() -> None:
        nonlocal delivered
        for e in receiver.events():
            if isinstance(e, RecordsDelivered):
                delivered += len(e.records)
            elif isinstance(e, GapDetected):
                gaps.append(e)

    def wire(datagrams: list[bytes]) -> None:
        # the link carries one datagram every 1/rate seconds; the sender waits for it
        nonlocal now
        for i in range(0, len(datagrams), CHUNK):
            for d in datagrams[i : i + CHUNK]:
                now += 1.0 / rate
                header = HEADER.unpack_from(d)
                if header[2] != DatagramType.DATA or header[6] != drop_block:
                    receiver.receive_datagram(d, now)
                timer = receiver.next_timer()
                if timer is not None and now >= timer:
                    receiver.poll(now)
            # between two chunks only the control timers, as the sender service does: the
            # open block stays open for the records that follow at once
            if now >= sender.next_control_timer():
                wire(sender.poll_control(now))
        drain()

    records = [
        Record("plant.line", i % 2, i // 2, 1_700_000_000_000, b"k", b"v" * 1000, ())
        for i in range(3000)
    ]
    for start in range(0, len(records), 500):  # the consumer's batches
        wire(sender.add_many(records[start : start + 500], now))
    wire(sender.flush(now))
    for _ in range(400):  # idle: heartbeats and manifest copies, then every timer has fired
        now += 0.05
        wire(sender.poll(now))
        receiver.poll(now)
        drain()
    return delivered, gaps, len(records)


@pytest.mark.parametrize("mbit", [3, 10, 100])
def test_nothing_is_lost_on_a_slow_link_that_loses_nothing(mbit: int) -> None:
    rate = mbit * 1e6 / 8 / 1500
    delivered, gaps, sent = _run(rate)
    assert gaps == []
    assert delivered == sent


def test_a_lost_block_on_a_slow_link_is_still_found() -> None:
    delivered, gaps, sent = _run(3e6 / 8 / 1500, drop_block=5)
    assert gaps and {g.block for g in gaps} == {5}
    assert delivered + sum(g.count for g in gaps) == sent


def test_poll_control_keeps_the_open_block_open() -> None:
    cfg = ProtocolConfig()
    sk = SigningKey.from_seed(bytes(32))
    rk = ReceiverPrivateKey.from_seed(bytes([7]) * 32)
    sender = SenderSession(cfg, sk, rk.public_key, random.Random(1).randbytes, 0.0)
    sender.add(Record("plant.line", 0, 0, 0, None, b"v" * 100, ()), 0.0)
    assert sender.next_timer() == pytest.approx(cfg.linger)  # poll would close the block
    later = cfg.heartbeat_interval + 0.01
    assert sender.next_control_timer() <= later
    out = sender.poll_control(later)
    kinds = {HEADER.unpack_from(d)[2] for d in out}
    assert DatagramType.HEARTBEAT in kinds and DatagramType.DATA not in kinds
    assert sender.counters().blocks == 0  # still open: the record waits for more
    data = [d for d in sender.poll(later) if HEADER.unpack_from(d)[2] == DatagramType.DATA]
    assert data and sender.counters().blocks == 1
