"""The sender program (OT side): Kafka -> policy -> ``SenderSession`` -> paced UDP.

Owns the sender's loop and the promises it keeps:

* every consumed record is judged by the policy; forward/alert records are handed to the
  protocol session with their IT-side topic appended as a last header (``TARGET_TOPIC``);
  drop, block_topic and records too large for the protocol are refused, quarantined records
  are produced to the OT quarantine topic (never across). Each refusal is counted and
  audited (``record_refused``, ``record_quarantined``, ``anomaly``) without its payload;
* OT offsets are committed only up to what the session calls committable (on the wire and
  covered by signed manifests), or, for a partition whose every forwarded record is
  committable, up to the last refused record once the quarantine producer has nothing
  outstanding: a crash never commits a record that did not leave or was not kept;
* timers (linger, manifests, heartbeats, key rotation) run on a monotonic clock; SIGHUP
  reloads the policy, SIGTERM/SIGINT flush the session, commit and audit ``service_stop``.

The policy fingerprint goes into the session's heartbeats; after a reload the session is told
the new one (``set_policy_fingerprint``), so the receiver sees, and audits, the change. When
``[kafka] topics`` is empty the subscriptions follow the policy: a reload that forwards new
topics subscribes to them (a rebalance; offsets are committed first, see ``_revoked``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from diode.audit import Actor, AuditEvent
from diode.config import SenderConfig, config_fingerprint
from diode.errors import KafkaError, LocalProtocolError, ServiceError
from diode.io.kafka import TARGET_TOPIC, Delivery, KafkaSink, KafkaSource, provenance_headers
from diode.io.udp import UdpSender, UdpSenderConfig
from diode.policy import Action, Decision, Finding, ReloadingPolicy
from diode.policy.model import RuleAction
from diode.policy.patterns import glob_to_regex
from diode.policy.reload import PolicyEvent, PolicyReloaded
from diode.protocol.crypto import load_receiver_public_key, load_signing_key
from diode.protocol.events import KeyRotated, SenderCounters
from diode.protocol.records import Record
from diode.protocol.sender import SenderSession
from diode.services.common import (
    ServiceLoop,
    TopicPartition,
    audit_policy_event,
    loop_wait,
    open_audit_log,
    policy_fingerprint_bytes,
    record_content,
)

log = logging.getLogger(__name__)

#: link time of the records the sender hands its session in one go on a paced link
_SLICE_SECONDS = 0.05
#: how long a stopping sender waits for the quarantine producer
_STOP_FLUSH_S = 10.0


def topics_from_policy(policy: ReloadingPolicy) -> list[str]:
    """Subscriptions that cover every topic a forward, alert or quarantine rule matches:
    exact names, and ``^...$`` regexes for globs and regexes. Drop rules need no reading."""
    out: list[str] = []
    for rule in policy.policy.model.rules:
        if rule.action is RuleAction.DROP:
            continue
        m = rule.match
        if m.exact is not None:
            out.append(m.exact)
        elif m.glob is not None:
            out.append("^" + glob_to_regex(m.glob) + "$")
        elif m.regex is not None:
            out.append("^(" + m.regex + ")$")
    return sorted(set(out))


@dataclass(slots=True)
class SenderStats:
    """What the sender did since it started; every refused record is in exactly one count."""

    consumed: int = 0
    forwarded: int = 0
    alerted: int = 0
    dropped: int = 0
    blocked: int = 0
    quarantined: int = 0
    too_large: int = 0
    quarantine_failed: int = 0
    anomalies: int = 0
    commits: int = 0
    datagrams: int = 0
    policy_events: dict[str, int] = field(default_factory=dict)


class SenderService(ServiceLoop[SenderStats]):
    """One running sender. ``run()`` blocks until ``stop()`` (or a signal handler) is called.

    ``clock`` (monotonic seconds) drives the protocol timers; ``wall`` (UNIX seconds) is what
    the policy and the audit log see.
    """

    def __init__(
        self,
        config: SenderConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__()
        self.config = config
        self._clock = clock
        self._wall = wall
        self.stats = SenderStats()
        self.config_fingerprint = config_fingerprint(config)
        signing_key = load_signing_key(config.keys.signing_key)
        receiver_public = load_receiver_public_key(config.keys.receiver_public_key)
        self.audit = open_audit_log(config.audit, Actor.SENDER, signing_key, wall)
        self._reload = threading.Event()
        self._closed = False
        self._udp: UdpSender | None = None
        self._source: KafkaSource | None = None
        self._quarantine: KafkaSink | None = None
        try:
            self.policy = ReloadingPolicy(config.policy_file, on_event=self._policy_event)
            self.topics = list(config.kafka.topics) or topics_from_policy(self.policy)
            if not self.topics:
                raise ServiceError(
                    f"policy {config.policy_file} forwards no topic and [kafka] topics is empty: "
                    "nothing to send"
                )
            rate = config.udp.rate_mbit
            # records handed to the session between two looks at its timers: about 50 ms of
            # link time, at least one full block (unpaced: no limit)
            pc = config.protocol
            self._slice_bytes: int | None = (
                max(int(rate * 1_000_000 / 8 * _SLICE_SECONDS), pc.payload_size * pc.k)
                if rate > 0
                else None
            )
            self._udp = UdpSender(
                UdpSenderConfig(
                    host=config.udp.host,
                    port=config.udp.port,
                    payload_size=config.protocol.payload_size,
                    source_host=config.udp.source_host,
                    interface=config.udp.interface,
                    rate_bits_per_s=int(rate * 1_000_000) if rate > 0 else None,
                    gso=config.udp.gso,
                )
            )
            self._make_session: Callable[[float], SenderSession] = lambda now: SenderSession(
                config.protocol.protocol_config(),
                signing_key,
                receiver_public,
                random,
                now,
                policy_fingerprint=policy_fingerprint_bytes(self.policy.fingerprint),
            )
            self._session: SenderSession | None = None
            client = dict(config.kafka.client)
            self._source = KafkaSource(
                config.kafka.bootstrap_servers,
                config.kafka.group_id,
                self.topics,
                client=client,
                on_revoke=self._revoked,
            )
            self._quarantine = KafkaSink(
                config.kafka.bootstrap_servers,
                self._quarantine_done,
                client={k: v for k, v in client.items() if not k.startswith(("group.", "auto."))},
            )
        except BaseException:
            self._close_io()
            self.audit.close()
            raise
        # per source partition: next offset after the last record judged, and the last
        # offset handed to the session (committable only once the session says so)
        self._consumed: dict[TopicPartition, int] = {}
        self._added_last: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        # the last header of a crossing record, per IT topic (built once, not per record)
        self._target_headers: dict[str, tuple[str, bytes]] = {}
        self._next_commit = clock() + config.commit_interval_s
        self.audit.append(
            AuditEvent.SERVICE_START,
            {
                "config_fingerprint": self.config_fingerprint,
                "policy_fingerprint": self.policy.fingerprint,
                "topics": self.topics,
                "udp": f"{config.udp.host}:{config.udp.port}",
                "protocol_fingerprint": f"{config.protocol.protocol_config().fingerprint:08x}",
            },
        )
        log.info(
            "sender started: %d subscription(s), sending to %s:%d",
            len(self.topics),
            config.udp.host,
            config.udp.port,
        )
        # announcements and heartbeats from the start: the receiver sees a live link (and
        # the policy fingerprint) before the first record crosses
        self._started(clock())

    @property
    def session(self) -> SenderSession | None:
        """The protocol session; it starts with the service, so heartbeats flow while idle."""
        return self._session

    def _started(self, now: float) -> SenderSession:
        if self._session is None:
            self._session = self._make_session(now)
            self.audit.append(
                AuditEvent.SESSION_START,
                {"session_id": self._session.session_id.hex(), "key_id": self._session.key_id},
            )
            log.info("session %s started", self._session.session_id.hex())
        return self._session

    # ------------------------------------------------------------------ control

    def request_reload(self) -> None:
        """Reload the policy at the next turn of the loop (SIGHUP)."""
        self._reload.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ the loop

    def step(self) -> None:
        """One turn: read a batch, judge and send it, run due timers, commit when due."""
        assert self._source is not None
        now = self._clock()
        session = self._session
        timer = session.next_timer() if session is not None else None
        records = self._source.poll_batch(self.config.kafka.batch_size, loop_wait(timer, now))
        now = self._clock()
        if records:
            self._judge_batch(records, now, self._wall())
            now = self._clock()  # pacing a batch out takes time on a slow link
        session = self._session
        if session is not None:
            timer = session.next_timer()
            if timer is not None and now >= timer:
                self._send(session.poll(now))
            self._session_events(session)
        wall = self._wall()
        for finding in self.policy.poll(wall):
            self._anomaly(finding, None)
        if self._reload.is_set():
            self._reload.clear()
            self.policy.reload()
        else:
            self.policy.check(now)
        if self._quarantine is not None:
            self._quarantine.poll(0)
        if now >= self._next_commit:
            self._next_commit = now + self.config.commit_interval_s
            self.commit()

    def _judge_batch(self, records: list[Record], now: float, wall: float) -> None:
        """Judge records in order. A run of plain forwards (no finding, no alert) goes to the
        session in one ``add_many``; any other record first flushes the run, so audit entries
        and session order are exactly those of judging one record at a time."""
        evaluate = self.policy.evaluate
        consumed = self._consumed
        forward = Action.FORWARD
        run: list[Record] = []
        sources: list[tuple[Record, Decision]] = []
        budget = self._slice_bytes
        since_tick = 0
        for record in records:
            decision = evaluate(record, wall)
            target = decision.target_topic
            if decision.action is forward and target is not None and not decision.findings:
                run.append(self._crossing(record, target))
                sources.append((record, decision))
            else:
                if run:
                    now = self._forward_run(run, sources, now)
                    run = []
                    sources = []
                self._judge(record, decision, now)
                if budget is not None:
                    since_tick += record.size
                    if since_tick >= budget and self._session is not None:
                        # one by one too, the session's timers speak only of what is on
                        # the wire
                        now = self._tick(self._session, now)
                        since_tick = 0
            consumed[(record.topic, record.partition)] = record.offset + 1
        if run:
            self._forward_run(run, sources, now)
        self.stats.consumed += len(records)

    def _crossing(self, record: Record, target: str) -> Record:
        """``record`` as it crosses: its IT topic added as the last header."""
        header = self._target_headers.get(target)
        if header is None:
            header = self._target_headers[target] = (TARGET_TOPIC, target.encode())
        return Record(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            (*record.headers, header),
        )

    def _forward_run(
        self, run: list[Record], sources: list[tuple[Record, Decision]], now: float
    ) -> float:
        """Hand plain forwards (with their target header) to the session, in slices on a paced
        link; one too large for the protocol is refused alone and the others go on. Returns
        the time to go on with."""
        session = self._started(now)
        taken = 0  # records of ``run`` the session has accepted or refused
        refused: list[int] = []
        budget = self._slice_bytes

        def feed() -> Iterator[Record]:
            # add_many asks for the next record only once it holds this one; a slice ends
            # after about ``budget`` bytes, so on a paced link what the session has emitted
            # is on the wire before its timers speak of it (a heartbeat or manifest naming
            # blocks still queued behind it would start the receiver's clock early)
            nonlocal taken
            used = 0
            for i in range(taken, len(run)):
                yield run[i]
                taken = i + 1
                if budget is not None:
                    used += run[i].size
                    if used >= budget:
                        return

        while taken < len(run):
            try:
                self._send(session.add_many(feed(), now))
                if taken < len(run):
                    now = self._tick(session, now)
            except LocalProtocolError as exc:
                # run[taken] was refused before it touched the session
                record, decision = sources[taken]
                refused.append(taken)
                taken += 1
                self.stats.too_large += 1
                self._refuse(record, decision.rule, f"too large for the protocol: {exc}", "drop")
        added = self._added_last
        for i, crossing in enumerate(run):
            if not refused or i not in refused:
                added[(crossing.topic, crossing.partition)] = crossing.offset
        self.stats.forwarded += len(run) - len(refused)
        return now

    def _judge(self, record: Record, decision: Decision, now: float) -> None:
        """One record the fast path of ``_judge_batch`` does not take, already evaluated."""
        tp = (record.topic, record.partition)
        for finding in decision.findings:
            self._anomaly(finding, record)
        action = decision.action
        if action.crosses and decision.target_topic is not None:
            crossing = self._crossing(record, decision.target_topic)
            try:
                out = self._started(now).add(crossing, now)
            except LocalProtocolError as exc:
                self.stats.too_large += 1
                self._refuse(record, decision.rule, f"too large for the protocol: {exc}", "drop")
            else:
                self._added_last[tp] = record.offset
                if action is Action.ALERT:
                    self.stats.alerted += 1
                    self._alert(record, decision)
                else:
                    self.stats.forwarded += 1
                self._send(out)
        elif action is Action.QUARANTINE and decision.target_topic is not None:
            self._quarantine_record(record, decision)
        else:
            if action is Action.BLOCK_TOPIC:
                self.stats.blocked += 1
            else:
                self.stats.dropped += 1
            self._refuse(record, decision.rule, "; ".join(decision.reasons), action.value)

    def _send(self, datagrams: list[bytes]) -> None:
        if datagrams and self._udp is not None:
            self._udp.send_many(datagrams)
            self.stats.datagrams += len(datagrams)

    def _tick(self, session: SenderSession, now: float) -> float:
        """Between two slices of a batch: send the control datagrams that came due
        (manifests, heartbeats, announcements) and leave the open block open, more records
        follow at once; the clock's time, which the caller goes on with."""
        t = self._clock()
        if t >= session.next_control_timer():
            self._send(session.poll_control(t))
        return max(now, t)

    # ------------------------------------------------------------------ refusals and audit

    def _refuse(self, record: Record, rule: str, reason: str, action: str) -> None:
        self.audit.append(
            AuditEvent.RECORD_REFUSED,
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "rule": rule,
                "reason": reason[:500],
                "action": action,
                "bytes": record.size,
                **record_content(self.config.audit, record),
            },
        )

    def _alert(self, record: Record, decision: Decision) -> None:
        self.audit.append(
            AuditEvent.ANOMALY,
            {
                "detector": "alert",
                "reason": "; ".join(decision.reasons)[:500] or "alert rule",
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "rule": decision.rule,
                "target_topic": decision.target_topic,
            },
        )

    def _anomaly(self, finding: Finding, record: Record | None) -> None:
        self.stats.anomalies += 1
        fields: dict[str, object] = {
            "detector": finding.detector,
            "reason": finding.message[:500],
            "topic": finding.topic,
            "rule": finding.rule,
            "observed": finding.observed,
            "threshold": finding.threshold,
        }
        if record is not None:
            fields["partition"] = record.partition
            fields["offset"] = record.offset
        self.audit.append(AuditEvent.ANOMALY, fields)

    def _quarantine_record(self, record: Record, decision: Decision) -> None:
        assert self._quarantine is not None and decision.target_topic is not None
        try:
            self._quarantine.produce(
                record,
                decision.target_topic,
                -1,  # the quarantine topic's own partitioning
                provenance_headers(record, None),
                opaque=(record.topic, record.partition, record.offset, decision.rule),
            )
        except KafkaError as exc:
            # the producer refused it outright: poll once so its queue drains, then retry
            self._quarantine.poll(0.5)
            try:
                self._quarantine.produce(
                    record,
                    decision.target_topic,
                    -1,
                    provenance_headers(record, None),
                    opaque=(record.topic, record.partition, record.offset, decision.rule),
                )
            except KafkaError:
                self.stats.quarantine_failed += 1
                self._refuse(record, decision.rule, f"quarantine failed: {exc}", "quarantine")
                return
        self.stats.quarantined += 1
        self.audit.append(
            AuditEvent.RECORD_QUARANTINED,
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "rule": decision.rule,
                "reason": "; ".join(decision.reasons)[:500],
                "quarantine_topic": decision.target_topic,
                "bytes": record.size,
                **record_content(self.config.audit, record),
            },
        )

    def _quarantine_done(self, delivery: Delivery) -> None:
        if delivery.error is None:
            return
        self.stats.quarantine_failed += 1
        opaque = delivery.opaque
        assert isinstance(opaque, tuple) and len(opaque) == 4
        topic, partition, offset, rule = (str(opaque[0]), opaque[1], opaque[2], str(opaque[3]))
        self.audit.append(
            AuditEvent.RECORD_REFUSED,
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "rule": rule,
                "reason": f"quarantine to {delivery.topic} failed: {delivery.error}"[:500],
                "action": "quarantine",
            },
        )

    def _policy_event(self, event: PolicyEvent) -> None:
        name = type(event).__name__
        self.stats.policy_events[name] = self.stats.policy_events.get(name, 0) + 1
        audit_policy_event(self.audit, event)
        if isinstance(event, PolicyReloaded):
            self._policy_changed()

    def _policy_changed(self) -> None:
        """Heartbeats name the new policy; subscriptions that follow the policy follow it."""
        if self._session is not None:
            self._session.set_policy_fingerprint(policy_fingerprint_bytes(self.policy.fingerprint))
        if self.config.kafka.topics or self._source is None:
            return
        topics = topics_from_policy(self.policy)
        if topics and topics != self.topics:
            log.info("subscriptions follow the policy: %s", ", ".join(topics))
            self._source.subscribe(topics)
            self.topics = topics

    def _session_events(self, session: SenderSession) -> None:
        for event in session.events():
            # SessionStarted is audited when the session is made (``_started``)
            if isinstance(event, KeyRotated):
                self.audit.append(
                    AuditEvent.KEY_ROTATION,
                    {
                        "session_id": event.session_id.hex(),
                        "key_id": event.key_id,
                        "previous_key_id": event.previous_key_id,
                    },
                )

    # ------------------------------------------------------------------ offsets

    def commit_positions(self) -> dict[TopicPartition, int]:
        """Per source partition, the offset that is safe to commit now (see the docstring)."""
        committable = self._session.committable() if self._session is not None else {}
        quarantine_clear = self._quarantine is None or len(self._quarantine) == 0
        out: dict[TopicPartition, int] = {}
        for tp, consumed_next in self._consumed.items():
            added = self._added_last.get(tp)
            wire = committable.get(tp)
            if (added is None or (wire is not None and wire > added)) and quarantine_clear:
                pos: int | None = consumed_next
            elif wire is not None and quarantine_clear:
                pos = wire
            else:
                pos = None
            if pos is not None and pos > self._committed.get(tp, -1):
                out[tp] = pos
        return out

    def commit(self) -> None:
        if self._source is None:
            return
        if self._quarantine is not None:
            self._quarantine.poll(0)
        positions = self.commit_positions()
        if not positions:
            return
        self._source.commit(positions)
        self._committed.update(positions)
        self.stats.commits += 1

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        try:
            self.commit()
        except KafkaError as exc:
            log.warning("commit before rebalance failed: %s", exc)
        for tp in partitions:
            self._consumed.pop(tp, None)
            self._added_last.pop(tp, None)
            self._committed.pop(tp, None)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Flush the session (every record on the wire with its manifests), commit, audit
        ``service_stop`` and release everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            now = self._clock()
            session = self._session
            if session is not None:
                self._send(session.flush(now))
                # the manifest copies still owed are sent on their timers: run them out so
                # the final commit covers everything that was sent
                limit = now + 2.0
                while session.pending_manifests() and self._clock() < limit:
                    timer = session.next_timer()
                    t = self._clock()
                    if timer is not None and timer > t:
                        time.sleep(min(timer - t, 0.01))
                    self._send(session.poll(self._clock()))
            if self._quarantine is not None:
                self._quarantine.flush(_STOP_FLUSH_S)
            self.commit()
        except Exception as exc:  # the stop entry must be written whatever failed above
            error = exc
            log.error("sender stop: %s", exc)
        finally:
            session = self._session
            counters = session.counters() if session is not None else SenderCounters()
            self.audit.append(
                AuditEvent.SERVICE_STOP,
                {
                    "config_fingerprint": self.config_fingerprint,
                    "policy_fingerprint": self.policy.fingerprint,
                    "session_id": session.session_id.hex() if session is not None else None,
                    "records_consumed": self.stats.consumed,
                    "records_sent": counters.records,
                    "records_refused": self.stats.dropped
                    + self.stats.blocked
                    + self.stats.too_large,
                    "records_quarantined": self.stats.quarantined,
                    "datagrams": counters.datagrams,
                    "error": str(error) if error is not None else None,
                },
            )
            if session is not None:
                session.close()
            self._close_io()
            self.audit.close()
        if error is not None:
            raise ServiceError(f"sender did not stop cleanly: {error}") from error

    def _close_io(self) -> None:
        if self._source is not None:
            self._source.close()
        if self._quarantine is not None:
            self._quarantine.close()
        if self._udp is not None:
            self._udp.close()


__all__ = ["SenderService", "SenderStats", "policy_fingerprint_bytes", "topics_from_policy"]
