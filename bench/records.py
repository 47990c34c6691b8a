"""Record batch codec throughput: records/s and zlib cost, printed as one JSON object.

Records carry a 500-byte value, a 16-byte key and 3 headers; a batch holds as many as fill
one block of 32 symbols of 1400 bytes (about 80). Timed: the sender's path (``encode_record``
per record, then ``join_encoded``), ``encode_batch`` for comparison, the receiver's
``decode_batch`` (validation included) and msgspec's bare decode (what validation costs),
and zlib at levels 1 and 6 on random values and on JSON telemetry values.

    .venv/bin/python bench/records.py            # full run, about 20 seconds
    .venv/bin/python bench/records.py --quick    # smoke run
"""

from __future__ import annotations

import json
import os
import platform
import random
import zlib
from collections.abc import Sequence

import msgspec
from _timing import median_rate, parse_args, print_report

from diode.protocol.records import (
    Compression,
    Record,
    decode_batch,
    decompress,
    encode_batch,
    encode_record,
    join_encoded,
)

BLOCK_BYTES = 32 * 1400
VALUE_BYTES = 500


def _records(rng: random.Random, json_values: bool) -> list[Record]:
    out: list[Record] = []
    size = 0
    offset = 1_000_000
    while size < BLOCK_BYTES:
        if json_values:
            fields = {f"tag_{i:02d}": round(rng.uniform(0, 1000), 3) for i in range(40)}
            value = json.dumps(fields).encode()[:VALUE_BYTES].ljust(VALUE_BYTES)
        else:
            value = rng.randbytes(VALUE_BYTES)
        record = Record(
            topic="plant.line-1.telemetry",
            partition=offset % 12,
            offset=offset,
            timestamp=1_700_000_000_000 + offset,
            key=rng.randbytes(16),
            value=value,
            headers=(
                ("content-type", b"application/json"),
                ("source", b"plc-07"),
                ("trace", rng.randbytes(16)),
            ),
        )
        size += len(encode_record(record))
        out.append(record)
        offset += 1
    return out[:-1]


def _zlib_row(payload: bytes, level: int, runs: int, min_time: float) -> dict[str, float]:
    size = len(payload)
    packed = zlib.compress(payload, level)
    assert decompress(packed, Compression.ZLIB, max_size=size) == payload

    def pack() -> bytes:
        return zlib.compress(payload, level)

    def unpack() -> bytes:
        return decompress(packed, Compression.ZLIB, max_size=size)

    return {
        "ratio": round(len(packed) / size, 3),
        "compress_MBps": round(median_rate(pack, size, runs, min_time) / 1e6, 1),
        "decompress_MBps": round(median_rate(unpack, size, runs, min_time) / 1e6, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args, runs, min_time = parse_args(__doc__.splitlines()[0], argv)
    rng = random.Random(args.seed)

    batch = _records(rng, json_values=False)
    n = len(batch)
    data = encode_batch(batch)
    assert join_encoded([encode_record(r) for r in batch]) == data
    assert decode_batch(data, max_records=n) == batch
    raw = msgspec.msgpack.Decoder(list[Record])

    def sender_path() -> bytes:
        return join_encoded([encode_record(r) for r in batch])

    codec = {
        "records_per_batch": n,
        "batch_bytes": len(data),
        "encode_record_join_per_s": round(median_rate(sender_path, n, runs, min_time)),
        "encode_batch_per_s": round(median_rate(lambda: encode_batch(batch), n, runs, min_time)),
        "decode_batch_per_s": round(
            median_rate(lambda: decode_batch(data, max_records=n), n, runs, min_time)
        ),
        "msgspec_decode_unvalidated_per_s": round(
            median_rate(lambda: raw.decode(data), n, runs, min_time)
        ),
    }

    compression: dict[str, dict[str, float]] = {}
    for kind, json_values in (("random_values", False), ("json_values", True)):
        payload = encode_batch(_records(rng, json_values))
        for level in (1, 6):
            compression[f"{kind}_level{level}"] = _zlib_row(payload, level, runs, min_time)

    report = {
        "benchmark": "records",
        "value_bytes": VALUE_BYTES,
        "headers": 3,
        "runs": runs,
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "msgspec": msgspec.__version__,
        "codec": codec,
        "zlib": compression,
    }
    print_report(report)


if __name__ == "__main__":
    main()
