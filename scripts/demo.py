"""The whole diode on one machine: two Kafka clusters, the sender, the receiver, a plant.

``scripts/demo`` (``make demo``) runs this. It owns the demo's plant simulator (realistic OT
records: line telemetry, alarms, production orders, energy meters, plus a command topic the
policy denies and records that leak a credential, which the policy quarantines), the demo
policy and the sender/receiver configs it writes, the optional lossy UDP relay (a separate
process that drops datagrams with a seeded random generator), and the checks that prove what
arrived on the IT cluster is byte for byte what was produced on OT, and nothing else.

Every process it starts runs in its own session, so Ctrl-C reaches only this program, which
then stops the sender first (so it flushes and commits), then the receiver, the relay and the
clusters. ``bench/end_to_end.py`` reuses the same machinery without the pretty output.

    scripts/demo                          # 20 s at 2000 records/s
    scripts/demo --seconds 5 --loss 0.02  # drop 2% of the datagrams on the way
    scripts/demo --keep                   # leave both clusters running to look around
    scripts/demo stop                     # stop clusters a --keep run left behind
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import kafkactl  # noqa: E402  (a sibling script, not a package)

DEFAULT_WORK_DIR = Path("demo-run")
#: marks a work dir as the demo's, so a re-run may wipe it and nothing else
MARKER = ".diode-demo"
#: the provenance headers the receiver appends (diode/io/kafka.py)
SRC_TOPIC = "diode-src-topic"
SRC_PARTITION = "diode-src-partition"
SRC_OFFSET = "diode-src-offset"
SESSION = "diode-session"
PROVENANCE = (SRC_TOPIC, SRC_PARTITION, SRC_OFFSET, SESSION)

Header = tuple[str, bytes | None]


class Fate(enum.StrEnum):
    """What the demo policy must do with a record; the checks hold the product to it."""

    FORWARD = "forward"
    DENIED = "denied"
    QUARANTINED = "quarantined"


# ---------------------------------------------------------------------------- the plant


@dataclass(frozen=True, slots=True)
class PlantTopic:
    """One OT topic of the demo plant and the IT topic its records must arrive on."""

    name: str
    partitions: int
    kind: str
    weight: float
    target: str | None  # None: the policy denies the whole topic


def plant_topics(ns: str = "") -> list[PlantTopic]:
    """The demo plant's OT topics; ``ns`` prefixes every name (to share a cluster)."""
    return [
        PlantTopic(f"{ns}plant.line1.telemetry", 2, "telemetry", 0.33, f"ot.{ns}plant.line1.telemetry"),
        PlantTopic(f"{ns}plant.line2.telemetry", 2, "telemetry", 0.33, f"ot.{ns}plant.line2.telemetry"),
        PlantTopic(f"{ns}plant.alarms", 1, "alarm", 0.05, f"ot.{ns}alarms"),
        PlantTopic(f"{ns}mes.orders", 1, "order", 0.04, f"ot.{ns}mes.orders"),
        PlantTopic(f"{ns}energy.meters.site-main", 1, "energy", 0.09, f"ot.{ns}energy.meters.site-main"),
        PlantTopic(f"{ns}energy.meters.compressors", 1, "energy", 0.09, f"ot.{ns}energy.meters.compressors"),
        PlantTopic(f"{ns}plant.commands", 1, "command", 0.03, None),
    ]  # fmt: skip


def quarantine_topic(ns: str = "") -> str:
    return f"{ns}diode.quarantine"


POLICY = """\
# Demo bottling plant (written by scripts/demo). Default deny: a topic on no rule stays OT.
version: 1
name: demo-bottling-plant
description: Two filling lines, alarms, production orders and energy meters to the IT side.
quarantine_topic: {quarantine}

defaults:
  max_bytes: 16384
  on_violation:
    size: quarantine
    format: quarantine
    fields: quarantine
    deny: quarantine         # a leaked credential is kept OT-side as evidence, never sent
    headers: drop
    anomaly: alert

rules:
  - id: line-telemetry
    description: Process values of the filling lines, from the historian bridge.
    match: {{regex: '{ns_re}plant\\.line[0-9]+\\.telemetry'}}
    prefix: "ot."
    max_bytes: 2048
    required_headers: [source]
    value:
      format: json
      fields:
        value: {{type: number, required: true}}
        quality: {{enum: [good, uncertain, bad]}}
    deny:
      - pattern: '(?i)(password|passwd|secret)\\s*[:=]'
        in: [key, value, headers]
        description: credentials in clear text
    anomaly:
      timestamp: {{max_future_s: 30, max_past_s: 3600}}

  - id: alarms
    description: Alarm state changes; every one matters.
    match: {{exact: {ns}plant.alarms}}
    to: ot.{ns}alarms
    value:
      format: json
      fields:
        priority: {{type: integer, min: 1, max: 4}}

  - id: production-orders
    match: {{exact: {ns}mes.orders}}
    prefix: "ot."
    value:
      format: json
      fields:
        good_qty: {{type: integer, min: 0, max: 1000000}}

  - id: energy
    match: {{glob: "{ns}energy.meters.*"}}
    prefix: "ot."
    value:
      format: json
      fields:
        active_power_kw: {{type: number, min: -500, max: 5000}}

  - id: no-commands
    description: Setpoint writes never leave the plant, whatever they contain.
    match: {{exact: {ns}plant.commands}}
    action: drop
"""


def write_policy(path: Path, ns: str = "") -> None:
    path.write_text(
        POLICY.format(ns=ns, ns_re=re.escape(ns), quarantine=quarantine_topic(ns)),
        encoding="utf-8",
    )


