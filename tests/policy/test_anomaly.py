"""Anomaly detectors on synthetic streams: steady (no alarm), spike, drift, skew, silence."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from diode.policy import Action, Finding, PolicyEngine
from diode.protocol.records import Record

NOW = 1_700_000_000.0
Engine = Callable[..., PolicyEngine]

POLICY = """\
version: 1
name: anomalies
rules:
  - id: tele
    match: {glob: "plant.*"}
    value: {format: json}
    anomaly:
      rate: {window_s: 1, z: 6, warmup_windows: 30}
      size: {z: 6, warmup: 200}
      fields:
        value: {z: 6, warmup: 200}
      timestamp: {max_future_s: 60, max_past_s: 3600}
      silence: {after_s: 30, factor: 10, warmup: 30}
"""


def record(topic: str, value: float, now: float, rng: random.Random, pad: int = 0) -> Record:
    doc = {"tag": "TI-101", "value": round(value, 3), "note": "x" * (pad or rng.randint(40, 60))}
    return Record(topic, 0, 0, int(now * 1000), None, json.dumps(doc).encode(), ())


def steady(
    engine: PolicyEngine,
    rng: random.Random,
    seconds: float,
    per_s: float,
    start: float,
    topic: str = "plant.a",
    mean: float = 50.0,
) -> tuple[float, list[Finding]]:
    """Poisson arrivals at per_s, value ~ N(mean, 1); returns (end time, findings)."""
    now = start
    found: list[Finding] = []
    while now < start + seconds:
        now += rng.expovariate(per_s)
        d = engine.evaluate(record(topic, rng.gauss(mean, 1.0), now, rng), now)
        found.extend(d.findings)
        found.extend(engine.poll(now))
    return now, found


def test_steady_stream_raises_no_alarm(engine_of: Engine) -> None:
    for seed in range(3):
        rng = random.Random(seed)
        e = engine_of(POLICY)
        _, found = steady(e, rng, seconds=600, per_s=50, start=NOW)
        assert found == [], (seed, found[:3])


def test_rate_spike(engine_of: Engine) -> None:
    rng = random.Random(1)
    e = engine_of(POLICY)
    now, found = steady(e, rng, seconds=120, per_s=50, start=NOW)
    assert found == []
    # one second at ten times the usual rate
    for i in range(500):
        t = now + i / 500
        e.evaluate(record("plant.a", rng.gauss(50, 1), t, rng), t)
    d = e.evaluate(record("plant.a", 50.0, now + 1.5, rng), now + 1.5)
    rates = [f for f in d.findings if f.detector == "rate"]
    assert len(rates) == 1
    assert rates[0].observed > 400 and rates[0].observed > rates[0].threshold > 50
    assert d.action is Action.ALERT and d.target_topic == "plant.a"
    assert any(r.startswith("anomaly: ") for r in d.reasons)


def test_size_outlier(engine_of: Engine) -> None:
    rng = random.Random(2)
    e = engine_of(POLICY)
    now, _ = steady(e, rng, seconds=30, per_s=50, start=NOW)
    d = e.evaluate(record("plant.a", 50.0, now + 0.01, rng, pad=2000), now + 0.01)
    sizes = [f for f in d.findings if f.detector == "size"]
    assert len(sizes) == 1 and sizes[0].observed > sizes[0].threshold
    d = e.evaluate(record("plant.a", 50.0, now + 0.02, rng), now + 0.02)
    assert not [f for f in d.findings if f.detector == "size"]


def test_field_drift_is_one_alarm_per_episode(engine_of: Engine) -> None:
    rng = random.Random(3)
    e = engine_of(POLICY)
    now, found = steady(e, rng, seconds=60, per_s=20, start=NOW)
    assert found == []
    drift: list[Finding] = []
    # the value creeps up 0.05 per record: invisible record to record, plain over time
    for i in range(400):
        now += 0.05
        d = e.evaluate(record("plant.a", 50.0 + 0.05 * i + rng.gauss(0, 1), now, rng), now)
        drift.extend(f for f in d.findings if f.detector == "field:value")
    assert len(drift) == 1
    assert drift[0].observed > drift[0].threshold > 50


def test_field_jump(engine_of: Engine) -> None:
    rng = random.Random(4)
    e = engine_of(POLICY)
    now, _ = steady(e, rng, seconds=60, per_s=20, start=NOW)
    found: list[Finding] = []
    for _ in range(10):
        now += 0.05
        d = e.evaluate(record("plant.a", 80.0, now, rng), now)
        found.extend(f for f in d.findings if f.detector == "field:value")
    assert len(found) == 1


def test_timestamp_skew(engine_of: Engine) -> None:
    rng = random.Random(5)
    e = engine_of(POLICY)
    future = record("plant.a", 50, NOW + 120, rng)
    d = e.evaluate(future, NOW)
    (f,) = d.findings
    assert (f.detector, round(f.observed), f.threshold) == ("timestamp", 120, 60)
    past = record("plant.a", 50, NOW - 7200, rng)
    (f,) = e.evaluate(past, NOW).findings
    assert (round(f.observed), f.threshold) == (-7200, -3600)
    assert e.evaluate(record("plant.a", 50, NOW - 30, rng), NOW).findings == ()
    # Kafka's "no timestamp" (-1) is not a record from 1970
    no_ts = Record("plant.a", 0, 0, -1, None, b'{"value": 50}', ())
    assert e.evaluate(no_ts, NOW).findings == ()


def test_silence_is_reported_once_and_rearms(engine_of: Engine) -> None:
    rng = random.Random(6)
    e = engine_of(POLICY)
    now, _ = steady(e, rng, seconds=60, per_s=5, start=NOW)
    assert e.poll(now + 29) == []
    found = e.poll(now + 31)
    assert [(f.detector, f.topic) for f in found] == [("silence", "plant.a")]
    assert found[0].observed > found[0].threshold == 30
    assert e.poll(now + 100) == []
    # talking again re-arms it
    later = now + 200
    e.evaluate(record("plant.a", 50, later, rng), later)
    assert [f.detector for f in e.poll(later + 31)] == ["silence"]


def test_silence_needs_a_history(engine_of: Engine) -> None:
    rng = random.Random(7)
    e = engine_of(POLICY)
    for i in range(5):
        e.evaluate(record("plant.b", 50, NOW + i, rng), NOW + i)
    assert e.poll(NOW + 1000) == []


def test_detectors_are_per_topic(engine_of: Engine) -> None:
    rng = random.Random(8)
    e = engine_of(POLICY)
    now, _ = steady(e, rng, seconds=60, per_s=20, start=NOW, topic="plant.a", mean=50)
    # a new topic with a very different level is its own baseline, not an outlier of plant.a
    _, found = steady(e, rng, seconds=60, per_s=20, start=now, topic="plant.b", mean=900)
    assert [f for f in found if f.detector != "silence"] == []


def test_same_stream_same_findings(engine_of: Engine) -> None:
    runs = []
    for _ in range(2):
        rng = random.Random(9)
        e = engine_of(POLICY)
        now, _ = steady(e, rng, seconds=60, per_s=20, start=NOW)
        found: list[Finding] = []
        for i in range(300):
            now += 0.05
            d = e.evaluate(record("plant.a", 50 + 0.1 * i, now, rng), now)
            found.extend(d.findings)
        runs.append(found)
    assert runs[0] == runs[1] and runs[0]


def test_anomaly_action_can_refuse(engine_of: Engine) -> None:
    text = POLICY.replace(
        "    value: {format: json}\n",
        "    value: {format: json}\n    on_violation: {anomaly: drop}\n",
    )
    e = engine_of(text)
    rng = random.Random(10)
    d = e.evaluate(record("plant.a", 50, NOW + 600, rng), NOW)
    assert d.action is Action.DROP and d.findings[0].detector == "timestamp"
