"""The token bucket and the precise wait, driven by an injected clock: nothing sleeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.errors import ConfigError
from diode.io.pacing import (
    ETHERNET_FRAMING,
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    Pacer,
    per_datagram_overhead,
    precise_sleep,
    wire_bytes,
)


class FakeClock:
    """Time that moves only when told to (or by ``tick`` on every read)."""

    def __init__(self, start: float = 1000.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_overheads_are_what_the_docs_say() -> None:
    assert IPV4_UDP_OVERHEAD == 20 + 8
    assert IPV6_UDP_OVERHEAD == 40 + 8
    assert ETHERNET_FRAMING == 8 + 14 + 4 + 12
    assert per_datagram_overhead(ipv6=False, ethernet_framing=True) == 66
    assert per_datagram_overhead(ipv6=True, ethernet_framing=False) == 48
    # a full 1500-MTU frame: 1472 payload + 28 + 38 = 1538 bytes on the wire
    assert wire_bytes(1472, 1, overhead=66) == 1538
    assert wire_bytes(3 * 1000, 3, overhead=28) == 3084


def test_bucket_starts_full_then_charges_at_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(1_000_000, 10_000, clock)
    assert pacer.delay_for(10_000, clock.now) == 0.0
    # empty now: 1000 bytes take 1 ms at 1 MB/s
    assert pacer.delay_for(1_000, clock.now) == pytest.approx(0.001)
    # the second reservation queues behind the first
    assert pacer.delay_for(1_000, clock.now) == pytest.approx(0.002)
    clock.now += 0.002
    assert pacer.tokens(clock.now) == pytest.approx(0.0, abs=1e-6)
    assert pacer.delay_for(500, clock.now) == pytest.approx(0.0005)


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(1_000_000, 5_000, clock)
    pacer.delay_for(5_000, clock.now)
    clock.now += 3600.0
    assert pacer.tokens(clock.now) == 5_000
    assert pacer.delay_for(5_000, clock.now) == 0.0
    assert pacer.delay_for(1, clock.now) > 0.0


def test_a_request_larger_than_the_burst_borrows_and_the_next_one_pays() -> None:
    clock = FakeClock()
    pacer = Pacer(1_000, 100, clock)
    assert pacer.delay_for(1_100, clock.now) == pytest.approx(1.0)
    clock.now += 1.0
    assert pacer.delay_for(100, clock.now) == pytest.approx(0.1)


def test_clock_going_back_earns_nothing() -> None:
    clock = FakeClock()
    pacer = Pacer(1_000, 100, clock)
    pacer.delay_for(100, clock.now)
    assert pacer.delay_for(100, clock.now - 5.0) == pytest.approx(0.1)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(min_value=1_000, max_value=10**10),
    burst=st.integers(min_value=1, max_value=10**6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_long_run_average_is_exactly_the_rate(rate: int, burst: int, seed: int) -> None:
    """A sender that always has data, waiting as told (or a little longer), releases exactly
    ``burst + rate * T`` bytes in ``T`` less what the bucket still holds, never more."""
    rnd = random.Random(seed)
    clock = FakeClock(start=0.0)
    pacer = Pacer(rate, burst, clock)
    released = 0
    for _ in range(400):
        nbytes = rnd.randint(1, 70_000)
        delay = pacer.delay_for(nbytes, clock.now)
        if delay > 0:
            # a real wait overshoots; what the bucket earns meanwhile is kept while it fits
            clock.now += delay + rnd.random() * burst / rate
        released += nbytes
        # the bytes just released went out at clock.now: never ahead of the bucket
        assert released <= burst + rate * clock.now + 1e-9 * released + 1e-6
    left = burst + rate * clock.now - released
    assert left == pytest.approx(pacer.tokens(clock.now), rel=1e-6, abs=1e-3)
    assert -1e-3 <= pacer.tokens(clock.now) <= burst


def test_long_run_average_without_overshoot_is_exact() -> None:
    clock = FakeClock(start=0.0)
    rate, burst = 12_500_000, 25_000  # 100 Mbit/s, 2 ms
    pacer = Pacer(rate, burst, clock)
    sent = 0
    for _ in range(10_000):
        clock.now += pacer.delay_for(1538, clock.now)
        sent += 1538
    # the last reservation empties the bucket exactly when it is sent
    assert (sent - burst) / clock.now == pytest.approx(rate, rel=1e-9)


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-5.0, 10), (1000, 0), (1000, -1)])
def test_bad_pacer_settings(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError, match="must be"):
        Pacer(rate, burst, FakeClock())


def test_negative_reservation_is_a_bug() -> None:
    with pytest.raises(ValueError, match="negative"):
        Pacer(1000, 10, FakeClock()).delay_for(-1)


def test_precise_sleep_sleeps_the_bulk_and_spins_the_rest() -> None:
    clock = FakeClock(start=0.0, tick=1e-5)
    precise_sleep(0.010, clock=clock, sleep=clock.sleep, spin=100e-6)
    assert clock.sleeps == [pytest.approx(0.010 - 100e-6)]
    assert clock.now >= 0.010


def test_precise_sleep_spins_short_waits_without_sleeping() -> None:
    clock = FakeClock(start=0.0, tick=1e-6)
    precise_sleep(50e-6, clock=clock, sleep=clock.sleep, spin=100e-6)
    assert clock.sleeps == []
    assert clock.now >= 50e-6
    precise_sleep(0.0, clock=clock, sleep=clock.sleep)
    precise_sleep(-1.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