@dataclass(frozen=True, slots=True)
class PlantRecord:
    """One record the simulator made, and what the policy must do with it."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...]
    timestamp: int
    fate: Fate
    target: str | None


_TELEMETRY_TAGS = (
    ("FIL01.PT101", "bar", 4.2, 0.15),
    ("FIL01.TT102", "degC", 6.5, 0.3),
    ("CAP01.ST201", "rpm", 1180.0, 12.0),
    ("CONV01.FT301", "m3/h", 38.0, 1.5),
    ("LAB01.LT401", "mm", 112.0, 2.0),
)
_ALARMS = (
    ("FIL01.PT101", "Filler bowl pressure high", 2),
    ("CAP01.ST201", "Capper torque out of band", 3),
    ("CONV01.FT301", "Conveyor jam detected", 1),
    ("LAB01.LT401", "Label roll low", 4),
)
_SKUS = ("WATER-0.5L-PET", "WATER-1.5L-PET", "LEMON-0.33L-GLASS", "COLA-0.5L-PET")
_ORDER_STATES = ("RELEASED", "RUNNING", "RUNNING", "PAUSED", "COMPLETED")


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Plant:
    """A seeded generator of realistic plant records (the same seed, the same stream).

    About one telemetry record in ``leak_every`` carries a maintenance note with a password:
    the deny pattern catches it and the policy quarantines it.
    """

    def __init__(
        self, seed: int = 1, ns: str = "", *, value_size: int = 0, leak_every: int = 250
    ) -> None:
        self.rng = random.Random(seed)
        self.topics = plant_topics(ns)
        self._weights = [t.weight for t in self.topics]
        self._levels: dict[str, float] = {}
        self._energy_kwh: dict[str, float] = {}
        self._seq = 0
        self._value_size = value_size
        self._leak_every = leak_every

    def next(self, now_ms: int) -> PlantRecord:
        self._seq += 1
        topic = self.rng.choices(self.topics, self._weights)[0]
        make = {
            "telemetry": self._telemetry,
            "alarm": self._alarm,
            "order": self._order,
            "energy": self._energy,
            "command": self._command,
        }[topic.kind]
        key, value, headers, fate = make(topic)
        if self._value_size and len(value) < self._value_size:
            # pad inside the JSON object, so the value still passes the policy's format check
            obj = json.loads(value)
            obj["pad"] = ""
            obj["pad"] = "x" * max(0, self._value_size - len(_json(obj)))
            value = _json(obj)
        partition = (sum(key) if key else self._seq) % topic.partitions
        return PlantRecord(
            topic=topic.name,
            partition=partition,
            key=key,
            value=value,
            headers=headers,
            timestamp=now_ms,
            fate=fate,
            target=topic.target if fate is Fate.FORWARD else None,
        )

    def _telemetry(self, t: PlantTopic) -> tuple[bytes | None, bytes, tuple[Header, ...], Fate]:
        line = t.name.split(".")[-2]
        tag, unit, nominal, step = self.rng.choice(_TELEMETRY_TAGS)
        full_tag = f"{line.upper().replace('LINE', 'L')}.{tag}"
        level = self._levels.get(full_tag, nominal)
        level += self.rng.gauss(0, step) - (level - nominal) * 0.05
        self._levels[full_tag] = level
        quality = "good" if self.rng.random() > 0.01 else "uncertain"
        obj: dict[str, Any] = {
            "tag": full_tag,
            "value": round(level, 3),
            "unit": unit,
            "quality": quality,
            "seq": self._seq,
        }
        fate = Fate.FORWARD
        if self._leak_every and self._seq % self._leak_every == 0:
            obj["note"] = "maint login for HMI: password=Fill3r!2024"
            fate = Fate.QUARANTINED
        headers: list[Header] = [
            ("source", b"historian-bridge"),
            ("schema", b"telemetry/v2"),
            ("content-type", b"application/json"),
        ]
        # a null header value must cross as null, not as empty bytes
        headers.append(("trace-id", None if self._seq % 4 else f"{self._seq:016x}".encode()))
        return full_tag.encode(), _json(obj), tuple(headers), fate

    def _alarm(self, t: PlantTopic) -> tuple[bytes | None, bytes, tuple[Header, ...], Fate]:
        tag, text, priority = self.rng.choice(_ALARMS)
        line = self.rng.choice(("L1", "L2"))
        obj = {
            "alarm_id": f"ALM-{line}-{tag}",
            "area": line,
            "priority": priority,
            "state": self.rng.choice(("ACTIVE", "ACKNOWLEDGED", "CLEARED")),
            "message": text,
        }
        headers: tuple[Header, ...] = (("source", b"alarm-server"), ("schema", b"alarm/v1"))
        return f"ALM-{line}-{tag}".encode(), _json(obj), headers, Fate.FORWARD

    def _order(self, t: PlantTopic) -> tuple[bytes | None, bytes, tuple[Header, ...], Fate]:
        order = f"PO-2025-{self.rng.randrange(1000, 1040):06d}"
        good = self.rng.randrange(0, 48_000)
        obj = {
            "order_id": order,
            "sku": self.rng.choice(_SKUS),
            "line": self.rng.choice(("line1", "line2")),
            "status": self.rng.choice(_ORDER_STATES),
            "good_qty": good,
            "reject_qty": good // self.rng.randrange(80, 400),
        }
        return order.encode(), _json(obj), (("source", b"mes"),), Fate.FORWARD

    def _energy(self, t: PlantTopic) -> tuple[bytes | None, bytes, tuple[Header, ...], Fate]:
        meter = t.name.rsplit(".", 1)[-1]
        power = 420.0 if meter == "site-main" else 95.0
        power += self.rng.gauss(0, power * 0.05)
        kwh = self._energy_kwh.get(meter, 1_250_000.0) + power / 3600
        self._energy_kwh[meter] = kwh
        obj = {
            "meter": meter,
            "active_power_kw": round(power, 2),
            "energy_kwh": round(kwh, 3),
            "voltage_v": round(self.rng.gauss(400, 2), 1),
        }
        # an energy reading without a key: Kafka allows it and it must cross as such
        key = None if self._seq % 5 == 0 else meter.encode()
        return key, _json(obj), (("source", b"energy-gateway"),), Fate.FORWARD

    def _command(self, t: PlantTopic) -> tuple[bytes | None, bytes, tuple[Header, ...], Fate]:
        tag = self.rng.choice(("L1.FIL01.SP101", "L2.FIL01.SP101", "L1.CAP01.SP201"))
        obj = {"tag": tag, "setpoint": round(self.rng.uniform(3.5, 5.0), 2), "by": "eng-ws-03"}
        return tag.encode(), _json(obj), (("source", b"engineering"),), Fate.DENIED


# ---------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """A program the demo started, in its own session; stopped only through this object."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None
    cpu_s: float | None = None  # whole lifetime, from wait4 once it has exited

    @property
    def running(self) -> bool:
        return self.exit_code is None and self._reap(os.WNOHANG) is None

    def _reap(self, flags: int) -> int | None:
        if self.exit_code is not None:
            return self.exit_code
        try:
            pid, status, usage = os.wait4(self.proc.pid, flags)
        except ChildProcessError:
            self.exit_code = self.proc.returncode if self.proc.returncode is not None else -1
            return self.exit_code
        if pid == 0:
            return None
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.exit_code

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            code = self._reap(os.WNOHANG)
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, then SIGKILL: the exit code (negative: killed by that signal)."""
        if self._reap(os.WNOHANG) is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.wait(10.0)
        return self.exit_code if self.exit_code is not None else -9

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, argv: Sequence[str], log: Path, *, stdout: int | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out if stdout is None else stdout,
            stderr=out,
            # its own session: a Ctrl-C on the terminal reaches only the demo, which stops
            # the children in order (the sender must flush before the receiver goes)
            start_new_session=True,
            cwd=ROOT,
        )
    return Child(name, proc, log)


def diode_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diode", *args]


#: environment of the CLI calls whose output is shown: wide enough that tables do not wrap
CLI_ENV = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}


def wait_for_line(child: Child, pattern: str, timeout: float) -> re.Match[str]:
    """Wait until ``pattern`` appears in the child's log; fail if it exits first."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            found = rx.search(child.log.read_text(errors="replace"))
            if found:
                return found
        if not child.running:
            raise DemoError(f"{child.name} exited with {child.exit_code}:\n{child.tail()}")
        time.sleep(0.05)
    raise DemoError(f"{child.name} did not log {pattern!r} within {timeout:.0f}s:\n{child.tail()}")


