"""The receiver program (IT side): UDP -> ``ReceiverSession`` -> checks -> idempotent producer.

Owns the receiver's loop and the promises it keeps:

* every delivered record goes to the IT topic the sender's policy chose (carried as the
  record's last header, ``TARGET_TOPIC``, removed here) and to the same partition number as
  its source partition, so order per partition holds; key, value, headers and timestamp are
  unchanged and provenance headers are appended. Missing target topics are created when the
  config says so;
* defence in depth: the target is re-checked against the receiver's own allow-list
  (``allowed_topics`` globs and/or the policy file, reloaded on SIGHUP or when it changes,
  like the sender's); anything else is refused and audited;
* duplicates: at start the last source offset delivered per (source topic, partition) is
  read from the IT topics' provenance headers, and records at or below it are skipped and
  counted, so a sender that resends uncommitted records after a restart adds nothing twice;
* IT Kafka down: every accepted record goes through the bounded spool
  (``diode.services.spool``: on disk when ``[spool] path`` is set) before the producer, and
  stays there until Kafka acknowledges it; the producer retries until Kafka returns and the
  spool drains in order. When the spool is full, further records are lost and audited: one
  ``spool_full`` entry per episode and an exact ``gap`` per source partition once room returns;
* stop: spooled records are handed to Kafka for ``[spool] stop_flush_s``; what is still not
  acknowledged stays on disk and is delivered at the next start (records already in Kafka,
  by provenance, are skipped), or, with a memory spool, becomes one ``gap`` (reason
  ``shutdown``) per source partition;
* every protocol event (gaps, rejections, sessions, link) goes to ``ProtocolAuditor``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from diode.audit import Actor, AuditEvent
from diode.audit.review import last_reported_losses
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
from diode.policy import PolicyEngine, ReloadingPolicy
from diode.policy.model import RuleAction
from diode.policy.reload import PolicyEvent, PolicyReloaded
from diode.protocol.crypto import load_receiver_private_key, load_signing_key, load_verify_key
from diode.protocol.events import HeartbeatReceived, RecordsDelivered
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.records import Record
from diode.services.common import (
    ServiceLoop,
    TopicPartition,
    audit_policy_event,
    loop_wait,
    open_audit_log,
    policy_fingerprint_bytes,
    record_content,
)
from diode.services.protocol_audit import ProtocolAuditor
from diode.services.spool import Spool, SpoolConfig, SpoolEntry, SpoolFsync, SpoolItem

log = logging.getLogger(__name__)

#: records handed to the producer and not yet acknowledged; the rest wait in the spool
_MAX_IN_FLIGHT = 20_000
#: after IT Kafka did not answer a metadata request, wait this long before asking again
_KAFKA_RETRY_S = 1.0
ALLOW_LIST_RULE = "receiver-allow-list"
#: the sender's heartbeats name a policy other than the last one seen (or the first one)
POLICY_CHANGED = "policy_changed"
#: the start-up provenance scan of an IT partition hit its bound before it was exact
PROVENANCE_INCOMPLETE = "provenance_incomplete"


@dataclass(slots=True)
class _Loss:
    first_offset: int
    last_offset: int
    count: int


@dataclass(slots=True)
class ReceiverStats:
    delivered: int = 0  # acknowledged by IT Kafka
    queued: int = 0  # accepted into the spool
    replayed: int = 0  # left in the on-disk spool by a previous run, delivered by this one
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

    def expected_sources(self, target: str, partition: int) -> set[TopicPartition] | None:
        """The source partitions that can reach IT ``target[partition]``, or None if unknown.

        Known only from the receiver's policy: an exact rule, or a glob/regex rule without
        ``to`` (its target is the source name, perhaps prefixed: one source per target). A
        glob/regex rule with ``to`` maps many sources to one target: unknown."""
        engine = self.engine
        if engine is None:
            return None
        out: set[TopicPartition] = set()
        for rule in engine.policy.model.rules:
            if rule.action not in (RuleAction.FORWARD, RuleAction.ALERT):
                continue
            m = rule.match
            if m.exact is not None:
                candidate: str | None = m.exact
            elif rule.to is not None:
                if rule.to == target:
                    return None
                candidate = None
            elif rule.prefix is not None:
                candidate = target[len(rule.prefix) :] if target.startswith(rule.prefix) else None
            else:
                candidate = target
            if candidate and self.check(candidate, target) is None:
                out.add((candidate, partition))
        return out

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


class ReceiverService(ServiceLoop[ReceiverStats]):
    """One running receiver. ``run()`` blocks until ``stop()`` is called."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.config = config
        self._clock = clock
        self._wall = wall
        self.stats = ReceiverStats()
        self.config_fingerprint = config_fingerprint(config)
        receiver_key = load_receiver_private_key(config.keys.receiver_key)
        sender_key = load_verify_key(config.keys.sender_public_key)
        audit_key = load_signing_key(config.keys.audit_key)
        # what the previous run reported lost is not reported again (read before this run
        # appends to the log)
        self._reported_before = last_reported_losses(config.audit.path)
        self.audit = open_audit_log(config.audit, Actor.RECEIVER, audit_key, wall)
        self.auditor = ProtocolAuditor(self.audit, interval=config.audit.aggregate_seconds)
        self._reload = threading.Event()
        self._closed = False
        self._udp: UdpReceiver | None = None
        self.spool: Spool | None = None
        self.policy: ReloadingPolicy | None = None
        k = config.kafka
        self._client = dict(k.client)
        sp = config.spool
        try:
            if config.policy_file is not None:
                self.policy = ReloadingPolicy(config.policy_file, on_event=self._policy_event)
            self.allow = AllowList(
                list(config.allowed_topics),
                self.policy.engine if self.policy is not None else None,
            )
            self.spool = Spool(
                SpoolConfig(
                    path=sp.path,
                    max_records=sp.max_records,
                    max_bytes=sp.max_bytes,
                    fsync=SpoolFsync(sp.fsync),
                    segment_bytes=sp.segment_bytes,
                )
            )
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
                    max_block_wait=r.max_block_wait_s,
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
            if self.spool is not None:
                self.spool.close()
            self.audit.close()
            raise
        self._losing: dict[TopicPartition, _Loss] = {}
        self._partitions: dict[str, int] = {}
        self._kafka_retry_at = float("-inf")
        self._abandoning = False
        self._sender_policy_fp: bytes | None = None
        replayed, already = self._resume_spool()
        self.audit.append(
            AuditEvent.SERVICE_START,
            {
                "config_fingerprint": self.config_fingerprint,
                "policy_fingerprint": self.policy_fingerprint,
                "udp": f"{self.local_address[0]}:{self.local_address[1]}",
                "resume_partitions": len(self.last_delivered),
                "provenance_records_read": sum(p.records for p in self.provenance.partitions),
                "provenance_incomplete": len(self.provenance.incomplete),
                "spool_path": str(sp.path) if sp.path is not None else None,
                "spool_replayed": replayed,
                "spool_already_delivered": already,
                "spool_torn_bytes": self.spool.stats.torn_bytes,
                "protocol_fingerprint": f"{config.protocol.protocol_config().fingerprint:08x}",
            },
        )
        self._audit_provenance()
        # records at or below what IT Kafka already holds are accounted for: a resend of
        # them is a duplicate, and losing one again is no new loss
        self.auditor.seed(self.last_delivered, self._reported_before)
        log.info(
            "receiver listening on %s:%d; resuming %d source partition(s)",
            *self.local_address,
            len(self.last_delivered),
        )

    def _resume_spool(self) -> tuple[int, int]:
        """Records a previous run left in the spool: skip those IT Kafka already holds (their
        acknowledgement was lost with that run), keep the rest first in line, in order."""
        assert self.spool is not None
        found = self.spool.waiting
        if self.spool.stats.torn_bytes:
            log.warning(
                "spool: %d torn byte(s) in %d segment(s) could not be read back",
                self.spool.stats.torn_bytes,
                self.spool.stats.torn_segments,
            )

        def not_in_kafka(item: SpoolItem) -> bool:
            e = item.entry
            return e.offset > self.last_delivered.get((e.topic, e.partition), -1)

        already = self.spool.discard_waiting(not_in_kafka)
        for item in self.spool.unresolved():
            e = item.entry
            tp = (e.topic, e.partition)
            # a resent record must be skipped if the spool already holds it
            if e.offset > self.last_delivered.get(tp, -1):
                self.last_delivered[tp] = e.offset
        self.stats.replayed = found - already
        if found:
            log.info(
                "spool: %d record(s) from the last run, %d already in IT Kafka",
                found,
                already,
            )
        return found - already, already

    @property
    def policy_fingerprint(self) -> str | None:
        """The fingerprint of the policy the receiver re-checks with (None: globs only)."""
        return self.policy.fingerprint if self.policy is not None else None

    def request_reload(self) -> None:
        """Reload the policy at the next turn of the loop (SIGHUP)."""
        self._reload.set()

    def _policy_event(self, event: PolicyEvent) -> None:
        audit_policy_event(self.audit, event)
        if isinstance(event, PolicyReloaded) and self.policy is not None:
            # the re-check follows the new policy from the next record on
            self.allow.engine = self.policy.engine

    @property
    def local_address(self) -> tuple[str, int]:
        assert self._udp is not None
        return self._udp.local_address

    def _learn_provenance(self) -> dict[TopicPartition, int]:
        k = self.config.kafka
        r = self.config.receiver
        timeout = self.config.startup_timeout_s
        topics = list_topics(k.bootstrap_servers, client=self._client, timeout=timeout)
        globs = self.config.allowed_topics
        candidates = [
            t for t in topics if not globs or any(fnmatch.fnmatchcase(t, g) for g in globs)
        ]
        scan = read_provenance(
            k.bootstrap_servers,
            candidates,
            client=self._client,
            window=r.provenance_window,
            max_records=r.provenance_max_records,
            expected=self.allow.expected_sources,
            timeout=timeout,
        )
        self.provenance = scan
        return dict(scan.last)

    def _audit_provenance(self) -> None:
        for part in self.provenance.incomplete:
            log.warning(
                "provenance of %s[%d] read back %d record(s) to offset %d of %d..%d and gave "
                "up: a source partition whose last record lies further back is not de-duplicated",
                part.topic,
                part.partition,
                part.records,
                part.read_from,
                part.low,
                part.high,
            )
            self.audit.append(
                PROVENANCE_INCOMPLETE,
                {
                    "topic": part.topic,
                    "partition": part.partition,
                    "records_read": part.records,
                    "read_from": part.read_from,
                    "low": part.low,
                    "high": part.high,
                    "sources_found": [f"{t}[{p}]" for t, p in part.sources][:100],
                    "max_records": self.config.receiver.provenance_max_records,
                },
            )

    # ------------------------------------------------------------------ the loop

    def step(self) -> None:
        """One turn: read datagrams, run due timers, route events, feed the producer."""
        assert self._udp is not None
        now = self._clock()
        timer = self.session.next_timer()
        datagrams = self._udp.recv_batch(1024, loop_wait(timer, now))
        now = self._clock()
        if datagrams:
            self.session.receive_datagrams(datagrams, now)
        self.stats.datagrams += len(datagrams)
        timer = self.session.next_timer()
        if timer is not None and now >= timer:
            self.session.poll(now)
        self._drain_events()
        assert self.spool is not None
        # what was accepted is on disk before it is handed to the producer
        self.spool.sync()
        self._pump()
        self.sink.poll(0)
        wall = self._wall()
        self._report_losses(wall)
        self.auditor.tick(wall)
        if self.policy is not None:
            if self._reload.is_set():
                self._reload.clear()
                self.policy.reload()
            else:
                self.policy.check(now)

    def _drain_events(self) -> None:
        wall = self._wall()
        event = self.session.next_event()
        while event is not None:
            if isinstance(event, RecordsDelivered):
                self._accept(event)
            elif isinstance(event, HeartbeatReceived):
                self._sender_policy(event)
            self.auditor.handle(event, wall)
            event = self.session.next_event()

    def _sender_policy(self, hb: HeartbeatReceived) -> None:
        """Audit the policy the sender enforces whenever its heartbeats name a new one.

        The receiver keeps re-checking with its own allow-list whatever the sender runs; the
        entry tells an auditor whether the two sides agree (``matches_receiver``)."""
        fp = hb.policy_fingerprint
        previous = self._sender_policy_fp
        if fp == previous:
            return
        self._sender_policy_fp = fp
        own = self.policy_fingerprint
        matches = policy_fingerprint_bytes(own) == fp if own is not None else None
        self.audit.append(
            POLICY_CHANGED,
            {
                "session_id": hb.session_id.hex(),
                "sender_policy_fingerprint": fp.hex(),
                "previous_fingerprint": previous.hex() if previous is not None else None,
                "receiver_policy_fingerprint": own,
                "matches_receiver": matches,
            },
        )
        if matches is False:
            log.warning(
                "the sender enforces policy %s, this receiver re-checks with %s: records the "
                "receiver's policy does not forward will be refused here",
                fp.hex(),
                own,
            )

    # ------------------------------------------------------------------ records

    def _accept(self, event: RecordsDelivered) -> None:
        spool = self.spool
        assert spool is not None
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
            entry = SpoolEntry(
                target,
                event.session_id,
                rec.topic,
                rec.partition,
                rec.offset,
                rec.timestamp,
                rec.key,
                rec.value,
                headers[:-1],
            )
            if spool.append(entry) is None:
                self._lose(tp, rec.offset, "spool_full")
                continue
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
                **record_content(self.config.audit, rec),
            },
        )

    def _lose(self, tp: TopicPartition, offset: int, reason: str) -> None:
        """Count a record lost after it arrived; reported as gaps by ``_report_losses``."""
        if reason == "spool_full":
            if not self._losing:
                assert self.spool is not None
                self.audit.append(
                    AuditEvent.SPOOL_FULL,
                    {
                        "records": len(self.spool),
                        "bytes": self.spool.bytes,
                        "max_records": self.config.spool.max_records,
                        "max_bytes": self.config.spool.max_bytes,
                    },
                )
                log.error("spool full: records are being lost until IT Kafka catches up")
            self.stats.spool_lost += 1
            loss = self._losing.get(tp)
            if loss is None:
                self._losing[tp] = _Loss(offset, offset, 1)
            else:
                loss.last_offset = offset
                loss.count += 1
        else:
            self._gap(tp, offset, offset, 1, reason)
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
        assert self.spool is not None
        if not force and self.spool.full():
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
        if have > partition:
            # the producer learns of a new topic or partition only when its metadata refreshes
            have = min(have, self.sink.refresh_metadata(target, partition + 1))
        self._partitions[target] = have
        return partition < have

    def _pump(self) -> None:
        """Hand spooled records to the producer, in order, as far as it has room."""
        spool = self.spool
        assert spool is not None
        if self._clock() < self._kafka_retry_at:
            return
        while (item := spool.peek()) is not None and len(self.sink) < _MAX_IN_FLIGHT:
            e = item.entry
            try:
                ready = self._target_ready(e.target, e.partition)
            except KafkaError as exc:
                # IT Kafka is unreachable: records stay spooled; do not block every turn
                log.warning("cannot prepare %s: %s", e.target, exc)
                self._kafka_retry_at = self._clock() + _KAFKA_RETRY_S
                return
            rec = Record(e.topic, e.partition, e.offset, e.timestamp, e.key, e.value, e.headers)
            if not ready:
                spool.take()
                spool.resolve(item)
                self._lose((e.topic, e.partition), e.offset, "no_target_partition")
                continue
            try:
                self.sink.produce(
                    rec,
                    e.target,
                    e.partition,
                    provenance_headers(rec, e.session),
                    opaque=item,
                )
            except KafkaError as exc:
                log.warning("producer full: %s", exc)
                return
            spool.take()

    def _delivered(self, delivery: Delivery) -> None:
        item = delivery.opaque
        assert isinstance(item, SpoolItem) and self.spool is not None
        if self._abandoning and delivery.error is not None:
            return  # purged at stop: still in the spool, or already reported as a gap
        self.spool.resolve(item)
        if delivery.error is None:
            self.stats.delivered += 1
            return
        self.stats.produce_failed += 1
        e = item.entry
        tp = (e.topic, e.partition)
        self._gap(tp, e.offset, e.offset, 1, "produce_failed")
        self.stats.lost_by_partition[tp] = self.stats.lost_by_partition.get(tp, 0) + 1
        log.error(
            "produce to %s[%d] failed: %s", delivery.topic, delivery.partition, delivery.error
        )

    # ------------------------------------------------------------------ shutdown

    def pending(self) -> int:
        """Records accepted and not yet acknowledged by IT Kafka."""
        return len(self.spool) if self.spool is not None else 0

    def close(self) -> None:
        """Hand over what is spooled, wait for Kafka, keep (disk spool) or audit as gaps
        (memory spool) what it did not acknowledge."""
        if self._closed:
            return
        self._closed = True
        spool = self.spool
        assert spool is not None
        try:
            deadline = self._clock() + self.config.spool.stop_flush_s
            while spool.waiting and self._clock() < deadline:
                self._pump()
                self.sink.poll(0.05)
            self.sink.flush(max(0.0, deadline - self._clock()))
            self.sink.poll(0)
            unacked = len(self.sink)
            # nothing may reach Kafka after this point: what is left is kept or reported
            self._abandoning = True
            self.sink.abandon()
            left = list(spool.unresolved())
            spooled = 0
            if spool.config.path is None:
                self._gaps_for(left, "shutdown")
                for item in left:
                    spool.resolve(item)
            else:
                spooled = len(left)
                if spooled:
                    log.warning(
                        "%d record(s) not acknowledged by IT Kafka stay in the spool %s for "
                        "the next start",
                        spooled,
                        spool.config.path,
                    )
            wall = self._wall()
            self._report_losses(wall, force=True)
            self.auditor.close(wall)
            self.audit.append(
                AuditEvent.SERVICE_STOP,
                {
                    "config_fingerprint": self.config_fingerprint,
                    "policy_fingerprint": self.policy_fingerprint,
                    "records_delivered": self.stats.delivered,
                    # lost on the link, across sender sessions (what resends filled is not
                    # counted); losses after arrival are in the gap entries of this program
                    "records_lost": self.auditor.records_lost,
                    "duplicates_skipped": self.stats.duplicates_skipped,
                    "records_refused": self.stats.refused,
                    "unacknowledged": unacked,
                    "spooled": spooled,
                    "spool_replayed": self.stats.replayed,
                },
            )
        finally:
            if self._udp is not None:
                self._udp.close()
            self.sink.close()
            spool.close()
            self.audit.close()

    def _gaps_for(self, items: list[SpoolItem], reason: str) -> None:
        """One exact gap per source partition for records that will never reach Kafka.

        Kafka acknowledges a partition in order, so what is left of a partition is the
        tail of what it accepted: one range, with the count of records in it."""
        ranges: dict[TopicPartition, _Loss] = {}
        for item in sorted(items, key=lambda i: i.seq):
            e = item.entry
            tp = (e.topic, e.partition)
            loss = ranges.get(tp)
            if loss is None:
                ranges[tp] = _Loss(e.offset, e.offset, 1)
            else:
                loss.first_offset = min(loss.first_offset, e.offset)
                loss.last_offset = max(loss.last_offset, e.offset)
                loss.count += 1
            self.stats.lost_by_partition[tp] = self.stats.lost_by_partition.get(tp, 0) + 1
        for tp, loss in sorted(ranges.items()):
            self._gap(tp, loss.first_offset, loss.last_offset, loss.count, reason)


__all__ = ["ALLOW_LIST_RULE", "AllowList", "ReceiverService", "ReceiverStats"]
