"""The erasure codecs: any k (k+overhead for RaptorQ) of n symbols rebuild the block, and
every call that cannot be answered exactly raises FECError."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import ConfigError, FECError
from diode.protocol import fec
from diode.protocol.fec import CODECS, ErasureCodec, get_codec

pytestmark = pytest.mark.parametrize("name", CODECS)

# sizes kept small so that a hundred examples per codec stay well under a second each
_K = st.integers(min_value=1, max_value=40)
_M = st.integers(min_value=0, max_value=12)
_UNITS = st.integers(min_value=1, max_value=24)
_SEED = st.integers(min_value=0, max_value=2**32 - 1)


def _block(codec: ErasureCodec, k: int, units: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    length = units * codec.symbol_alignment
    return [rng.randbytes(length) for _ in range(k)]


def test_codecs_listed_are_usable(name: str) -> None:
    assert "zfec" in CODECS  # the runtime dependency; raptorq comes with the bench extra
    assert get_codec(name).name == name


@settings(max_examples=60, deadline=None)
@given(k=_K, m=_M, units=_UNITS, seed=_SEED)
def test_any_sufficient_subset_rebuilds_the_block(
    name: str, k: int, m: int, units: int, seed: int
) -> None:
    codec = get_codec(name)
    source = _block(codec, k, units, seed)
    repair = codec.encode(source, m)
    assert len(repair) == m
    assert all(len(symbol) == len(source[0]) for symbol in repair)
    symbols = source + repair
    rng = random.Random(seed + 1)
    need = min(k + codec.overhead(), k + m)
    chosen = rng.sample(range(k + m), rng.randint(need, k + m))
    received = {i: symbols[i] for i in chosen}
    if need == k + codec.overhead():
        assert codec.decode(k, m, received) == source
    else:
        # fewer than k+overhead exist at all: a fountain code may fail, but never lie
        try:
            assert codec.decode(k, m, received) == source
        except FECError as exc:
            assert f"k={k}" in str(exc)


@settings(max_examples=40, deadline=None)
@given(k=_K, m=st.integers(min_value=1, max_value=12), units=_UNITS, seed=_SEED)
def test_fewer_than_k_symbols_raise(name: str, k: int, m: int, units: int, seed: int) -> None:
    codec = get_codec(name)
    source = _block(codec, k, units, seed)
    symbols = source + codec.encode(source, m)
    rng = random.Random(seed)
    chosen = rng.sample(range(k + m), k - 1)
    with pytest.raises(FECError, match=rf"{k - 1} of {k + m} symbols received"):
        codec.decode(k, m, {i: symbols[i] for i in chosen})


def test_exactly_k_symbols_never_give_wrong_data(name: str) -> None:
    codec = get_codec(name)
    k, m = 10, 6
    source = _block(codec, k, 1, seed=7)
    symbols = source + codec.encode(source, m)
    rng = random.Random(11)
    failures = 0
    for _ in range(1500):
        chosen = rng.sample(range(k + m), k)
        try:
            assert codec.decode(k, m, {i: symbols[i] for i in chosen}) == source
        except FECError as exc:
            assert "could not decode k=10" in str(exc)
            failures += 1
    if codec.overhead() == 0:
        assert failures == 0  # MDS: any k of n
    else:
        # RaptorQ fails now and then with exactly k: each failure must be an error
        assert 0 < failures < 100


def test_all_source_symbols_present_skips_the_library(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = get_codec(name)
    k, m = 6, 3
    source = _block(codec, k, 4, seed=3)
    symbols = source + codec.encode(source, m)

    def refuse(*args: Any) -> Any:
        raise AssertionError("library called although every source symbol arrived")

    class NoLibrary:
        Decoder = property(refuse)

    monkeypatch.setattr(fec, "_zfec_decoder", refuse)
    monkeypatch.setattr(codec, "_lib", NoLibrary(), raising=False)
    received = {i: symbols[i] for i in range(k + m)}
    assert codec.decode(k, m, received) == source
    # a garbled repair symbol is not even looked at when no source symbol is missing
    received[k] = bytes(len(source[0]))
    assert codec.decode(k, m, received) == source


def test_mismatched_symbol_lengths_raise(name: str) -> None:
    codec = get_codec(name)
    source = _block(codec, 4, 2, seed=1)
    symbols = source + codec.encode(source, 2)
    received = {i: symbols[i] for i in (1, 2, 3, 4, 5)}
    received[4] = received[4] + bytes(codec.symbol_alignment)
    with pytest.raises(FECError, match="all symbols of a block must have one length"):
        codec.decode(4, 2, received)
    with pytest.raises(FECError, match="source symbol 2 is"):
        codec.encode([*source[:2], source[2][:-1], source[3]], 2)


@pytest.mark.parametrize("bad_index", [-1, 6, 1000])
def test_out_of_range_index_raises(name: str, bad_index: int) -> None:
    codec = get_codec(name)
    source = _block(codec, 4, 2, seed=2)
    symbols = source + codec.encode(source, 2)
    received = {i: symbols[i] for i in (1, 2, 3, 4, 5)}
    received[bad_index] = symbols[0]
    with pytest.raises(FECError, match=rf"symbol index {bad_index} out of range 0\.\.5"):
        codec.decode(4, 2, received)


def test_bad_parameters_raise(name: str) -> None:
    codec = get_codec(name)
    symbol = bytes(codec.symbol_alignment)
    with pytest.raises(FECError, match="k=0"):
        codec.encode([], 2)
    with pytest.raises(FECError, match="m=-1"):
        codec.encode([symbol], -1)
    with pytest.raises(FECError, match=f"exceeds the codec's limit of {codec.max_symbols}"):
        codec.encode([symbol] * 2, codec.max_symbols - 1)
    with pytest.raises(FECError, match="symbols cannot be empty"):
        codec.encode([b"", b""], 1)
    with pytest.raises(FECError, match="symbol length"):
        codec.encode([bytes(codec.max_symbol_length + 1)], 1)
    with pytest.raises(FECError, match="k=0"):
        codec.decode(0, 2, {0: symbol})


def test_no_repair_symbols(name: str) -> None:
    codec = get_codec(name)
    source = _block(codec, 3, 1, seed=4)
    assert codec.encode(source, 0) == []
    assert codec.decode(3, 0, dict(enumerate(source))) == source


def test_raptorq_refuses_unaligned_and_oversized_blocks(name: str) -> None:
    codec = get_codec(name)
    if codec.symbol_alignment == 1:
        assert codec.encode([b"abc", b"def"], 1) != []  # any length goes
        return
    with pytest.raises(FECError, match="not a multiple of the codec's alignment 8"):
        codec.encode([bytes(1401)] * 2, 1)
    assert isinstance(codec, fec.RaptorQCodec)
    too_many = codec.max_block_bytes // 1400 + 1
    with pytest.raises(FECError, match="exceeds 8388608"):
        codec.decode(too_many, 1, {i: bytes(1400) for i in range(too_many)})


def test_get_codec_default_and_errors(name: str) -> None:
    assert get_codec() is get_codec(fec.DEFAULT_CODEC)
    assert get_codec().name == "rs"
    assert get_codec().overhead() == 0
    assert get_codec(name) is get_codec(name)
    with pytest.raises(ConfigError, match="unknown FEC codec 'ldpc'; known: zfec, raptorq"):
        get_codec("ldpc")
