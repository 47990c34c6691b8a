"""The receiver stops while the sender keeps sending, and starts again.

What crossed the diode while nobody listened is gone: nothing can ask the sender for it. The
restarted receiver learns from IT Kafka what was delivered, sees the sender's session resume
further on, and reports the records in between as an ``unseen`` gap, so the audit log's loss
equals exactly what is missing on IT. Nothing is delivered twice.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from diode.audit import decode_line, verify
from diode.cli import main
from diode.config import SenderConfig, build_config
from diode.io.kafka import ensure_topic
from diode.protocol.crypto import generate_key_files, load_verify_key
from diode.services.sender import SenderService
from tests.integration.servicekit import Running, it_source_offsets, topic_receiver, wait_for

pytestmark = pytest.mark.kafka

RECORDS = 3000
POLICY = """\
version: 1
name: restart
rules:
  - id: lines
    match: {{exact: {topic}}}
    prefix: "ot."
"""


@pytest.mark.parametrize(
    "rate_mbit",
    [
        # the restarted receiver joins the session while it still sends records (1.5 MB
        # take about 7 s at 2 Mbit/s)
        2,
        # ... or when it has sent them all and only its heartbeats tell what was sent
        16,
    ],
)
def test_what_was_sent_while_the_receiver_was_down_is_reported_exactly(
    tmp_path: Path, ot_kafka: Any, it_kafka: Any, rate_mbit: int
) -> None:
    topic = f"rxr{uuid.uuid4().hex[:8]}"
    ot, it = ot_kafka.bootstrap, it_kafka.bootstrap
    ensure_topic(ot, topic, 2)
    keys = tmp_path / "keys"
    generate_key_files(keys)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(topic=topic))
    producer = Producer({"bootstrap.servers": ot, "enable.idempotence": True})
    for i in range(RECORDS):
        producer.produce(topic, value=b"%06d" % i + b"x" * 494, partition=i % 2)
    assert producer.flush(30) == 0

    first = topic_receiver(tmp_path, it, topic, 0)
    port = first.local_address[1]
    rx = Running(first)
    sender = SenderService(
        build_config(
            SenderConfig,
            {
                "kafka": {
                    "bootstrap_servers": ot,
                    "group_id": f"g-{topic}",
                    "client": {"session.timeout.ms": 6000},
                },
                # paced: 1.5 MB take seconds, and the receiver is away for part of them
                "udp": {"host": "127.0.0.1", "port": port, "rate_mbit": rate_mbit},
                "keys": {
                    "signing_key": str(keys / "sender.key"),
                    "receiver_public_key": str(keys / "receiver.pub"),
                },
                "policy_file": str(policy),
                "audit": {"path": str(tmp_path / "sender-audit.jsonl")},
            },
        )
    )
    tx = Running(sender)
    src = [(topic, 0), (topic, 1)]
    # both source partitions have a history on IT before the receiver stops
    wait_for(
        lambda: all(first.last_delivered.get(tp, -1) >= 100 for tp in src),
        "records of both partitions before the receiver stops",
        rx,
        tx,
    )
    rx.stop()
    away_from = sender.stats.datagrams
    # away while the sender puts about 0.3 MB on the wire
    wait_for(lambda: sender.stats.datagrams >= away_from + 200, "datagrams sent meanwhile", tx)
    second = topic_receiver(tmp_path, it, topic, port)
    rx = Running(second)
    last = RECORDS // 2 - 1
    wait_for(
        lambda: all(second.auditor.ledger.accounted(*tp) >= last for tp in src),
        "the last record of each partition delivered or reported lost",
        rx,
        tx,
    )
    tx.stop()
    rx.stop()

    got = it_source_offsets(it, f"ot.{topic}")
    assert len(set(got)) == len(got), "a record was delivered twice"
    missing = RECORDS - len(got)
    assert missing > 0, "the receiver must have missed what was sent while it was down"
    for part in (0, 1):
        offsets = [o for p, o in got if p == part]
        assert offsets == sorted(offsets)

    path = tmp_path / "receiver-audit.jsonl"
    assert verify([path], load_verify_key(keys / "receiver-audit.pub")).ok
    entries = [decode_line(line) for line in path.read_bytes().splitlines()]
    # the paced link loses nothing: no gap at all while the first receiver listened
    first_stop = next(i for i, e in enumerate(entries) if e.event == "service_stop")
    assert not [e for e in entries[:first_stop] if e.event in ("gap", "blocks_lost")]
    unseen = [e.fields for e in entries if e.event == "gap" and e.fields["reason"] == "unseen"]
    assert unseen, "the loss must be named from what the restarted receiver learned"
    if rate_mbit == 2:
        assert second.stats.delivered > 0, "the receiver was meant to join mid-stream"
    else:
        assert second.stats.delivered == 0, "the receiver was meant to join an idle session"
    assert all(f["count_is_bound"] is True for f in unseen)
    # every missing record is inside a reported gap, and the audit's loss is exactly them
    gaps = [e.fields for e in entries if e.event == "gap"]
    have = set(got)
    for part in (0, 1):
        for offset in range(RECORDS // 2):
            if (part, offset) not in have:
                assert any(
                    int(str(g["partition"])) == part
                    and int(str(g["first_offset"])) <= offset <= int(str(g["last_offset"]))
                    for g in gaps
                ), f"record {part}/{offset} missing on IT and in no gap"
    stats = CliRunner().invoke(main, ["audit", "stats", str(path), "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["records_lost"] == missing
