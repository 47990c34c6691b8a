"""Running the sender and receiver services inside an integration test: on threads, or as
``diode ... run`` processes; reading back what reached IT."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from diode.config import ReceiverConfig, build_config
from diode.io.kafka import SRC_OFFSET, SRC_PARTITION
from diode.services.receiver import ReceiverService
from diode.services.sender import SenderService

#: seconds a test waits for the services to reach a state before it fails
DEADLINE = 40.0


class Running:
    """A service's ``run`` on a thread; ``stop`` joins it and re-raises what it raised."""

    def __init__(self, service: SenderService | ReceiverService) -> None:
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "service did not stop"
        if self.error is not None:
            raise self.error


def wait_for(condition: Callable[[], bool], what: str, *running: Running) -> None:
    """Until ``condition()`` holds; fails at once if a service failed, or after ``DEADLINE``
    with every service's stats."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if condition():
            return
        for r in running:
            if r.error is not None:
                raise AssertionError(f"waiting for {what}: a service failed") from r.error
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what}: " + "; ".join(str(r.service.stats) for r in running)
    )


def it_source_offsets(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """(source partition, source offset), from the provenance headers, of every record on
    the IT topic, in the order read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"c-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = consumer.list_topics(topic=topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        parts = sorted(md.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    h = dict(msg.headers() or [])
                    out.append((int(h[SRC_PARTITION]), int(h[SRC_OFFSET])))
        return out
    finally:
        consumer.close()


def spawn_diode(
    procs: list[subprocess.Popen[bytes]], cwd: Path, program: str, config: str, log: str
) -> subprocess.Popen[bytes]:
    """``diode PROGRAM run --config CONFIG`` in ``cwd``, its output in ``cwd/log``; added to
    ``procs`` (the ``procs`` fixture kills what a failed test left running)."""
    with (cwd / log).open("wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "diode", program, "run", "--config", config],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )
    procs.append(p)
    return p


def sender_toml(
    *,
    ot: str,
    port: int,
    group: str,
    policy: str = "policy.yaml",
    rate_mbit: float = 200,
    commit_interval_s: float | None = None,
) -> str:
    """A sender config for a test directory holding ``keys/`` and the policy."""
    commit = f"commit_interval_s = {commit_interval_s}\n" if commit_interval_s is not None else ""
    return f"""policy_file = "{policy}"
{commit}[kafka]
bootstrap_servers = "{ot}"
group_id = "{group}"
client = {{ "session.timeout.ms" = 6000 }}
[udp]
host = "127.0.0.1"
port = {port}
rate_mbit = {rate_mbit}
[keys]
signing_key = "keys/sender.key"
receiver_public_key = "keys/receiver.pub"
[audit]
path = "sender-audit.jsonl"
"""


def topic_receiver(tmp: Path, it: str, topic: str, port: int) -> ReceiverService:
    """A receiver for the two-partition IT topic ``ot.TOPIC`` alone (start-up reads back
    the provenance of every allowed topic), keys in ``tmp/keys``, audit log in ``tmp``."""
    keys = tmp / "keys"
    return ReceiverService(
        build_config(
            ReceiverConfig,
            {
                "kafka": {"bootstrap_servers": it, "partitions": 2},
                "udp": {"host": "127.0.0.1", "port": port},
                "keys": {
                    "receiver_key": str(keys / "receiver.key"),
                    "sender_public_key": str(keys / "sender.pub"),
                    "audit_key": str(keys / "receiver-audit.key"),
                },
                "audit": {"path": str(tmp / "receiver-audit.jsonl")},
                "allowed_topics": [f"ot.{topic}"],
                "startup_timeout_s": 20,
            },
        )
    )
