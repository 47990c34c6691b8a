"""The line format: canonical bytes, hash, time, and refusing what is not an entry."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.audit.entry import (
    MAX_LINE_BYTES,
    build_line,
    canonical,
    decode_line,
    format_time,
    genesis,
    parse_time,
)
from diode.errors import AuditError

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_maps = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    fields=field_maps,
    seq=st.integers(min_value=0, max_value=2**63),
    t=st.floats(min_value=0, max_value=4e9),
)
def test_built_line_is_canonical_and_hashes_back(
    fields: dict[str, object], seq: int, t: float
) -> None:
    prev = hashlib.sha256(b"prev").hexdigest()
    line, digest = build_line(seq, format_time(t), "anomaly", "sender", canonical(fields), prev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    body = {
        "actor": "sender",
        "event": "anomaly",
        "fields": fields,
        "prev": prev,
        "seq": seq,
        "time": format_time(t),
    }
    assert digest == hashlib.sha256(canonical(body)).hexdigest()
    assert line == canonical({**body, "hash": digest}) + b"\n"
    entry = decode_line(line[:-1])
    assert entry.intact
    assert entry.hash == digest
    assert entry.seq == seq
    assert json.loads(line)["fields"] == json.loads(canonical(fields))


def test_canonical_sorts_keys_at_every_level_and_keeps_utf8() -> None:
    assert canonical({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": "é"}}) == (
        '{"a":{"c":"é","d":[1,{"y":1,"z":0}]},"b":1}'.encode()
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=253402300799 * 10**6))
def test_time_round_trips_to_the_microsecond(us: int) -> None:
    text = format_time(us / 1e6)
    assert len(text) == 27 and text.endswith("Z")
    assert round(parse_time(text) * 1e6) == round(us / 1e6 * 1e6)


def test_time_format() -> None:
    assert format_time(1_750_000_000.25) == "2025-06-15T15:06:40.250000Z"
    assert parse_time("2025-06-15") == 1_749_945_600.0
    assert parse_time("2025-06-15T17:06:40+02:00") == 1_750_000_000.0
    with pytest.raises(AuditError, match="cannot read time"):
        parse_time("yesterday")


def test_genesis_depends_on_the_chain_id() -> None:
    assert genesis("aa" * 16) != genesis("ab" * 16)
    assert len(genesis("aa" * 16)) == 64


def _good() -> dict[str, object]:
    line, _ = build_line(7, format_time(1e9), "gap", "receiver", canonical({"count": 1}), "0" * 64)
    obj: dict[str, object] = json.loads(line)
    return obj


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": -1}, "seq -1"),
        ({"seq": True}, "seq True"),
        ({"time": "2025-01-01T00:00:00Z"}, "RFC 3339"),
        ({"event": "Gap"}, "event 'Gap'"),
        ({"actor": 3}, "actor 3"),
        ({"fields": [1]}, "fields is list"),
        ({"prev": "00"}, "prev '00'"),
        ({"hash": "Z" * 64}, "hash"),
        ({"extra": 1}, "unexpected ['extra']"),
    ],
)
def test_malformed_entries_are_refused(change: dict[str, object], message: str) -> None:
    obj = {**_good(), **change}
    with pytest.raises(AuditError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_line(json.dumps(obj).encode())


def test_not_json_and_oversize_lines_are_refused() -> None:
    with pytest.raises(AuditError, match="not valid JSON"):
        decode_line(b'{"seq":')
    with pytest.raises(AuditError, match="not a JSON object"):
        decode_line(b"[1,2]")
    with pytest.raises(AuditError, match=f"exceeds limit {MAX_LINE_BYTES}"):
        decode_line(b" " * (MAX_LINE_BYTES + 1))


def test_edited_entry_is_parsed_but_not_intact() -> None:
    line, _ = build_line(1, format_time(1e9), "gap", "sender", canonical({"count": 1}), "0" * 64)
    entry = decode_line(line[:-1].replace(b'"count":1', b'"count":2'))
    assert entry.canonical
    assert entry.computed_hash != entry.hash
    assert not entry.intact
