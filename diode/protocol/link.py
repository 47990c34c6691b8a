"""A seeded, lossy, one-way link in memory: what the tests and ``diode simulate`` send through.

Owns the impairment model. Every decision comes from one ``random.Random(seed)``, so a run
is reproducible from its seed:

* loss: independent (``burst <= 1``) or Gilbert-Elliott with mean burst length ``burst``:
  a two-state chain that drops everything in the bad state, with transition probabilities
  chosen so the long-run loss rate is ``loss`` and bad runs last ``burst`` datagrams on
  average;
* duplicate: a delivered datagram is delivered twice (the copy goes out later);
* reorder: a datagram is held back and released after 1..``reorder_depth`` later ones;
* corrupt: one byte of a delivered datagram is flipped (the AEAD tag must catch it).

No clocks: ``transmit`` returns what comes out of the link, in order, and ``drain`` what is
still held back.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from diode.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LinkConfig:
    loss: float = 0.0
    burst: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    reorder_depth: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"link {name} probability {value} outside [0, 1)")
        if self.burst < 1.0:
            raise ConfigError(f"mean burst length {self.burst} is below 1")
        if self.reorder_depth < 1:
            raise ConfigError(f"reorder depth {self.reorder_depth} is below 1")


@dataclass(frozen=True, slots=True)
class LinkCounters:
    sent: int
    dropped: int
    delivered: int
    duplicated: int
    reordered: int
    corrupted: int


class LossyLink:
    """Datagrams in, impaired datagrams out."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._bad = False
        if config.burst > 1.0 and config.loss > 0.0:
            self._p_bad_to_good = 1.0 / config.burst
            # stationary share of the bad state must equal the loss rate
            self._p_good_to_bad = config.loss * self._p_bad_to_good / (1.0 - config.loss)
        else:
            self._p_bad_to_good = 1.0
            self._p_good_to_bad = 0.0
        self._held: list[tuple[int, bytes]] = []  # (release after this many more, datagram)
        self.sent = 0
        self.dropped = 0
        self.delivered = 0
        self.duplicated = 0
        self.reordered = 0
        self.corrupted = 0

    def _lose(self) -> bool:
        cfg = self.config
        rng = self._rng
        if cfg.burst <= 1.0:
            return cfg.loss > 0.0 and rng.random() < cfg.loss
        if self._bad:
            if rng.random() < self._p_bad_to_good:
                self._bad = False
        elif rng.random() < self._p_good_to_bad:
            self._bad = True
        return self._bad

    def _corrupt(self, datagram: bytes) -> bytes:
        buf = bytearray(datagram)
        i = self._rng.randrange(len(buf))
        buf[i] ^= self._rng.randrange(1, 256)
        self.corrupted += 1
        return bytes(buf)

    def transmit(self, datagrams: Iterable[bytes]) -> list[bytes]:
        """Send datagrams in; returns the datagrams that come out now, in arrival order."""
        cfg = self.config
        rng = self._rng
        out: list[bytes] = []
        for datagram in datagrams:
            self.sent += 1
            if self._held:
                self._tick(out)
            if self._lose():
                self.dropped += 1
                continue
            if cfg.corrupt and rng.random() < cfg.corrupt:
                datagram = self._corrupt(datagram)
            copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
            if copies == 2:
                self.duplicated += 1
                self._held.append((rng.randint(0, cfg.reorder_depth), datagram))
            if cfg.reorder and rng.random() < cfg.reorder:
                self.reordered += 1
                self._held.append((rng.randint(1, cfg.reorder_depth), datagram))
                continue
            out.append(datagram)
            self.delivered += 1
        return out

    def _tick(self, out: list[bytes]) -> None:
        still: list[tuple[int, bytes]] = []
        for wait, datagram in self._held:
            if wait <= 0:
                out.append(datagram)
                self.delivered += 1
            else:
                still.append((wait - 1, datagram))
        self._held = still

    def drain(self) -> list[bytes]:
        """Everything still held back, in release order."""
        held = sorted(self._held, key=lambda item: item[0])
        self._held = []
        self.delivered += len(held)
        return [d for _, d in held]

    def counters(self) -> LinkCounters:
        return LinkCounters(
            self.sent,
            self.dropped,
            self.delivered,
            self.duplicated,
            self.reordered,
            self.corrupted,
        )
