"""A whole sender -> lossy link -> receiver run in memory, with deterministic time.

Owns the simulation behind ``diode simulate`` and the protocol tests: deterministic records
from a seed, a ``SenderSession`` and a ``ReceiverSession`` joined by a ``LossyLink``, time
that advances by arithmetic (never by sleeping), and the checks that make a run trustworthy:
every delivered record equals the one sent, partitions arrive in offset order, nothing is
delivered twice, every record is either delivered or inside a reported gap, and delivered +
lost == sent.

Every event of both sessions can be handed to a callback (``on_event(side, event, now)``,
``now`` in simulated seconds from the start), which is how an audit log or a trace is attached.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from diode.protocol.accounting import LossLedger, OpenGap
from diode.protocol.crypto import ReceiverPrivateKey, SigningKey
from diode.protocol.events import (
    BlocksLost,
    DatagramRejected,
    Event,
    GapDetected,
    PartitionUnseen,
    RecordsDelivered,
    SessionStarted,
)
from diode.protocol.link import LinkConfig, LinkCounters, LossyLink
from diode.protocol.receiver import ReceiverOptions, ReceiverSession
from diode.protocol.records import Record
from diode.protocol.sender import SenderEvent, SenderSession
from diode.protocol.wire import ProtocolConfig

EventCallback = Callable[[str, "Event | SenderEvent", float], None]


@dataclass(frozen=True, slots=True)
class SimulationParams:
    records: int = 10_000
    record_size: int = 200
    topics: int = 1
    partitions: int = 1
    seed: int = 0
    #: records per second of simulated time
    rate: float = 100_000.0
    link: LinkConfig = field(default_factory=LinkConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    options: ReceiverOptions = field(default_factory=ReceiverOptions)
    #: restart the sender (new session) after this many records; None: never
    restart_after: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class SimulationResult:
    records_sent: int
    records_delivered: int
    records_lost: int
    records_redelivered: int
    record_bytes_sent: int
    datagrams_sent: int
    datagrams_dropped: int
    datagrams_rejected: int
    rejected: dict[str, int]
    blocks_sent: int
    blocks_complete: int
    blocks_recovered: int
    blocks_lost: int
    padding_bytes: int
    sessions: int
    link: LinkCounters
    gaps: tuple[Gap, ...]
    simulated_seconds: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def derive_seed(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"kafka-data-diode simulate {seed} {label}".encode()).digest()


def generate_records(params: SimulationParams) -> list[Record]:
    """Deterministic records: keys, values of ``record_size`` bytes, 0-3 headers.

    Offsets per partition advance by 1 or 2 (compaction leaves holes), so nothing may infer
    record counts from offsets.
    """
    rng = random.Random(params.seed)
    next_offset: dict[tuple[str, int], int] = {}
    out: list[Record] = []
    topics = [f"plant.sensor-{t}" for t in range(params.topics)]
    base_ts = 1_700_000_000_000
    for i in range(params.records):
        topic = topics[rng.randrange(params.topics)]
        partition = rng.randrange(params.partitions)
        tp = (topic, partition)
        offset = next_offset.get(tp, rng.randrange(0, 1000))
        next_offset[tp] = offset + rng.choice((1, 1, 1, 2))
        headers = tuple(
            (f"h{j}", rng.randbytes(rng.randrange(0, 16)) if rng.random() < 0.9 else None)
            for j in range(rng.randrange(4))
        )
        key = rng.randbytes(rng.randrange(4, 24)) if rng.random() < 0.9 else None
        out.append(
            Record(
                topic,
                partition,
                offset,
                base_ts + i,
                key,
                rng.randbytes(params.record_size),
                headers,
            )
        )
    return out


def run_simulation(
    params: SimulationParams,
    *,
    records: list[Record] | None = None,
    on_event: EventCallback | None = None,
) -> SimulationResult:
    """Run the whole pipeline; never raises for loss, only reports it."""
    if records is None:
        records = generate_records(params)
    cfg = params.protocol
    signing_key = SigningKey.from_seed(derive_seed(params.seed, "sender"))
    receiver_key = ReceiverPrivateKey.from_seed(derive_seed(params.seed, "receiver"))
    sender_rng = random.Random(int.from_bytes(derive_seed(params.seed, "random")[:8], "big"))
    link = LossyLink(params.link)
    receiver = ReceiverSession(cfg, receiver_key, signing_key.verify_key, options=params.options)
    sent = {(r.topic, r.partition, r.offset): r for r in records}
    delivered: dict[tuple[str, int, int], Record] = {}
    # per (session, partition): order is promised within a session; across a restart the
    # new session resends what the old one had not committed, and, like the receiver
    # service, a record at or below its partition's highest delivered offset is a duplicate
    last_delivered: dict[tuple[bytes, str, int], int] = {}
    ledger = LossLedger()
    ledger.seed(receiver_history(records))
    delivered_in: dict[tuple[str, int, int], bytes] = {}
    redelivered = 0
    gaps: list[Gap] = []
    problems: list[str] = []
    blocks_lost_unaccounted = 0
    datagrams_sent = 0

    def handle(event: Event, now: float) -> None:
        nonlocal blocks_lost_unaccounted, redelivered
        if on_event is not None:
            on_event("receiver", event, now)
        if isinstance(event, RecordsDelivered):
            for r in event.records:
                unseen = ledger.first_sight(event.session_id, (r.topic, r.partition), r.offset)
                if unseen is not None:
                    gaps.append(_unseen_gap(r.topic, r.partition, unseen))
                key = (r.topic, r.partition, r.offset)
                original = sent.get(key)
                if original is None:
                    problems.append(f"delivered a record never sent: {key}")
                elif original != r:
                    problems.append(f"record {key} delivered with different content")
                tp = (event.session_id, r.topic, r.partition)
                if delivered_in.get(key) == event.session_id:
                    problems.append(f"record {key} delivered twice")
                elif r.offset <= last_delivered.get(tp, -1):
                    problems.append(f"record {key} delivered after offset {last_delivered[tp]}")
                last_delivered[tp] = r.offset
                if ledger.delivered(event.session_id, r.topic, r.partition, r.offset) is False:
                    redelivered += 1  # resent after a restart; skipped like the service does
                    continue
                delivered[key] = r
                delivered_in[key] = event.session_id
        elif isinstance(event, GapDetected):
            unseen = ledger.first_sight(
                event.session_id, (event.topic, event.partition), event.first_offset
            )
            if unseen is not None:
                gaps.append(_unseen_gap(event.topic, event.partition, unseen))
            ledger.gap(
                event.session_id,
                event.topic,
                event.partition,
                event.first_offset,
                event.last_offset,
                event.count,
            )
            gaps.append(
                Gap(
                    event.topic,
                    event.partition,
                    event.first_offset,
                    event.last_offset,
                    event.count,
                    event.reason,
                )
            )
        elif isinstance(event, PartitionUnseen):
            unseen = ledger.first_sight(
                event.session_id, (event.topic, event.partition), event.last_offset + 1
            )
            if unseen is not None:
                gaps.append(_unseen_gap(event.topic, event.partition, unseen))
        elif isinstance(event, BlocksLost):
            blocks_lost_unaccounted += event.last_block - event.first_block + 1

    def drain_receiver(now: float) -> None:
        event = receiver.next_event()
        while event is not None:
            handle(event, now)
            event = receiver.next_event()

    def send(datagrams: list[bytes], now: float) -> None:
        nonlocal datagrams_sent
        datagrams_sent += len(datagrams)
        for d in link.transmit(datagrams):
            receiver.receive_datagram(d, now)
        timer = receiver.next_timer()
        if timer is not None and now >= timer:
            receiver.poll(now)
        drain_receiver(now)

    def drain_sender(sender: SenderSession, now: float) -> None:
        if on_event is not None:
            for ev in sender.events():
                on_event("sender", ev, now)

    now = 0.0
    sender = SenderSession(cfg, signing_key, receiver_key.public_key, sender_rng.randbytes, now)
    senders = [sender]
    dt = 1.0 / params.rate
    i = 0
    restart_after = params.restart_after
    # time runs on across a restart, while the resend goes back to earlier records
    start_i, start_t = 0, 0.0
    while i < len(records):
        now = start_t + (i - start_i) * dt
        out = sender.add(records[i], now)
        timer = sender.next_timer()
        if timer is not None and now >= timer:
            out += sender.poll(now)
        if out:
            send(out, now)
        drain_sender(sender, now)
        i += 1
        if restart_after is not None and i == restart_after:
            restart_after = None
            # a crashed sender resends from its committed offsets; the rest is on the wire
            committed = sender.committable()
            i = min(
                (
                    j
                    for j in range(i)
                    if records[j].offset
                    >= committed.get((records[j].topic, records[j].partition), 0)
                ),
                default=i,
            )
            now += dt
            start_i, start_t = i, now
            sender = SenderSession(
                cfg, signing_key, receiver_key.public_key, sender_rng.randbytes, now
            )
            senders.append(sender)

    # the tail: flush, then let simulated time run until every timer has fired
    send(sender.flush(now), now)
    drain_sender(sender, now)
    step = min(cfg.heartbeat_interval, cfg.manifest_interval, 0.01)
    settle = (
        now
        + params.options.block_timeout * 2
        + cfg.manifest_interval * (cfg.manifest_copies + 2)
        + cfg.heartbeat_interval * 6
        + 0.5
    )
    while now < settle:
        now += step
        send(sender.poll(now) + link.drain(), now)
        drain_sender(sender, now)
        receiver.poll(now)
        drain_receiver(now)

    gap_keys: set[tuple[str, int, int]] = set()
    for key in sent:
        if key in delivered:
            continue
        gap_keys.add(key)
        if not any(
            g.topic == key[0]
            and g.partition == key[1]
            and g.first_offset <= key[2] <= g.last_offset
            for g in gaps
        ):
            problems.append(f"record {key} neither delivered nor inside a reported gap")
            if len(problems) > 20:
                break
    lost_total = len(gap_keys)
    if len(delivered) + lost_total != len(records):
        problems.append(f"delivered {len(delivered)} + lost {lost_total} != sent {len(records)}")
    # what the audit log reports: the gaps, less what resends recovered, across sessions;
    # exact unless a count had to be a bound, and never less than the truth
    if ledger.net_lost < lost_total or (ledger.net_lost != lost_total and not ledger.bounded):
        problems.append(f"gaps report {ledger.net_lost} records lost, {lost_total} were")
    if blocks_lost_unaccounted and ledger.net_lost < lost_total:
        problems.append(f"{blocks_lost_unaccounted} blocks lost without any account")
    counters = receiver.counters()
    return SimulationResult(
        records_sent=len(records),
        records_delivered=len(delivered),
        records_lost=lost_total,
        records_redelivered=redelivered,
        record_bytes_sent=sum(s.counters().record_bytes for s in senders),
        datagrams_sent=datagrams_sent,
        datagrams_dropped=link.dropped,
        datagrams_rejected=counters.rejected_total,
        rejected=counters.rejected,
        blocks_sent=sum(s.counters().blocks for s in senders),
        blocks_complete=counters.blocks_complete,
        blocks_recovered=counters.blocks_recovered,
        blocks_lost=counters.blocks_lost,
        padding_bytes=sum(s.counters().padding_bytes for s in senders),
        sessions=counters.sessions,
        link=link.counters(),
        gaps=tuple(gaps),
        simulated_seconds=now,
        problems=tuple(problems),
    )


def receiver_history(records: list[Record]) -> dict[tuple[str, int], int]:
    """Per partition, the offset before its first generated record: the simulated receiver
    has delivered up to there, so a record it never sees is named by an unseen gap, as it
    would be by a receiver with a history on IT."""
    return {(r.topic, r.partition): r.offset - 1 for r in reversed(records) if r.offset > 0}


def _unseen_gap(topic: str, partition: int, span: OpenGap) -> Gap:
    return Gap(topic, partition, span.first_offset, span.last_offset, span.remaining, "unseen")


__all__ = [
    "DatagramRejected",
    "Gap",
    "SessionStarted",
    "SimulationParams",
    "SimulationResult",
    "generate_records",
    "receiver_history",
    "run_simulation",
]
