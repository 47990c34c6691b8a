"""One audit entry: its canonical bytes, its hash, and parsing it back.

Owns the line format, so the writer and the verifier cannot disagree about it. An entry is
one JSON object per line, encoded canonically (keys sorted at every level, no spaces,
UTF-8, no escaping beyond what JSON requires), so its hash can be recomputed from the
parsed object::

    {"actor":"sender","event":"gap","fields":{...},"hash":"<64 hex>","prev":"<64 hex>",
     "seq":41,"time":"2025-03-01T12:00:00.123456Z"}

``hash`` is SHA-256 over the canonical encoding of the entry without ``hash``; ``prev`` is
the ``hash`` of the entry before it; the first entry of a chain (``chain_start``, seq 0)
links to ``genesis(chain_id)``. A checkpoint signs ``checkpoint_message(...)``.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec

from diode.errors import AuditError

from .events import NAME_RE

#: A line longer than this is refused before it is parsed (a reader's memory bound) and an
#: entry whose encoding would exceed it is refused by the writer.
MAX_LINE_BYTES = 256 * 1024
#: Nesting deeper than this in ``fields`` is refused: nothing the diode logs needs it, and
#: it bounds the recursion of the check.
MAX_FIELD_DEPTH = 16
FORMAT_VERSION = 1

ENTRY_KEYS = frozenset({"actor", "event", "fields", "hash", "prev", "seq", "time"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_GENESIS_TAG = b"diode-audit-genesis-v1\x00"
_CHECKPOINT_TAG = b"diode-audit-checkpoint-v1\x00"
# the top-level "prev" key: the last occurrence in a canonical body, because only "seq"
# and "time" (no strings that could contain it) follow it
_PREV_MARK = b',"prev":"'

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def canonical(obj: object) -> bytes:
    """The canonical JSON encoding used for hashing."""
    try:
        return _encoder.encode(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AuditError(f"cannot encode audit fields: {exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis(chain_id: str) -> str:
    """The ``prev`` of a chain's first entry: binds the chain to its random id."""
    return sha256_hex(_GENESIS_TAG + chain_id.encode("ascii"))


def checkpoint_message(chain_id: str, count: int, head: str, reason: str, key: str) -> bytes:
    """The bytes a checkpoint signs.

    ``reason`` is signed so an interval checkpoint cannot be relabelled as the closing one
    (which would hide a truncation); ``chain_id`` so a checkpoint cannot be moved to
    another chain signed by the same key.
    """
    body = canonical(
        {"chain_id": chain_id, "count": count, "head": head, "key": key, "reason": reason}
    )
    return _CHECKPOINT_TAG + body


# --------------------------------------------------------------------------- time


@lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def format_time(t: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2025-03-01T12:00:00.123456Z``."""
    us = round(t * 1_000_000)
    second, micro = divmod(us, 1_000_000)
    return f"{_second_prefix(second)}.{micro:06d}Z"


def parse_time(text: str) -> float:
    """Seconds since the epoch from an RFC 3339 / ISO 8601 time; naive times are UTC."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(
            f"cannot read time {text!r}: expected e.g. 2025-03-01T12:00:00Z or 2025-03-01"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# --------------------------------------------------------------------------- fields

_SCALARS = (str, int, float, bool, type(None))
_PLAIN = frozenset({str, int, bool, type(None)})


def check_fields(fields: Mapping[str, object]) -> None:
    """Refuse anything that is not a JSON type, with the path of the offending value.

    Bytes are refused on purpose: payloads never enter the audit log by accident. A caller
    that must record some bytes hex-encodes them, which makes the decision visible.
    """
    if not isinstance(fields, Mapping):
        raise AuditError(f"audit fields must be a mapping, got {type(fields).__name__}")
    _check_mapping(fields, "fields", 0)


def _check_mapping(obj: Mapping[Any, object], path: str, depth: int) -> None:
    if depth >= MAX_FIELD_DEPTH:
        raise AuditError(f"{path}: nesting depth exceeds limit {MAX_FIELD_DEPTH}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise AuditError(f"{path}: key {key!r} is {type(key).__name__}, keys must be str")
        if type(value) not in _PLAIN:  # the common case costs one set lookup
            _check_value(value, f"{path}.{key}", depth + 1)


def _check_value(value: object, path: str, depth: int) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"{path}: {value} is not a finite number (JSON has no NaN/inf)")
    elif isinstance(value, _SCALARS):
        return
    elif isinstance(value, bytes | bytearray | memoryview):
        raise AuditError(
            f"{path}: is bytes; payloads never enter the audit log "
            "(hex-encode the value on purpose if it must be recorded)"
        )
    elif isinstance(value, Mapping):
        _check_mapping(value, path, depth)
    elif isinstance(value, list | tuple):
        if depth >= MAX_FIELD_DEPTH:
            raise AuditError(f"{path}: nesting depth exceeds limit {MAX_FIELD_DEPTH}")
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1)
    else:
        raise AuditError(
            f"{path}: {type(value).__name__} is not a JSON type "
            "(use str, int, float, bool, None, list or dict)"
        )


