"""Sender and receiver end to end: real Kafka on both sides, real UDP on 127.0.0.1.

One scenario in phases (the clusters are shared and start-up is the expensive part):

1. records with keys, headers (some null) and timestamps on two partitions cross; a denied
   topic and a quarantined topic do not, quarantined records land in the OT quarantine topic;
2. a sender with a fresh consumer group resends everything: the receiver skips what it
   already delivered, only the new records appear on IT;
3. a restarted receiver learns the delivered offsets from the IT topic itself: another full
   resend adds nothing twice;
4. both audit logs verify.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from diode.audit import decode_line, verify
from diode.config import ReceiverConfig, SenderConfig, build_config
from diode.io.kafka import (
    SESSION,
    SRC_OFFSET,
    SRC_PARTITION,
    SRC_TOPIC,
    ensure_topic,
    read_provenance,
)
from diode.protocol.crypto import generate_key_files, load_verify_key
from diode.services.receiver import ReceiverService
from diode.services.sender import SenderService
from tests.integration.servicekit import Running, wait_for

pytestmark = pytest.mark.kafka

POLICY = """\
version: 1
name: e2e
quarantine_topic: {quarantine}
rules:
  - id: telemetry
    match: {{glob: "{prefix}.tel*"}}
    prefix: "ot."
  - id: suspicious
    match: {{exact: {prefix}.q}}
    action: quarantine
