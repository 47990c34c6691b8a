"""Running the sender and receiver services on threads inside an integration test."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

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
