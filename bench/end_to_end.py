"""The whole diode, end to end, on this machine: OT Kafka -> sender -> UDP -> receiver -> IT Kafka.

Prints one JSON object. For each loss rate (``--losses``, default 0 and 1%): N plant records
(``--records``, values padded to ``--value-size`` bytes of JSON) are produced to a fresh set of
OT topics first; then the receiver and the sender start (with the demo's lossy UDP relay in
between when the loss is above 0), and the clock runs from the sender's start until the last
allowed record is on the IT cluster. ``records_per_s`` and ``mb_per_s`` (10**6 bytes of key +
value + headers) count the records that crossed; ``cpu_s`` is each process's CPU time over
that window (from /proc), so ``cpu_s / seconds`` near 1.0 means that process was the limit.
Every record is then read back from IT and compared byte for byte.

Uses the machinery of ``scripts/demo.py``; both clusters are started once (or given with
``--ot-bootstrap``/``--it-bootstrap``) and each run has its own topic namespace.

    .venv/bin/python bench/end_to_end.py                      # 200k x 500 B, loss 0 and 1%
    .venv/bin/python bench/end_to_end.py --records 20000      # a quick look
    .venv/bin/python bench/end_to_end.py --link-mbit 2000 --losses 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import demo  # noqa: E402  (scripts/demo.py)
import kafkactl  # noqa: E402


def lost_so_far(audit_log: Path) -> int:
    """Records the receiver has reported lost (``gap`` entries) in its audit log so far."""
    from diode.audit import decode_line
    from diode.errors import AuditError

    lost = 0
    try:
        lines = audit_log.read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            entry = decode_line(line)
        except AuditError:
            continue  # the line being written
        if entry.event == "gap":
            lost += int(str(entry.fields.get("count", 0)))
    return lost


def one_run(
    base: Path, ot: str, it: str, records: int, loss: float, args: argparse.Namespace
) -> dict[str, Any]:
    work = base / f"run-{uuid.uuid4().hex[:6]}"
    opts = demo.Options(
        loss=loss,
        seed=args.seed,
        work_dir=work,
        ot_bootstrap=ot,
        it_bootstrap=it,
        protocol=demo.ProtocolChoice(k=args.k, m=args.m, linger_ms=args.linger_ms),
        link_mbit=args.link_mbit,
        value_size=args.value_size,
    )
    run = demo.Demo(opts, say=lambda _text: None)
    try:
        run.setup()
        produce_s = run.produce_all(records)
        want = run.ledger.expected_by_target()
        total = sum(want.values())
        payload = sum(
            len(r.value) + len(r.key or b"") + sum(len(k) + len(v or b"") for k, v in r.headers)
            for r in run.ledger.records.values()
            if r.target is not None
        )
        run.start_pair()
        began = run.sender_started_at
        pids = {name: c.proc.pid for name, c in run.children.items()}
        cpu0 = {name: demo.cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        watch = demo.Watermarks(it)
        deadline = began + args.timeout
        on_it = 0
        lost = 0
        receiver_log = work / "audit" / "receiver-audit.jsonl"
        next_gap_check = 0.0
        try:
            while time.monotonic() < deadline:
                run.check_alive()
                on_it = sum(watch.counts(list(want)).values())
                if on_it >= total:
                    break
                if time.monotonic() >= next_gap_check:
                    # loss is reported, never waited for: stop once everything is accounted
                    lost = lost_so_far(receiver_log)
                    next_gap_check = time.monotonic() + 0.5
                    if on_it + lost >= total:
                        break
                time.sleep(0.02)
        finally:
            watch.close()
        seconds = time.monotonic() - began
        cpu = {
            name: round((demo.cpu_seconds(pid) or 0.0) - cpu0[name], 2)
            for name, pid in pids.items()
        }
        run.stop_pair()
        messages = demo.read_topics(it, sorted(want))
        cmp = demo.compare(run.ledger, messages)
        return {
            "loss": loss,
            "records_produced": len(run.ledger.records),
            "records_allowed": total,
            "records_on_it": on_it,
            "complete": on_it >= total,
            "records_reported_lost": lost,
            "produce_s": round(produce_s, 2),
            "seconds": round(seconds, 2),
            "records_per_s": round(on_it / seconds),
            "mb_per_s": round(payload * (on_it / max(total, 1)) / seconds / 1e6, 2),
            "cpu_s": cpu,
            "matched_byte_for_byte": cmp.matched,
            "missing": cmp.missing,
            "mismatched": cmp.mismatched,
            "duplicates": cmp.duplicates,
            "relay": run.relay_counters,
        }
    finally:
        run.teardown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--value-size", type=int, default=500, help="bytes of each JSON value")
    p.add_argument("--losses", default="0,0.01", help="comma-separated datagram loss rates")
    p.add_argument("--link-mbit", type=float, default=1000.0, help="sender [udp] rate_mbit")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--linger-ms", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--ot-bootstrap")
    p.add_argument("--it-bootstrap")
    args = p.parse_args()
    losses = [float(x) for x in args.losses.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="diode-e2e-bench-") as tmp:
        base = Path(tmp)
        clusters: list[Any] = []
        try:
            if args.ot_bootstrap and args.it_bootstrap:
                ot, it = args.ot_bootstrap, args.it_bootstrap
            else:
                clusters = kafkactl.start_many([("ot", base / "ot"), ("it", base / "it")])
                ot, it = clusters[0].bootstrap, clusters[1].bootstrap
            runs = [one_run(base, ot, it, args.records, loss, args) for loss in losses]
        finally:
            for c in clusters:
                c.stop()
    print(
        json.dumps(
            {
                "benchmark": "end_to_end",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "records": args.records,
                "value_size": args.value_size,
                "link_mbit": args.link_mbit,
                "protocol": {"k": args.k, "m": args.m, "linger_ms": args.linger_ms},
                "runs": runs,
            },
            indent=2,
        )
    )
    return 0 if all(r["complete"] and r["mismatched"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
