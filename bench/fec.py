"""Erasure-code throughput for one block of 1400-byte symbols, and RaptorQ's failure rate.

Codecs compared: every one ``CODECS`` lists (zfec, raptorq, and rs, our own SIMD
Reed-Solomon; ``rs_kernel`` says which of its kernels ran), then reedsolo and creedsolo.

Prints one JSON object. Throughput is MB/s (10**6 bytes) of *source* data through the
diode's own ``ErasureCodec`` API (validation included), median of several runs, on the block
``diode.benchmark.FecWorkload`` makes (the one ``diode bench fec`` times). Decode
rebuilds m lost source symbols from m repair symbols (RaptorQ gets m+2 repair, i.e. k+2
symbols, as it needs). ``encode_2_threads_MBps`` runs two encoders at once: it doubles only
if the library releases the GIL; ``python_thread_slowdown_beside_encode`` is how much slower
a pure-Python loop runs while an encoder thread runs nonstop (1.0: GIL released).
reedsolo is pure Python and works byte column by byte column; its cost is linear in the
symbol length, so it is timed on the first ``columns`` bytes of every symbol and reported
per source byte like the others. creedsolo is timed the same way when it is importable.

    .venv/bin/python bench/fec.py            # full run, about 35 seconds
    .venv/bin/python bench/fec.py --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from _timing import median_rate, parse_args, print_report

from diode.benchmark import FecWorkload, rs_kernel
from diode.errors import FECError
from diode.protocol.fec import CODECS, DEFAULT_CODEC, ErasureCodec, get_codec

SYMBOL = 1400
SHAPES = ((32, 8), (64, 16))


def _median_mbps(fn: Callable[[], object], source_bytes: int, runs: int, min_time: float) -> float:
    """Median over ``runs`` of MB/s, each run repeating ``fn`` for at least ``min_time``."""
    return round(median_rate(fn, source_bytes, runs, min_time) / 1e6, 2)


def _parallel_mbps(
    fn: Callable[[], object], source_bytes: int, single_mbps: float, runs: int, min_time: float
) -> float:
    """Aggregate MB/s of two threads running ``fn`` at once: twice the single-thread rate
    if the library releases the GIL (it can then run beside the Python pipeline)."""
    n = max(1, int(single_mbps * 1e6 * min_time / source_bytes))

    def loop() -> None:
        for _ in range(n):
            fn()

    rates = []
    for _ in range(runs):
        threads = [threading.Thread(target=loop) for _ in range(2)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates.append(2 * n * source_bytes / (time.perf_counter() - began) / 1e6)
    return round(statistics.median(rates), 2)


def _python_slowdown(fn: Callable[[], object], loops: int) -> float:
    """How much slower a pure-Python loop runs while another thread calls ``fn`` nonstop:
    about 1.0 if the library releases the GIL while it computes, about 2.0 if it holds it."""

    def python_work() -> float:
        began = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i
        return time.perf_counter() - began

    alone = python_work()
    stop = threading.Event()

    def encode_nonstop() -> None:
        while not stop.is_set():
            fn()

    thread = threading.Thread(target=encode_nonstop)
    thread.start()
    try:
        beside = python_work()
    finally:
        stop.set()
        thread.join()
    return round(beside / alone, 2)


def _bench_codec(
    codec: ErasureCodec, k: int, m: int, rng: random.Random, runs: int, min_time: float
) -> dict[str, Any]:
    loops = int(min_time * 10_000_000)
    work = FecWorkload(codec, k, m, SYMBOL, rng)  # checks that the decode rebuilds the block
    encode, decode, size = work.encode, work.decode, work.source_bytes
    encode_mbps = _median_mbps(encode, size, runs, min_time)
    return {
        "encode_MBps": encode_mbps,
        "decode_MBps": _median_mbps(decode, size, runs, min_time),
        "encode_2_threads_MBps": _parallel_mbps(encode, size, encode_mbps, runs, min_time),
        "python_thread_slowdown_beside_encode": _python_slowdown(encode, loops),
        "decode_symbols_given": work.decode_symbols_given,
    }


def _bench_reedsolo(
    module: Any, k: int, m: int, rng: random.Random, runs: int, columns: int
) -> dict[str, Any]:
    """Column-wise RS over GF(256): column c of the block is byte c of every symbol."""
    rs = module.RSCodec(m)
    source = [rng.randbytes(columns) for _ in range(k)]
    lost = sorted(rng.sample(range(k), m))

    def encode() -> list[bytes]:
        repair_columns = [bytes(rs.encode(bytes(col)))[k:] for col in zip(*source, strict=True)]
        return [bytes(row) for row in zip(*repair_columns, strict=True)]

    repair = encode()
    codewords = [bytearray(col) for col in zip(*source, *repair, strict=True)]
    for word in codewords:
        for i in lost:
            word[i] = 0

    def decode() -> list[bytes]:
        data_columns = [
            bytes(rs.decode(word, erase_pos=lost, only_erasures=True)[0]) for word in codewords
        ]
        return [bytes(row) for row in zip(*data_columns, strict=True)]

    assert decode() == source
    return {
        "encode_MBps": _median_mbps(encode, k * columns, runs, 0.0),
        "decode_MBps": _median_mbps(decode, k * columns, runs, 0.0),
        "columns_timed": columns,
    }


def _raptorq_failures(k: int, m: int, trials: int, rng: random.Random) -> dict[str, int]:
    """Decodes that fail with exactly k, k+1 and k+2 random symbols out of k+m+2."""
    codec = get_codec("raptorq")
    n = k + m + 2
    source = [rng.randbytes(SYMBOL) for _ in range(k)]
    symbols = source + codec.encode(source, n - k)
    result = {"trials": trials}
    for extra in (0, 1, 2):
        failures = 0
        for _ in range(trials):
            chosen = rng.sample(range(n), k + extra)
            try:
                if codec.decode(k, n - k, {i: symbols[i] for i in chosen}) != source:
                    raise AssertionError("raptorq returned wrong data")
            except FECError:
                failures += 1
        result[f"failures_with_k+{extra}" if extra else "failures_with_k"] = failures
    return result


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> None:
    args, runs, min_time = parse_args(__doc__.splitlines()[0], argv)
    rs_runs, rs_columns = (1, 8) if args.quick else (3, 200)
    trials = 50 if args.quick else 400
    rng = random.Random(args.seed)

    reedsolo_modules: dict[str, Any] = {}
    for name in ("reedsolo", "creedsolo"):
        if importlib.util.find_spec(name) is not None:
            reedsolo_modules[name] = importlib.import_module(name)

    results: dict[str, Any] = {}
    for k, m in SHAPES:
        shape: dict[str, Any] = {}
        for name in CODECS:
            shape[name] = _bench_codec(get_codec(name), k, m, rng, runs, min_time)
        for name in ("reedsolo", "creedsolo"):
            if name in reedsolo_modules:
                shape[name] = _bench_reedsolo(
                    reedsolo_modules[name], k, m, rng, rs_runs, rs_columns
                )
            else:
                shape[name] = "not importable"
        results[f"k{k}_m{m}"] = shape

    failures = {}
    if "raptorq" in CODECS:
        for k, m in SHAPES:
            failures[f"k{k}_m{m}"] = _raptorq_failures(k, m, trials, rng)

    report = {
        "benchmark": "fec",
        "symbol_bytes": SYMBOL,
        "unit": "MB/s of source data, median",
        "runs": runs,
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": {d: _version(d) for d in ("zfec", "raptorq", "reedsolo")},
        "default_codec": DEFAULT_CODEC,
        "rs_kernel": rs_kernel(),
        "results": results,
        "raptorq_decode_failures": failures,
    }
    print_report(report)


if __name__ == "__main__":
    main()
