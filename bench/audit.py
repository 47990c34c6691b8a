"""Audit log throughput: entries/s written with hashing and periodic signed checkpoints.

Writes typical ``record_refused`` entries through ``AuditLog`` in both modes and then
verifies the result, printing one JSON object:

* ``sync_entries_per_s``: synchronous mode (the caller writes), end to end;
* ``threaded_entries_per_s``: the writer thread's rate, from the first ``append`` until
  ``close`` returns (queue large enough that nothing is dropped);
* ``threaded_append_us``: what one ``append`` costs the caller in threaded mode;
* ``verify_entries_per_s``: ``verify`` with signature checks (the log of the threaded
  run is verified too, untimed, so a writer that broke the chain cannot post a result).

Every run checkpoints every ``--checkpoint`` entries (Ed25519 sign + fsync under the
default policy) and rotates at 64 MiB. Target: >= 50,000 entries/s. The writing is
``diode.benchmark.write_audit``, which ``diode bench audit`` times too.

    .venv/bin/python bench/audit.py [--entries 200000] [--checkpoint 1000] [--fsync checkpoint]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from diode.audit import FsyncPolicy, verify
from diode.benchmark import write_audit
from diode.errors import BenchmarkError
from diode.protocol.crypto import SigningKey


def _write(
    path: Path, key: SigningKey, n: int, checkpoint: int, fsync: str, threaded: bool
) -> tuple[float, float]:
    try:
        return write_audit(
            path, key, n, checkpoint=checkpoint, fsync=FsyncPolicy(fsync), threaded=threaded
        )
    except BenchmarkError as exc:
        raise SystemExit(str(exc)) from exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--checkpoint", type=int, default=1000)
    parser.add_argument("--fsync", choices=[p.value for p in FsyncPolicy], default="checkpoint")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is kept")
    args = parser.parse_args()
    key = SigningKey.from_seed(bytes(range(32)))
    n = args.entries
    results: dict[str, list[float]] = {"sync": [], "threaded": [], "append": [], "verify": []}
    base = Path(tempfile.mkdtemp(prefix="diode-audit-bench-"))
    try:
        for run in range(args.repeat):
            sync_dir = base / f"sync{run}"
            total, _ = _write(
                sync_dir / "audit.jsonl", key, n, args.checkpoint, args.fsync, threaded=False
            )
            results["sync"].append(n / total)
            threaded_dir = base / f"threaded{run}"
            total, appended = _write(
                threaded_dir / "audit.jsonl", key, n, args.checkpoint, args.fsync, threaded=True
            )
            results["threaded"].append(n / total)
            results["append"].append(appended / n * 1e6)
            start = time.perf_counter()
            report = verify([sync_dir], key.verify_key)
            elapsed = time.perf_counter() - start
            if not report.ok:
                raise SystemExit(f"benchmark log does not verify: {report.first_problem}")
            results["verify"].append(report.chains[0].entries / elapsed)
            # not timed: a fast writer thread that wrote a broken chain would prove nothing
            threaded_report = verify([threaded_dir], key.verify_key)
            if not threaded_report.ok:
                raise SystemExit(
                    f"threaded benchmark log does not verify: {threaded_report.first_problem}"
                )
            shutil.rmtree(sync_dir)
            shutil.rmtree(threaded_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    print(
        json.dumps(
            {
                "benchmark": "audit",
                "entries": n,
                "checkpoint_every": args.checkpoint,
                "fsync": args.fsync,
                "sync_entries_per_s": round(median(results["sync"])),
                "threaded_entries_per_s": round(median(results["threaded"])),
                "threaded_append_us": round(median(results["append"]), 2),
                "verify_entries_per_s": round(median(results["verify"])),
                "target_entries_per_s": 50_000,
            }
        )
    )


if __name__ == "__main__":
    main()
