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
    (over,) = e.poll(NOW + 60)  # none for clear_after_s (60): the episode is over
    assert over.count == 1 and over.message.startswith("timestamp skew over: 1 record")
    later = NOW + 100
    past = record("plant.a", 50, later - 7200, rng)
    (f,) = e.evaluate(past, later).findings
    assert (round(f.observed), f.threshold) == (-7200, -3600)
    assert e.evaluate(record("plant.a", 50, later - 30, rng), later).findings == ()
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


# --- timestamp skew: one finding per episode -------------------------------------------------

SKEW = """\
version: 1
name: skew
rules:
  - id: plc
    match: {glob: "plant.*"}
    anomaly:
      timestamp: {max_future_s: 60, max_past_s: 3600, report_every_s: 300}
"""


def raw(topic: str, ts: float) -> Record:
    return Record(topic, 0, 0, int(ts * 1000), None, b"x", ())


def test_skewed_producer_is_one_finding_per_episode(engine_of: Engine) -> None:
    e = engine_of(SKEW)
    decisions = [e.evaluate(raw("plant.plc", NOW + i + 120), NOW + i) for i in range(100)]
    # every skewed record still carries the reason and the anomaly action ...
    assert all(d.action is Action.ALERT for d in decisions)
    why = ("anomaly: timestamp 120.0 s in the future (limit 60 s)",)
    assert all(d.reasons == why for d in decisions[1:])
    assert decisions[0].reasons[0].startswith(why[0] + "; further skewed records")
    # ... but only the first carries a finding (the audited event)
    found = [f for d in decisions for f in d.findings]
    assert len(found) == 1 and found[0].detector == "timestamp" and found[0].count == 1
    assert e.poll(NOW + 100) == []
    good = e.evaluate(raw("plant.plc", NOW + 100), NOW + 100)
    assert good.action is Action.FORWARD and good.findings == ()
    # the episode ends once no skewed record has come for clear_after_s (60 s)
    assert e.poll(NOW + 158) == []
    (summary,) = e.poll(NOW + 159)
    assert summary.detector == "timestamp" and summary.topic == "plant.plc"
    assert summary.count == 100  # every record of the episode
    assert summary.message == (
        "timestamp skew over: 100 records in 99 s, up to 120.0 s in the future; none for 60 s"
    )
    assert e.poll(NOW + 160) == []
    # a new episode is reported again
    d = e.evaluate(raw("plant.plc", NOW + 200 + 120), NOW + 200)
    assert [f.detector for f in d.findings] == ["timestamp"]


def test_flapping_clock_is_one_episode(engine_of: Engine) -> None:
    e = engine_of(SKEW)
    found: list[Finding] = []
    for i in range(200):  # every other record skewed, polled every second
        now = NOW + i
        found += e.evaluate(raw("plant.plc", now + (120 if i % 2 else 0)), now).findings
        found += e.poll(now)
    assert len(found) == 1


def test_long_skew_episode_is_reported_periodically(engine_of: Engine) -> None:
    e = engine_of(SKEW)
    reports: list[Finding] = []
    for i in range(1000):  # one record a second, 2 hours behind, for 1000 s
        now = NOW + i
        reports += e.evaluate(raw("plant.plc", now - 7200), now).findings
        reports += e.poll(now)
    # the opening record, then the running total every 300 s
    assert [f.count for f in reports] == [1, 301, 601, 901]
    assert all(f.detector == "timestamp" and f.observed < -3600 for f in reports)
    assert "continues" in reports[1].message and "601 records" in reports[2].message


def test_skew_episodes_are_per_topic(engine_of: Engine) -> None:
    e = engine_of(SKEW)
    a = e.evaluate(raw("plant.a", NOW + 120), NOW)
    b = e.evaluate(raw("plant.b", NOW + 120), NOW)
    assert len(a.findings) == len(b.findings) == 1
    # the clock jumps from ahead to far behind: still the same broken clock
    c = e.evaluate(raw("plant.a", NOW + 1 - 7200), NOW + 1)
    assert c.findings == () and c.reasons[0].endswith("s in the past (limit 3600 s)")
    assert [f.topic for f in e.poll(NOW + 60)] == ["plant.b"]
    (over,) = e.poll(NOW + 61)
    assert over.topic == "plant.a" and over.count == 2
    assert "up to 7200.0 s in the past and up to 120.0 s in the future" in over.message


def test_skew_drop_action_still_applies_to_every_record(engine_of: Engine) -> None:
    e = engine_of(SKEW.replace("    anomaly:", "    on_violation: {anomaly: drop}\n    anomaly:"))
    got = [e.evaluate(raw("plant.plc", NOW + 600), NOW + i).action for i in range(5)]
    assert got == [Action.DROP] * 5


# --- field drift: a sensible spread floor for a signal that was constant ----------------------

FIELD = """\
version: 1
name: field
rules:
  - id: f
    match: {glob: "plant.*"}
    value: {format: json}
    anomaly:
      fields:
        value: {z: 6, warmup: 50}
"""


def _z(finding: Finding) -> float:
    return float(finding.message.split("z=")[1].split(",")[0])


def _feed(e: PolicyEngine, values: list[float], start: float) -> list[Finding]:
    out: list[Finding] = []
    for i, v in enumerate(values):
        now = start + i
        rec = Record("plant.sp", 0, i, int(now * 1000), None, json.dumps({"value": v}).encode(), ())
        out += e.evaluate(rec, now).findings
    return out


def test_small_change_of_a_constant_signal_is_no_alarm(engine_of: Engine) -> None:
    e = engine_of(FIELD)
    assert _feed(e, [80.0] * 50, NOW) == []
    # a setpoint nudged by 0.1 (0.125 %) and held
    assert _feed(e, [80.1] * 200, NOW + 50) == []


def test_big_change_of_a_constant_signal_alarms_with_a_sane_z(engine_of: Engine) -> None:
    e = engine_of(FIELD)
    _feed(e, [80.0] * 50, NOW)
    (f,) = _feed(e, [120.0] * 20, NOW + 50)
    assert 6 < _z(f) < 2000, f.message


def test_change_of_a_signal_constant_at_zero_has_a_bounded_z(engine_of: Engine) -> None:
    e = engine_of(FIELD)
    _feed(e, [0.0] * 50, NOW)
    (f,) = _feed(e, [1.0] * 5, NOW + 50)
    assert 6 < _z(f) < 2000, f.message


def test_min_std_still_sets_the_floor(engine_of: Engine) -> None:
    e = engine_of(FIELD.replace("warmup: 50}", "warmup: 50, min_std: 5}"))
    _feed(e, [80.0] * 50, NOW)
    assert _feed(e, [85.0] * 100, NOW + 50) == []  # within z=6 of a spread of 5


def test_rate_drop(engine_of: Engine) -> None:
    rng = random.Random(11)
    e = engine_of(POLICY)
    now, found = steady(e, rng, seconds=120, per_s=50, start=NOW)
    assert found == []
    # the producer falls to one record a second: not silent, but far below its usual rate
    rates: list[Finding] = []
    for i in range(1, 6):
        t = now + i
        rates += [f for f in e.evaluate(record("plant.a", 50.0, t, rng), t).findings]
    low = [f for f in rates if f.detector == "rate"]
    assert low, rates
    assert low[0].observed < low[0].threshold < 50