class DemoError(Exception):
    """The demo could not run (as opposed to a failed check, which is a result)."""


def udp_kernel_drops(port: int) -> int | None:
    """The kernel's drop counter of the IPv4 UDP socket bound to ``port`` (receive overruns)."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) >= 13 and int(cols[1].split(":")[1], 16) == port:
            return int(cols[12])
    return None


# ---------------------------------------------------------------------------- the relay


def run_relay(listen: tuple[str, int], target: tuple[str, int], loss: float, seed: int) -> int:
    """Forward UDP datagrams from ``listen`` to ``target``, dropping each with ``loss``.

    Prints ``relay listening on HOST:PORT`` first, and one JSON line of counters at exit
    (SIGTERM). The drops come from a seeded generator: the n-th datagram's fate depends only
    on the seed, so a run's loss pattern can be replayed.
    """
    rng = random.Random(seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(listen)
    rx.settimeout(0.2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    port = rx.getsockname()[1]
    print(f"relay listening on {listen[0]}:{port}", flush=True)
    buf = bytearray(65536)
    view = memoryview(buf)
    received = forwarded = dropped = send_errors = 0
    while not stop.is_set():
        try:
            n = rx.recv_into(buf)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        received += 1
        if loss and rng.random() < loss:
            dropped += 1
            continue
        try:
            tx.sendto(view[:n], target)
            forwarded += 1
        except OSError:
            send_errors += 1
    counters = {
        "received": received,
        "forwarded": forwarded,
        "dropped": dropped,
        "send_errors": send_errors,
        "kernel_drops": udp_kernel_drops(port),
    }
    print(json.dumps(counters), flush=True)
    return 0


# ---------------------------------------------------------------------------- Kafka


@dataclass
class Ledger:
    """Every record produced, by (topic, partition, offset), as the broker acknowledged it."""

    records: dict[tuple[str, int, int], PlantRecord] = field(default_factory=dict)
    produced: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def count(self, fate: Fate) -> int:
        return sum(1 for r in self.records.values() if r.fate is fate)

    def expected_by_target(self) -> Counter[str]:
        return Counter(r.target for r in self.records.values() if r.target is not None)


class PlantProducer:
    """An idempotent producer that writes plant records to OT and fills the ledger."""

    def __init__(self, bootstrap: str, ledger: Ledger) -> None:
        from confluent_kafka import Producer

        self.ledger = ledger
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
                "log_level": 3,
            }
        )

    def produce(self, record: PlantRecord) -> None:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                self.ledger.failed += 1
                return
            self.ledger.records[(record.topic, int(msg.partition()), int(msg.offset()))] = record
            self.ledger.produced[record.topic] += 1

        while True:
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    timestamp=record.timestamp,
                    partition=record.partition,
                    on_delivery=done,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> int:
        return int(self._producer.flush(timeout))


def create_topics(bootstrap: str, topics: Sequence[tuple[str, int]]) -> None:
    """Create the OT topics before the sender subscribes (it reads their partitions once)."""
    from diode.errors import DiodeError
    from diode.io.kafka import ensure_topic

    for name, partitions in topics:
        try:
            ensure_topic(bootstrap, name, partitions)
        except DiodeError as exc:
            raise DemoError(str(exc)) from exc


class Watermarks:
    """Cheap counts: records per topic from high watermarks (the demo's topics start at 0)."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Consumer

        self._c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"diode-demo-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )

    def counts(self, topics: Sequence[str]) -> dict[str, int]:
        from confluent_kafka import TopicPartition

        md = self._c.list_topics(timeout=10)
        out: dict[str, int] = {}
        for t in topics:
            meta = md.topics.get(t)
            if meta is None or meta.error is not None:
                out[t] = 0
                continue
            out[t] = sum(
                int(self._c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1])
                for p in meta.partitions
            )
        return out

    def committed_behind(self, group: str, topics: Sequence[str], bootstrap: str) -> int:
        """Records of ``topics`` the consumer group has not committed yet."""
        from confluent_kafka import Consumer, TopicPartition

        md = self._c.list_topics(timeout=10)
        parts = [
            TopicPartition(t, p)
            for t in topics
            if t in md.topics and md.topics[t].error is None
            for p in md.topics[t].partitions
        ]
        probe = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        try:
            committed = probe.committed(parts, timeout=10)
        finally:
            probe.close()
        behind = 0
        for tp in committed:
            high = int(self._c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition))[1])
            behind += high - max(0, int(tp.offset))
        return behind

    def close(self) -> None:
        self._c.close()


