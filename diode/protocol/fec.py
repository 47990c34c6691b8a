"""Erasure coding of one block: k source symbols plus m repair symbols.

This module owns the erasure codec behind the small ``ErasureCodec`` protocol, the three
implementations the diode ships (``rs``, our own Reed-Solomon in ``_rs.c``; ``zfec``;
``raptorq``), the choice between them, and ``FecWorker``, the optional thread that runs codec
calls on a second core. It knows nothing of datagrams, block numbers or records: symbols in,
symbols out.

Symbol indices: ``0..k-1`` are the source symbols (sent as they are: every code here is
systematic), ``k..k+m-1`` the repair symbols. Every symbol of one block has the same length.

Choice of the default codec: **rs** (MDS Reed-Solomon over GF(256), Cauchy generator, our C
extension with AVX2/SSSE3 kernels chosen at run time and a portable fallback).

Measured with ``.venv/bin/python bench/fec.py`` (2 cores shared with other work, Python 3.11,
zfec 1.6, raptorq 2.0, reedsolo 1.7, rs on its AVX2 kernel; 1400-byte symbols; MB/s of source
data, median of 7, range over the 2 runs on a quiet machine; decode rebuilds m lost source
symbols; "2 thr": two encoder threads at once; "py": how much slower a pure-Python thread runs
beside an encoder thread)::

                      k=32 m=8                             k=64 m=16
                      encode    decode    2 thr      py    encode    decode    2 thr     py
    rs                4940-4950 2650-2710 4340-5170  1.0   1800-2360 1300-1800 2470-3290 1.0-1.3
    zfec              198-209   137-174   268-320    0.9-1.2  100-103 85-99   96-116    1.0-1.4
    raptorq (k+2)     300-312   293-299   281-298    1.8-1.9  183-315 164-224 236-294   1.9-2.2
    reedsolo (Python) 0.84      0.15                          0.45    0.09
    creedsolo         not importable here

    raptorq decodes failing out of 400 random subsets: exactly k: 6 (k=32), 5 (k=64);
    with k+1 and k+2: 0.

Why rs. Semantics first: like zfec it is MDS, so *any* k of the k+m symbols rebuild the block
and "at most m symbols of a block lost" is exactly the loss the link survives: the repair budget
an operator configures means what it says. RaptorQ is not MDS: with exactly k symbols about 1
decode in 70 fails, so m repair symbols really buy m-2 losses (``overhead() == 2``). By the
numbers, rs encodes 20-25x faster than zfec and 15x faster than RaptorQ on one thread (each
constant product is two 16-entry table shuffles on 32 bytes at once, up to 8 repair symbols
accumulated in registers per pass over the sources), so FEC drops from about half of the
sender's time to a few per cent (``bench/protocol.py``: sender 106 -> 220 MB/s on one core).
Its decode builds only an e x e inverse for e lost source symbols, cached per loss pattern.
Like zfec it releases the GIL while it computes; unlike with zfec, handing the encode to a
second core no longer pays for the hand-off. zfec stays selectable by configuration (and is
the codec of deployments configured before rs existed: the codec is part of the config
fingerprint, so both ends must name the same one); RaptorQ likewise, from the ``raptorq``
extra. The 256-symbol limit of GF(256) is far above the blocks the diode uses.

Every implementation refuses to guess: a decode that cannot be done exactly raises
``FECError`` with the counts in the message; a block is never returned partly or wrongly.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from diode.errors import ConfigError, FECError

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "Buffer",
    "ErasureCodec",
    "FecWorker",
    "RaptorQCodec",
    "RsCodec",
    "ZfecCodec",
    "get_codec",
]

#: what the codecs accept as a symbol or a block: the hot paths pass memoryview slices
Buffer = bytes | bytearray | memoryview


class ErasureCodec(Protocol):
    """A systematic erasure code over one block of equal-length symbols."""

    #: short name, as written in the configuration: "zfec", "raptorq"
    name: str
    #: largest k+m (source plus repair symbols in one block) the codec supports
    max_symbols: int
    #: symbol lengths must be a multiple of this (1: any length)
    symbol_alignment: int
    #: largest symbol length the codec supports
    max_symbol_length: int

    def overhead(self) -> int:
        """Symbols beyond k needed for a reliable decode (0 for an MDS code)."""
        ...

    def encode(self, source: Sequence[Buffer], m: int) -> list[bytes]:
        """k equal-length source symbols -> m repair symbols of the same length."""
        ...

    def encode_block(self, block: Buffer, k: int, m: int) -> list[bytes]:
        """Like ``encode`` for a block whose k source symbols lie end to end in ``block``.

        The sessions' path: one length check instead of one per symbol, no copies.
        """
        ...

    def decode(self, k: int, m: int, received: Mapping[int, Buffer]) -> list[Buffer]:
        """Rebuild the k source symbols (in order) from any sufficient subset.

        Indices ``0..k-1`` are source, ``k..k+m-1`` repair. Raises ``FECError`` (with the
        counts in the message) if too few symbols were received, if their lengths differ,
        if an index is out of range, or if the library cannot decode them.
        """
        ...


def _check_params(codec: ErasureCodec, k: int, m: int) -> None:
    if k < 1:
        raise FECError(f"{codec.name}: k={k} source symbols; a block needs at least 1")
    if m < 0:
        raise FECError(f"{codec.name}: m={m} repair symbols is negative")
    if k + m > codec.max_symbols:
        raise FECError(
            f"{codec.name}: k+m={k + m} symbols (k={k}, m={m}) exceeds the codec's "
            f"limit of {codec.max_symbols}"
        )


def _check_length(codec: ErasureCodec, length: int) -> None:
    if length < 1:
        raise FECError(f"{codec.name}: symbol length {length}; symbols cannot be empty")
    if length > codec.max_symbol_length:
        raise FECError(
            f"{codec.name}: symbol length {length} exceeds the codec's limit of "
            f"{codec.max_symbol_length}"
        )
    if length % codec.symbol_alignment:
        raise FECError(
            f"{codec.name}: symbol length {length} is not a multiple of the codec's "
            f"alignment {codec.symbol_alignment}"
        )


def _check_joined(codec: ErasureCodec, block: Buffer, k: int, m: int) -> int:
    """Validate an ``encode_block`` call; return the symbol length."""
    _check_params(codec, k, m)
    size = len(block)
    if size % k:
        raise FECError(f"{codec.name}: block of {size} bytes does not split into k={k} symbols")
    _check_length(codec, size // k)
    return size // k


def _check_source(codec: ErasureCodec, source: Sequence[Buffer], m: int) -> int:
    """Validate an encode call; return the common symbol length."""
    k = len(source)
    _check_params(codec, k, m)
    length = len(source[0])
    for i, symbol in enumerate(source):
        if len(symbol) != length:
            raise FECError(
                f"{codec.name}: source symbol {i} is {len(symbol)} bytes, symbol 0 is "
                f"{length}; all symbols of a block must have one length"
            )
    _check_length(codec, length)
    return length


def _check_received(codec: ErasureCodec, k: int, m: int, received: Mapping[int, Buffer]) -> int:
    """Validate a decode call; return the common symbol length."""
    _check_params(codec, k, m)
    n = k + m
    need = k + codec.overhead()
    if len(received) < k:
        raise FECError(
            f"{codec.name}: {len(received)} of {n} symbols received (k={k}, m={m}); "
            f"at least {k} are needed, {need} for a reliable decode"
        )
    length = -1
    for index, symbol in received.items():
        if not 0 <= index < n:
            raise FECError(
                f"{codec.name}: symbol index {index} out of range 0..{n - 1} (k={k}, m={m})"
            )
        if length < 0:
            length = len(symbol)
        elif len(symbol) != length:
            raise FECError(
                f"{codec.name}: symbol {index} is {len(symbol)} bytes, others are "
                f"{length}; all symbols of a block must have one length"
            )
    _check_length(codec, length)
    return length


def _all_source(k: int, received: Mapping[int, Buffer]) -> list[Buffer] | None:
    """The k source symbols, if every one of them arrived: nothing to decode then."""
    try:
        return [received[i] for i in range(k)]
    except KeyError:
        return None


# --- zfec --------------------------------------------------------------------------------

#: zfec keeps its encode matrix in the Encoder object and a Decoder per (k, n) saves its
#: set-up; blocks use a handful of (k, m) shapes, so a small bound is plenty
_ZFEC_CACHE_SIZE: Final = 64


@functools.lru_cache(maxsize=_ZFEC_CACHE_SIZE)
def _zfec_encoder(k: int, n: int) -> Any:
    import zfec

    return zfec.Encoder(k, n)


@functools.lru_cache(maxsize=_ZFEC_CACHE_SIZE)
def _repair_ids(k: int, m: int) -> tuple[int, ...]:
    return tuple(range(k, k + m))


@functools.lru_cache(maxsize=_ZFEC_CACHE_SIZE)
def _zfec_decoder(k: int, n: int) -> Any:
    import zfec

    return zfec.Decoder(k, n)


class ZfecCodec:
    """Reed-Solomon (Vandermonde, GF(256)) from the zfec C library: MDS, any k of n rebuild."""

    name: str = "zfec"
    #: zfec's field is GF(256): at most 256 distinct symbols per block
    max_symbols: int = 256
    symbol_alignment: int = 1
    max_symbol_length: int = 65535

    def __init__(self) -> None:
        import zfec

        self._library_error: type[Exception] = zfec.Error

    def overhead(self) -> int:
        return 0

    def encode(self, source: Sequence[Buffer], m: int) -> list[bytes]:
        _check_source(self, source, m)
        if m == 0:
            return []
        return self._encode(tuple(source), len(source), m)

    def encode_block(self, block: Buffer, k: int, m: int) -> list[bytes]:
        length = _check_joined(self, block, k, m)
        if m == 0:
            return []
        view = memoryview(block)
        return self._encode(
            tuple([view[i : i + length] for i in range(0, k * length, length)]), k, m
        )

    def _encode(self, source: tuple[Buffer, ...], k: int, m: int) -> list[bytes]:
        try:
            repair: list[bytes] = _zfec_encoder(k, k + m).encode(source, _repair_ids(k, m))
        except self._library_error as exc:
            raise FECError(f"zfec: cannot encode k={k}, m={m}: {exc}") from exc
        return repair

    def decode(self, k: int, m: int, received: Mapping[int, Buffer]) -> list[Buffer]:
        _check_received(self, k, m, received)
        source = _all_source(k, received)
        if source is not None:
            return source
        # zfec takes exactly k symbols; every source symbol we hold is one less to rebuild
        indices = sorted(received)[:k]
        try:
            out = _zfec_decoder(k, k + m).decode(
                tuple(received[i] for i in indices), tuple(indices)
            )
        except self._library_error as exc:
            raise FECError(
                f"zfec: cannot decode k={k}, m={m} from symbols {indices}: {exc}"
            ) from exc
        if len(out) != k:
            raise FECError(f"zfec: decode returned {len(out)} symbols, expected k={k}")
        # zfec hands back bytes objects (the received ones or fresh ones): no copy needed
        return list(out)


# --- RaptorQ ---------------------------------------------------------------------------


class RaptorQCodec:
    """RaptorQ (RFC 6330) from the ``raptorq`` Rust library: fountain code, not MDS.

    The library's only entry points take the whole block and choose the encoding parameters
    themselves (``with_defaults``), so nothing can be cached between blocks. The block is kept
    to a single source block without sub-blocking, where source symbol i is exactly bytes
    ``i*T..(i+1)*T`` of the block and the encoding symbol id equals our index; the limits
    below guarantee that, and ``encode`` checks it.
    """

    name: str = "raptorq"
    #: RFC 6330's largest source block has 56403 symbols; repair ids are not the limit
    max_symbols: int = 56403
    #: the library rounds the symbol size down to a multiple of 8 when it is above 64
    symbol_alignment: int = 8
    #: largest multiple of 8 that fits the library's 16-bit symbol size
    max_symbol_length: int = 65528
    #: the library sub-blocks (changing the symbol layout) once a block outgrows its default
    #: 10 MiB decoder memory; staying under 8 MiB keeps every block in one piece
    max_block_bytes: int = 8 << 20

    def __init__(self) -> None:
        self._lib: Any = importlib.import_module("raptorq")

    def overhead(self) -> int:
        return 2

    def _check_block(self, k: int, length: int) -> None:
        if k * length > self.max_block_bytes:
            raise FECError(
                f"raptorq: block of k={k} symbols of {length} bytes is {k * length} bytes, "
                f"exceeds {self.max_block_bytes}"
            )

    def encode(self, source: Sequence[Buffer], m: int) -> list[bytes]:
        length = _check_source(self, source, m)
        k = len(source)
        self._check_block(k, length)
        if m == 0:
            return []
        return self._encode(b"".join(source), k, m, length)

    def encode_block(self, block: Buffer, k: int, m: int) -> list[bytes]:
        length = _check_joined(self, block, k, m)
        self._check_block(k, length)
        if m == 0:
            return []
        return self._encode(bytes(block), k, m, length)

    def _encode(self, block: bytes, k: int, m: int, length: int) -> list[bytes]:
        packets = self._lib.Encoder.with_defaults(block, length).get_encoded_packets(m)
        # a packet is a 4-byte payload id (source block 0, 24-bit symbol id) and the symbol
        if (
            len(packets) != k + m
            or len(packets[0]) != length + 4
            or packets[0][4:] != block[:length]
            or packets[k][:4] != k.to_bytes(4, "big")
        ):
            raise FECError(
                f"raptorq: library split the block (k={k}, m={m}, symbol length {length}) "
                f"into {len(packets)} packets of {len(packets[0]) - 4} bytes"
            )
        return [packet[4:] for packet in packets[k:]]

    def decode(self, k: int, m: int, received: Mapping[int, Buffer]) -> list[Buffer]:
        length = _check_received(self, k, m, received)
        self._check_block(k, length)
        source = _all_source(k, received)
        if source is not None:
            return source
        decoder = self._lib.Decoder.with_defaults(k * length, length)
        block: bytes | None = None
        for index in sorted(received):
            block = decoder.decode(index.to_bytes(4, "big") + bytes(received[index]))
            if block is not None:
                break
        if block is None:
            raise FECError(
                f"raptorq: could not decode k={k}, m={m} from {len(received)} symbols "
                f"(RaptorQ needs k+{self.overhead()} for a reliable decode)"
            )
        if len(block) != k * length:
            raise FECError(f"raptorq: decoded block is {len(block)} bytes, expected {k * length}")
        out: list[Buffer] = [block[i * length : (i + 1) * length] for i in range(k)]
        for index, symbol in received.items():
            if index < k and out[index] != symbol:
                raise FECError(f"raptorq: decoded source symbol {index} differs from received")
        return out


# --- rs (our own Reed-Solomon) ---------------------------------------------------------

#: generator tables per (k, m): a handful of block shapes, and each is a few KiB
_RS_ENCODE_CACHE_SIZE: Final = 64
#: decode tables per (k, m, symbols used): iid losses rarely repeat a pattern, but a burst
#: pattern or a dead sender port does, and building one costs far more than a dict lookup
_RS_DECODE_CACHE_SIZE: Final = 256


@functools.lru_cache(maxsize=_RS_ENCODE_CACHE_SIZE)
def _rs_encode_tables(k: int, m: int) -> bytes:
    from diode.protocol import _rs

    return _rs.encode_tables(k, m)


@functools.lru_cache(maxsize=_RS_DECODE_CACHE_SIZE)
def _rs_decode_tables(k: int, m: int, indices: tuple[int, ...]) -> tuple[bytes, tuple[int, ...]]:
    from diode.protocol import _rs

    return _rs.decode_tables(k, m, indices)


class RsCodec:
    """Reed-Solomon over GF(256) with a Cauchy generator, from our C extension: MDS.

    ``diode/protocol/_rs.c`` holds the mathematics and the SIMD kernels (AVX2, SSSE3, portable
    C, chosen at import). Tables of the generator are cached per (k, m), those of a decode per
    erasure pattern; the C functions release the GIL while they compute and read the caller's
    buffers in place.
    """

    name: str = "rs"
    #: GF(256) has 256 distinct elements: at most 256 symbols per block
    max_symbols: int = 256
    symbol_alignment: int = 1
    #: far above a jumbo datagram; the same bound as zfec, so configurations carry over
    max_symbol_length: int = 65535

    def __init__(self) -> None:
        from diode.protocol import _rs

        self._rs = _rs

    def overhead(self) -> int:
        return 0

    def encode(self, source: Sequence[Buffer], m: int) -> list[bytes]:
        _check_source(self, source, m)
        k = len(source)
        if m == 0:
            return []
        try:
            return self._rs.apply(_rs_encode_tables(k, m), m, source)
        except ValueError as exc:
            raise FECError(f"rs: cannot encode k={k}, m={m}: {exc}") from exc

    def encode_block(self, block: Buffer, k: int, m: int) -> list[bytes]:
        _check_joined(self, block, k, m)
        if m == 0:
            return []
        try:
            return self._rs.apply_joined(_rs_encode_tables(k, m), m, k, block)
        except ValueError as exc:
            raise FECError(f"rs: cannot encode k={k}, m={m}: {exc}") from exc

    def decode(self, k: int, m: int, received: Mapping[int, Buffer]) -> list[Buffer]:
        _check_received(self, k, m, received)
        source = _all_source(k, received)
        if source is not None:
            return source
        # sorted, the first k are every source symbol present and then the lowest repair
        # symbols: exactly as many as sources are missing, in a canonical order for the cache
        indices = tuple(sorted(received)[:k])
        try:
            tables, missing = _rs_decode_tables(k, m, indices)
            rebuilt = self._rs.apply(tables, len(missing), [received[i] for i in indices])
        except ValueError as exc:
            raise FECError(
                f"rs: cannot decode k={k}, m={m} from symbols {list(indices)}: {exc}"
            ) from exc
        out: list[Buffer] = [received.get(i, b"") for i in range(k)]
        for index, symbol in zip(missing, rebuilt, strict=True):
            out[index] = symbol
        return out


# --- worker thread ------------------------------------------------------------------------


class FecWorker:
    """One background thread that runs codec calls, handing results back in submission order.

    rs and zfec release the GIL while they compute, so a session that submits a block's encode
    (or decode) here and collects the result later lets the codec run on a second core while the
    session's Python goes on. The thread only computes: which results a session consumes, and
    when, depends only on its own calls, never on how far the thread has got, so a session's
    output is the same with or without a worker. An exception raised by a call is re-raised by
    ``result`` for that call.
    """

    __slots__ = ("_jobs", "_outstanding", "_results", "_thread")

    def __init__(self, name: str = "diode-fec") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._outstanding = 0
        self._thread = threading.Thread(
            target=_work, args=(self._jobs, self._results), name=name, daemon=True
        )
        self._thread.start()

    @property
    def outstanding(self) -> int:
        """Calls submitted whose result has not been taken yet."""
        return self._outstanding

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self._thread.is_alive():
            raise FECError("FEC worker thread is closed")
        self._outstanding += 1
        self._jobs.put((fn, args))

    def result(self) -> Any:
        """The result of the oldest call not yet taken (waits for it)."""
        if not self._outstanding:
            raise FECError("FEC worker: no call is outstanding")
        self._outstanding -= 1
        ok, value = self._results.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Stop the thread once the calls already submitted are done; idempotent."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


def _work(
    jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None],
    results: queue.SimpleQueue[tuple[bool, Any]],
) -> None:
    # a module function, not a method: the thread must not keep its owner alive
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, args = job
        try:
            results.put((True, fn(*args)))
        except Exception as exc:  # handed to the consumer, which re-raises it
            results.put((False, exc))


# --- registry --------------------------------------------------------------------------

DEFAULT_CODEC: Final = "rs"

_IMPLEMENTATIONS: Final[
    dict[str, tuple[str, type[ZfecCodec] | type[RaptorQCodec] | type[RsCodec]]]
] = {
    "zfec": ("zfec", ZfecCodec),
    "raptorq": ("raptorq", RaptorQCodec),
    "rs": ("diode.protocol._rs", RsCodec),
}

#: codec names whose library is importable on this machine
CODECS: Final[tuple[str, ...]] = tuple(
    name
    for name, (module, _) in _IMPLEMENTATIONS.items()
    if importlib.util.find_spec(module) is not None
)

_instances: dict[str, ErasureCodec] = {}


def get_codec(name: str | None = None) -> ErasureCodec:
    """The codec called ``name`` (``None``: the default, rs). One shared instance each."""
    if name is None:
        name = DEFAULT_CODEC
    codec = _instances.get(name)
    if codec is not None:
        return codec
    if name not in _IMPLEMENTATIONS:
        raise ConfigError(f"unknown FEC codec {name!r}; known: {', '.join(_IMPLEMENTATIONS)}")
    module, cls = _IMPLEMENTATIONS[name]
    if name not in CODECS:
        raise ConfigError(
            f"FEC codec {name!r} needs the Python package {module!r}, which is not installed"
        )
    codec = cls()
    _instances[name] = codec
    return codec
