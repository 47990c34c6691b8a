"""IT Kafka down: the receiver spools, drains in order when Kafka returns, loses only when the
spool is full (as exact audited gaps), and keeps what Kafka never acknowledged across a stop.

One private IT cluster (so the shared fixtures are never disturbed) and three sender/receiver
pairs, one topic each, started together so the cluster is stopped and restarted only once:

* ``a``: disk spool; keeps running while IT Kafka is down and after it returns: every record
  arrives exactly once, in order per partition;
* ``b``: disk spool; stopped while IT Kafka is down: the records it had not delivered stay in
  its spool and a new receiver on the same spool delivers them (item: stop with records not
  yet acknowledged);
* ``c``: a memory spool of 20 records: the spool fills while IT Kafka is down (``spool_full``,
  then an exact ``gap``), and a stop turns what it still held into an exact ``shutdown`` gap.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from diode.audit import verify
from diode.config import ReceiverConfig, SenderConfig, build_config
from diode.io.kafka import SRC_OFFSET, ensure_topic
from diode.protocol.crypto import generate_key_files, load_verify_key
from diode.services.receiver import ReceiverService
from diode.services.sender import SenderService
from tests.integration.servicekit import Running, wait_for

pytestmark = pytest.mark.kafka

kafkactl: Any = sys.modules["kafkactl"]  # loaded by tests/conftest.py

POLICY = """\
version: 1
name: it-down
rules:
  - id: all
    match: {{glob: "{prefix}.*"}}
    prefix: "ot."
"""


def _delivered(service: ReceiverService, count: int) -> Callable[[], bool]:
    return lambda: service.stats.delivered >= count


def _produce(bootstrap: str, topic: str, start: int, n: int, partitions: int) -> list[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    values = []
    for i in range(start, start + n):
        value = f"{topic}:{i}".encode()
        producer.produce(topic, value=value, key=b"k%d" % i, partition=i % partitions)
        values.append(value)
    assert producer.flush(30) == 0
    return values


def _read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """Per IT partition, (source offset, value) in IT order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = consumer.list_topics(topic=topic, timeout=10).topics[topic]
        out: dict[int, list[tuple[int, bytes]]] = {}
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = []
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + 20
            while len(out[p]) < high - low and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    assert msg.error() is None, msg.error()
                    headers: Any = msg.headers() or []
                    src = int(dict(headers)[SRC_OFFSET])
                    out[p].append((src, bytes(msg.value() or b"")))
        return out
    finally:
        consumer.close()