def read_topics(bootstrap: str, topics: Sequence[str], timeout: float = 60.0) -> list[Any]:
    """Every record of ``topics``, from offset 0 to the high watermark of each partition."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"diode-demo-check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        md = c.list_topics(timeout=10)
        ends: dict[tuple[str, int], int] = {}
        for t in topics:
            meta = md.topics.get(t)
            if meta is None or meta.error is not None:
                continue
            for p in meta.partitions:
                high = int(c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1])
                if high > 0:
                    ends[(t, p)] = high
        if not ends:
            return []
        c.assign([TopicPartition(t, p, 0) for t, p in ends])
        out: list[Any] = []
        left = dict(ends)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for msg in c.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                out.append(msg)
                tp = (str(msg.topic()), msg.partition() or 0)
                if tp in left and (msg.offset() or 0) + 1 >= left[tp]:
                    del left[tp]
        if left:
            raise DemoError(f"could not read to the end of {sorted(left)} in {timeout:.0f}s")
        return out
    finally:
        c.close()


# ---------------------------------------------------------------------------- checks


@dataclass
class Comparison:
    """What the IT cluster holds, compared with what the plant produced."""

    arrived: Counter[str] = field(default_factory=Counter)
    matched: int = 0
    missing: int = 0
    mismatched: int = 0
    duplicates: int = 0
    unexpected: int = 0
    leaked: int = 0  # denied or quarantined records found on IT: must be 0
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def compare(ledger: Ledger, messages: Sequence[Any]) -> Comparison:
    """Byte-for-byte check of IT records (key, value, headers, timestamp, partition)."""
    result = Comparison()
    seen: set[tuple[str, int, int]] = set()
    for msg in messages:
        topic = msg.topic()
        result.arrived[topic] += 1
        headers: list[Header] = list(msg.headers() or [])
        prov = dict(headers[-len(PROVENANCE) :]) if len(headers) >= len(PROVENANCE) else {}
        try:
            src = (
                (prov[SRC_TOPIC] or b"").decode(),
                int(prov[SRC_PARTITION] or b""),
                int(prov[SRC_OFFSET] or b""),
            )
        except (KeyError, ValueError):
            result.unexpected += 1
            result.note(f"{topic}@{msg.offset()}: no provenance headers")
            continue
        expected = ledger.records.get(src)
        if expected is None:
            result.unexpected += 1
            result.note(f"{topic}@{msg.offset()}: {src} was never produced")
            continue
        if expected.fate is not Fate.FORWARD:
            result.leaked += 1
            result.note(f"{topic}@{msg.offset()}: {src} is {expected.fate} but crossed")
            continue
        if src in seen:
            result.duplicates += 1
            result.note(f"{topic}@{msg.offset()}: {src} arrived twice")
            continue
        seen.add(src)
        own = tuple((k, v) for k, v in headers[: -len(PROVENANCE)])
        diffs = [
            name
            for name, ok in (
                ("topic", topic == expected.target),
                ("partition", int(msg.partition()) == expected.partition),
                ("key", msg.key() == expected.key),
                ("value", msg.value() == expected.value),
                ("headers", own == expected.headers),
                ("timestamp", tuple(msg.timestamp()) == (1, expected.timestamp)),
            )
            if not ok
        ]
        if diffs:
            result.mismatched += 1
            result.note(f"{topic}@{msg.offset()}: {src} differs in {', '.join(diffs)}")
        else:
            result.matched += 1
    for src, rec in ledger.records.items():
        if rec.fate is Fate.FORWARD and src not in seen:
            result.missing += 1
            result.note(f"{src} ({rec.target}) never arrived")
    return result


def quarantine_check(ledger: Ledger, messages: Sequence[Any]) -> tuple[int, int]:
    """(records in the OT quarantine topic that are expected there, ones that are not)."""
    want = Counter((r.key, r.value) for r in ledger.records.values() if r.fate is Fate.QUARANTINED)
    good = bad = 0
    for msg in messages:
        item = (msg.key(), msg.value())
        if want[item] > 0:
            want[item] -= 1
            good += 1
        else:
            bad += 1
    return good, bad


# ---------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True)
class ProtocolChoice:
    k: int = 32
    m: int = 16
    linger_ms: float = 20.0


def _toml_protocol(p: ProtocolChoice) -> str:
    return (
        "[protocol]\n"
        "payload_size = 1472\n"
        f"k = {p.k}\nm = {p.m}\n"
        "interleave = 4\n"
        f"linger_ms = {p.linger_ms}\n"
    )


def write_receiver_config(
    path: Path, work: Path, it_bootstrap: str, policy: Path, proto: ProtocolChoice
) -> None:
    keys = work / "keys"
    path.write_text(
        "# written by scripts/demo\n"
        'allowed_topics = ["ot.*"]\n'
        f"policy_file = {json.dumps(str(policy))}\n"
        "startup_timeout_s = 30.0\n"
        "stats_interval_s = 5.0\n\n"
        "[kafka]\n"
        f"bootstrap_servers = {json.dumps(it_bootstrap)}\n"
        "create_topics = true\npartitions = 1\nreplication_factor = 1\n\n"
        "[udp]\n"
        'host = "127.0.0.1"\nport = 0\nrcvbuf_bytes = 8388608\n\n'
        "[keys]\n"
        f"receiver_key = {json.dumps(str(keys / 'receiver.key'))}\n"
        f"sender_public_key = {json.dumps(str(keys / 'sender.pub'))}\n"
        f"audit_key = {json.dumps(str(keys / 'receiver-audit.key'))}\n\n"
        "[audit]\n"
        f"path = {json.dumps(str(work / 'audit' / 'receiver-audit.jsonl'))}\n"
        "aggregate_seconds = 2.0\n\n"
        "[receiver]\nblock_timeout_s = 0.5\n\n" + _toml_protocol(proto),
        encoding="utf-8",
    )


def write_sender_config(
    path: Path,
    work: Path,
    ot_bootstrap: str,
    udp_port: int,
    policy: Path,
    topics: Sequence[str],
    group: str,
    proto: ProtocolChoice,
    rate_mbit: float,
) -> None:
    keys = work / "keys"
    path.write_text(
        "# written by scripts/demo\n"
        f"policy_file = {json.dumps(str(policy))}\n"
        "commit_interval_s = 0.5\n"
        "stats_interval_s = 5.0\n\n"
        "[kafka]\n"
        f"bootstrap_servers = {json.dumps(ot_bootstrap)}\n"
        f"group_id = {json.dumps(group)}\n"
        "# the denied topic is consumed on purpose: the policy must refuse it, visibly\n"
        f"topics = {json.dumps(list(topics))}\n"
        "batch_size = 1000\n\n"
        "[udp]\n"
        f'host = "127.0.0.1"\nport = {udp_port}\nrate_mbit = {rate_mbit}\ngso = true\n\n'
        "[keys]\n"
        f"signing_key = {json.dumps(str(keys / 'sender.key'))}\n"
        f"receiver_public_key = {json.dumps(str(keys / 'receiver.pub'))}\n\n"
        "[audit]\n"
        f"path = {json.dumps(str(work / 'audit' / 'sender-audit.jsonl'))}\n\n"
        + _toml_protocol(proto),
        encoding="utf-8",
    )


# ---------------------------------------------------------------------------- the run


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def prepare_work_dir(work: Path) -> None:
    """Wipe a previous demo run (stopping clusters it kept); refuse a dir that is not ours."""
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            raise DemoError(f"{work} exists and is not a demo work dir; choose another --work-dir")
        for sub in ("kafka-ot", "kafka-it"):
            if (work / sub).exists():
                kafkactl.stop_dir(work / sub)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("scripts/demo work dir: deleted by the next run\n")


class Stack:
    """Cleanup actions run in reverse order, each at most once, also on error or Ctrl-C."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def close(self, say: Callable[[str], None]) -> None:
        while self._actions:
            what, action = self._actions.pop()
            say(f"stopping {what}")
            try:
                action()
            except Exception as exc:  # cleanup must go on with the next process
                say(f"  stopping {what} failed: {exc}")


