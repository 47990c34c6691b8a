"""The JSON Lines format of a recorded stream, for ``diode policy replay``.

One JSON object per line::

    {"topic": "plant.telemetry.boiler", "partition": 0, "offset": 17,
     "timestamp": 1700000000000, "now": 1700000000.05,
     "key": "TI-101", "value": {"tag": "TI-101", "value": 81.5},
     "headers": {"source": "plc-3"}}

* ``topic`` is required; ``partition`` defaults to 0, ``offset`` to the line number.
* ``timestamp`` is the Kafka timestamp in milliseconds; ``now`` the arrival time in UNIX
  seconds. Give at least one; the missing one is derived from the other.
* ``key``/``value``: a string is taken as UTF-8 text, null as a null key/value, anything else
  (object, array, number, boolean) as its JSON encoding. ``key_b64``/``value_b64`` give raw
  bytes in base64 instead.
* ``headers``: an object of name to string (or null), or a list of ``[name, value]`` pairs
  (to keep order or repeat a name).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from diode.errors import DecodeError
from diode.protocol.records import Record

#: a line longer than this is refused before it is parsed
MAX_LINE_BYTES = 16 << 20

_KNOWN = {
    "topic",
    "partition",
    "offset",
    "timestamp",
    "now",
    "key",
    "value",
    "key_b64",
    "value_b64",
    "headers",
}


def _bytes(obj: dict[str, Any], name: str) -> bytes | None:
    b64 = obj.get(f"{name}_b64")
    if b64 is not None:
        if not isinstance(b64, str):
            raise DecodeError(f"{name}_b64 must be a string")
        try:
            return base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise DecodeError(f"{name}_b64 is not base64: {exc}") from exc
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode()
    return msgspec.json.encode(v)


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    if raw is None:
        return ()
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    if not isinstance(pairs, list):
        raise DecodeError("headers must be an object or a list of [name, value] pairs")
    out: list[tuple[str, bytes | None]] = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            raise DecodeError(f"header {pair!r} is not a [name, value] pair")
        name, value = pair
        if value is not None and not isinstance(value, str):
            raise DecodeError(f"header {name!r} value must be a string or null")
        out.append((name, value.encode() if value is not None else None))
    return tuple(out)


def parse_line(line: bytes, lineno: int) -> tuple[Record, float]:
    """One JSONL line to (record, now); raises ``DecodeError`` naming what is wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise DecodeError(f"line is {len(line)} bytes, more than the limit {MAX_LINE_BYTES}")
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError("each line must be a JSON object")
    unknown = obj.keys() - _KNOWN
    if unknown:
        raise DecodeError(f"unknown field(s): {', '.join(sorted(unknown))}")
    topic = obj.get("topic")
    if not isinstance(topic, str) or not topic:
        raise DecodeError("topic (a non-empty string) is required")
    ts = obj.get("timestamp")
    now = obj.get("now")
    if ts is None and now is None:
        raise DecodeError("give timestamp (ms) or now (s), or both")
    for name, v in (("timestamp", ts), ("now", now)):
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise DecodeError(f"{name} must be a number")
    if ts is None:
        assert now is not None
        ts = int(float(now) * 1000)
    if now is None:
        now = float(ts) / 1000.0
    partition = obj.get("partition", 0)
    offset = obj.get("offset", lineno)
    for name, v in (("partition", partition), ("offset", offset)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DecodeError(f"{name} must be an integer >= 0 (got {v!r})")
    record = Record(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=int(ts),
        key=_bytes(obj, "key"),
        value=_bytes(obj, "value"),
        headers=_headers(obj.get("headers")),
    )
    return record, float(now)