"""


def _produce(bootstrap: str, topic: str, start: int, n: int) -> list[dict[str, Any]]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = []
    for i in range(start, start + n):
        headers: list[tuple[str, bytes | None]] = [("seq", str(i).encode()), ("empty", None)]
        if i % 3 == 0:
            headers.append(("unit", b"degC"))
        item: dict[str, Any] = {
            "key": None if i % 7 == 0 else f"sensor-{i % 5}".encode(),
            "value": f'{{"i": {i}}}'.encode(),
            "headers": headers,
            "timestamp": 1_700_000_000_000 + i,
            "partition": i % 2,
        }
        producer.produce(
            topic,
            key=item["key"],
            value=item["value"],
            headers=item["headers"],
            timestamp=item["timestamp"],
            partition=item["partition"],
        )
        sent.append(item)
    assert producer.flush(30) == 0
    return sent


def _read_all(bootstrap: str, topic: str, partitions: int = 2) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        md = consumer.list_topics(topic=topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        parts = list(md.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        out: list[Any] = []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        done = {p for p, high in ends.items() if high == 0}
        deadline = time.monotonic() + 20
        while len(done) < len(parts) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                if msg.error() is not None:
                    done.add(int(msg.partition() or 0))
                    continue
                out.append(msg)
        return out
    finally:
        consumer.close()


@pytest.fixture()
def setup(tmp_path: Path, ot_kafka: Any, it_kafka: Any) -> Iterator[dict[str, Any]]:
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    keys = tmp_path / "keys"
    generate_key_files(keys)
    policy = tmp_path / "policy.yaml"
    quarantine = f"{prefix}.quarantine"
    policy.write_text(POLICY.format(prefix=prefix, quarantine=quarantine))
    for t in (f"{prefix}.tel", f"{prefix}.q", f"{prefix}.secret", quarantine):
        ensure_topic(ot_kafka.bootstrap, t, 2)
    yield {
        "prefix": prefix,
        "keys": keys,
        "policy": policy,
        "quarantine": quarantine,
        "tmp": tmp_path,
        "ot": ot_kafka.bootstrap,
        "it": it_kafka.bootstrap,
    }


def _receiver(s: dict[str, Any], port: int) -> ReceiverService:
    cfg = build_config(
        ReceiverConfig,
        {
            "kafka": {"bootstrap_servers": s["it"], "partitions": 2},
            "udp": {"host": "127.0.0.1", "port": port},
            "keys": {
                "receiver_key": str(s["keys"] / "receiver.key"),
                "sender_public_key": str(s["keys"] / "sender.pub"),
                "audit_key": str(s["keys"] / "receiver-audit.key"),
            },
            "audit": {"path": str(s["tmp"] / "receiver-audit.jsonl")},
            "allowed_topics": [f"ot.{s['prefix']}.*"],
            "policy_file": str(s["policy"]),
            "startup_timeout_s": 20,
        },
    )
    return ReceiverService(cfg)


def _sender(s: dict[str, Any], port: int, group: str) -> SenderService:
    p = s["prefix"]
    cfg = build_config(
        SenderConfig,
        {
            "kafka": {
                "bootstrap_servers": s["ot"],
                "group_id": group,
                # the denied topic is consumed on purpose: the policy must refuse it
                "topics": [f"{p}.tel", f"{p}.q", f"{p}.secret"],
                "client": {"session.timeout.ms": 6000},
            },
            "udp": {"host": "127.0.0.1", "port": port, "rate_mbit": 200},
            "keys": {
                "signing_key": str(s["keys"] / "sender.key"),
                "receiver_public_key": str(s["keys"] / "receiver.pub"),
            },
            "policy_file": str(s["policy"]),
            "audit": {"path": str(s["tmp"] / "sender-audit.jsonl")},
            "commit_interval_s": 0.2,
        },
    )
    return SenderService(cfg)


def _check_it(s: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    p = s["prefix"]
    got = _read_all(s["it"], f"ot.{p}.tel")
    assert len(got) == len(sent), f"IT holds {len(got)} records, {len(sent)} allowed were sent"
    by_value = {m.value(): m for m in got}
    assert len(by_value) == len(got), "duplicate records on IT"
    for item in sent:
        m = by_value[item["value"]]
        headers = m.headers()
        own, prov = headers[: len(item["headers"])], dict(headers[len(item["headers"]) :])
        assert own == item["headers"]
        assert m.key() == item["key"]
        assert m.timestamp() == (1, item["timestamp"])
        assert m.partition() == item["partition"]
        assert prov[SRC_TOPIC] == f"{p}.tel".encode()
        assert prov[SRC_PARTITION] == str(item["partition"]).encode()
        assert int(prov[SRC_OFFSET]) >= 0
        assert len(bytes.fromhex(prov[SESSION].decode())) == 8
    for part in (0, 1):
        offsets = [int(dict(m.headers())[SRC_OFFSET]) for m in got if m.partition() == part]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    # nothing of the denied or quarantined topics crossed
    assert _read_all(s["it"], f"ot.{p}.secret") == []
    assert _read_all(s["it"], f"ot.{p}.q") == []
    assert _read_all(s["it"], f"{p}.q") == []


def test_end_to_end(setup: dict[str, Any]) -> None:
    s = setup
    p = s["prefix"]
    sent = _produce(s["ot"], f"{p}.tel", 0, 120)
    _produce(s["ot"], f"{p}.q", 1000, 10)
    _produce(s["ot"], f"{p}.secret", 2000, 10)

    receiver = _receiver(s, 0)
    port = receiver.local_address[1]
    rx = Running(receiver)
    sender1 = _sender(s, port, f"g1-{p}")
    tx = Running(sender1)
    wait_for(lambda: receiver.stats.delivered >= 120, "the first 120 records on IT", rx, tx)
    wait_for(lambda: sender1.stats.consumed >= 140, "the sender to judge every record", rx, tx)
    tx.stop()
    stats1 = sender1.stats
    assert stats1.forwarded == 120
    assert stats1.quarantined == 10
    assert stats1.dropped == 10
    _check_it(s, sent)
    quarantined = _read_all(s["ot"], s["quarantine"])
    assert sorted(m.value() for m in quarantined) == sorted(
        f'{{"i": {i}}}'.encode() for i in range(1000, 1010)
    )
    assert all(dict(m.headers())[SRC_TOPIC] == f"{p}.q".encode() for m in quarantined)

    # phase 2: a sender with a fresh group resends everything, plus new records
    sent += _produce(s["ot"], f"{p}.tel", 120, 40)
    tx = Running(_sender(s, port, f"g2-{p}"))
    wait_for(lambda: receiver.stats.delivered >= 160, "the 40 new records on IT", rx, tx)
    wait_for(lambda: receiver.stats.duplicates_skipped >= 120, "the resent records skipped", rx, tx)
    tx.stop()
    rx.stop()
    assert receiver.stats.duplicates_skipped == 120
    _check_it(s, sent)

    # phase 3: a new receiver learns the delivered offsets from IT; a full resend adds nothing
    sent += _produce(s["ot"], f"{p}.tel", 160, 20)
    receiver = _receiver(s, port)
    assert receiver.last_delivered[(f"{p}.tel", 0)] >= 0
    rx = Running(receiver)
    tx = Running(_sender(s, port, f"g3-{p}"))
    wait_for(lambda: receiver.stats.delivered >= 20, "the 20 newest records on IT", rx, tx)
    wait_for(lambda: receiver.stats.duplicates_skipped >= 160, "160 resent records skipped", rx, tx)
    tx.stop()
    rx.stop()
    assert receiver.stats.delivered == 20
    assert receiver.stats.refused == 0
    _check_it(s, sent)

    sender_key = load_verify_key(s["keys"] / "sender.pub")
    audit_key = load_verify_key(s["keys"] / "receiver-audit.pub")
    for path, key in (
        (s["tmp"] / "sender-audit.jsonl", sender_key),
        (s["tmp"] / "receiver-audit.jsonl", audit_key),
    ):
        report = verify([path], key)
        assert report.ok, report
    # the receiver's log accounts for every resent record: skipped as a duplicate, never a
    # loss (120 in phase 2, 160 after its own restart in phase 3, learned from IT Kafka)
    r_entries = [
        decode_line(line) for line in (s["tmp"] / "receiver-audit.jsonl").read_bytes().splitlines()
    ]
    dups = sum(int(str(e.fields["count"])) for e in r_entries if e.event == "duplicates_skipped")
    assert dups == 120 + 160
    delivered = sum(
        int(str(e.fields["count"])) for e in r_entries if e.event == "records_delivered"
    )
    assert delivered == 180
    assert not [e for e in r_entries if e.event in ("gap", "resend_lost", "gap_recovered")]
    stops = [e.fields for e in r_entries if e.event == "service_stop"]
    assert [(f["records_lost"], f["duplicates_skipped"]) for f in stops] == [(0, 120), (0, 160)]
    text = (s["tmp"] / "sender-audit.jsonl").read_text()
    assert text.count('"record_quarantined"') == 30  # once per sender run
    assert text.count('"record_refused"') == 30
    assert text.count('"service_stop"') == 3


def test_provenance_reads_back_until_exact(it_kafka: Any) -> None:
    """Two source topics share one IT partition; the quiet one's last record lies far back."""
    topic = f"ot.prov{uuid.uuid4().hex[:6]}"
    ensure_topic(it_kafka.bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": it_kafka.bootstrap, "linger.ms": 20})

    def put(source: str, offsets: range) -> None:
        for o in offsets:
            headers: list[tuple[str, str | bytes | None]] = [
                (SRC_TOPIC, source.encode()),
                (SRC_PARTITION, b"0"),
                (SRC_OFFSET, str(o).encode()),
            ]
            producer.produce(topic, value=b"v", headers=headers, partition=0)

    put("plant.busy", range(0, 2000))
    put("plant.quiet", range(0, 5))
    put("plant.busy", range(2000, 4000))
    assert producer.flush(30) == 0
    expected = {("plant.busy", 0): 3999, ("plant.quiet", 0): 4}

    # sources unknown: read back to the partition's start
    full = read_provenance(it_kafka.bootstrap, [topic], window=1000)
    assert full.last == expected
    (scan,) = full.partitions
    assert scan.complete and scan.records == 4005 and scan.read_from == 0

    # sources known (from the receiver's policy): stop as soon as both are found
    both = {("plant.busy", 0), ("plant.quiet", 0)}
    early = read_provenance(
        it_kafka.bootstrap, [topic], window=1000, expected=lambda t, p: set(both)
    )
    assert early.last == expected
    (scan,) = early.partitions
    assert scan.complete and scan.records == 3000 and scan.read_from == 1005
    assert set(scan.sources) == both

    # bounded: the quiet source lies beyond the bound; the scan says it gave up
    bounded = read_provenance(it_kafka.bootstrap, [topic], window=1000, max_records=1500)
    assert bounded.last == {("plant.busy", 0): 3999}
    (scan,) = bounded.partitions
    assert not scan.complete and scan.records == 1500 and scan.read_from == 2505
    assert bounded.incomplete == (scan,)
