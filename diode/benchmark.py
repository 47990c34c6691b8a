"""The measurements behind ``diode bench`` and the developer benchmarks under ``bench/``.

Each workload runs on the calling thread, in memory (the audit one writes to a directory it is
given and removes what it wrote), with no sleeps and no network: the protocol sessions, the
erasure codec, a policy engine and the audit writer, driven the way the services drive them.
Every workload checks its own result before a figure is reported (the protocol delivers the
very records it was given, less exactly the ones it reports lost; an audit log verifies), and
raises ``BenchmarkError`` when that check fails.

Timing: ``time_runs`` repeats a run and gives the wall-clock and process CPU seconds of each;
the figures of ``measure_*`` are per second of CPU time (``time.process_time``), which other
work on the machine does not inflate, except the audit writer's, which waits for the disk and
is timed by the wall clock. The developer scripts pick their own statistic (best or median)
from the same runs.

Above ``protocol``, ``policy``, ``audit`` and ``io`` in the import arrow, like the services:
``cli -> benchmark -> (io, protocol, policy, audit)``; nothing below imports it.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from diode import __version__
from diode.audit import AuditConfig, AuditLog, FsyncPolicy, verify
from diode.errors import BenchmarkError, ConfigError, LocalProtocolError
from diode.io.pacing import per_datagram_overhead
from diode.policy import Policy, PolicyEngine, load_policy
from diode.policy.samples import sample_stream
from diode.protocol.crypto import Cipher, ReceiverPrivateKey, SigningKey
from diode.protocol.events import GapDetected, RecordsDelivered
from diode.protocol.fec import CODECS, ErasureCodec, get_codec
from diode.protocol.receiver import ReceiverSession
from diode.protocol.records import Record
from diode.protocol.sender import SenderSession
from diode.protocol.wire import ProtocolConfig

__all__ = [
    "BUILTIN_SCHEMA",
    "BUILTIN_START",
    "BUILTIN_STEP",
    "CIPHER_NAMES",
    "LINK_OVERHEAD",
    "RECEIVE_BATCH",
    "SEND_BATCH",
    "TAIL_HEARTBEATS",
    "AuditFigures",
    "DeliveryCheck",
    "FecFigures",
    "FecWorkload",
    "PolicyFigures",
    "PolicyWorkload",
    "ProtocolFigures",
    "ProtocolWorkload",
    "Runs",
    "audit_fields",
    "builtin_policy",
    "builtin_records",
    "machine",
    "measure_audit",
    "measure_fec",
    "measure_policy",
    "measure_protocol",
    "median_rate",
    "policy_decisions",
    "policy_pass",
    "policy_workload",
    "protocol_records",
    "rs_kernel",
    "time_runs",
    "verify_audit",
    "write_audit",
    "write_builtin_policy",
]

Clock = Callable[[], float]

#: datagrams the receiver is handed at once: what ``UdpReceiver.recv_batch`` gives a service
RECEIVE_BATCH: Final = 64
#: records the sender is handed at once: a consumer poll's worth
SEND_BATCH: Final = 500
#: heartbeats the sender sends after its last record, one per heartbeat interval
TAIL_HEARTBEATS: Final = 10
#: bytes the link carries per datagram besides its UDP payload: IPv4 and UDP headers and
#: Ethernet framing, as the sender's pacer counts them for ``[udp] rate_mbit``
LINK_OVERHEAD: Final = per_datagram_overhead(ipv6=False, ethernet_framing=True)
CIPHER_NAMES: Final = {
    "aes-256-gcm": Cipher.AES_256_GCM,
    "chacha20-poly1305": Cipher.CHACHA20_POLY1305,
}


# --- timing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Runs:
    """Wall-clock and process CPU seconds of each run of one workload."""

    wall: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)


def time_runs(fn: Callable[[], object], *, runs: int = 1, seconds: float = 0.0) -> Runs:
    """Call ``fn`` at least ``runs`` times, and again until ``seconds`` have passed."""
    walls: list[float] = []
    cpus: list[float] = []
    began = time.perf_counter()
    while len(walls) < runs or time.perf_counter() - began < seconds:
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return Runs(tuple(walls), tuple(cpus))


def median_rate(
    fn: Callable[[], object],
    units: int,
    runs: int,
    min_time: float,
    *,
    clock: Clock = time.perf_counter,
) -> float:
    """Median over ``runs`` of units/s, each run repeating ``fn`` for at least ``min_time``
    of ``clock`` (for calls too short to time one by one)."""
    rates = []
    for _ in range(runs):
        n = 0
        began = clock()
        while True:
            fn()
            n += 1
            elapsed = clock() - began
            if elapsed >= min_time and elapsed > 0:
                break
        rates.append(units * n / elapsed)
    return statistics.median(rates)


# --- protocol ----------------------------------------------------------------------------


def protocol_records(n: int, size: int, *, partitions: int = 4, seed: int = 1) -> list[Record]:
    """``n`` records with ``size`` random value bytes each, round robin over partitions."""
    value = random.Random(seed).randbytes(size)
    return [
        Record("plant.bench", i % partitions, i, 1_700_000_000_000 + i, b"key-%d" % i, value)
        for i in range(n)
    ]


_SIGNING = SigningKey.from_seed(b"s" * 32)
_RECEIVER = ReceiverPrivateKey.from_seed(b"r" * 32)


def _sender(
    config: ProtocolConfig, rand: Callable[[int], bytes], fec_thread: bool = False
) -> SenderSession:
    return SenderSession(config, _SIGNING, _RECEIVER.public_key, rand, 0.0, fec_thread=fec_thread)


@dataclass(frozen=True, slots=True)
class DeliveryCheck:
    """What one receiver run delivered, compared record by record with what was sent."""

    records_sent: int
    records_delivered: int
    records_lost: int
    #: records named by ``GapDetected`` events: must equal ``records_lost``
    gap_records: int
    #: delivered records that differ from the record sent at their (partition, offset), or
    #: were delivered twice: must be 0
    records_mismatched: int
    blocks_recovered: int
    blocks_lost: int
    manifests_verified: int

    @property
    def ok(self) -> bool:
        return (
            self.records_delivered + self.records_lost == self.records_sent
            and self.gap_records == self.records_lost
            and self.records_mismatched == 0
        )

    def problem(self) -> str | None:
        if self.ok:
            return None
        return (
            f"{self.records_sent} records sent, {self.records_delivered} delivered, "
            f"{self.records_lost} reported lost ({self.gap_records} in gap events), "
            f"{self.records_mismatched} delivered wrong or twice"
        )


class ProtocolWorkload:
    """One sender/receiver workload: records, a config, and a seeded independent loss.

    Both sides are driven as the services drive them: the sender gets records ``batch`` at
    a time and its datagrams are dropped once counted (a service sends them); the receiver
    gets the datagrams the link kept ``receive_batch`` at a time through
    ``receive_datagrams`` (or one by one through ``receive_datagram``) and its events are
    drained after each batch (every 64 datagrams). Each run uses new sessions.

    The clock stands still while the records go out (so no block is closed early by
    ``linger``), then runs on for ``TAIL_HEARTBEATS`` heartbeat intervals, as a sender's
    does after its last record: the heartbeats of that tail, lossy like the rest, tell
    the receiver what the lost blocks held, so every lost record is reported.
    """

    def __init__(
        self,
        config: ProtocolConfig,
        records: Sequence[Record],
        *,
        loss: float,
        batch: int = SEND_BATCH,
        receive_batch: int = RECEIVE_BATCH,
        seed: int = 3,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ConfigError(f"loss {loss} is not a probability in [0, 1)")
        self.config = config
        self.records = list(records)
        self.loss = loss
        self.batch = batch
        self.receive_batch = receive_batch
        sender = _sender(config, random.Random(2).randbytes)
        try:
            main = sender.add_many(self.records, 0.0) + sender.flush(0.0)
        except LocalProtocolError as exc:
            raise ConfigError(
                f"{exc} ({config.max_k} symbols of {config.symbol_size} bytes)"
            ) from exc
        # after its last record a sender goes on sending heartbeats: they tell the receiver
        # what a lost tail held, so that every lost record is reported
        self.tail = [(t, sender.poll(t)) for t in self._tail_times()]
        self.datagrams = main + [d for _, group in self.tail for d in group]
        self.encoded_bytes = sender.counters().record_bytes
        self.payload_bytes = sum(r.size for r in self.records)
        self.wire_bytes = sum(map(len, self.datagrams))
        rng = random.Random(seed)
        self._main_kept = [d for d in main if rng.random() >= loss]
        self._batches = [
            self._main_kept[i : i + receive_batch]
            for i in range(0, len(self._main_kept), receive_batch)
        ]
        self._kept_tail = [
            (t, [d for d in group if rng.random() >= loss]) for t, group in self.tail
        ]
        #: the datagrams the link delivers
        self.kept = self._main_kept + [d for _, group in self._kept_tail for d in group]
        # past every block timeout after the last heartbeat: every block resolved
        self._end = self._tail_times()[-1] + 1.0

    def _tail_times(self) -> list[float]:
        step = self.config.heartbeat_interval
        return [i * step for i in range(1, TAIL_HEARTBEATS + 1)]

    def new_sender(self, fec_thread: bool = False) -> SenderSession:
        return _sender(self.config, random.Random(2).randbytes, fec_thread)

    def run_sender(self, fec_thread: bool = False) -> int:
        """Send every record; the number of datagrams made."""
        s = self.new_sender(fec_thread)
        records, step = self.records, self.batch
        sent = 0
        for i in range(0, len(records), step):
            sent += len(s.add_many(records[i : i + step], 0.0))
        sent += len(s.flush(0.0))
        for t in self._tail_times():
            sent += len(s.poll(t))
        s.close()
        return sent

    def run_receiver(self) -> ReceiverSession:
        """The kept datagrams one at a time through ``receive_datagram``."""
        r = ReceiverSession(self.config, _RECEIVER, _SIGNING.verify_key)
        receive = r.receive_datagram
        for i, d in enumerate(self._main_kept):
            receive(d, 0.0)
            if not i & 63:
                r.events()
        for t, group in self._kept_tail:
            for d in group:
                receive(d, t)
            r.poll(t)
            r.events()
        r.poll(self._end)
        r.events()
        return r

    def run_receiver_batch(self) -> ReceiverSession:
        """The kept datagrams ``receive_batch`` at a time through ``receive_datagrams``."""
        r = ReceiverSession(self.config, _RECEIVER, _SIGNING.verify_key)
        receive = r.receive_datagrams
        for batch in self._batches:
            receive(batch, 0.0)
            r.events()
        for t, group in self._kept_tail:
            receive(group, t)
            r.poll(t)
            r.events()
        r.poll(self._end)
        r.events()
        return r

    def check(self) -> DeliveryCheck:
        """Run the batched receiver once, keeping its events, and compare every delivered
        record with the one sent at its (topic, partition, offset)."""
        sent = {(r.topic, r.partition, r.offset): r for r in self.records}
        seen: set[tuple[str, int, int]] = set()
        mismatched = delivered = gap_records = 0
        r = ReceiverSession(self.config, _RECEIVER, _SIGNING.verify_key)

        def drain() -> None:
            nonlocal mismatched, delivered, gap_records
            for event in r.events():
                if isinstance(event, RecordsDelivered):
                    for rec in event.records:
                        where = (rec.topic, rec.partition, rec.offset)
                        delivered += 1
                        if sent.get(where) != rec or where in seen:
                            mismatched += 1
                        seen.add(where)
                elif isinstance(event, GapDetected):
                    gap_records += event.count

        for batch in self._batches:
            r.receive_datagrams(batch, 0.0)
            drain()
        for t, group in self._kept_tail:
            r.receive_datagrams(group, t)
            r.poll(t)
            drain()
        r.poll(self._end)
        drain()
        c = r.counters()
        if delivered != c.records_delivered:
            mismatched += abs(delivered - c.records_delivered)
        return DeliveryCheck(
            records_sent=len(self.records),
            records_delivered=c.records_delivered,
            records_lost=c.records_lost,
            gap_records=gap_records,
            records_mismatched=mismatched,
            blocks_recovered=c.blocks_recovered,
            blocks_lost=c.blocks_lost,
            manifests_verified=c.manifests_verified,
        )


@dataclass(frozen=True, slots=True)
class ProtocolFigures:
    """Sender and batched receiver of one workload, per CPU second (median of the runs)."""

    config: ProtocolConfig
    record_size: int
    loss: float
    records: int
    payload_bytes: int
    datagrams: int
    wire_bytes: int
    kept_datagrams: int
    sender: Runs
    receiver: Runs
    check: DeliveryCheck

    @property
    def sender_mb_s(self) -> float:
        return self.payload_bytes / self.sender.median_cpu / 1e6

    @property
    def receiver_mb_s(self) -> float:
        return self.payload_bytes / self.receiver.median_cpu / 1e6

    @property
    def sender_datagrams_per_s(self) -> float:
        return self.datagrams / self.sender.median_cpu

    @property
    def receiver_datagrams_per_s(self) -> float:
        return self.kept_datagrams / self.receiver.median_cpu

    @property
    def wire_bytes_per_payload_byte(self) -> float:
        """UDP payload bytes per record payload byte: repair symbols, headers, tags,
        padding and control datagrams on top of the records."""
        return self.wire_bytes / self.payload_bytes

    @property
    def link_bytes_per_payload_byte(self) -> float:
        """As ``wire_bytes_per_payload_byte``, with IP/UDP headers and Ethernet framing."""
        return (self.wire_bytes + self.datagrams * LINK_OVERHEAD) / self.payload_bytes

    def link_mbit_s(self, payload_mb_s: float) -> float:
        """The Ethernet bit rate that carries ``payload_mb_s`` of record payload."""
        return payload_mb_s * self.link_bytes_per_payload_byte * 8

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        c = self.check
        return {
            "codec": cfg.codec,
            "cipher": next(n for n, v in CIPHER_NAMES.items() if v is cfg.cipher),
            "k": cfg.k,
            "m": cfg.m,
            "payload_size": cfg.payload_size,
            "symbol_size": cfg.symbol_size,
            "record_size": self.record_size,
            "records": self.records,
            "loss": self.loss,
            "send_batch": SEND_BATCH,
            "receive_batch": RECEIVE_BATCH,
            "record_payload_bytes": self.payload_bytes,
            "datagrams": self.datagrams,
            "wire_bytes": self.wire_bytes,
            "sender_mb_s": round(self.sender_mb_s, 1),
            "sender_datagrams_per_s": round(self.sender_datagrams_per_s),
            "sender_link_mbit_s": round(self.link_mbit_s(self.sender_mb_s)),
            "receiver_mb_s": round(self.receiver_mb_s, 1),
            "receiver_datagrams_per_s": round(self.receiver_datagrams_per_s),
            "receiver_link_mbit_s": round(self.link_mbit_s(self.receiver_mb_s)),
            "wire_bytes_per_payload_byte": round(self.wire_bytes_per_payload_byte, 3),
            "link_bytes_per_payload_byte": round(self.link_bytes_per_payload_byte, 3),
            "datagrams_dropped": self.datagrams - self.kept_datagrams,
            "records_sent": c.records_sent,
            "records_delivered": c.records_delivered,
            "records_lost": c.records_lost,
            "gap_records": c.gap_records,
            "records_mismatched": c.records_mismatched,
            "blocks_recovered": c.blocks_recovered,
            "blocks_lost": c.blocks_lost,
            "delivery_checked": c.ok,
            "runs": {"sender": self.sender.count, "receiver": self.receiver.count},
        }


def measure_protocol(work: ProtocolWorkload, *, seconds: float, runs: int = 2) -> ProtocolFigures:
    """Time ``SenderSession`` and the batched ``ReceiverSession`` on ``work``, after checking
    that the receiver delivers exactly the records sent less those it reports lost (else
    ``BenchmarkError``)."""
    check = work.check()
    problem = check.problem()
    if problem is not None:
        raise BenchmarkError(f"protocol delivery check failed: {problem}")
    sender = time_runs(work.run_sender, runs=runs, seconds=seconds)
    receiver = time_runs(work.run_receiver_batch, runs=runs, seconds=seconds)
    return ProtocolFigures(
        config=work.config,
        record_size=len(work.records[0].value or b"") if work.records else 0,
        loss=work.loss,
        records=len(work.records),
        payload_bytes=work.payload_bytes,
        datagrams=len(work.datagrams),
        wire_bytes=work.wire_bytes,
        kept_datagrams=len(work.kept),
        sender=sender,
        receiver=receiver,
        check=check,
    )


# --- FEC ---------------------------------------------------------------------------------


class FecWorkload:
    """One block of ``k`` random source symbols, its repair symbols, and what a receiver
    holds after losing ``m`` source symbols (plus the codec's overhead in repair symbols).
    Checked on construction: the decode rebuilds the source exactly."""

    def __init__(
        self, codec: ErasureCodec, k: int, m: int, symbol_size: int, rng: random.Random
    ) -> None:
        self.codec = codec
        self.k = k
        self.m = m
        self.symbol_size = symbol_size
        self.extra = codec.overhead()
        self.source = [rng.randbytes(symbol_size) for _ in range(k)]
        repair = codec.encode(self.source, m + self.extra)
        lost = set(rng.sample(range(k), m))
        self.received = {i: self.source[i] for i in range(k) if i not in lost}
        self.received.update({k + j: repair[j] for j in range(m + self.extra)})
        if [bytes(s) for s in codec.decode(k, m + self.extra, self.received)] != self.source:
            raise BenchmarkError(f"{codec.name} did not rebuild the block it encoded")

    @property
    def source_bytes(self) -> int:
        return self.k * self.symbol_size

    @property
    def decode_symbols_given(self) -> str:
        return f"k+{self.extra}" if self.extra else "k"

    def encode(self) -> object:
        return self.codec.encode(self.source, self.m)

    def decode(self) -> object:
        return self.codec.decode(self.k, self.m + self.extra, self.received)


@dataclass(frozen=True, slots=True)
class FecFigures:
    codec: str
    k: int
    m: int
    symbol_size: int
    decode_symbols_given: str
    encode_mb_s: float
    decode_mb_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "k": self.k,
            "m": self.m,
            "symbol_size": self.symbol_size,
            "lost_source_symbols": self.m,
            "decode_symbols_given": self.decode_symbols_given,
            "encode_mb_s": round(self.encode_mb_s, 1),
            "decode_mb_s": round(self.decode_mb_s, 1),
        }


def measure_fec(
    codec: str, k: int, m: int, symbol_size: int, *, seconds: float, runs: int = 3, seed: int = 1
) -> FecFigures:
    """MB/s of source data per CPU second through the codec's ``encode`` and ``decode``
    (m source symbols lost), median of ``runs`` runs sharing ``seconds`` per figure."""
    if m < 1:
        raise ConfigError(f"m={m}: without repair symbols there is no FEC to measure")
    work = FecWorkload(get_codec(codec), k, m, symbol_size, random.Random(seed))
    min_time = seconds / runs
    clock = time.process_time
    return FecFigures(
        codec=codec,
        k=k,
        m=m,
        symbol_size=symbol_size,
        decode_symbols_given=work.decode_symbols_given,
        encode_mb_s=median_rate(work.encode, work.source_bytes, runs, min_time, clock=clock) / 1e6,
        decode_mb_s=median_rate(work.decode, work.source_bytes, runs, min_time, clock=clock) / 1e6,
    )


# --- policy ------------------------------------------------------------------------------

#: the built-in policy's JSON Schema for process values
BUILTIN_SCHEMA: Final = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["site", "tag", "value", "unit", "ts", "quality"],
    "properties": {
        "site": {"type": "string", "maxLength": 32},
        "tag": {"type": "string", "pattern": "^[A-Z0-9_.-]+$"},
        "value": {"type": "number"},
        "unit": {"enum": ["degC", "bar", "kW", "m3/h", "rpm"]},
        "ts": {"type": "integer"},
        "quality": {"enum": ["good", "bad", "uncertain"]},
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}

_BUILTIN_RULE: Final = """\
  - id: area{i}
    match: {{glob: "plant.area{i}.*"}}
    prefix: "ot."
    max_bytes: 4096
    rate: {{records_per_s: 1000000, bytes_per_s: 1.0e9}}
    value:
      format: json
      schema: telemetry.json
      fields:
        value: {{type: number, required: true, min: -1.0e6, max: 1.0e6}}
        quality: {{enum: [good, bad, uncertain]}}
    deny:
      - pattern: '(?i)password\\s*[:=]'
    anomaly:
      rate: {{window_s: 1}}
      size: {{}}
      fields: {{value: {{}}}}
      timestamp: {{}}
"""

_BUILTIN_TAIL: Final = """\
  - id: energy
    match: {exact: plant.energy.main}
    value: {format: json, schema: telemetry.json}
    anomaly: {size: {}, timestamp: {}}
  - id: orders
    match: {regex: "plant\\\\.orders\\\\.(line[0-9]+)"}
    value: {format: json, schema: telemetry.json}
    anomaly: {size: {}, timestamp: {}}
  - id: commands
    match: {glob: "plant.commands.*"}
    action: drop
"""

#: ``now`` of the built-in records' first record, and the simulated time between two
#: (10 us: as at 100k records/s)
BUILTIN_START: Final = 1_700_000_000.0
BUILTIN_STEP: Final = 1e-5


def write_builtin_policy(directory: Path) -> Path:
    """Write the built-in policy and its schema into ``directory``; the policy's path.

    20 rules (glob, exact and regex matches); every forwarding rule has a JSON Schema, and
    the 17 area rules add field rules, a deny pattern, a rate limit and the rate, size,
    field-drift and timestamp detectors: heavier than most plants' policies.
    """
    (directory / "telemetry.json").write_text(json.dumps(BUILTIN_SCHEMA))
    text = "version: 1\nname: bench\nquarantine_topic: diode.quarantine\nrules:\n"
    text += "".join(_BUILTIN_RULE.format(i=i) for i in range(17)) + _BUILTIN_TAIL
    path = directory / "bench.yaml"
    path.write_text(text)
    return path


def builtin_policy() -> Policy:
    """The built-in policy, loaded (its files are written to a temporary directory and
    removed: the loaded policy has its schema compiled)."""
    with tempfile.TemporaryDirectory(prefix="diode-bench-") as tmp:
        return load_policy(write_builtin_policy(Path(tmp)))


def builtin_records(n: int, seed: int = 7, bad_share: float = 0.0) -> list[Record]:
    """500-byte JSON process values over the built-in policy's 40 topics; ``bad_share`` of
    them break its schema (quality "unknown"). Timestamps follow ``BUILTIN_START`` and
    ``BUILTIN_STEP``."""
    rng = random.Random(seed)
    topics = [f"plant.area{i}.line{j}" for i in range(17) for j in range(2)]
    topics += ["plant.energy.main", "plant.orders.line1", "plant.orders.line2"]
    topics += ["plant.area3.line9", "plant.area5.line7", "plant.area9.line4"]
    out = []
    t0 = 1_700_000_000_000
    for k in range(n):
        doc: dict[str, Any] = {
            "site": "plant-a",
            "tag": f"FIC-{rng.randrange(1000):03d}.PV",
            "value": round(50 + rng.gauss(0, 5), 3),
            "unit": "bar",
            "ts": t0 + k // 100,
            "quality": "unknown" if rng.random() < bad_share else "good",
            "meta": {"line": "3", "area": "north", "comment": ""},
        }
        body = json.dumps(doc, separators=(",", ":"))
        doc["meta"]["comment"] = "x" * max(500 - len(body), 0)
        value = json.dumps(doc, separators=(",", ":")).encode()
        out.append(
            Record(
                topics[k % len(topics)],
                0,
                k,
                t0 + k // 100,
                b"FIC",
                value,
                (("source", b"historian"),),
            )
        )
    return out


def policy_pass(
    engine: PolicyEngine,
    records: Sequence[Record],
    start: float,
    step: float,
    clock: Clock = time.perf_counter,
) -> float:
    """Decisions/s of one pass of ``records`` through ``engine`` (``now`` advancing by
    ``step`` per record), by ``clock``."""
    evaluate = engine.evaluate
    now = start
    t = clock()
    for rec in records:
        evaluate(rec, now)
        now += step
    return len(records) / (clock() - t)


def policy_decisions(
    policy: Policy, records: Sequence[Record], start: float, step: float
) -> Counter[str]:
    """Actions a fresh engine takes on ``records``, counted."""
    engine = PolicyEngine(policy)
    decisions: Counter[str] = Counter()
    now = start
    for rec in records:
        decisions[engine.evaluate(rec, now).action.value] += 1
        now += step
    return decisions


@dataclass(frozen=True, slots=True)
class PolicyFigures:
    source: str
    name: str
    fingerprint: str
    rules: int
    topics: int
    records: int
    value_bytes_median: float
    records_per_s_simulated: float
    rates: tuple[float, ...]
    decisions: dict[str, int]
    skipped_rules: tuple[str, ...] = ()

    @property
    def decisions_per_s(self) -> float:
        return statistics.median(self.rates)

    @property
    def forwarded(self) -> int:
        return self.decisions.get("forward", 0) + self.decisions.get("alert", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.source,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "rules": self.rules,
            "topics": self.topics,
            "records": self.records,
            "value_bytes_median": self.value_bytes_median,
            "records_per_s_simulated": round(self.records_per_s_simulated, 3),
            "decisions_per_s": round(self.decisions_per_s),
            "us_per_decision": round(1e6 / self.decisions_per_s, 2),
            "forwarded": self.forwarded,
            "forwarded_share": round(self.forwarded / self.records, 4),
            "decisions": dict(sorted(self.decisions.items())),
            "skipped_rules": list(self.skipped_rules),
            "runs": len(self.rates),
        }


@dataclass(frozen=True, slots=True)
class PolicyWorkload:
    """A policy and records it forwards, with the simulated arrival times of the records."""

    policy: Policy
    source: str
    records: list[Record]
    start: float
    step: float
    skipped_rules: tuple[str, ...] = ()


def policy_workload(
    policy: Policy | None, *, records: int, value_size: int = 500
) -> PolicyWorkload:
    """``policy`` (None: the built-in one) and ``records`` records it forwards: the built-in
    records for the built-in policy, records made up from the rules
    (``diode.policy.samples``) for any other. Raises ``PolicyError`` if the policy forwards
    none of the records made up for it."""
    if policy is None:
        return PolicyWorkload(
            builtin_policy(), "built-in", builtin_records(records), BUILTIN_START, BUILTIN_STEP
        )
    sample = sample_stream(policy, records, value_size=value_size)
    return PolicyWorkload(
        policy,
        str(policy.path) if policy.path is not None else policy.model.name,
        sample.records,
        sample.start,
        sample.step,
        sample.skipped,
    )


def measure_policy(work: PolicyWorkload, *, seconds: float, runs: int = 2) -> PolicyFigures:
    """Decisions per CPU second of the workload's policy on its records, each pass on a
    fresh engine (built outside the timed loop); the median of the passes."""
    pol, stream, start, step = work.policy, work.records, work.start, work.step
    decisions = policy_decisions(pol, stream, start, step)
    rates: list[float] = []

    def one_pass() -> None:
        engine = PolicyEngine(pol)
        rates.append(policy_pass(engine, stream, start, step, time.process_time))

    time_runs(one_pass, runs=runs, seconds=seconds)
    return PolicyFigures(
        source=work.source,
        name=pol.model.name,
        fingerprint=pol.fingerprint,
        rules=len(pol.model.rules),
        topics=len({r.topic for r in stream}),
        records=len(stream),
        value_bytes_median=statistics.median(len(r.value or b"") for r in stream),
        records_per_s_simulated=1.0 / step,
        rates=tuple(rates),
        decisions=dict(decisions),
        skipped_rules=work.skipped_rules,
    )


# --- audit -------------------------------------------------------------------------------

_AUDIT_KEY = SigningKey.from_seed(bytes(range(32)))


def audit_fields(i: int) -> dict[str, object]:
    """The fields of a typical ``record_refused`` entry."""
    return {
        "topic": "plant.sensors.line7",
        "partition": i % 12,
        "offset": 1_000_000 + i,
        "rule": "size_limit",
        "reason": "value of 2048 bytes exceeds limit 1024",
    }


def write_audit(
    path: Path,
    key: SigningKey,
    n: int,
    *,
    checkpoint: int,
    fsync: FsyncPolicy,
    threaded: bool,
) -> tuple[float, float]:
    """Append ``n`` entries to a new log at ``path``; (seconds until ``close`` returned,
    seconds the appends took), by the wall clock. Raises ``BenchmarkError`` if an entry
    was dropped (the queue is sized so that none need be)."""
    config = AuditConfig(
        path=path,
        threaded=threaded,
        queue_size=n + 10,
        checkpoint_entries=checkpoint,
        checkpoint_seconds=None,
        fsync=fsync,
    )
    fields = [audit_fields(i) for i in range(n)]
    log = AuditLog(config, key)
    start = time.perf_counter()
    for f in fields:
        log.append("record_refused", f)
    appended = time.perf_counter()
    log.close()
    end = time.perf_counter()
    if log.stats.dropped:
        raise BenchmarkError(f"{log.stats.dropped} audit entries dropped: the run is invalid")
    return end - start, appended - start


def verify_audit(directory: Path, key: SigningKey) -> int:
    """Verify the log in ``directory`` with signatures; its entries. Raises
    ``BenchmarkError`` naming the first problem."""
    report = verify([directory], key.verify_key)
    if not report.ok:
        raise BenchmarkError(f"benchmark audit log does not verify: {report.first_problem}")
    return report.chains[0].entries


@dataclass(frozen=True, slots=True)
class AuditFigures:
    entries: int
    checkpoint_every: int
    fsync: str
    directory: str
    sync: tuple[float, ...]
    threaded: tuple[float, ...]

    @property
    def sync_entries_per_s(self) -> float:
        return statistics.median(self.sync)

    @property
    def threaded_entries_per_s(self) -> float:
        return statistics.median(self.threaded)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "checkpoint_every": self.checkpoint_every,
            "fsync": self.fsync,
            "directory": self.directory,
            "sync_entries_per_s": round(self.sync_entries_per_s),
            "threaded_entries_per_s": round(self.threaded_entries_per_s),
            "verified": True,
            "runs": {"sync": len(self.sync), "threaded": len(self.threaded)},
        }


def measure_audit(
    *,
    entries: int,
    seconds: float,
    directory: Path | None = None,
    checkpoint: int = 1000,
    fsync: FsyncPolicy = FsyncPolicy.CHECKPOINT,
    runs: int = 1,
) -> AuditFigures:
    """Entries/s (wall clock) written with hash chaining and a signed checkpoint every
    ``checkpoint`` entries, synchronously and through the writer thread; each log is
    verified before it is removed. The logs live in a new temporary directory under
    ``directory`` (default: the system's), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="diode-bench-audit-", dir=directory))
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for threaded in (False, True):
            count = 0

            def one_run(threaded: bool = threaded) -> None:
                nonlocal count
                run_dir = base / f"{'threaded' if threaded else 'sync'}{count}"
                count += 1
                total, _ = write_audit(
                    run_dir / "audit.jsonl",
                    _AUDIT_KEY,
                    entries,
                    checkpoint=checkpoint,
                    fsync=fsync,
                    threaded=threaded,
                )
                rates[threaded].append(entries / total)
                verify_audit(run_dir, _AUDIT_KEY)
                shutil.rmtree(run_dir)

            time_runs(one_run, runs=runs, seconds=seconds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return AuditFigures(
        entries=entries,
        checkpoint_every=checkpoint,
        fsync=fsync.value,
        directory=str(base.parent),
        sync=tuple(rates[False]),
        threaded=tuple(rates[True]),
    )


# --- the machine -------------------------------------------------------------------------


def rs_kernel() -> str | None:
    """The kernel the rs codec runs here (the widest SIMD the CPU has), if rs is built."""
    if "rs" not in CODECS:
        return None
    from diode.protocol import _rs

    return _rs.kernels()[-1]


def machine() -> dict[str, Any]:
    """What the figures depend on besides the settings."""
    return {
        "diode": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "rs_kernel": rs_kernel(),
        "codecs": list(CODECS),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
