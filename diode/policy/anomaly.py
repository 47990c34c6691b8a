"""Anomaly detectors: per-topic state that turns a stream of records into findings.

Every detector is deterministic given the ``now`` it is handed; none reads a clock. They
compare a topic with its own past (exponentially weighted moving averages, EWMA) rather than
with fixed bounds, after a warm-up during which they only learn:

* rate: records per window against the EWMA of past windows (a Poisson floor on the
  deviation keeps a quiet steady stream from alarming on noise);
* size: each record's size against the EWMA of sizes;
* field drift: a numeric field's fast EWMA against its slow baseline, so both a sudden jump
  and a slow creep show, and one alarm is raised per episode, not per record;
* timestamp: a record stamped too far ahead of or behind the clock. Every such record is a
  violation (its decision says why), but a producer with a wrong clock is one finding per
  episode, with running counts and a summary from ``poll(now)``, not one per record;
* silence: a topic that talked steadily and has been quiet far longer than usual, reported
  by ``poll(now)`` because no record arrives to trigger it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from diode.policy.decision import Finding
from diode.policy.model import (
    Anomaly,
    FieldDetector,
    RateDetector,
    SilenceDetector,
    SizeDetector,
    TimestampDetector,
)

#: empty windows folded in one at a time after a pause; beyond this the EWMA has forgotten
#: the past anyway, so the rest are skipped
MAX_IDLE_WINDOWS = 2000


class Ewma:
    """Exponentially weighted mean and variance (West's incremental form)."""

    __slots__ = ("alpha", "mean", "n", "var")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def update(self, x: float) -> None:
        if self.n == 0:
            self.mean = x
        else:
            d = x - self.mean
            a = self.alpha
            self.mean += a * d
            self.var = (1.0 - a) * (self.var + a * d * d)
        self.n += 1

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


class RateMonitor:
    """Counts records per window; when a window closes, compares its count with the EWMA."""

    __slots__ = ("cfg", "count", "ewma", "window_end")

    def __init__(self, cfg: RateDetector) -> None:
        self.cfg = cfg
        self.ewma = Ewma(cfg.alpha)
        self.count = 0
        self.window_end: float | None = None

    def observe(self, now: float, topic: str, rule: str) -> Finding | None:
        end = self.window_end
        finding = None
        if end is None:
            self.window_end = now + self.cfg.window_s
        elif now >= end:
            finding = self._close(now, topic, rule)
        self.count += 1
        return finding

    def _close(self, now: float, topic: str, rule: str) -> Finding | None:
        cfg = self.cfg
        ewma = self.ewma
        count = self.count
        finding = None
        if ewma.n >= cfg.warmup_windows:
            # counts of a steady random stream vary like sqrt(mean) (Poisson)
            std = max(ewma.std, math.sqrt(max(ewma.mean, 0.0)), 1.0)
            z = (count - ewma.mean) / std
            if abs(z) > cfg.z:
                bound = ewma.mean + math.copysign(cfg.z * std, z)
                finding = Finding(
                    "rate",
                    topic,
                    rule,
                    count / cfg.window_s,
                    bound / cfg.window_s,
                    f"{count} records in {cfg.window_s:g} s against a usual "
                    f"{ewma.mean:.1f} (z={z:+.1f}, limit {cfg.z:g})",
                )
        ewma.update(float(count))
        assert self.window_end is not None
        idle = int((now - self.window_end) // cfg.window_s)
        for _ in range(min(idle, MAX_IDLE_WINDOWS)):
            ewma.update(0.0)
        self.window_end += (idle + 1) * cfg.window_s
        self.count = 0
        return finding


class SizeMonitor:
    __slots__ = ("cfg", "ewma", "frac", "limit2", "warmup")

    def __init__(self, cfg: SizeDetector) -> None:
        self.cfg = cfg
        self.ewma = Ewma(cfg.alpha)
        self.limit2 = cfg.z * cfg.z
        self.frac = cfg.min_std_fraction
        self.warmup = cfg.warmup

    def observe(self, size: int, topic: str, rule: str) -> Finding | None:
        ewma = self.ewma
        finding = None
        if ewma.n >= self.cfg.warmup:
            std = max(math.sqrt(ewma.var), self.cfg.min_std_fraction * ewma.mean, 1.0)
            z = (size - ewma.mean) / std
            if z > self.cfg.z or -z > self.cfg.z:
                finding = Finding(
                    "size",
                    topic,
                    rule,
                    float(size),
                    ewma.mean + math.copysign(self.cfg.z * std, z),
                    f"record of {size} bytes against a usual {ewma.mean:.0f} "
                    f"(z={z:+.1f}, limit {self.cfg.z:g})",
                )
        ewma.update(float(size))
        return finding


class FieldMonitor:
    """Drift of one numeric field: an EWMA control chart.

    During warm-up the baseline mean and standard deviation are learnt from the values
    themselves. The spread used is never below ``min_std`` nor below ``min_std_fraction``
    times the larger of ``|baseline mean|`` and ``|value|``: a signal that was constant
    during warm-up has no spread of its own, and a floor relative to its magnitude keeps its
    first small change from scoring in the millions (the first record of a jump then scores
    at most about ``2 * alpha_fast / (min_std_fraction * sqrt(alpha_fast / (2 - alpha_fast)))``,
    whatever the units). Afterwards the fast EWMA of the values is compared with the baseline mean, in
    units of the fast EWMA's own spread (``std * sqrt(a / (2 - a))``), so a sudden jump and a
    slow creep both stand out. The baseline keeps adapting slowly (mean with ``alpha_slow``,
    spread ten times slower, each step clipped at 4 sigma) so that a drift is not absorbed
    into the baseline before it is seen, while a lasting new level is eventually accepted.
    One alarm is raised per episode; it re-arms once back within half the threshold.
    """

    __slots__ = (
        "afast",
        "alarmed",
        "cfg",
        "fast",
        "frac",
        "m2",
        "mean",
        "min_std",
        "n",
        "path",
        "scale",
        "var",
        "warmup",
        "zlim",
    )

    def __init__(self, path: str, cfg: FieldDetector) -> None:
        self.path = path
        self.cfg = cfg
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.var = 0.0
        self.fast = 0.0
        self.alarmed = False
        self.afast = cfg.alpha_fast
        self.warmup = cfg.warmup
        self.zlim = cfg.z
        self.scale = math.sqrt(cfg.alpha_fast / (2.0 - cfg.alpha_fast))
        self.frac = cfg.min_std_fraction
        # below this only a value and baseline of exactly 0 (or both floors set to 0) get;
        # it keeps the arithmetic finite
        self.min_std = max(cfg.min_std, 1e-9)

    def observe(self, x: float, topic: str, rule: str) -> Finding | None:
        n = self.n
        if n < self.warmup:
            # Welford's running mean and variance over the warm-up
            self.fast = x if n == 0 else self.fast + self.afast * (x - self.fast)
            n += 1
            d = x - self.mean
            self.mean += d / n
            self.m2 += d * (x - self.mean)
            self.n = n
            if n == self.warmup:
                self.var = self.m2 / max(n - 1, 1)
            return None
        fast = self.fast = self.fast + self.afast * (x - self.fast)
        mean = self.mean
        std = math.sqrt(self.var)
        am = mean if mean >= 0 else -mean
        ax = x if x >= 0 else -x
        floor = self.frac * (am if am > ax else ax)
        if floor < self.min_std:
            floor = self.min_std
        if std < floor:
            std = floor
        z = (fast - mean) / (std * self.scale)
        az = z if z >= 0 else -z
        finding = None
        zlim = self.zlim
        if az > zlim:
            cfg = self.cfg
            if not self.alarmed:
                self.alarmed = True
                finding = Finding(
                    f"field:{self.path}",
                    topic,
                    rule,
                    fast,
                    mean + math.copysign(cfg.z * std * self.scale, z),
                    f"{self.path} averages {fast:.6g} against a baseline of "
                    f"{mean:.6g} (z={z:+.1f}, limit {cfg.z:g})",
                )
        elif az < zlim / 2:
            self.alarmed = False
        d = x - mean
        bound = 4.0 * std
        if d > bound:
            d = bound
        elif d < -bound:
            d = -bound
        a = self.cfg.alpha_slow
        self.mean = mean + a * d
        b = a * 0.1
        self.var = (1.0 - b) * (self.var + b * d * d)
        self.n = n + 1
        return finding


def _skew_words(skew: float, cfg: TimestampDetector) -> str:
    if skew > 0:
        return f"timestamp {skew:.1f} s in the future (limit {cfg.max_future_s:g} s)"
    return f"timestamp {-skew:.1f} s in the past (limit {cfg.max_past_s:g} s)"


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


class SkewMonitor:
    """Timestamp skew of one topic, as episodes.

    ``skewed`` is called for each record outside the bounds: the first of an episode gets a
    ``Finding``; the rest get only the reason text (their decision still says why, and the
    anomaly action still applies to each). ``poll`` reports the running count every
    ``report_every_s`` and closes the episode, with its total, once no skewed record has
    come for ``clear_after_s``. Episodes end only in ``poll``, so a producer whose clock
    flaps between good and bad stays one episode rather than becoming many.
    """

    __slots__ = (
        "cfg",
        "count",
        "high",
        "last_report",
        "last_skew",
        "low",
        "max_future",
        "max_past",
        "open",
        "started",
    )

    def __init__(self, cfg: TimestampDetector) -> None:
        self.cfg = cfg
        self.max_future = cfg.max_future_s
        self.max_past = cfg.max_past_s
        self.open = False
        self.count = 0
        self.started = 0.0
        self.last_skew = 0.0
        self.last_report = 0.0
        self.low = 0.0
        self.high = 0.0

    def skewed(self, skew: float, now: float, topic: str, rule: str) -> Finding | str:
        cfg = self.cfg
        words = _skew_words(skew, cfg)
        self.last_skew = now
        if self.open:
            self.count += 1
            if skew < self.low:
                self.low = skew
            elif skew > self.high:
                self.high = skew
            return words
        self.open = True
        self.count = 1
        self.started = self.last_report = now
        self.low = self.high = skew
        return Finding(
            "timestamp",
            topic,
            rule,
            skew,
            self._limit(skew),
            f"{words}; further skewed records of this topic are counted, reported every "
            f"{cfg.report_every_s:g} s and summed up once none has come for "
            f"{cfg.clear_after_s:g} s",
        )

    def _limit(self, skew: float) -> float:
        return self.cfg.max_future_s if skew > 0 else -self.cfg.max_past_s

    def _worst(self) -> float:
        return self.high if self.high > -self.low else self.low

    def _span(self) -> str:
        cfg = self.cfg
        parts = []
        if self.low < 0 and -self.low > cfg.max_past_s:
            parts.append(f"up to {-self.low:.1f} s in the past")
        if self.high > cfg.max_future_s:
            parts.append(f"up to {self.high:.1f} s in the future")
        return " and ".join(parts)

    def poll(self, now: float, topic: str, rule: str) -> Finding | None:
        if not self.open:
            return None
        cfg = self.cfg
        worst = self._worst()
        if now - self.last_skew >= cfg.clear_after_s:
            self.open = False
            return Finding(
                "timestamp",
                topic,
                rule,
                worst,
                self._limit(worst),
                f"timestamp skew over: {_records(self.count)} in "
                f"{self.last_skew - self.started:.0f} s, {self._span()}; none for "
                f"{now - self.last_skew:.0f} s",
                self.count,
            )
        if now - self.last_report >= cfg.report_every_s:
            self.last_report = now
            return Finding(
                "timestamp",
                topic,
                rule,
                worst,
                self._limit(worst),
                f"timestamp skew continues: {_records(self.count)} in "
                f"{now - self.started:.0f} s so far, {self._span()}",
                self.count,
            )
        return None


class SilenceMonitor:
    __slots__ = ("cfg", "gaps", "last", "reported", "seen")

    def __init__(self, cfg: SilenceDetector) -> None:
        self.cfg = cfg
        self.gaps = Ewma(0.05)
        self.last: float | None = None
        self.seen = 0
        self.reported = False

    def observe(self, now: float) -> None:
        last = self.last
        # a gap already reported as silence is an outage, not the topic's usual rhythm
        if last is not None and now >= last and not self.reported:
            self.gaps.update(now - last)
        self.last = now
        self.seen += 1
        self.reported = False

    def threshold(self) -> float:
        return max(self.cfg.after_s, self.cfg.factor * self.gaps.mean)

    def poll(self, now: float, topic: str, rule: str) -> Finding | None:
        if self.reported or self.last is None or self.seen < self.cfg.warmup:
            return None
        quiet = now - self.last
        limit = self.threshold()
        if quiet <= limit:
            return None
        self.reported = True
        return Finding(
            "silence",
            topic,
            rule,
            quiet,
            limit,
            f"no record for {quiet:.0f} s; usually one every {self.gaps.mean:.2f} s "
            f"(limit {limit:g} s)",
        )


def _number(obj: Any, path: tuple[str, ...]) -> float | None:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        return float(obj)
    return None


class TopicMonitor:
    """Every detector one rule configures, for one topic."""

    __slots__ = ("fields", "rate", "rule", "silence", "size", "timestamp", "topic")

    def __init__(self, cfg: Anomaly, topic: str, rule: str) -> None:
        self.topic = topic
        self.rule = rule
        self.rate = RateMonitor(cfg.rate) if cfg.rate else None
        self.size = SizeMonitor(cfg.size) if cfg.size else None
        self.timestamp = SkewMonitor(cfg.timestamp) if cfg.timestamp else None
        self.silence = SilenceMonitor(cfg.silence) if cfg.silence else None
        self.fields = [
            (tuple(path.split(".")), FieldMonitor(path, fc)) for path, fc in cfg.fields.items()
        ]

    @property
    def wants_value(self) -> bool:
        return bool(self.fields)

    def observe(self, ts_ms: int, size: int, value: Any, now: float) -> list[Finding | str] | None:
        """Feed one record; return what it showed, or None when nothing. A ``Finding`` is
        reported (audited); a string is a reason that belongs to the record only (a skewed
        timestamp inside an episode that was already reported)."""
        # the common case (no finding, window still open) is inlined: this runs per record
        out: list[Finding | str] | None = None
        rate = self.rate
        if rate is not None:
            end = rate.window_end
            if end is not None and now < end:
                rate.count += 1
            else:
                f = rate.observe(now, self.topic, self.rule)
                if f is not None:
                    out = [f]
        sm = self.size
        if sm is not None:
            ew = sm.ewma
            mean = ew.mean
            d = size - mean
            dd = d * d
            floor = sm.frac * mean
            if floor < 1.0:
                floor = 1.0
            limit2 = sm.limit2
            if ew.n >= sm.warmup and dd > limit2 * ew.var and dd > limit2 * floor * floor:
                # an outlier (the same test as SizeMonitor.observe, which builds the finding)
                f = sm.observe(size, self.topic, self.rule)
                if f is not None:
                    out = [*(out or ()), f]
            elif ew.n == 0:
                ew.update(float(size))
            else:
                a = ew.alpha
                ew.mean = mean + a * d
                ew.var = (1.0 - a) * (ew.var + a * dd)
                ew.n += 1
        ts = self.timestamp
        # a negative timestamp is Kafka's "none given", not a record from before 1970
        if ts is not None and ts_ms >= 0:
            skew = ts_ms / 1000.0 - now
            if skew > ts.max_future or -skew > ts.max_past:
                out = [*(out or ()), ts.skewed(skew, now, self.topic, self.rule)]
        if self.silence is not None:
            self.silence.observe(now)
        if value is not None and self.fields:
            for path, mon in self.fields:
                if len(path) == 1 and type(value) is dict:
                    x = value.get(path[0])
                    if type(x) is not float:
                        x = _number(value, path)
                else:
                    x = _number(value, path)
                if x is not None:
                    f = mon.observe(x, self.topic, self.rule)
                    if f is not None:
                        out = [*(out or ()), f]
        return out

    @property
    def polled(self) -> bool:
        """True if ``poll`` can report anything for this topic."""
        return self.silence is not None or self.timestamp is not None

    def poll(self, now: float) -> list[Finding]:
        """Findings due to time alone: silence, and timestamp-skew episodes."""
        out = []
        if self.silence is not None:
            f = self.silence.poll(now, self.topic, self.rule)
            if f is not None:
                out.append(f)
        if self.timestamp is not None:
            f = self.timestamp.poll(now, self.topic, self.rule)
            if f is not None:
                out.append(f)
        return out
