"""A sender killed mid-stream (SIGKILL: no flush, no final commit) and started again.

The new process resumes from the OT offsets the old one committed, so it resends what was in
flight. On IT every record arrives exactly once, and the receiver's audit log accounts for the
crash exactly: whatever gaps the cut-off session left are filled by the resend
(``gap_recovered``), resent records already delivered are ``duplicates_skipped``, and the
gaps less the recoveries (what ``diode audit stats`` calls ``records_lost``) are zero.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from diode.audit import decode_line, verify
from diode.cli import main
from diode.io.kafka import ensure_topic
from diode.protocol.crypto import generate_key_files, load_verify_key
from tests.integration.servicekit import (
    Running,
    it_source_offsets,
    sender_toml,
    spawn_diode,
    topic_receiver,
    wait_for,
)

pytestmark = pytest.mark.kafka

RECORDS = 3000
POLICY = """\
version: 1
name: crash
rules:
  - id: lines
    match: {{exact: {topic}}}
    prefix: "ot."
"""


def test_a_killed_sender_restarts_without_loss_or_duplicates(
    tmp_path: Path, ot_kafka: Any, it_kafka: Any, procs: list[subprocess.Popen[bytes]]
) -> None:
    topic = f"crash{uuid.uuid4().hex[:8]}"
    ot, it = ot_kafka.bootstrap, it_kafka.bootstrap
    ensure_topic(ot, topic, 2)
    keys = tmp_path / "keys"
    generate_key_files(keys)
    (tmp_path / "policy.yaml").write_text(POLICY.format(topic=topic))
    producer = Producer({"bootstrap.servers": ot, "enable.idempotence": True})
    for i in range(RECORDS):
        producer.produce(topic, value=b"%06d" % i + b"x" * 994, key=b"k%d" % i, partition=i % 2)
    assert producer.flush(30) == 0

    receiver = topic_receiver(tmp_path, it, topic, 0)
    port = receiver.local_address[1]
    rx = Running(receiver)
    # paced at 8 Mbit/s, 3 MB take about 3 s: the kill lands with blocks in flight
    (tmp_path / "sender.toml").write_text(
        sender_toml(ot=ot, port=port, group=f"g-{topic}", rate_mbit=8, commit_interval_s=0.1)
    )

    first = spawn_diode(procs, tmp_path, "sender", "sender.toml", "sender-1.log")
    wait_for(lambda: receiver.stats.delivered >= 600, "records from the first sender", rx)
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    crossed_before = receiver.stats.delivered
    assert crossed_before < RECORDS, "the sender must be killed mid-stream"

    second = spawn_diode(procs, tmp_path, "sender", "sender.toml", "sender-2.log")
    wait_for(lambda: receiver.stats.delivered >= RECORDS, "every record on IT", rx)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    rx.stop()

    # exactly once on IT, in order per partition
    got = it_source_offsets(it, f"ot.{topic}")
    assert len(got) == RECORDS and len(set(got)) == RECORDS
    for part in (0, 1):
        offsets = [o for p, o in got if p == part]
        assert offsets == sorted(offsets) == list(range(RECORDS // 2))

    # the receiver's log says the same: two sessions, no loss, every resend accounted for
    path = tmp_path / "receiver-audit.jsonl"
    assert verify([path], load_verify_key(keys / "receiver-audit.pub")).ok
    entries = [decode_line(line) for line in path.read_bytes().splitlines()]
    events = [e.event for e in entries]
    assert events.count("session_restart") == 1

    def total(event: str) -> int:
        return sum(int(str(e.fields["count"])) for e in entries if e.event == event)

    assert total("records_delivered") == RECORDS
    assert total("duplicates_skipped") == receiver.stats.duplicates_skipped
    assert total("gap") == total("gap_recovered")
    stats = CliRunner().invoke(main, ["audit", "stats", str(path), "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["records_lost"] == 0
    (stop,) = [e.fields for e in entries if e.event == "service_stop"]
    assert stop["records_lost"] == 0
