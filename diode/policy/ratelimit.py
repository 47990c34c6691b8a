"""Token buckets for per-topic or per-rule rate limits, driven by the caller's clock."""

from __future__ import annotations


class TokenBucket:
    """Refills at ``rate`` tokens per second up to ``burst``; starts full.

    Time is whatever ``now`` the caller passes (seconds); a clock that goes backwards
    refills nothing rather than draining the bucket.
    """

    __slots__ = ("burst", "last", "rate", "slack", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        # UNIX seconds as floats resolve only ~0.2 us today: forgive one microsecond of refill
        # so that exactly 1/rate seconds always earns exactly one token
        self.slack = rate * 1e-6
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def refill(self, now: float) -> None:
        last = self.last
        if last is None:
            self.last = now
        elif now > last:
            tokens = self.tokens + (now - last) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.last = now

    def available(self, now: float) -> float:
        self.refill(now)
        return self.tokens

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; report whether it did."""
        self.refill(now)
        if self.tokens >= amount - self.slack:
            self.tokens -= amount
            return True
        return False


class RateLimiter:
    """A records/s bucket and a bytes/s bucket; a record passes only if both have room,
    and a record that does not pass takes nothing from either."""

    __slots__ = ("bytes", "records")

    def __init__(
        self,
        records_per_s: float | None,
        bytes_per_s: float | None,
        burst_records: float | None,
        burst_bytes: float | None,
        max_bytes: int,
    ) -> None:
        self.records = (
            TokenBucket(records_per_s, burst_records or max(records_per_s, 1.0))
            if records_per_s is not None
            else None
        )
        # a record as large as the size limit must be able to pass an idle bucket
        self.bytes = (
            TokenBucket(bytes_per_s, burst_bytes or max(bytes_per_s, float(max_bytes)))
            if bytes_per_s is not None
            else None
        )

    def admit(self, size: int, now: float) -> str | None:
        """None if the record may pass (tokens taken), else why not."""
        rec = self.records
        byt = self.bytes
        if rec is not None:
            if rec.last is None or now > rec.last:
                rec.refill(now)
            if rec.tokens < 1.0 - rec.slack:
                return f"rate: more than {rec.rate:g} records/s (burst {rec.burst:g})"
        if byt is not None:
            if byt.last is None or now > byt.last:
                byt.refill(now)
            if byt.tokens < size - byt.slack:
                return f"rate: more than {byt.rate:g} bytes/s (burst {byt.burst:g})"
        if rec is not None:
            rec.tokens -= 1.0
        if byt is not None:
            byt.tokens -= size
        return None