# --------------------------------------------------------------------------- lines


def build_line(
    seq: int, time_text: str, event: str, actor: str, fields_json: bytes, prev: str
) -> tuple[bytes, str]:
    """The canonical line (with its newline) and its hash.

    Assembled by hand rather than by encoding a dict twice: keys are in sorted order
    (actor, event, fields, hash, prev, seq, time), ``event``/``actor``/``time`` need no
    escaping, and ``fields_json`` is already canonical. A test checks this against
    ``canonical()`` so the two cannot drift apart.
    """
    head = b'{"actor":"%s","event":"%s","fields":%s' % (
        actor.encode("ascii"),
        event.encode("ascii"),
        fields_json,
    )
    tail = b',"prev":"%s","seq":%d,"time":"%s"}' % (
        prev.encode("ascii"),
        seq,
        time_text.encode("ascii"),
    )
    digest = hashlib.sha256(head + tail).hexdigest()
    return b'%s,"hash":"%s"%s\n' % (head, digest.encode("ascii"), tail), digest


@dataclass(frozen=True, slots=True)
class Entry:
    """One parsed line. ``computed_hash`` is what the content hashes to."""

    seq: int
    time: str
    event: str
    actor: str
    fields: dict[str, object]
    prev: str
    hash: str
    computed_hash: str
    #: the line is byte for byte what the writer would have written for this content
    canonical: bool

    @property
    def intact(self) -> bool:
        return self.canonical and self.computed_hash == self.hash


def decode_line(raw: bytes) -> Entry:
    """Parse one line (without its newline); raise ``AuditError`` if it is not an entry.

    An entry that parses but whose hash does not match is returned (``intact`` False):
    telling "edited" from "not an entry at all" is the verifier's job.
    """
    if len(raw) > MAX_LINE_BYTES:
        raise AuditError(f"line of {len(raw)} bytes exceeds limit {MAX_LINE_BYTES}")
    try:
        obj = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise AuditError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise AuditError(f"not a JSON object but {type(obj).__name__}")
    keys = obj.keys()
    if keys != ENTRY_KEYS:
        missing = sorted(ENTRY_KEYS - keys)
        extra = sorted(keys - ENTRY_KEYS)
        raise AuditError(f"wrong keys: missing {missing}, unexpected {extra}")
    seq, time_text, event, actor = obj["seq"], obj["time"], obj["event"], obj["actor"]
    fields, prev, stored = obj["fields"], obj["prev"], obj["hash"]
    if type(seq) is not int or seq < 0:
        raise AuditError(f"seq {seq!r} is not a non-negative integer")
    if not isinstance(time_text, str) or not _TIME_RE.fullmatch(time_text):
        raise AuditError(f"time {time_text!r} is not RFC 3339 UTC with microseconds")
    if not isinstance(event, str) or not NAME_RE.fullmatch(event):
        raise AuditError(f"event {event!r} is not a valid event name")
    if not isinstance(actor, str) or not NAME_RE.fullmatch(actor):
        raise AuditError(f"actor {actor!r} is not a valid actor name")
    if not isinstance(fields, dict):
        raise AuditError(f"fields is {type(fields).__name__}, expected an object")
    for name, value in (("prev", prev), ("hash", stored)):
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise AuditError(f"{name} {value!r} is not 64 lowercase hex digits")
    del obj["hash"]
    body = _encoder.encode(obj)
    cut = body.rfind(_PREV_MARK)
    expected = b'%s,"hash":"%s"%s' % (body[:cut], stored.encode("ascii"), body[cut:])
    return Entry(
        seq=seq,
        time=time_text,
        event=event,
        actor=actor,
        fields=fields,
        prev=prev,
        hash=stored,
        computed_hash=hashlib.sha256(body).hexdigest(),
        canonical=expected == raw,
    )
