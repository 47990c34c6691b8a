"""Both test clusters are real, separate Kafka clusters that keep key, headers, timestamp."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.kafka


def _create_topic(bootstrap: str, name: str, partitions: int = 2) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def _round_trip(bootstrap: str, topic: str) -> None:
    _create_topic(bootstrap, topic)
    sent: list[tuple[bytes, bytes, list[tuple[str, bytes | None]], int, int]] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(20):
        key = f"sensor-{i % 3}".encode()
        value = f'{{"v": {i}}}'.encode()
        headers: list[tuple[str, bytes | None]] = [
            ("unit", b"degC"),
            ("seq", str(i).encode()),
            ("empty", None),
        ]
        ts = 1_700_000_000_000 + i * 1000
        partition = i % 2
        producer.produce(
            topic, key=key, value=value, headers=headers, timestamp=ts, partition=partition
        )
        sent.append((key, value, headers, ts, partition))
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    got: list[Any] = []
    for _ in range(100):
        if len(got) >= len(sent):
            break
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            assert msg.error() is None, msg.error()
            got.append(msg)
    consumer.close()

    assert len(got) == len(sent)
    by_value = {m.value(): m for m in got}
    for key, value, headers, ts, partition in sent:
        msg = by_value[value]
        assert msg.key() == key
        assert msg.headers() == headers
        assert msg.timestamp() == (1, ts)  # TIMESTAMP_CREATE_TIME
        assert msg.partition() == partition


def test_round_trip_on_ot_cluster(ot_kafka: Any) -> None:
    _round_trip(ot_kafka.bootstrap, "plant.telemetry")


def test_round_trip_on_it_cluster(it_kafka: Any) -> None:
    _round_trip(it_kafka.bootstrap, "ot.plant.telemetry")


def test_clusters_are_separate(ot_kafka: Any, it_kafka: Any) -> None:
    assert ot_kafka.bootstrap != it_kafka.bootstrap
    only_ot = f"only-ot-{uuid.uuid4().hex[:8]}"
    _create_topic(ot_kafka.bootstrap, only_ot, partitions=1)
    it_topics = AdminClient({"bootstrap.servers": it_kafka.bootstrap}).list_topics(timeout=10)
    ot_topics = AdminClient({"bootstrap.servers": ot_kafka.bootstrap}).list_topics(timeout=10)
    assert only_ot in ot_topics.topics
    assert only_ot not in it_topics.topics
