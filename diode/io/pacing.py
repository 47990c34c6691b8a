"""Pacing: a token bucket that keeps the sender at the configured link rate on its own.

A diode carries no feedback, so the sender cannot learn that the receiver or the link is
overrun; it must never offer more than the link carries. This module owns the rate arithmetic
(what a "byte on the link" is, :func:`wire_bytes`), the token bucket (:class:`Pacer`, pure:
time is passed in) and the precise wait used to honour it (:func:`precise_sleep`).

What the rate counts: every datagram is charged its UDP payload plus the IP and UDP headers
(28 bytes over IPv4, 48 over IPv6) and, by default, the Ethernet framing around it: preamble
and start delimiter (8), MAC header (14), frame check sequence (4) and the inter-frame gap
(12), 38 bytes in all. So a rate of 100 Mbit/s with Ethernet framing fills a 100 Mbit/s
Ethernet link exactly, which is what an operator means by "100 Mbit/s". (Runt frames are not
padded to the 64-byte Ethernet minimum: diode datagrams are far larger.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from diode.errors import ConfigError

#: IPv4 header (20, no options) + UDP header (8)
IPV4_UDP_OVERHEAD: Final = 28
#: IPv6 header (40, no extension headers) + UDP header (8)
IPV6_UDP_OVERHEAD: Final = 48
#: preamble + SFD (8) + MAC header (14) + FCS (4) + inter-frame gap (12)
ETHERNET_FRAMING: Final = 38
#: below this, a wait is spun rather than slept: time.sleep overshoots by tens of microseconds
SPIN_THRESHOLD_S: Final = 100e-6

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def per_datagram_overhead(*, ipv6: bool, ethernet_framing: bool) -> int:
    """Bytes the link carries for one datagram on top of its UDP payload."""
    ip = IPV6_UDP_OVERHEAD if ipv6 else IPV4_UDP_OVERHEAD
    return ip + (ETHERNET_FRAMING if ethernet_framing else 0)


def wire_bytes(payload_bytes: int, datagrams: int, *, overhead: int) -> int:
    """Link bytes of ``datagrams`` datagrams carrying ``payload_bytes`` of UDP payload in all."""
    return payload_bytes + datagrams * overhead


class Pacer:
    """Token bucket: ``rate_bytes_per_s`` on average, at most ``burst_bytes`` at once.

    The bucket starts full at ``clock()``. :meth:`delay_for` *reserves* its bytes: it returns
    how long to wait before sending them, and the caller must then send them (after the wait).
    A request larger than what the bucket holds borrows against the future, so a batch bigger
    than the burst is still sent (once) and the next one waits longer; requests larger than the
    burst never deadlock. Over any interval ``T`` no more than ``burst_bytes + rate * T`` bytes
    are released, and a sender that always has data releases exactly ``rate * T`` plus the
    initial burst: the long-run average is the configured rate, whatever the wait overshoot,
    because tokens earned while a wait overshoots are kept (up to the burst).
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens", "clock")

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int, clock: Clock) -> None:
        if not rate_bytes_per_s > 0:
            raise ConfigError(f"pacing rate {rate_bytes_per_s!r} bytes/s must be positive")
        if burst_bytes < 1:
            raise ConfigError(f"pacing burst {burst_bytes!r} bytes must be at least 1")
        self._rate = float(rate_bytes_per_s)
        self._burst = float(burst_bytes)
        self.clock = clock
        self._tokens = self._burst
        self._last = clock()

    @property
    def rate_bytes_per_s(self) -> float:
        return self._rate

    @property
    def burst_bytes(self) -> int:
        return int(self._burst)

    def tokens(self, now: float | None = None) -> float:
        """Bytes that could be sent at ``now`` without waiting (negative: still in debt)."""
        now = self.clock() if now is None else now
        return min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)

    def delay_for(self, nbytes: int, now: float | None = None) -> float:
        """Reserve ``nbytes`` and return the seconds to wait, from ``now``, before sending them."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative byte count: {nbytes}")
        now = self.clock() if now is None else now
        # A clock that steps back (it should not: use a monotonic one) earns nothing.
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate


def precise_sleep(
    seconds: float,
    *,
    clock: Clock = time.perf_counter,
    sleep: Sleep = time.sleep,
    spin: float = SPIN_THRESHOLD_S,
) -> None:
    """Wait ``seconds``: sleep for all but the last ``spin`` seconds, busy-wait the rest.

    The kernel wakes a sleeper tens of microseconds late; spinning only the sub-``spin``
    remainder keeps the wait precise without burning a core on long waits.
    """
    if seconds <= 0:
        return
    deadline = clock() + seconds
    if seconds > spin:
        sleep(seconds - spin)
    while clock() < deadline:
        pass
