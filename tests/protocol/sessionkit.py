"""Helpers for the protocol session tests: seeded keys, records, a sender/receiver pair."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from diode.protocol.crypto import ReceiverPrivateKey, SigningKey
from diode.protocol.events import Event, GapDetected, RecordsDelivered
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Record
from diode.protocol.sender import SenderSession

E = TypeVar("E")

SIGNING = SigningKey.from_seed(bytes(range(32)))
RECEIVER = ReceiverPrivateKey.from_seed(bytes(range(1, 33)))


def records_for(n: int, *, size: int = 300, partitions: int = 2, seed: int = 7) -> list[Record]:
    rng = random.Random(seed)
    offsets = [rng.randrange(100) for _ in range(partitions)]
    out = []
    for i in range(n):
        p = i % partitions
        offsets[p] += rng.choice((1, 1, 3))  # holes, as after compaction
        out.append(
            Record("plant.a", p, offsets[p], 1_700_000_000_000 + i, b"k%d" % i, rng.randbytes(size))
        )
    return out


@dataclass
class Pair:
    sender: SenderSession
    receiver: ReceiverSession
    events: list[Event] = field(default_factory=list)

    def feed(self, datagrams: list[bytes], now: float) -> None:
        for d in datagrams:
            self.receiver.receive_datagram(d, now)
        self.events.extend(self.receiver.events())

    def settle(
        self,
        start: float,
        seconds: float = 2.0,
        step: float = 0.01,
        link: Callable[[list[bytes]], list[bytes]] | None = None,
    ) -> float:
        """Advance time: sender timers, receiver timers, everything delivered or given up."""
        now = start
        while now < start + seconds:
            now += step
            out = self.sender.poll(now)
            self.feed(link(out) if link else out, now)
            self.receiver.poll(now)
            self.events.extend(self.receiver.events())
        return now

    def delivered(self) -> list[Record]:
        return [r for e in self.events if isinstance(e, RecordsDelivered) for r in e.records]

    def gaps(self) -> list[GapDetected]:
        return [e for e in self.events if isinstance(e, GapDetected)]

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]
