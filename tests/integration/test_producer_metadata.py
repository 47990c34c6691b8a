"""A topic grown through the admin API is usable by the producer at once after a refresh."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from diode.io.kafka import Delivery, KafkaSink, ensure_topic
from diode.protocol.records import Record

pytestmark = pytest.mark.kafka


def test_producer_sees_a_grown_partition_after_refresh(it_kafka: Any) -> None:
    topic = f"grow-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(it_kafka.bootstrap, topic, 1, replication_factor=1) == 1
    results: list[Delivery] = []
    sink = KafkaSink(it_kafka.bootstrap, results.append, delivery_timeout=20.0)
    rec = Record("src", 0, 1, 1_700_000_000_000, b"k", b"v", (("h", b"1"),))
    sink.produce(rec, topic, 0)
    assert sink.flush(20) == 0
    assert results[-1].error is None
    # grow the topic behind the producer's back, as the receiver does for a new partition
    assert ensure_topic(it_kafka.bootstrap, topic, 2, replication_factor=1) == 2
    assert sink.refresh_metadata(topic, 2) == 2
    sink.produce(rec, topic, 1)
    assert sink.flush(20) == 0
    assert results[-1].error is None, results[-1].error
    assert results[-1].partition == 1