def start_clusters(work: Path, detach: bool, stack: Stack) -> tuple[Any, Any]:
    """Start the OT and IT clusters in parallel; both are on ``stack`` before this returns."""
    found: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            found[name] = kafkactl.start(name, work / f"kafka-{name}", detach=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in ("ot", "it")]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        # even after Ctrl-C, wait for the starts so no broker is left behind unseen
        for t in threads:
            t.join()
        for name in ("ot", "it"):
            if name in found and not detach:
                stack.push(f"{name.upper()} Kafka", found[name].stop)
    if errors:
        raise DemoError(f"a Kafka cluster did not start: {errors[0]}")
    return found["ot"], found["it"]


@dataclass
class Options:
    seconds: float = 20.0
    rate: float = 2000.0
    loss: float = 0.0
    seed: int = 1
    keep: bool = False
    as_json: bool = False
    work_dir: Path = DEFAULT_WORK_DIR
    ot_bootstrap: str | None = None
    it_bootstrap: str | None = None
    namespace: str | None = None
    protocol: ProtocolChoice = field(default_factory=ProtocolChoice)
    link_mbit: float = 100.0
    value_size: int = 0
    settle_timeout: float = 60.0


class Demo:
    """One run: set up, stream, check, tear down. ``bench/end_to_end.py`` drives the parts."""

    def __init__(self, opts: Options, say: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.work = opts.work_dir.resolve()
        self.stack = Stack()
        self.ledger = Ledger()
        self.children: dict[str, Child] = {}
        self.ot = opts.ot_bootstrap or ""
        self.it = opts.it_bootstrap or ""
        self.ns = ""
        self.group = ""
        self.udp_port = 0
        self.receiver_port = 0
        self.relay_counters: dict[str, Any] | None = None
        self.sender_started_at = 0.0

    # -- setup
    def setup(self) -> None:
        o = self.opts
        prepare_work_dir(self.work)
        if bool(o.ot_bootstrap) != bool(o.it_bootstrap):
            raise DemoError("give both --ot-bootstrap and --it-bootstrap, or neither")
        if not o.ot_bootstrap:
            self.say("starting the OT and IT Kafka clusters (KRaft, one node each) ...")
            ot, it = start_clusters(self.work, o.keep, self.stack)
            self.ot, self.it = ot.bootstrap, it.bootstrap
            self.say(
                f"  OT Kafka {self.ot} ({ot.startup_seconds:.1f}s), "
                f"IT Kafka {self.it} ({it.startup_seconds:.1f}s)"
            )
        # a shared cluster may hold another run's topics: give this one its own names
        default_ns = "" if not o.ot_bootstrap else f"demo-{uuid.uuid4().hex[:6]}."
        self.ns = o.namespace if o.namespace is not None else default_ns
        self.group = f"diode-demo-{uuid.uuid4().hex[:8]}"
        keys = self.work / "keys"
        out = subprocess.run(
            diode_cli("keys", "generate", "--out", str(keys)),
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if out.returncode != 0:
            raise DemoError(f"diode keys generate failed: {out.stderr.strip()}")
        (self.work / "audit").mkdir()
        self.policy = self.work / "policy.yaml"
        write_policy(self.policy, self.ns)
        topics = plant_topics(self.ns)
        create_topics(
            self.ot, [(t.name, t.partitions) for t in topics] + [(quarantine_topic(self.ns), 1)]
        )
        # the IT topics too, with their source's partition count: a receiver that creates a
        # target on its first record sizes it by that record's partition, and a later record
        # of a higher partition then waits for the producer's metadata refresh (minutes)
        create_topics(self.it, [(t.target, t.partitions) for t in topics if t.target])
        self.topics = topics
        self.say(
            f"  keys in {keys}, policy {self.policy}, {len(topics)} OT topics"
            + (f" (namespace {self.ns!r})" if self.ns else "")
        )

    def start_pair(self) -> None:
        o = self.opts
        rcfg = self.work / "receiver.toml"
        write_receiver_config(rcfg, self.work, self.it, self.policy, o.protocol)
        receiver = self._spawn(
            "receiver", diode_cli("receiver", "run", "--config", str(rcfg)), "receiver.log"
        )
        found = wait_for_line(receiver, r"receiver listening on [\d.]+:(\d+)", 60)
        self.receiver_port = int(found.group(1))
        self.udp_port = self.receiver_port
        if o.loss > 0:
            relay = self._spawn(
                "relay",
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "relay",
                    "--to",
                    f"127.0.0.1:{self.receiver_port}",
                    "--loss",
                    str(o.loss),
                    "--seed",
                    str(o.seed),
                ],
                "relay.log",
            )
            found = wait_for_line(relay, r"relay listening on [\d.]+:(\d+)", 20)
            self.udp_port = int(found.group(1))
        scfg = self.work / "sender.toml"
        write_sender_config(
            scfg,
            self.work,
            self.ot,
            self.udp_port,
            self.policy,
            [t.name for t in self.topics],
            self.group,
            o.protocol,
            o.link_mbit,
        )
        self.sender_started_at = time.monotonic()
        sender = self._spawn(
            "sender", diode_cli("sender", "run", "--config", str(scfg)), "sender.log"
        )
        wait_for_line(sender, r"sender started", 60)
        via = f" via a relay dropping {o.loss:.1%}" if o.loss > 0 else ""
        self.say(
            f"  receiver on 127.0.0.1:{self.receiver_port}, sender -> 127.0.0.1:{self.udp_port}"
            f"{via}; logs in {self.work}"
        )

    def _spawn(self, name: str, argv: list[str], log: str) -> Child:
        child = spawn(name, argv, self.work / log)
        self.children[name] = child
        with (self.work / "pids").open("a") as f:
            f.write(f"{child.proc.pid}\n")
        self.stack.push(name, child.stop)
        return child

    # -- the stream
    def stream(self, progress: bool = True) -> None:
        """Produce at ``rate`` for ``seconds``, printing what has crossed once a second."""
        o = self.opts
        plant = Plant(o.seed, self.ns, value_size=o.value_size)
        producer = PlantProducer(self.ot, self.ledger)
        watch = Watermarks(self.it) if progress else None
        targets = sorted({t.target for t in self.topics if t.target})
        began = time.monotonic()
        made = 0
        next_report = began + 1.0
        try:
            while True:
                now = time.monotonic()
                elapsed = now - began
                if elapsed >= o.seconds:
                    break
                due = min(int(elapsed * o.rate) + 1, int(o.seconds * o.rate))
                wall_ms = int(time.time() * 1000)
                while made < due:
                    producer.produce(plant.next(wall_ms))
                    made += 1
                self.check_alive()
                if watch is not None and now >= next_report:
                    on_it = sum(watch.counts(targets).values())
                    self.say(
                        f"  t={elapsed:4.1f}s  produced {made:>7}  on IT {on_it:>7}"
                        f"  ({made / max(elapsed, 1e-9):.0f} records/s)"
                    )
                    next_report += 1.0
                time.sleep(0.005)
        finally:
            left = producer.flush(60)
            if watch is not None:
                watch.close()
        if left or self.ledger.failed:
            raise DemoError(f"{left + self.ledger.failed} records could not be produced to OT")

    def produce_all(self, n: int) -> float:
        """Produce ``n`` records as fast as the producer goes; returns the seconds it took."""
        plant = Plant(self.opts.seed, self.ns, value_size=self.opts.value_size)
        producer = PlantProducer(self.ot, self.ledger)
        began = time.monotonic()
        wall_ms = int(time.time() * 1000)
        for i in range(n):
            producer.produce(plant.next(wall_ms + i // 1000))
        left = producer.flush(120)
        if left or self.ledger.failed:
            raise DemoError(f"{left + self.ledger.failed} records could not be produced to OT")
        return time.monotonic() - began

    def check_alive(self) -> None:
        for child in self.children.values():
            if not child.running:
                raise DemoError(f"{child.name} exited with {child.exit_code}:\n{child.tail()}")

    def settle(self, timeout: float) -> bool:
        """Wait until every allowed record is on IT and the sender committed every offset."""
        want = self.ledger.expected_by_target()
        qt = quarantine_topic(self.ns)
        want_q = self.ledger.count(Fate.QUARANTINED)
        watch_it, watch_ot = Watermarks(self.it), Watermarks(self.ot)
        sources = [t.name for t in self.topics]
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.check_alive()
                have = watch_it.counts(list(want))
                q = watch_ot.counts([qt])[qt]
                if all(have[t] >= n for t, n in want.items()) and q >= want_q:
                    behind = watch_ot.committed_behind(self.group, sources, self.ot)
                    if behind == 0:
                        return True
                time.sleep(0.1)
            return False
        finally:
            watch_it.close()
            watch_ot.close()

    def stop_pair(self) -> dict[str, dict[str, Any]]:
        """Stop the sender first (flush, commit, service_stop), then the receiver and relay."""
        out: dict[str, dict[str, Any]] = {}
        for name in ("sender", "relay", "receiver"):
            child = self.children.get(name)
            if child is None:
                continue
            code = child.stop(30)
            out[name] = {"exit": code, "cpu_s": child.cpu_s}
        relay = self.children.get("relay")
        if relay is not None:
            lines = relay.log.read_text(errors="replace").strip().splitlines()
            with contextlib.suppress(ValueError, IndexError):
                self.relay_counters = json.loads(lines[-1])
        return out

    # -- after the run
    def audit(self) -> dict[str, Any]:
        keys = self.work / "keys"
        result: dict[str, Any] = {}
        for side, key in (("sender", "sender.pub"), ("receiver", "receiver-audit.pub")):
            log = self.work / "audit" / f"{side}-audit.jsonl"
            stats = subprocess.run(
                diode_cli("audit", "stats", str(log), "--json"),
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
            )
            text = subprocess.run(
                diode_cli("audit", "stats", str(log)),
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
                env=CLI_ENV,
            )
            ver = subprocess.run(
                diode_cli("audit", "verify", str(log), "--key", str(keys / key)),
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
            )
            try:
                parsed: dict[str, Any] = json.loads(stats.stdout)
            except json.JSONDecodeError:
                parsed = {"error": stats.stderr.strip()}
            result[side] = {
                "log": str(log),
                "stats": parsed,
                "stats_text": text.stdout,
                "verify_ok": ver.returncode == 0,
                "verify_text": (ver.stdout + ver.stderr).strip(),
            }
        return result

    def teardown(self) -> None:
        self.stack.close(self.say)


def _fmt_table(rows: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{indent}{a.ljust(width)}  {b}" for a, b in rows)


def run(opts: Options) -> int:
    """The demo: exit 0 if every check passed, 1 if one failed, 2 if it could not run."""
    if opts.as_json:

        def say(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

    else:

        def say(text: str) -> None:
            print(text, flush=True)

    demo = Demo(opts, say)
    summary: dict[str, Any] = {"ok": False}
    began = time.monotonic()
    try:
        demo.setup()
        demo.start_pair()
        say(f"streaming plant records for {opts.seconds:g}s at {opts.rate:g} records/s ...")
        demo.stream()
        say("waiting for the last records to cross ...")
        settled = demo.settle(opts.settle_timeout)
        processes = demo.stop_pair()
        audit = demo.audit()
        ot_quarantine = read_topics(demo.ot, [quarantine_topic(demo.ns)])
        targets = sorted({t.target for t in demo.topics if t.target})
        # every IT topic this run could have made, to catch a denied topic that crossed anyway
        it_topics = [f"ot.{t.name}" for t in demo.topics] + targets
        on_it = read_topics(demo.it, sorted(set(it_topics)))
        summary = build_summary(demo, settled, processes, audit, on_it, ot_quarantine)
    except DemoError as exc:
        say(f"demo failed: {exc}")
        summary = {"ok": False, "error": str(exc)}
        code = 2
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        summary = {"ok": False, "error": "interrupted"}
        code = 130
    else:
        code = 0 if summary["ok"] else 1
    finally:
        with _signals_held():
            demo.teardown()
    summary["elapsed_s"] = round(time.monotonic() - began, 2)
    if opts.keep and demo.ot:
        keep_note(demo, say)
    if opts.as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif "checks" in summary:
        print_summary(summary, say)
    return code


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short and leave processes behind."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def build_summary(
    demo: Demo,
    settled: bool,
    processes: dict[str, dict[str, Any]],
    audit: dict[str, Any],
    on_it: Sequence[Any],
    ot_quarantine: Sequence[Any],
) -> dict[str, Any]:
    ledger = demo.ledger
    cmp = compare(ledger, on_it)
    q_good, q_bad = quarantine_check(ledger, ot_quarantine)
    sstats = audit["sender"]["stats"]
    rstats = audit["receiver"]["stats"]
    n_fwd = ledger.count(Fate.FORWARD)
    n_denied = ledger.count(Fate.DENIED)
    n_quar = ledger.count(Fate.QUARANTINED)
    refused = sum(sstats.get("refusals_by_rule", {}).values())
    quarantined = sum(sstats.get("quarantined_by_rule", {}).values())
    gaps = int(rstats.get("gaps", 0))
    lost = int(rstats.get("records_lost", 0))
    rejected = rstats.get("datagrams_rejected_by_reason", {})
    checks = [
        Check("settled", settled, "every allowed record on IT and every OT offset committed"),
        Check(
            "all allowed records arrived",
            cmp.missing == 0 and cmp.matched == n_fwd,
            f"{cmp.matched} of {n_fwd} matched byte for byte, {cmp.missing} missing",
        ),
        Check(
            "byte for byte",
            cmp.mismatched == 0,
            f"{cmp.mismatched} differ in key, value, headers, timestamp or partition",
        ),
        Check("no duplicates", cmp.duplicates == 0, f"{cmp.duplicates} arrived twice"),
        Check(
            "nothing else crossed",
            cmp.leaked == 0 and cmp.unexpected == 0,
            f"{cmp.leaked} denied/quarantined and {cmp.unexpected} unknown records on IT",
        ),
        Check(
            "denied records refused",
            refused == n_denied,
            f"sender audit: {refused} record_refused, {n_denied} produced to the denied topic",
        ),
        Check(
            "quarantine",
            quarantined == n_quar and q_good == n_quar and q_bad == 0,
            f"{n_quar} leaked credentials produced, {quarantined} audited as quarantined, "
            f"{q_good} in the OT quarantine topic ({q_bad} unexpected)",
        ),
        Check("no gaps", gaps == 0 and lost == 0, f"{gaps} gap entries, {lost} records lost"),
        Check(
            "audit logs verify",
            audit["sender"]["verify_ok"] and audit["receiver"]["verify_ok"],
            f"sender {'OK' if audit['sender']['verify_ok'] else 'BROKEN'}, "
            f"receiver {'OK' if audit['receiver']['verify_ok'] else 'BROKEN'}",
        ),
        Check(
            "clean exits",
            all(p["exit"] == 0 for p in processes.values()),
            ", ".join(f"{n} {p['exit']}" for n, p in processes.items()),
        ),
    ]
    return {
        "ok": all(c.ok for c in checks),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "seconds": demo.opts.seconds,
        "rate": demo.opts.rate,
        "loss": demo.opts.loss,
        "namespace": demo.ns,
        "work_dir": str(demo.work),
        "ot_bootstrap": demo.ot,
        "it_bootstrap": demo.it,
        "produced": dict(sorted(ledger.produced.items())),
        "produced_total": len(ledger.records),
        "expected": {"forward": n_fwd, "denied": n_denied, "quarantined": n_quar},
        "expected_by_it_topic": dict(sorted(ledger.expected_by_target().items())),
        "arrived": dict(sorted(cmp.arrived.items())),
        "arrived_total": sum(cmp.arrived.values()),
        "matched": cmp.matched,
        "missing": cmp.missing,
        "mismatched": cmp.mismatched,
        "duplicates": cmp.duplicates,
        "leaked": cmp.leaked,
        "unexpected": cmp.unexpected,
        "problems": cmp.problems,
        "denied": refused,
        "quarantined": quarantined,
        "quarantine_topic_records": q_good + q_bad,
        "gaps": gaps,
        "records_lost": lost,
        "datagrams_rejected": rejected,
        "relay": demo.relay_counters,
        "processes": processes,
        "audit": {
            side: {
                "log": a["log"],
                "verify_ok": a["verify_ok"],
                "verify": a["verify_text"],
                "stats": a["stats"],
                "stats_text": a["stats_text"],
            }
            for side, a in audit.items()
        },
    }


def _stats_sections(text: str) -> list[str]:
    """The summary line and the tables of ``diode audit stats``, less the long ones."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line and line[0] not in " \u2502\u250f\u2503\u2521\u2514\u2517":
            skipping = line.startswith(("entries per actor", "entries per topic"))
        if not skipping:
            out.append(line.rstrip())
    return out


def print_summary(s: dict[str, Any], say: Callable[[str], None]) -> None:
    say("")
    say(f"produced on OT ({s['produced_total']} records):")
    say(_fmt_table([(t, str(n)) for t, n in s["produced"].items()]))
    say(f"arrived on IT ({s['arrived_total']} records, checked byte for byte):")
    rows = [
        (t, f"{s['arrived'].get(t, 0)} of {n} expected")
        for t, n in s["expected_by_it_topic"].items()
    ]
    say(_fmt_table(rows))
    say(
        f"refused by the policy: {s['denied']} denied (plant.commands), "
        f"{s['quarantined']} quarantined (credential in a telemetry value; "
        f"{s['quarantine_topic_records']} in the OT quarantine topic)"
    )
    relay = s.get("relay")
    if relay:
        say(
            f"lossy relay: {relay['received']} datagrams in, {relay['dropped']} dropped "
            f"({relay['dropped'] / max(relay['received'], 1):.2%}), FEC rebuilt the rest"
        )
    rejected = ", ".join(f"{k} {v}" for k, v in s["datagrams_rejected"].items()) or "none"
    say(f"gaps: {s['gaps']} ({s['records_lost']} records lost); datagrams rejected: {rejected}")
    for side in ("sender", "receiver"):
        a = s["audit"][side]
        say(f"\n$ diode audit stats {a['log']}   (per actor and per topic left out)")
        say("\n".join("  " + line for line in _stats_sections(a["stats_text"])))
        say(f"$ diode audit verify {a['log']} --key ...")
        say("\n".join("  " + line for line in a["verify"].splitlines()))
    say("")
    for c in s["checks"]:
        say(f"  [{'PASS' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    for p in s["problems"]:
        say(f"    {p}")
    say(f"\n{'all checks passed' if s['ok'] else 'SOME CHECKS FAILED'} in {s['elapsed_s']}s")


def keep_note(demo: Demo, say: Callable[[str], None]) -> None:
    if demo.opts.ot_bootstrap:
        return
    work = demo.work
    rel = os.path.relpath(work, Path.cwd())
    say(
        "\nThe clusters are still running (--keep):\n"
        f"  OT Kafka {demo.ot}   IT Kafka {demo.it}\n"
        f"  look at records: scripts/demo peek --bootstrap {demo.it} ot.plant.line1.telemetry\n"
        f"  quarantined (OT): scripts/demo peek --bootstrap {demo.ot} diode.quarantine\n"
        f"  audit logs: {rel}/audit/   configs: {rel}/sender.toml {rel}/receiver.toml\n"
        f"  run the pair again by hand: diode receiver run --config {rel}/receiver.toml\n"
        f"  stop them: scripts/demo stop --work-dir {rel}"
    )


# ---------------------------------------------------------------------------- CLI


def simulate(bootstrap: str, rate: float, seconds: float, seed: int) -> int:
    """Produce plant records to ``bootstrap`` until stopped (the compose plant-simulator)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    topics = plant_topics()
    deadline = time.monotonic() + 120
    while True:
        try:
            create_topics(bootstrap, [(t.name, t.partitions) for t in topics])
            create_topics(bootstrap, [(quarantine_topic(), 1)])
            break
        except DemoError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for Kafka at {bootstrap}: {exc}", file=sys.stderr, flush=True)
            time.sleep(2)
    plant = Plant(seed)
    ledger = Ledger()
    producer = PlantProducer(bootstrap, ledger)
    began = time.monotonic()
    made = 0
    next_report = began + 10
    try:
        while seconds <= 0 or time.monotonic() - began < seconds:
            elapsed = time.monotonic() - began
            while made < int(elapsed * rate) + 1:
                producer.produce(plant.next(int(time.time() * 1000)))
                made += 1
            if time.monotonic() >= next_report:
                print(f"produced {made} plant records to {bootstrap}", flush=True)
                next_report += 10
                ledger.records.clear()  # only the counts matter here
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass
    producer.flush(30)
    print(f"produced {made} plant records to {bootstrap}; stopped", flush=True)
    return 0


def peek(bootstrap: str, topic: str, n: int) -> int:
    """Print the last ``n`` records of ``topic``: partition, offset, timestamp, key, headers."""
    messages = read_topics(bootstrap, [topic])
    if not messages:
        print(f"{topic} on {bootstrap}: no records (or no such topic)")
        return 1
    messages.sort(key=lambda m: m.timestamp()[1])
    for m in messages[-n:]:
        headers = ", ".join(
            f"{k}={'null' if v is None else v.decode(errors='replace')}"
            for k, v in (m.headers() or [])
        )
        print(
            f"{m.topic()}[{m.partition()}]@{m.offset()} ts={m.timestamp()[1]} "
            f"key={m.key()!r}\n  headers: {headers}\n  value: {m.value().decode(errors='replace')}"
        )
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1)")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be above 0")
    return value


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/demo",
        description="Run the whole diode on this machine: OT and IT Kafka, sender, receiver, "
        "a plant producing records; then prove what crossed. Exit 0 if every check passed, "
        "1 if one failed, 2 if the demo could not run.",
        epilog="See docs/demo.md. Subcommands: 'scripts/demo stop' stops clusters a --keep "
        "run left; 'scripts/demo relay' is the lossy relay the demo starts itself.",
    )
    p.add_argument("--seconds", type=_positive, default=20.0, help="how long the plant produces")
    p.add_argument("--rate", type=_positive, default=2000.0, help="records per second")
    p.add_argument(
        "--loss",
        type=_probability,
        default=0.0,
        help="drop this fraction of datagrams in a UDP relay between sender and receiver",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the plant and of the relay")
    p.add_argument("--keep", action="store_true", help="leave both clusters running")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--ot-bootstrap", help="use this OT cluster instead of starting one")
    p.add_argument("--it-bootstrap", help="use this IT cluster instead of starting one")
    p.add_argument(
        "--namespace",
        help="prefix of every topic name (default: none with own clusters, a random "
        "'demo-xxxxxx.' with --ot/--it-bootstrap)",
    )
    p.add_argument("--k", type=int, default=32, help="[protocol] k: source symbols per block")
    p.add_argument("--m", type=int, default=16, help="[protocol] m: repair symbols per block")
    p.add_argument("--linger-ms", type=float, default=20.0, help="[protocol] linger_ms")
    p.add_argument("--link-mbit", type=float, default=100.0, help="[udp] rate_mbit of the sender")
    p.add_argument(
        "--settle-timeout",
        type=_positive,
        default=60.0,
        help="seconds to wait after the stream for the last records to cross",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args_list = list(argv)
    if args_list[:1] == ["relay"]:
        rp = argparse.ArgumentParser(prog="scripts/demo relay")
        rp.add_argument("--listen", type=_address, default=("127.0.0.1", 0))
        rp.add_argument("--to", type=_address, required=True)
        rp.add_argument("--loss", type=_probability, default=0.0)
        rp.add_argument("--seed", type=int, default=1)
        r = rp.parse_args(args_list[1:])
        return run_relay(r.listen, r.to, r.loss, r.seed)
    if args_list[:1] == ["peek"]:
        pp = argparse.ArgumentParser(prog="scripts/demo peek")
        pp.add_argument("topic")
        pp.add_argument("--bootstrap", required=True)
        pp.add_argument("-n", type=int, default=5, help="how many of the last records")
        q = pp.parse_args(args_list[1:])
        return peek(q.bootstrap, q.topic, q.n)
    if args_list[:1] == ["policy"]:
        pol = argparse.ArgumentParser(prog="scripts/demo policy")
        pol.add_argument("--out", type=Path, required=True)
        pol.add_argument("--namespace", default="")
        q2 = pol.parse_args(args_list[1:])
        write_policy(q2.out, q2.namespace)
        return 0
    if args_list[:1] == ["simulate"]:
        sim = argparse.ArgumentParser(prog="scripts/demo simulate")
        sim.add_argument("--bootstrap", required=True)
        sim.add_argument("--rate", type=_positive, default=200.0)
        sim.add_argument("--seconds", type=float, default=0.0, help="0: until stopped")
        sim.add_argument("--seed", type=int, default=1)
        q3 = sim.parse_args(args_list[1:])
        return simulate(q3.bootstrap, q3.rate, q3.seconds, q3.seed)
    if args_list[:1] == ["stop"]:
        sp = argparse.ArgumentParser(prog="scripts/demo stop")
        sp.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
        s = sp.parse_args(args_list[1:])
        stopped = [n for n in ("kafka-ot", "kafka-it") if kafkactl.stop_dir(s.work_dir / n)]
        print(f"stopped: {', '.join(stopped)}" if stopped else "no demo cluster was running")
        return 0
    a = parser().parse_args(args_list)
    opts = Options(
        seconds=a.seconds,
        rate=a.rate,
        loss=a.loss,
        seed=a.seed,
        keep=a.keep,
        as_json=a.json,
        work_dir=a.work_dir,
        ot_bootstrap=a.ot_bootstrap,
        it_bootstrap=a.it_bootstrap,
        namespace=a.namespace,
        protocol=ProtocolChoice(k=a.k, m=a.m, linger_ms=a.linger_ms),
        link_mbit=a.link_mbit,
        settle_timeout=a.settle_timeout,
    )
    # SIGTERM ends the demo like Ctrl-C: through the same cleanup
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
