"""The rs codec (``diode.protocol._rs``): its output matches a slow pure-Python Reed-Solomon
written here from the definition, any k of k+m symbols rebuild the block, every SIMD kernel
agrees with the portable one, bad calls raise, and concurrent threads get correct results."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import FECError
from diode.protocol import _rs
from diode.protocol.fec import Buffer, RsCodec, get_codec

# --- reference: GF(2^8) mod x^8+x^4+x^3+x^2+1 by log/exp tables, Cauchy generator -----------

_EXP = [0] * 510
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _EXP[_i + 255] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D


def ref_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def ref_inv(a: int) -> int:
    assert a != 0
    return _EXP[255 - _LOG[a]]


def ref_coefficient(k: int, i: int, j: int) -> int:
    """Repair row i, source column j: 1 / (x_i + y_j) with x_i = k + i, y_j = j."""
    return ref_inv((k + i) ^ j)


def ref_scale(c: int, data: bytes) -> int:
    """c * data byte by byte, as an int for XOR accumulation."""
    table = bytes(ref_mul(c, x) for x in range(256))
    return int.from_bytes(data.translate(table), "big")


def ref_encode(source: Sequence[bytes], m: int) -> list[bytes]:
    k = len(source)
    length = len(source[0])
    out = []
    for i in range(m):
        acc = 0
        for j, symbol in enumerate(source):
            acc ^= ref_scale(ref_coefficient(k, i, j), symbol)
        out.append(acc.to_bytes(length, "big"))
    return out


# --- helpers ---------------------------------------------------------------------------

KERNELS = _rs.kernels()
# around the vector widths (16, 32), the tail vector, and past one 2048-byte column chunk
LENGTHS = (1, 2, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 1400, 2049, 4133)


def _source(rng: random.Random, k: int, length: int) -> list[bytes]:
    return [rng.randbytes(length) for _ in range(k)]


def _unaligned(symbols: Sequence[bytes], shift: int) -> list[memoryview]:
    """The same symbols as views that start ``shift`` bytes into a larger buffer."""
    out = []
    for symbol in symbols:
        buf = bytearray(shift) + bytearray(symbol) + bytearray(3)
        out.append(memoryview(buf)[shift : shift + len(symbol)])
    return out


def test_field_multiplication_matches_reference() -> None:
    for a in range(256):
        assert [_rs.gf_mul(a, b) for b in range(256)] == [ref_mul(a, b) for b in range(256)]


def test_kernels_include_the_portable_one() -> None:
    assert KERNELS[0] == "scalar"
    assert set(KERNELS) <= {"scalar", "ssse3", "avx2"}


@pytest.mark.parametrize("length", LENGTHS)
def test_encode_matches_reference(length: int) -> None:
    rng = random.Random(length)
    k, m = rng.randint(1, 12), rng.randint(1, 10)
    source = _source(rng, k, length)
    expected = ref_encode(source, m)
    codec = get_codec("rs")
    assert codec.encode(source, m) == expected
    assert codec.encode_block(b"".join(source), k, m) == expected


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(min_value=1, max_value=24),
    m=st.integers(min_value=1, max_value=12),
    length=st.integers(min_value=1, max_value=300),
    shift=st.integers(min_value=0, max_value=31),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_encode_of_unaligned_views_matches_reference(
    k: int, m: int, length: int, shift: int, seed: int
) -> None:
    source = _source(random.Random(seed), k, length)
    expected = ref_encode(source, m)
    views = _unaligned(source, shift)
    assert get_codec("rs").encode(views, m) == expected
    block = bytearray(shift) + b"".join(source)
    assert get_codec("rs").encode_block(memoryview(block)[shift:], k, m) == expected


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("length", LENGTHS)
def test_every_kernel_gives_the_reference_output(kernel: str, length: int) -> None:
    rng = random.Random(1000 + length)
    # m=11: one full group of 8 rows and a group of 3; k=9 for odd column counts
    k, m = 9, 11
    source = _source(rng, k, length)
    expected = ref_encode(source, m)
    tables = _rs.encode_tables(k, m)
    assert _rs.apply(tables, m, source, kernel) == expected
    assert _rs.apply(tables, m, _unaligned(source, 5), kernel) == expected
    assert _rs.apply_joined(tables, m, k, b"".join(source), kernel) == expected


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_decodes_the_same(kernel: str) -> None:
    rng = random.Random(7)
    k, m, length = 40, 20, 1400
    source = _source(rng, k, length)
    symbols = source + ref_encode(source, m)
    for _ in range(5):
        indices = sorted(rng.sample(range(k + m), k))
        tables, missing = _rs.decode_tables(k, m, indices)
        assert list(missing) == [i for i in range(k) if i not in indices]
        rebuilt = _rs.apply(tables, len(missing), [symbols[i] for i in indices], kernel)
        assert rebuilt == [source[i] for i in missing]


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(min_value=1, max_value=60),
    m=st.integers(min_value=0, max_value=30),
    length=st.integers(min_value=1, max_value=80),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_k_of_k_plus_m_symbols_rebuild_the_block(
    k: int, m: int, length: int, seed: int
) -> None:
    rng = random.Random(seed)
    codec = get_codec("rs")
    source = _source(rng, k, length)
    symbols = source + codec.encode(source, m)
    chosen = rng.sample(range(k + m), rng.randint(k, k + m))
    received: dict[int, Buffer] = {i: symbols[i] for i in chosen}
    assert codec.decode(k, m, received) == source


def test_largest_block_survives_the_most_losses() -> None:
    rng = random.Random(3)
    k, m = 200, 56
    codec = get_codec("rs")
    source = _source(rng, k, 64)
    symbols = source + codec.encode(source, m)
    assert symbols[k:] == ref_encode(source, m)
    # every repair symbol used, the last m sources lost, then m sources at random lost
    for lost in (set(range(k - m, k)), set(rng.sample(range(k), m))):
        received: dict[int, Buffer] = {i: s for i, s in enumerate(symbols) if i not in lost}
        assert codec.decode(k, m, received) == source


def test_decode_returns_the_received_source_symbols_themselves() -> None:
    rng = random.Random(4)
    codec = get_codec("rs")
    source = _source(rng, 6, 50)
    repair = codec.encode(source, 3)
    received: dict[int, Buffer] = {i: source[i] for i in (0, 2, 3, 5)}
    received.update({6: repair[0], 8: repair[2]})
    out = codec.decode(6, 3, received)
    assert out == source
    assert all(out[i] is source[i] for i in (0, 2, 3, 5))


def test_decode_tables_follow_the_given_order() -> None:
    rng = random.Random(5)
    k, m = 10, 4
    source = _source(rng, k, 33)
    symbols = source + ref_encode(source, m)
    # unsorted, repair symbols first among them: sources 1, 2 and 4 are missing
    indices = [12, 0, 3, 11, 9, 5, 7, 13, 8, 6]
    tables, missing = _rs.decode_tables(k, m, indices)
    assert missing == (1, 2, 4)
    assert _rs.apply(tables, 3, [symbols[i] for i in indices]) == [source[i] for i in missing]


# --- refusals --------------------------------------------------------------------------


def test_too_few_symbols_raise() -> None:
    codec = get_codec("rs")
    source = _source(random.Random(6), 5, 20)
    symbols = source + codec.encode(source, 3)
    with pytest.raises(FECError, match=r"4 of 8 symbols received \(k=5, m=3\)"):
        codec.decode(5, 3, {i: symbols[i] for i in (0, 1, 6, 7)})


def test_wrong_lengths_raise() -> None:
    codec = get_codec("rs")
    with pytest.raises(FECError, match="source symbol 1 is 3 bytes, symbol 0 is 2"):
        codec.encode([b"ab", b"abc"], 1)
    with pytest.raises(FECError, match="symbol 1 is 3 bytes, others are 2"):
        codec.decode(2, 1, {0: b"ab", 1: b"abc"})
    with pytest.raises(FECError, match="symbol length 0"):
        codec.encode([b"", b""], 1)
    with pytest.raises(FECError, match="does not split into k=3"):
        codec.encode_block(bytes(10), 3, 1)
    with pytest.raises(FECError, match="exceeds the codec's limit of 65535"):
        codec.encode([bytes(65536)], 1)
    # the C layer checks again for callers that bypass the codec
    tables = _rs.encode_tables(2, 1)
    with pytest.raises(ValueError, match="symbol 1 is 3 bytes, symbol 0 is 2"):
        _rs.apply(tables, 1, [b"ab", b"abc"])
    with pytest.raises(ValueError, match="symbol length 0"):
        _rs.apply(tables, 1, [b"", b""])
    with pytest.raises(ValueError, match="block of 5 bytes does not split into 2"):
        _rs.apply_joined(tables, 1, 2, bytes(5))
    with pytest.raises(ValueError, match="tables of 64 bytes do not fit a 2 x 2 matrix"):
        _rs.apply(tables, 2, [b"ab", b"ab"])


def test_bad_indices_and_shapes_raise() -> None:
    codec = get_codec("rs")
    with pytest.raises(FECError, match=r"symbol index 9 out of range 0..3 \(k=2, m=2\)"):
        codec.decode(2, 2, {0: b"a", 9: b"b"})
    with pytest.raises(FECError, match=r"symbol index -1 out of range"):
        codec.decode(2, 2, {0: b"a", -1: b"b"})
    with pytest.raises(FECError, match="exceeds the codec's limit of 256"):
        codec.encode([b"x"] * 200, 57)
    with pytest.raises(FECError, match="k=0"):
        codec.encode_block(b"", 0, 1)
    with pytest.raises(FECError, match="m=-1"):
        codec.encode([b"x"], -1)
    with pytest.raises(ValueError, match="symbol index 3 given twice"):
        _rs.decode_tables(4, 2, [0, 3, 3, 4])
    with pytest.raises(ValueError, match="3 symbol indices given; exactly k=4"):
        _rs.decode_tables(4, 2, [0, 1, 2])
    with pytest.raises(ValueError, match=r"symbol index 6 out of range 0..5"):
        _rs.decode_tables(4, 2, [0, 1, 2, 6])
    with pytest.raises(ValueError, match="k\\+m=257"):
        _rs.encode_tables(200, 57)
    with pytest.raises(ValueError, match="unknown kernel 'neon'"):
        _rs.apply(_rs.encode_tables(1, 1), 1, [b"x"], "neon")


# --- threads ---------------------------------------------------------------------------


def test_concurrent_threads_encode_and_decode_correctly() -> None:
    codec = RsCodec()
    rng = random.Random(8)
    k, m = 32, 8
    blocks = [_source(rng, k, 1400) for _ in range(4)]
    expected = [codec.encode(block, m) for block in blocks]
    failures: list[str] = []

    def work(n: int) -> None:
        block, want = blocks[n], expected[n]
        joined = b"".join(block)
        received: dict[int, Buffer] = {i: block[i] for i in range(m, k)}
        received.update({k + i: want[i] for i in range(m)})
        for _ in range(30):
            if codec.encode_block(joined, k, m) != want:
                failures.append(f"thread {n}: encode differs")
            if codec.decode(k, m, received) != block:
                failures.append(f"thread {n}: decode differs")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(blocks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
