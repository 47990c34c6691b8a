"""``diode sender run`` / ``diode receiver run`` as real processes: SIGTERM, SIGHUP.

* SIGHUP makes the sender reload its policy: a broken file is rejected (``policy_rejected``)
  and the old policy keeps running; a valid one is audited (``policy_reloaded``), its new
  topic is subscribed and forwarded, and the receiver audits the sender's new policy
  fingerprint (``policy_changed``) from the heartbeats;
* SIGTERM stops both cleanly: exit status 0, ``service_stop`` audited, the final commit
  done, and both audit logs verify with their keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from diode.audit import verify
from diode.io.kafka import ensure_topic
from diode.protocol.crypto import generate_key_files, load_verify_key
from tests.integration.servicekit import sender_toml, spawn_diode

pytestmark = pytest.mark.kafka

DEADLINE = 40.0

POLICY_V1 = """\
version: 1
name: signals
rules:
  - id: a
    match: {{exact: {prefix}.a}}
    prefix: "ot."
"""

POLICY_V2 = """\
version: 1
name: signals
rules:
  - id: a
    match: {{exact: {prefix}.a}}
    prefix: "ot."
  - id: b
    match: {{exact: {prefix}.b}}
    prefix: "ot."
"""


def _udp_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(
    condition: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if condition():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"waiting for {what}: {p.args!r} exited with {p.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _produce(bootstrap: str, topic: str, start: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(start, start + n):
        producer.produce(topic, value=f"{topic}:{i}".encode(), partition=0)
    assert producer.flush(30) == 0


def _count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"c-{uuid.uuid4()}"})
    try:
        md = consumer.list_topics(topic=topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        return sum(
            high - low
            for low, high in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in md.partitions
            )
        )
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _entries(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_signals(tmp_path: Path, ot_kafka: Any, it_kafka: Any, procs: list[Any]) -> None:
    prefix = f"sig{uuid.uuid4().hex[:6]}"
    ot, it = ot_kafka.bootstrap, it_kafka.bootstrap
    keys = tmp_path / "keys"
    generate_key_files(keys)
    for t in ("a", "b"):
        ensure_topic(ot, f"{prefix}.{t}", 1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_V1.format(prefix=prefix))
    port = _udp_port()
    group = f"g-{prefix}"
    (tmp_path / "receiver.toml").write_text(
        f"""
