"""UDP adapter throughput over loopback, and how well the pacer keeps a set rate.

Prints one JSON object. The receiver runs in its own process, so sender and receiver each
have a core. Datagrams carry 1400 bytes of payload; MB/s is 10**6 bytes of UDP payload.

``unpaced``: the sender sends as fast as it can for ``--seconds``, one row per combination
of sender path (``plain``: one ``send`` per datagram; ``gso``: UDP GSO, up to 46 datagrams of
1400 bytes per call) and receiver path (``recv_into``: one datagram per call into a
preallocated buffer; ``gro``: UDP GRO, a coalesced train per ``recvmsg``). ``sent_*`` is what
left the sender, ``received_*`` what the receiver got per second while data flowed, and
``loss`` the fraction sent but never received (the kernel's drop counter, ``kernel_drops``,
says how much of it overflowed the receive buffer). A sender faster than its receiver loses
datagrams here by design: there is no flow control across a diode, which is why the real
sender is paced.

``paced``: the GSO sender paced at each rate in ``--rates`` (bit/s on the wire, counting
IP/UDP headers and Ethernet framing, as the pacer does). ``achieved_bps`` is measured at the
sender over the whole run after the initial burst, ``error`` is ``achieved / target - 1``, and
``received_bps`` the same rate as seen by the receiver.

    .venv/bin/python bench/udp.py                 # 3 s per run, about 25 seconds
    .venv/bin/python bench/udp.py --quick         # 0.5 s per run, a few seconds
    .venv/bin/python bench/udp.py --seconds 10 --rates 1e8,1e9,2e9
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from diode.io import (
    ETHERNET_FRAMING,
    IPV4_UDP_OVERHEAD,
    UdpReceiver,
    UdpReceiverConfig,
    UdpSender,
    UdpSenderConfig,
)

SIZE = 1400
BATCH = 256
#: the receiver stops once the sender is done and nothing has come for this long
IDLE_S = 0.3


def _receive(conn: Connection, gro: bool, stop: Event) -> None:
    """Receiver process: count everything until the sender is done and the socket is idle."""
    with UdpReceiver(UdpReceiverConfig(host="127.0.0.1", gro=gro)) as rx:
        conn.send((rx.local_address[1], rx.rcvbuf_bytes, rx.gro_enabled))
        count = nbytes = 0
        first = last = 0.0
        while True:
            got = rx.recv_batch(BATCH, IDLE_S)
            if got:
                now = time.perf_counter()
                if not count:
                    first = now
                last = now
                count += len(got)
                nbytes += sum(map(len, got))
            elif stop.is_set():
                break
        c = rx.counters()
        conn.send(
            {
                "datagrams": count,
                "bytes": nbytes,
                "seconds": last - first,
                "kernel_drops": c.kernel_drops,
                "dropped_other": sum(c.errors.values()),
                "recv_calls": c.recv_calls,
                "gro_batches": c.gro_batches,
            }
        )


def _run(seconds: float, *, gso: bool, gro: bool, rate: int | None) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_receive, args=(child, gro, stop), daemon=True)
    proc.start()
    port, rcvbuf, gro_on = parent.recv()
    config = UdpSenderConfig(host="127.0.0.1", port=port, gso=gso, rate_bits_per_s=rate)
    payload = b"\xa5" * SIZE
    with UdpSender(config) as tx:
        batch = [payload] * 64
        began = time.perf_counter()
        deadline = began + seconds
        while time.perf_counter() < deadline:
            tx.send_many(batch)
        elapsed = time.perf_counter() - began
        c = tx.counters()
        burst = tx.pacer.burst_bytes if tx.pacer is not None else 0
        gso_on = tx.gso_enabled
    stop.set()
    rx = parent.recv()
    proc.join(5)
    sent = c.datagrams_sent
    row: dict[str, Any] = {
        "sender": "gso" if gso_on else "plain",
        "receiver": "gro" if gro_on else "recv_into",
        "seconds": round(elapsed, 3),
        "sent_datagrams_per_s": round(sent / elapsed),
        "sent_MBps": round(c.bytes_sent / elapsed / 1e6, 1),
        "received_datagrams_per_s": round(rx["datagrams"] / rx["seconds"]) if rx["seconds"] else 0,
        "received_MBps": round(rx["bytes"] / rx["seconds"] / 1e6, 1) if rx["seconds"] else 0.0,
        "loss": round(1 - rx["datagrams"] / sent, 5) if sent else None,
        "kernel_drops": rx["kernel_drops"],
        "sender_calls_per_datagram": round(c.send_calls / sent, 4) if sent else None,
        "receiver_calls_per_datagram": (
            round(rx["recv_calls"] / rx["datagrams"], 4) if rx["datagrams"] else None
        ),
        "send_retries": c.retries,
        "rcvbuf_bytes": rcvbuf,
    }
    if rate is not None:
        # The first burst leaves at once; the rate holds for everything after it.
        achieved = (c.wire_bytes_sent - burst) * 8 / elapsed
        row.update(
            {
                "target_bps": rate,
                "achieved_bps": round(achieved),
                "error": round(achieved / rate - 1, 5),
                "received_bps": (
                    round(
                        rx["bytes"]
                        / SIZE
                        * (SIZE + IPV4_UDP_OVERHEAD + ETHERNET_FRAMING)
                        * 8
                        / rx["seconds"]
                    )
                    if rx["seconds"]
                    else 0
                ),
                "pacing_waits": c.pacing_waits,
                "burst_bytes": burst,
            }
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--quick", action="store_true", help="0.5 s runs (smoke test)")
    parser.add_argument(
        "--rates",
        default="1e8,1e9",
        help="comma-separated pacing rates in bit/s for the paced runs (default 1e8,1e9)",
    )
    args = parser.parse_args(argv)
    seconds = 0.5 if args.quick else args.seconds
    rates = [int(float(r)) for r in args.rates.split(",") if r.strip()]
    load_before = round(os.getloadavg()[0], 2)
    unpaced = [
        _run(seconds, gso=gso, gro=gro, rate=None) for gso in (False, True) for gro in (False, True)
    ]
    paced = [_run(seconds, gso=True, gro=True, rate=rate) for rate in rates]
    result = {
        "benchmark": "udp_loopback",
        "datagram_bytes": SIZE,
        "seconds_per_run": seconds,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        # other work on the host steals the receiver's core and the pacer's wake-ups
        "loadavg_1min_before": load_before,
        "unpaced": unpaced,
        "paced": paced,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
