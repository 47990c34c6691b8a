"""Throughput of SenderSession and ReceiverSession on one core, in memory.

1400-byte symbols, 25 % repair (k=32, m=8), AES-256-GCM, default codec; the receiver sees
5 % independent loss. Prints one JSON object: MB/s of record payload for each side, the
padding cost of linger-closed blocks, and the top of a cProfile of each side with
``--profile``. Record payload is what a producer wrote: key, value and header bytes
(``Record.size``, what a policy size limit measures); ``encoded_record_bytes`` is the
MessagePack the blocks carry (topic, partition, offset, timestamp and framing on top), and
the ``*_encoded_mb_s`` figures are per encoded byte.

Both sides are driven as the services drive them: the sender gets records ``--batch`` at a
time and its datagrams are dropped once counted (a service sends them), the receiver's
events are drained every 64 datagrams; ``receiver_batch_*`` hands the receiver the same
datagrams 64 at a time through ``receive_datagrams`` (what ``UdpReceiver.recv_batch`` gives
a service) and drains after each batch. The one-core figures (``sender_mb_s``,
``receiver_mb_s``, ``receiver_batch_mb_s``) divide the payload by the process CPU time of the best of ``--runs``
runs, which the other load of a shared machine does not inflate; ``*_two_cores_mb_s`` is
the sender with its FEC encode on a worker thread (``fec_thread=True``), by wall-clock time,
and ``*_cpu_mb_s`` for it is the payload per CPU second of both threads.

The workload (records, sessions, loss, the delivery check) is ``diode.benchmark``'s, the one
``diode bench protocol`` times; this script adds the per-datagram receiver, the FEC thread,
the linger padding and the profiles.

    python bench/protocol.py [--records N] [--record-size B] [--codec zfec|raptorq|rs]
                             [-k K] [-m M] [--payload P] [--batch N] [--runs N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
from collections.abc import Callable

from diode.benchmark import ProtocolWorkload, protocol_records, time_runs
from diode.protocol.crypto import ReceiverPrivateKey, SigningKey
from diode.protocol.fec import DEFAULT_CODEC
from diode.protocol.sender import SenderSession
from diode.protocol.wire import HEADER_SIZE, ProtocolConfig


def best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Best wall-clock and best process CPU seconds of ``runs`` calls."""
    timed = time_runs(fn, runs=runs)
    return min(timed.wall), min(timed.cpu)


def profile(fn: Callable[[], object]) -> list[str]:
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
    ap.add_argument("--codec", default=DEFAULT_CODEC)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("-m", type=int, default=8)
    ap.add_argument("--payload", type=int, default=1400 + HEADER_SIZE + 16)
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    cfg = ProtocolConfig(payload_size=args.payload, k=args.k, m=args.m, codec=args.codec)
    records = protocol_records(args.records, args.record_size)
    work = ProtocolWorkload(cfg, records, loss=args.loss, batch=args.batch)
    datagrams = work.datagrams
    encoded = work.encoded_bytes
    payload = work.payload_bytes
    run_sender = work.run_sender
    run_receiver = work.run_receiver
    run_receiver_batch = work.run_receiver_batch

    send_wall, send_s = best_of(args.runs, run_sender)
    recv_wall, recv_s = best_of(args.runs, run_receiver)
    batch_wall, batch_s = best_of(args.runs, run_receiver_batch)
    send2_wall, send2_cpu = best_of(args.runs, lambda: run_sender(fec_thread=True))
    c = run_receiver().counters()
    check = work.check()  # every delivered record compared with the one sent
    assert check.ok, check.problem()
    assert c.records_delivered + c.records_lost == len(records), c
    cb = run_receiver_batch().counters()
    assert cb == c, (cb, c)

    # padding: the cost of closing blocks by linger, one small batch per block
    signing = SigningKey.from_seed(b"s" * 32)
    receiver_key = ReceiverPrivateKey.from_seed(b"r" * 32)
    slow = SenderSession(cfg, signing, receiver_key.public_key, random.Random(5).randbytes, 0.0)
    t = 0.0
    slow_records = protocol_records(2000, 200)
    for rec in slow_records:
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
        "record_payload_bytes": payload,
        "encoded_record_bytes": encoded,
        "datagrams": len(datagrams),
        "loss": args.loss,
        "batch": args.batch,
        "sender_mb_s": round(payload / send_s / 1e6, 1),
        "receiver_mb_s": round(payload / recv_s / 1e6, 1),
        "sender_wall_mb_s": round(payload / send_wall / 1e6, 1),
        "receiver_wall_mb_s": round(payload / recv_wall / 1e6, 1),
        "receiver_batch_mb_s": round(payload / batch_s / 1e6, 1),
        "receiver_batch_wall_mb_s": round(payload / batch_wall / 1e6, 1),
        "sender_two_cores_mb_s": round(payload / send2_wall / 1e6, 1),
        "sender_two_cores_cpu_mb_s": round(payload / send2_cpu / 1e6, 1),
        "sender_encoded_mb_s": round(encoded / send_s / 1e6, 1),
        "receiver_encoded_mb_s": round(encoded / recv_s / 1e6, 1),
        "receiver_batch_encoded_mb_s": round(encoded / batch_s / 1e6, 1),
        "target_mb_s": 250,
        "receiver_blocks_recovered": c.blocks_recovered,
        "receiver_blocks_lost": c.blocks_lost,
        "receiver_manifests_verified": c.manifests_verified,
        "wire_bytes_per_payload_byte": round(sum(len(d) for d in datagrams) / payload, 3),
        "linger_blocks_padding_share": round(sc.padding_bytes / sc.block_bytes, 4),
        "linger_blocks_wire_per_payload_byte": round(
            sc.bytes / sum(r.size for r in slow_records), 2
        ),
    }
    if args.profile:
        result["sender_profile"] = profile(run_sender)
        result["receiver_profile"] = profile(run_receiver)
        result["receiver_batch_profile"] = profile(run_receiver_batch)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