allowed_topics = ["ot.{prefix}.*"]
startup_timeout_s = 20
[kafka]
bootstrap_servers = "{it}"
[udp]
host = "127.0.0.1"
port = {port}
[keys]
receiver_key = "keys/receiver.key"
sender_public_key = "keys/sender.pub"
audit_key = "keys/receiver-audit.key"
[audit]
path = "receiver-audit.jsonl"
[spool]
path = "spool"
"""
    )
    (tmp_path / "sender.toml").write_text(
        sender_toml(ot=ot, port=port, group=group, commit_interval_s=0.2)
    )

    def start(name: str) -> subprocess.Popen[bytes]:
        return spawn_diode(procs, tmp_path, name, f"{name}.toml", f"{name}.log")

    def log_has(name: str, text: str) -> Callable[[], bool]:
        return lambda: text in (tmp_path / f"{name}.log").read_text(errors="replace")

    receiver = start("receiver")
    _wait_for(log_has("receiver", "receiver listening"), "the receiver to start", procs)
    sender = start("sender")
    _produce(ot, f"{prefix}.a", 0, 10)
    _produce(ot, f"{prefix}.b", 0, 10)
    _wait_for(lambda: _count(it, f"ot.{prefix}.a") >= 10, "topic a on IT", procs)

    # a broken policy on SIGHUP is rejected; the old one keeps running
    policy.write_text("version: 1\nrules: [this is not a rule]\n")
    sender.send_signal(signal.SIGHUP)
    _wait_for(log_has("sender", "rejected, keeping"), "the rejection", procs)
    _produce(ot, f"{prefix}.a", 10, 5)
    _wait_for(lambda: _count(it, f"ot.{prefix}.a") >= 15, "topic a still forwarded", procs)
    assert _count(it, f"ot.{prefix}.b") == 0

    # a valid one is taken, and its new topic is forwarded from then on
    policy.write_text(POLICY_V2.format(prefix=prefix))
    sender.send_signal(signal.SIGHUP)
    _wait_for(log_has("sender", "policy reloaded"), "the reload", procs)
    _produce(ot, f"{prefix}.b", 10, 5)
    _wait_for(lambda: _count(it, f"ot.{prefix}.b") >= 15, "the new topic on IT", procs)

    # SIGTERM: clean stops, exit 0
    sender.send_signal(signal.SIGTERM)
    assert sender.wait(30) == 0
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(30) == 0
    assert _count(it, f"ot.{prefix}.a") == 15 and _count(it, f"ot.{prefix}.b") == 15
    # the final commit covers everything that crossed
    assert _committed(ot, group, f"{prefix}.a") == 15
    assert _committed(ot, group, f"{prefix}.b") == 15

    s_log = _entries(tmp_path / "sender-audit.jsonl")
    r_log = _entries(tmp_path / "receiver-audit.jsonl")
    s_events = [e["event"] for e in s_log]
    assert s_events.count("policy_rejected") == 1 and s_events.count("policy_reloaded") == 1
    assert s_events.count("service_stop") == 1 and "service_stop" in [e["event"] for e in r_log]
    reloaded = next(e["fields"] for e in s_log if e["event"] == "policy_reloaded")
    new_fp = reloaded["policy_fingerprint"]
    stop = next(e["fields"] for e in s_log if e["event"] == "service_stop")
    assert stop["policy_fingerprint"] == new_fp and stop["error"] is None
    # the receiver saw the sender's policy change in the heartbeats
    changes = [e["fields"] for e in r_log if e["event"] == "policy_changed"]
    want = bytes.fromhex(new_fp) if len(new_fp) == 64 else hashlib.sha256(new_fp.encode()).digest()
    assert changes[-1]["sender_policy_fingerprint"] == want.hex()
    assert changes[-1]["previous_fingerprint"] == changes[-2]["sender_policy_fingerprint"]
    assert changes[-1]["matches_receiver"] is None  # this receiver has no policy of its own

    for path, key in (
        (tmp_path / "sender-audit.jsonl", keys / "sender.pub"),
        (tmp_path / "receiver-audit.jsonl", keys / "receiver-audit.pub"),
    ):
        report = verify([path], load_verify_key(key))
        assert report.ok, report
    assert list((tmp_path / "spool").glob("segment-*.spool")) == []


def test_receiver_reloads_its_own_policy(
    tmp_path: Path, ot_kafka: Any, it_kafka: Any, procs: list[Any]
) -> None:
    """The receiver re-checks with its own policy file: what that policy does not forward is
    refused on the IT side (audited with the record's digests, not its content); SIGHUP
    reloads it, a broken file is rejected and the old policy kept."""
    prefix = f"rsig{uuid.uuid4().hex[:6]}"
    ot, it = ot_kafka.bootstrap, it_kafka.bootstrap
    keys = tmp_path / "keys"
    generate_key_files(keys)
    for t in ("a", "b"):
        ensure_topic(ot, f"{prefix}.{t}", 1)
    (tmp_path / "sender-policy.yaml").write_text(POLICY_V2.format(prefix=prefix))
    r_policy = tmp_path / "receiver-policy.yaml"
    r_policy.write_text(POLICY_V1.format(prefix=prefix))
    port = _udp_port()
    (tmp_path / "receiver.toml").write_text(
        f"""
policy_file = "receiver-policy.yaml"
startup_timeout_s = 20
[kafka]
bootstrap_servers = "{it}"
[udp]
host = "127.0.0.1"
port = {port}
[keys]
receiver_key = "keys/receiver.key"
sender_public_key = "keys/sender.pub"
audit_key = "keys/receiver-audit.key"
[audit]
path = "receiver-audit.jsonl"
record_content = "digest"
"""
    )
    (tmp_path / "sender.toml").write_text(
        sender_toml(ot=ot, port=port, group=f"g-{prefix}", policy="sender-policy.yaml")
    )
    r_log_path = tmp_path / "receiver.log"

    def start(name: str, log: Path) -> subprocess.Popen[bytes]:
        return spawn_diode(procs, tmp_path, name, f"{name}.toml", log.name)

    def receiver_says(text: str) -> Callable[[], bool]:
        return lambda: text in r_log_path.read_text(errors="replace")

    def refused() -> list[dict[str, Any]]:
        return [
            e["fields"]
            for e in _entries(tmp_path / "receiver-audit.jsonl")
            if e["event"] == "record_refused"
        ]

    receiver = start("receiver", r_log_path)
    _wait_for(receiver_says("receiver listening"), "the receiver to start", procs)
    sender = start("sender", tmp_path / "sender.log")
    _produce(ot, f"{prefix}.a", 0, 5)
    _produce(ot, f"{prefix}.b", 0, 5)
    _wait_for(lambda: _count(it, f"ot.{prefix}.a") >= 5, "topic a on IT", procs)
    # b crosses the diode (the sender forwards it) but the receiver's policy refuses it
    _wait_for(lambda: len(refused()) >= 5, "b refused on the IT side", procs)
    assert _count(it, f"ot.{prefix}.b") == 0

    r_policy.write_text("version: 1\nrules: [this is not a rule]\n")
    receiver.send_signal(signal.SIGHUP)
    _wait_for(receiver_says("rejected, keeping"), "the rejection", procs)

    r_policy.write_text(POLICY_V2.format(prefix=prefix))
    receiver.send_signal(signal.SIGHUP)
    _wait_for(receiver_says("policy reloaded"), "the reload", procs)
    _produce(ot, f"{prefix}.b", 5, 5)
    _wait_for(lambda: _count(it, f"ot.{prefix}.b") >= 5, "b accepted after the reload", procs)

    sender.send_signal(signal.SIGTERM)
    assert sender.wait(30) == 0
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(30) == 0
    assert _count(it, f"ot.{prefix}.a") == 5 and _count(it, f"ot.{prefix}.b") == 5

    r_log = _entries(tmp_path / "receiver-audit.jsonl")
    events = [e["event"] for e in r_log]
    assert events.count("policy_loaded") == 1
    assert events.count("policy_rejected") == 1 and events.count("policy_reloaded") == 1
    loaded = next(e["fields"] for e in r_log if e["event"] == "policy_loaded")
    reloaded = next(e["fields"] for e in r_log if e["event"] == "policy_reloaded")
    assert reloaded["old_fingerprint"] == loaded["policy_fingerprint"]
    rejected = next(e["fields"] for e in r_log if e["event"] == "policy_rejected")
    assert rejected["kept_fingerprint"] == loaded["policy_fingerprint"]
    start_entry = next(e["fields"] for e in r_log if e["event"] == "service_start")
    stop_entry = next(e["fields"] for e in r_log if e["event"] == "service_stop")
    assert start_entry["policy_fingerprint"] == loaded["policy_fingerprint"]
    assert stop_entry["policy_fingerprint"] == reloaded["policy_fingerprint"]
    # the same policy on both sides has the same fingerprint
    s_loaded = next(
        e["fields"]
        for e in _entries(tmp_path / "sender-audit.jsonl")
        if e["event"] == "policy_loaded"
    )
    assert s_loaded["policy_fingerprint"] == reloaded["policy_fingerprint"]
    # exactly the five records of b sent before the reload were refused, with digests only
    gone = refused()
    assert sorted(int(f["offset"]) for f in gone) == [0, 1, 2, 3, 4]
    for f in gone:
        assert f["topic"] == f"{prefix}.b" and f["rule"] == "receiver-allow-list"
        value = f"{prefix}.b:{f['offset']}".encode()
        assert f["value_sha256"] == hashlib.sha256(value).hexdigest()
        assert f["key_sha256"] is None and "value_b64" not in f
    report = verify(
        [tmp_path / "receiver-audit.jsonl"], load_verify_key(keys / "receiver-audit.pub")
    )
    assert report.ok, report
