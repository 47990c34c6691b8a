"""Throughput of SenderSession and ReceiverSession on one core, in memory.

1400-byte symbols, 25 % repair (k=32, m=8), AES-256-GCM, default codec; the receiver sees
5 % independent loss. Prints one JSON object: MB/s of record payload (encoded records) for
each side, the padding cost of linger-closed blocks, and the top of a cProfile of each side
with ``--profile``.

    python bench/protocol.py [--records N] [--record-size B] [--codec zfec|raptorq] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import time

from diode.protocol.crypto import ReceiverPrivateKey, SigningKey
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Record
from diode.protocol.sender import SenderSession
from diode.protocol.wire import HEADER_SIZE, ProtocolConfig


def make_records(n: int, size: int) -> list[Record]:
    rng = random.Random(1)
    value = rng.randbytes(size)
    return [
        Record("plant.bench", i % 4, i, 1_700_000_000_000 + i, b"key-%d" % i, value)
        for i in range(n)
    ]


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def profile(fn: object) -> list[str]:
    assert callable(fn)
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
    return [line.strip() for line in out.getvalue().splitlines() if line.strip()][-9:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--record-size", type=int, default=1000)
    ap.add_argument("--codec", default="zfec")
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    cfg = ProtocolConfig(payload_size=1400 + HEADER_SIZE + 16, k=32, m=8, codec=args.codec)
    signing = SigningKey.from_seed(b"s" * 32)
    receiver_key = ReceiverPrivateKey.from_seed(b"r" * 32)
    records = make_records(args.records, args.record_size)

    def new_sender() -> SenderSession:
        return SenderSession(cfg, signing, receiver_key.public_key, random.Random(2).randbytes, 0.0)

    def run_sender() -> list[bytes]:
        s = new_sender()
        out = s.add_many(records, 0.0)
        out += s.flush(0.0)
        return out

    sender = new_sender()
    datagrams = sender.add_many(records, 0.0) + sender.flush(0.0)
    payload = sender.counters().record_bytes
    rng = random.Random(3)
    kept = [d for d in datagrams if rng.random() >= args.loss]

    def run_receiver() -> ReceiverSession:
        r = ReceiverSession(cfg, receiver_key, signing.verify_key)
        for d in kept:
            r.receive_datagram(d, 0.0)
        r.poll(1.0)  # past every block timeout: all blocks resolved
        r.events()
        return r

    send_s = best_of(3, run_sender)
    recv_s = best_of(3, run_receiver)
    r = run_receiver()
    c = r.counters()
    assert c.records_delivered + c.records_lost == len(records), c

    # padding: the cost of closing blocks by linger, one small batch per block
    slow = SenderSession(cfg, signing, receiver_key.public_key, random.Random(5).randbytes, 0.0)
    t = 0.0
    for rec in make_records(2000, 200):
        t += 0.01
        slow.add(rec, t)
        slow.poll(t)
    slow.flush(t)
    sc = slow.counters()

    result = {
        "records": len(records),
        "record_size": args.record_size,
        "codec": args.codec,
        "symbol_size": cfg.symbol_size,
        "k": cfg.k,
        "m": cfg.m,
        "payload_bytes": payload,
        "datagrams": len(datagrams),
        "loss": args.loss,
        "sender_mb_s": round(payload / send_s / 1e6, 1),
        "receiver_mb_s": round(payload / recv_s / 1e6, 1),
        "receiver_blocks_recovered": c.blocks_recovered,
        "receiver_blocks_lost": c.blocks_lost,
        "wire_overhead": round(sum(len(d) for d in datagrams) / payload, 3),
        "linger_blocks_padding_share": round(sc.padding_bytes / sc.block_bytes, 4),
        "linger_blocks_wire_per_payload": round(sc.bytes / sc.record_bytes, 2),
    }
    if args.profile:
        result["sender_profile"] = profile(run_sender)
        result["receiver_profile"] = profile(run_receiver)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