class PrivateIt:
    """A private IT cluster that the test may stop and restart on the same data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cluster = kafkactl.start("it-private", data_dir)

    @property
    def bootstrap(self) -> str:
        return str(self.cluster.bootstrap)

    def stop(self) -> None:
        self.cluster.stop()

    def restart(self) -> None:
        c = self.cluster
        self.cluster = kafkactl.start(
            "it-private", self.data_dir, port=c.port, controller_port=c.controller_port
        )


@pytest.fixture()
def private_it(tmp_path: Path) -> Iterator[PrivateIt]:
    it = PrivateIt(tmp_path / "it-private")
    try:
        yield it
    finally:
        it.stop()


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_it_kafka_down(tmp_path: Path, ot_kafka: Any, private_it: PrivateIt) -> None:
    prefix = f"down{uuid.uuid4().hex[:6]}"
    keys = tmp_path / "keys"
    generate_key_files(keys)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(prefix=prefix))
    parts = {"a": 2, "b": 1, "c": 1}
    for name, n in parts.items():
        ensure_topic(ot_kafka.bootstrap, f"{prefix}.{name}", n)
    # reconnect soon after the cluster returns, not after librdkafka's 10 s backoff
    client = {"reconnect.backoff.max.ms": 500, "retry.backoff.max.ms": 500}

    def receiver(name: str, port: int, spool: dict[str, Any]) -> ReceiverService:
        cfg = build_config(
            ReceiverConfig,
            {
                "kafka": {
                    "bootstrap_servers": private_it.bootstrap,
                    "partitions": parts[name],
                    "client": client,
                },
                "udp": {"host": "127.0.0.1", "port": port},
                "keys": {
                    "receiver_key": str(keys / "receiver.key"),
                    "sender_public_key": str(keys / "sender.pub"),
                    "audit_key": str(keys / "receiver-audit.key"),
                },
                "audit": {"path": str(tmp_path / f"receiver-{name}.jsonl")},
                "allowed_topics": [f"ot.{prefix}.{name}"],
                "spool": spool,
                "startup_timeout_s": 20,
            },
        )
        return ReceiverService(cfg)

    def sender(name: str, port: int) -> SenderService:
        cfg = build_config(
            SenderConfig,
            {
                "kafka": {
                    "bootstrap_servers": ot_kafka.bootstrap,
                    "group_id": f"g-{prefix}-{name}",
                    "topics": [f"{prefix}.{name}"],
                    "client": {"session.timeout.ms": 6000},
                },
                "udp": {"host": "127.0.0.1", "port": port, "rate_mbit": 200},
                "keys": {
                    "signing_key": str(keys / "sender.key"),
                    "receiver_public_key": str(keys / "receiver.pub"),
                },
                "policy_file": str(policy),
                "audit": {"path": str(tmp_path / f"sender-{name}.jsonl")},
                "commit_interval_s": 0.2,
            },
        )
        return SenderService(cfg)

    spool_a: dict[str, Any] = {"path": str(tmp_path / "spool-a"), "segment_bytes": 4096}
    spool_b: dict[str, Any] = {"path": str(tmp_path / "spool-b"), "stop_flush_s": 0.5}
    spool_c: dict[str, Any] = {"max_records": 20, "stop_flush_s": 0.5}
    rxs = {
        "a": receiver("a", 0, spool_a),
        "b": receiver("b", 0, spool_b),
        "c": receiver("c", 0, spool_c),
    }
    ports = {n: r.local_address[1] for n, r in rxs.items()}
    rx = {n: Running(r) for n, r in rxs.items()}
    tx = {n: Running(sender(n, ports[n])) for n in rxs}
    everyone = [*rx.values(), *tx.values()]
    ot = ot_kafka.bootstrap
    sent = {
        n: _produce(ot, f"{prefix}.{n}", 0, c, parts[n])
        for n, c in (("a", 50), ("b", 10), ("c", 10))
    }
    for name, count in (("a", 50), ("b", 10), ("c", 10)):
        wait_for(_delivered(rxs[name], count), f"{name}: first records", *everyone)

    # --- IT Kafka goes away; the senders keep sending
    private_it.stop()
    sent["a"] += _produce(ot, f"{prefix}.a", 50, 100, 2)
    sent["b"] += _produce(ot, f"{prefix}.b", 10, 30, 1)
    sent["c"] += _produce(ot, f"{prefix}.c", 10, 60, 1)
    wait_for(lambda: rxs["a"].stats.queued >= 150, "a: records spooled", *everyone)
    wait_for(lambda: rxs["b"].stats.queued >= 40, "b: records spooled", *everyone)
    wait_for(
        lambda: rxs["c"].stats.queued + rxs["c"].stats.spool_lost >= 70,
        "c: records seen",
        *everyone,
    )
    assert rxs["a"].stats.delivered == 50 and rxs["a"].pending() == 100
    assert rxs["c"].stats.queued == 30 and rxs["c"].stats.spool_lost == 40

    # b and c stop while IT Kafka is down (their senders first: nothing more is sent to them)
    for name in ("b", "c"):
        tx[name].stop()
        rx[name].stop()
    assert rxs["b"].stats.delivered == 10
    assert len(list((tmp_path / "spool-b").glob("segment-*.spool"))) >= 1

    # --- IT Kafka returns on the same data dir and ports
    private_it.restart()
    wait_for(lambda: rxs["a"].stats.delivered >= 150, "a: spool drained", rx["a"], tx["a"])
    sent["a"] += _produce(ot, f"{prefix}.a", 150, 20, 2)
    wait_for(lambda: rxs["a"].stats.delivered >= 170, "a: new records", rx["a"], tx["a"])
    # b: a new receiver on the same spool delivers what the stopped one kept
    rb2 = receiver("b", ports["b"], spool_b)
    assert rb2.stats.replayed == 30
    rx["b"] = Running(rb2)
    wait_for(lambda: rb2.stats.delivered >= 30, "b: spooled records delivered", rx["b"])
    rx["b"].stop()
    tx["a"].stop()
    rx["a"].stop()

    # every record exactly once, in source order per partition
    it = private_it.bootstrap
    for name, total in (("a", 170), ("b", 40)):
        got = _read_all(it, f"ot.{prefix}.{name}")
        values = [v for p in sorted(got) for _, v in got[p]]
        assert sorted(values) == sorted(sent[name]), f"{name}: IT differs from what was sent"
        assert len(values) == total
        for p, items in got.items():
            expect = [v for i, v in enumerate(sent[name]) if i % parts[name] == p]
            assert [v for _, v in items] == expect, f"{name}[{p}] out of order"
    got_c = _read_all(it, f"ot.{prefix}.c")
    assert [v for _, v in got_c[0]] == sent["c"][:10]
    assert rb2.stats.duplicates_skipped == 0
    assert list((tmp_path / "spool-b").glob("segment-*.spool")) == []
    assert list((tmp_path / "spool-a").glob("segment-*.spool")) == []

    # c's audit log: one spool_full, then the exact losses
    c_log = _audit(tmp_path / "receiver-c.jsonl")
    assert [e["event"] for e in c_log].count("spool_full") == 1
    gaps = sorted(
        (
            e["fields"]["reason"],
            e["fields"]["first_offset"],
            e["fields"]["last_offset"],
            e["fields"]["count"],
        )
        for e in c_log
        if e["event"] == "gap"
    )
    assert gaps == [("shutdown", 10, 29, 20), ("spool_full", 30, 69, 40)]
    b_stops = [
        e["fields"] for e in _audit(tmp_path / "receiver-b.jsonl") if e["event"] == "service_stop"
    ]
    assert b_stops[0]["spooled"] == 30 and b_stops[1]["spooled"] == 0
    assert b_stops[1]["spool_replayed"] == 30

    audit_key = load_verify_key(keys / "receiver-audit.pub")
    for name in ("a", "b", "c"):
        report = verify([tmp_path / f"receiver-{name}.jsonl"], audit_key)
        assert report.ok, report
