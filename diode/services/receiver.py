"""The receiver program (IT side): UDP -> ``ReceiverSession`` -> checks -> idempotent producer.

Owns the receiver's loop and the promises it keeps:

* every delivered record goes to the IT topic the sender's policy chose (carried as the
  record's last header, ``TARGET_TOPIC``, removed here) and to the same partition number as
  its source partition, so order per partition holds; key, value, headers and timestamp are
  unchanged and provenance headers are appended. Missing target topics are created when the
  config says so;
* defence in depth: the target is re-checked against the receiver's own allow-list
  (``allowed_topics`` globs and/or the policy file); anything else is refused and audited;
* duplicates: at start the last source offset delivered per (source topic, partition) is
  read from the IT topics' provenance headers, and records at or below it are skipped and
  counted, so a sender that resends uncommitted records after a restart adds nothing twice;
* IT Kafka down: records wait in a bounded queue (records and bytes) in front of the
  producer, which retries until Kafka returns. When the queue is full, further records are
  lost and audited: one ``spool_full`` entry per episode and a ``gap`` per source partition;
* every protocol event (gaps, rejections, sessions, link) goes to ``ProtocolAuditor``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from diode.audit import Actor, AuditConfig, AuditEvent, AuditLog, FsyncPolicy
from diode.config import ReceiverConfig, config_fingerprint
from diode.errors import KafkaError
from diode.io.kafka import (
    TARGET_TOPIC,
    Delivery,
    KafkaSink,
    ensure_topic,
    list_topics,
    partition_count,
    provenance_headers,
    read_provenance,
)
from diode.io.udp import UdpReceiver, UdpReceiverConfig
from diode.policy import PolicyEngine, load_policy
from diode.policy.model import RuleAction
from diode.protocol.crypto import load_receiver_private_key, load_signing_key, load_verify_key
from diode.protocol.events import RecordsDelivered
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.records import Record
from diode.services.protocol_audit import ProtocolAuditor

log = logging.getLogger(__name__)

_MAX_WAIT = 0.05
#: records handed to the producer and not yet acknowledged; the rest wait in the spool
_MAX_IN_FLIGHT = 20_000
_STOP_FLUSH_S = 10.0
ALLOW_LIST_RULE = "receiver-allow-list"

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _Loss:
    first_offset: int
    last_offset: int
    count: int


@dataclass(slots=True)
class ReceiverStats:
    delivered: int = 0  # acknowledged by IT Kafka
    queued: int = 0  # accepted into the spool
    duplicates_skipped: int = 0
    refused: int = 0
    spool_lost: int = 0
    produce_failed: int = 0
    topics_created: int = 0
    datagrams: int = 0
    gaps: int = 0
    lost_by_partition: dict[TopicPartition, int] = field(default_factory=dict)


class AllowList:
    """The receiver's own idea of what may arrive: IT topic globs and/or the policy's map."""

    def __init__(self, globs: list[str], engine: PolicyEngine | None) -> None:
        self.globs = tuple(globs)
        self.engine = engine

    def check(self, source_topic: str, target: str) -> str | None:
        """None if ``source_topic`` may arrive as ``target``; else why not."""
        if self.globs and not any(fnmatch.fnmatchcase(target, g) for g in self.globs):
            return f"target topic {target!r} matches no allowed_topics entry"
        if self.engine is not None:
            rule = self.engine.rule_for(source_topic)
            if rule is None or rule.action not in (RuleAction.FORWARD, RuleAction.ALERT):
                return f"the receiver's policy does not forward source topic {source_topic!r}"
            expected = (
                rule.to
                if rule.to is not None
                else (rule.prefix + source_topic if rule.prefix is not None else source_topic)
            )
            if expected != target:
                return (
                    f"the receiver's policy maps {source_topic!r} to {expected!r}, not {target!r}"
                )
        return None


class ReceiverService:
    """One running receiver. ``run()`` blocks until ``stop()`` is called."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self.stats = ReceiverStats()
        self.config_fingerprint = config_fingerprint(config)
        receiver_key = load_receiver_private_key(config.keys.receiver_key)
        sender_key = load_verify_key(config.keys.sender_public_key)
        audit_key = load_signing_key(config.keys.audit_key)
        engine: PolicyEngine | None = None
        policy_fp: str | None = None
        if config.policy_file is not None:
            policy = load_policy(config.policy_file)
            engine = PolicyEngine(policy)
            policy_fp = policy.fingerprint
        self.allow = AllowList(list(config.allowed_topics), engine)
        a = config.audit
        self.audit = AuditLog(
            AuditConfig(
                path=a.path,
                actor=Actor.RECEIVER,
                checkpoint_entries=a.checkpoint_entries,
                checkpoint_seconds=a.checkpoint_seconds,
                rotate_bytes=a.rotate_bytes,
                fsync=FsyncPolicy(a.fsync),
            ),
            audit_key,
            clock=wall,
        )
        self.auditor = ProtocolAuditor(self.audit, interval=a.aggregate_seconds)
        self._stop = threading.Event()
        self._closed = False
        self._udp: UdpReceiver | None = None
        k = config.kafka
        self._client = dict(k.client)
        try:
            self.last_delivered = self._learn_provenance()
            self._udp = UdpReceiver(
                UdpReceiverConfig(
                    host=config.udp.host,
                    port=config.udp.port,
                    payload_size=config.protocol.payload_size,
                    rcvbuf_bytes=config.udp.rcvbuf_bytes,
                    interface=config.udp.interface,
                    gro=config.udp.gro,
                )
            )
            r = config.receiver
            self.session = ReceiverSession(
                config.protocol.protocol_config(),
                receiver_key,
                sender_key,
                options=ReceiverOptions(
                    block_timeout=r.block_timeout_s,
                    max_open_blocks=r.max_open_blocks,
                    receive_window=r.receive_window,
                ),
            )
            self.sink = KafkaSink(
                k.bootstrap_servers,
                self._delivered,
                client=self._client,
                delivery_timeout=k.delivery_timeout_s,
            )
        except BaseException:
            if self._udp is not None:
                self._udp.close()
            self.audit.close()
            raise
        self._spool: deque[tuple[Record, str, bytes]] = deque()
        self._spool_bytes = 0
        self._losing: dict[TopicPartition, _Loss] = {}
        self._partitions: dict[str, int] = {}
        self.audit.append(
            AuditEvent.SERVICE_START,
            {
                "config_fingerprint": self.config_fingerprint,
                "policy_fingerprint": policy_fp,
                "udp": f"{self.local_address[0]}:{self.local_address[1]}",
                "resume_partitions": len(self.last_delivered),
                "protocol_fingerprint": f"{config.protocol.protocol_config().fingerprint:08x}",
            },
        )
        log.info(
            "receiver listening on %s:%d; resuming %d source partition(s)",
            *self.local_address,
            len(self.last_delivered),
        )

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._udp is not None
        return self._udp.local_address

    def _learn_provenance(self) -> dict[TopicPartition, int]:
        k = self.config.kafka
        timeout = self.config.startup_timeout_s
        topics = list_topics(k.bootstrap_servers, client=self._client, timeout=timeout)
        globs = self.config.allowed_topics
        candidates = [
            t for t in topics if not globs or any(fnmatch.fnmatchcase(t, g) for g in globs)
        ]
        return read_provenance(
            k.bootstrap_servers, candidates, client=self._client, timeout=timeout
        )

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> ReceiverStats:
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()
        return self.stats

    def step(self) -> None:
        """One turn: read datagrams, run due timers, route events, feed the producer."""
        assert self._udp is not None
        now = self._clock()
        timer = self.session.next_timer()
        wait = _MAX_WAIT if timer is None else min(_MAX_WAIT, max(0.0, timer - now))
        datagrams = self._udp.recv_batch(1024, wait)
        now = self._clock()
        for d in datagrams:
            self.session.receive_datagram(d, now)
        self.stats.datagrams += len(datagrams)
        timer = self.session.next_timer()
        if timer is not None and now >= timer:
            self.session.poll(now)
        self._drain_events()
        self._pump()
        self.sink.poll(0)
        wall = self._wall()
        self._report_losses(wall)
        self.auditor.tick(wall)

    def _drain_events(self) -> None:
        wall = self._wall()
        event = self.session.next_event()
        while event is not None:
            if isinstance(event, RecordsDelivered):
                self._accept(event)
            self.auditor.handle(event, wall)
            event = self.session.next_event()

    # ------------------------------------------------------------------ records

    def _accept(self, event: RecordsDelivered) -> None:
        max_records = self.config.spool.max_records
        max_bytes = self.config.spool.max_bytes
        for rec in event.records:
            headers = rec.headers
            last = headers[-1] if headers else None
            if last is None or last[0] != TARGET_TOPIC or not last[1]:
                self._refuse(rec, "record carries no target topic")
                continue
            try:
                target = last[1].decode("ascii")
            except UnicodeDecodeError:
                self._refuse(rec, "target topic is not ASCII")
                continue
            why = self.allow.check(rec.topic, target)
            if why is not None:
                self._refuse(rec, why)
                continue
            tp = (rec.topic, rec.partition)
            if rec.offset <= self.last_delivered.get(tp, -1):
                self.stats.duplicates_skipped += 1
                continue
            self.last_delivered[tp] = rec.offset
            out = Record(
                rec.topic,
                rec.partition,
                rec.offset,
                rec.timestamp,
                rec.key,
                rec.value,
                headers[:-1],
            )
            size = out.size
            if len(self._spool) >= max_records or self._spool_bytes + size > max_bytes:
                self._lose(out, "spool_full")
                continue
            self._spool.append((out, target, event.session_id))
            self._spool_bytes += size
            self.stats.queued += 1

    def _refuse(self, rec: Record, reason: str) -> None:
        self.stats.refused += 1
        self.audit.append(
            AuditEvent.RECORD_REFUSED,
            {
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "rule": ALLOW_LIST_RULE,
                "reason": reason[:500],
                "bytes": rec.size,
            },
        )

    def _lose(self, rec: Record, reason: str) -> None:
        """Count a record lost after it arrived; reported as gaps by ``_report_losses``."""
        tp = (rec.topic, rec.partition)
        if reason == "spool_full":
            if not self._losing:
                self.audit.append(
                    AuditEvent.SPOOL_FULL,
                    {
                        "records": len(self._spool),
                        "bytes": self._spool_bytes,
                        "max_records": self.config.spool.max_records,
                        "max_bytes": self.config.spool.max_bytes,
                    },
                )
                log.error("spool full: records are being lost until IT Kafka catches up")
            self.stats.spool_lost += 1
            loss = self._losing.get(tp)
            if loss is None:
                self._losing[tp] = _Loss(rec.offset, rec.offset, 1)
            else:
                loss.last_offset = rec.offset
                loss.count += 1
        else:
            self._gap(tp, rec.offset, rec.offset, 1, reason)
        self.stats.lost_by_partition[tp] = self.stats.lost_by_partition.get(tp, 0) + 1

    def _gap(self, tp: TopicPartition, first: int, last: int, count: int, reason: str) -> None:
        self.stats.gaps += 1
        self.audit.append(
            AuditEvent.GAP,
            {
                "topic": tp[0],
                "partition": tp[1],
                "first_offset": first,
                "last_offset": last,
                "count": count,
                "reason": reason,
            },
        )

    def _report_losses(self, wall: float, force: bool = False) -> None:
        # a spool-full episode ends when there is room again; its losses become gaps then
        if not self._losing:
            return
        if not force and len(self._spool) >= self.config.spool.max_records:
            return
        for tp, loss in sorted(self._losing.items()):
            self._gap(tp, loss.first_offset, loss.last_offset, loss.count, "spool_full")
        self._losing = {}

    def _target_ready(self, target: str, partition: int) -> bool:
        have = self._partitions.get(target)
        if have is not None and partition < have:
            return True
        k = self.config.kafka
        have = partition_count(k.bootstrap_servers, target, client=self._client)
        if (have is None or have <= partition) and k.create_topics:
            have = ensure_topic(
                k.bootstrap_servers,
                target,
                max(k.partitions, partition + 1),
                replication_factor=k.replication_factor,
                client=self._client,
            )
            self.stats.topics_created += 1
        if have is None:
            return False
        self._partitions[target] = have
        return partition < have

    def _pump(self) -> None:
        """Hand spooled records to the producer, in order, as far as it has room."""
        while self._spool and len(self.sink) < _MAX_IN_FLIGHT:
            rec, target, session_id = self._spool[0]
            try:
                ready = self._target_ready(target, rec.partition)
            except KafkaError as exc:
                log.warning("cannot prepare %s: %s", target, exc)
                return  # IT Kafka is unreachable: records stay spooled
            if not ready:
                self._spool.popleft()
                self._spool_bytes -= rec.size
                self._lose(rec, "no_target_partition")
                continue
            try:
                self.sink.produce(
                    rec,
                    target,
                    rec.partition,
                    provenance_headers(rec, session_id),
                    opaque=(rec.topic, rec.partition, rec.offset),
                )
            except KafkaError as exc:
                log.warning("producer full: %s", exc)
                return
            self._spool.popleft()
            self._spool_bytes -= rec.size

    def _delivered(self, delivery: Delivery) -> None:
        if delivery.error is None:
            self.stats.delivered += 1
            return
        self.stats.produce_failed += 1
        opaque = delivery.opaque
        assert isinstance(opaque, tuple) and len(opaque) == 3
        tp = (str(opaque[0]), int(opaque[1]))
        self._gap(tp, int(opaque[2]), int(opaque[2]), 1, "produce_failed")
        self.stats.lost_by_partition[tp] = self.stats.lost_by_partition.get(tp, 0) + 1
        log.error(
            "produce to %s[%d] failed: %s", delivery.topic, delivery.partition, delivery.error
        )

    # ------------------------------------------------------------------ shutdown

    def pending(self) -> int:
        """Records accepted and not yet acknowledged by IT Kafka."""
        return len(self._spool) + len(self.sink)

    def close(self) -> None:
        """Hand over what is spooled, wait for Kafka, audit what could not be written."""
        if self._closed:
            return
        self._closed = True
        try:
            deadline = self._clock() + _STOP_FLUSH_S
            while self._spool and self._clock() < deadline:
                self._pump()
                self.sink.poll(0.05)
            self.sink.flush(max(0.0, deadline - self._clock()))
            left_in_spool = list(self._spool)
            self._spool.clear()
            for rec, _target, _sid in left_in_spool:
                self._lose(rec, "shutdown")
            unacked = len(self.sink)
            wall = self._wall()
            self._report_losses(wall, force=True)
            self.auditor.close(wall)
            counters = self.session.counters()
            self.audit.append(
                AuditEvent.SERVICE_STOP,
                {
                    "config_fingerprint": self.config_fingerprint,
                    "policy_fingerprint": (
                        self.allow.engine.fingerprint if self.allow.engine is not None else None
                    ),
                    "records_delivered": self.stats.delivered,
                    "records_lost": counters.records_lost,
                    "duplicates_skipped": self.stats.duplicates_skipped,
                    "records_refused": self.stats.refused,
                    "unacknowledged": unacked,
                },
            )
        finally:
            if self._udp is not None:
                self._udp.close()
            self.audit.close()


__all__ = ["ALLOW_LIST_RULE", "AllowList", "ReceiverService", "ReceiverStats"]
