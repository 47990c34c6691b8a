"""The sender's batch path against a real OT cluster: runs of plain forwards go to the session
together, yet every record is judged, audited, counted and committed exactly as if handled one
at a time, whatever size the consumer's batches have."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from diode.audit import decode_line
from diode.config import SenderConfig, build_config
from diode.io.kafka import ensure_topic
from diode.protocol.crypto import generate_key_files
from diode.services.sender import SenderService
from tests.integration.servicekit import DEADLINE

pytestmark = pytest.mark.kafka

POLICY = """\
version: 1
name: batches
quarantine_topic: {prefix}.quarantine
rules:
  - id: lines
    match: {{exact: {prefix}.a}}
    prefix: "ot."
  - id: commands
    match: {{exact: {prefix}.cmd}}
    action: drop
"""

#: a value no block of the test's protocol (512-byte symbols, k=2) can carry
TOO_LARGE = 200_000


class Plant:
    """Unique topics on the OT cluster, the keys, the policy and a UDP sink for one test."""

    def __init__(self, tmp: Path, bootstrap: str) -> None:
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.prefix = f"batch{uuid.uuid4().hex[:8]}"
        self.group = f"{self.prefix}-sender"
        self.a = f"{self.prefix}.a"
        self.cmd = f"{self.prefix}.cmd"
        for topic in (self.a, self.cmd):
            ensure_topic(bootstrap, topic, 1)
        generate_key_files(tmp / "keys")
        (tmp / "policy.yaml").write_text(POLICY.format(prefix=self.prefix))
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))

    def produce(self, records: list[tuple[str, int]]) -> None:
        """``(topic, value size)`` in order; offsets follow per topic from 0."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        for topic, size in records:
            producer.produce(
                topic, key=b"k", value=b"v" * size, headers=[("source", b"s")], timestamp=1
            )
        assert producer.flush(30) == 0

    def service(self, batch_size: int, rate_mbit: float = 100.0) -> SenderService:
        config = build_config(
            SenderConfig,
            {
                "kafka": {
                    "bootstrap_servers": self.bootstrap,
                    "group_id": self.group,
                    "topics": [self.a, self.cmd],
                    "batch_size": batch_size,
                },
                "udp": {
                    "host": "127.0.0.1",
                    "port": self.sink.getsockname()[1],
                    "gso": False,
                    "rate_mbit": rate_mbit,
                },
                "keys": {
                    "signing_key": str(self.tmp / "keys" / "sender.key"),
                    "receiver_public_key": str(self.tmp / "keys" / "receiver.pub"),
                },
                "policy_file": str(self.tmp / "policy.yaml"),
                "audit": {"path": str(self.tmp / "audit.jsonl")},
                "protocol": {"payload_size": 512, "k": 2, "m": 1},
            },
        )
        return SenderService(config)

    def run(self, batch_size: int, consumed: int, rate_mbit: float = 100.0) -> SenderService:
        """Step a sender until it has judged ``consumed`` records, then close it (which
        commits)."""
        svc = self.service(batch_size, rate_mbit)
        try:
            deadline = time.monotonic() + DEADLINE
            while svc.stats.consumed < consumed:
                assert time.monotonic() < deadline, f"consumed only {svc.stats}"
                svc.step()
            assert svc.stats.consumed == consumed
        finally:
            svc.close()
        return svc

    def committed(self) -> dict[str, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            parts = consumer.committed(
                [TopicPartition(self.a, 0), TopicPartition(self.cmd, 0)], timeout=10
            )
        finally:
            consumer.close()
        return {tp.topic: tp.offset for tp in parts}

    def refused(self) -> list[tuple[str, int, str]]:
        out = []
        for line in (self.tmp / "audit.jsonl").read_bytes().splitlines():
            entry = decode_line(line)
            if entry.event == "record_refused":
                f = entry.fields
                out.append((str(f["topic"]), int(str(f["offset"])), str(f["reason"])))
        return out


@pytest.fixture
def plant(tmp_path: Path, ot_kafka: Any) -> Iterator[Plant]:
    p = Plant(tmp_path, ot_kafka.bootstrap)
    try:
        yield p
    finally:
        p.sink.close()


@pytest.mark.parametrize(
    ("batch_size", "rate_mbit"),
    # paced (records go to the session in slices) and unpaced (0: no pacing, no slices)
    [(1, 100.0), (2, 100.0), (1000, 100.0), (1000, 0.0)],
)
def test_a_too_large_record_amid_forwards_is_refused_alone(
    plant: Plant, batch_size: int, rate_mbit: float
) -> None:
    plant.produce(
        [
            (plant.a, 40),
            (plant.a, 40),
            (plant.a, TOO_LARGE),
            (plant.a, 40),
            (plant.cmd, 40),
            (plant.a, 40),
        ]
    )
    svc = plant.run(batch_size, consumed=6, rate_mbit=rate_mbit)
    stats = svc.stats
    assert (stats.forwarded, stats.too_large, stats.dropped) == (4, 1, 1)
    refused = plant.refused()
    # in record order (one partition each, so the consumer keeps it within a topic)
    assert sorted((t, o) for t, o, _ in refused) == [(plant.a, 2), (plant.cmd, 0)]
    reasons = {t: r for t, _, r in refused}
    assert "too large for the protocol" in reasons[plant.a]
    session = svc.session
    assert session is not None and session.counters().records == 4
    assert plant.committed() == {plant.a: 5, plant.cmd: 1}


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_a_refused_last_record_does_not_hold_back_or_overstate_the_commit(
    plant: Plant, batch_size: int
) -> None:
    plant.produce([(plant.a, 40), (plant.a, 40), (plant.a, TOO_LARGE)])
    svc = plant.run(batch_size, consumed=3)
    assert svc.stats.forwarded == 2 and svc.stats.too_large == 1
    assert [(t, o) for t, o, _ in plant.refused()] == [(plant.a, 2)]
    # the refused record is the partition's last: everything consumed is safe to commit
    assert plant.committed()[plant.a] == 3


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_forwards_split_over_batches_all_cross_and_commit(plant: Plant, batch_size: int) -> None:
    plant.produce([(plant.a, 40)] * 50)
    svc = plant.run(batch_size, consumed=50)
    assert svc.stats.forwarded == 50 and svc.stats.datagrams > 0
    session = svc.session
    assert session is not None and session.counters().records == 50
    assert plant.committed()[plant.a] == 50
