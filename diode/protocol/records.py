"""Kafka records as the diode carries them, and their batch encoding.

``Record`` is the one representation of a Kafka record inside the diode: the sender builds
it from a consumed message, the policy engine judges it, the protocol carries it, and the
receiver produces it. Everything Kafka lets a producer set crosses unchanged: key, value,
headers (order and duplicates kept; a header value may be null) and timestamp.
"""

from __future__ import annotations

import msgspec

#: a Kafka header: name and value; the value may be null
Header = tuple[str, bytes | None]


class Record(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One Kafka record, as read from a source partition.

    ``timestamp`` is milliseconds since the UNIX epoch, as Kafka stores it.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what a size limit is measured against."""
        n = len(self.key or b"") + len(self.value or b"")
        for name, value in self.headers:
            n += len(name) + len(value or b"")
        return n
