"""Kafka adapter: confluent-kafka consumers, producers and admin calls, as the services need them.

Owns every call into confluent-kafka and nothing above it:

* :class:`KafkaSource` subscribes to topics (names, or regexes starting with ``^``), returns
  batches of :class:`~diode.protocol.records.Record` (key, value, headers with null values,
  timestamp in ms, topic, partition, offset) and commits offsets it is given. Offsets follow
  Kafka's convention: the committed offset is the *next* record to read (last handled + 1).
  Auto-commit is off: only the service decides what is safe to commit.
* :class:`KafkaSink` is an idempotent producer (``enable.idempotence``, ``acks=all``) that
  writes a record to a given topic and partition with its key, headers and timestamp intact,
  plus provenance headers. Delivery results come back through a callback; nothing is dropped
  without the callback hearing of it.
* :func:`ensure_topic`, :func:`partition_count` and :func:`read_provenance` (the last source
  offset delivered per source partition, read backwards from the end of IT-side topics).

Provenance headers (values are ASCII): ``diode-src-topic``, ``diode-src-partition``,
``diode-src-offset``, ``diode-session`` (hex session id).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic

from diode.errors import KafkaError
from diode.protocol.records import Header, Record

log = logging.getLogger(__name__)

SRC_TOPIC = "diode-src-topic"
SRC_PARTITION = "diode-src-partition"
SRC_OFFSET = "diode-src-offset"
SESSION = "diode-session"
PROVENANCE_HEADERS = frozenset({SRC_TOPIC, SRC_PARTITION, SRC_OFFSET, SESSION})
#: the IT-side topic the sender's policy chose, appended by the sender as the record's last
#: header and removed by the receiver (it travels authenticated inside the record)
TARGET_TOPIC = "diode-target-topic"

#: Kafka's limit on a topic name
MAX_TOPIC_LENGTH = 249
#: records in the first (newest) window read back from each IT partition for provenance
DEFAULT_PROVENANCE_TAIL = 1000
#: most records read back from one IT partition for provenance before giving up
DEFAULT_PROVENANCE_MAX = 200_000

ClientConfig = Mapping[str, str | int | float | bool]
TopicPartitionKey = tuple[str, int]


def record_from_message(msg: Any) -> Record:
    """A consumed confluent-kafka message as a ``Record``; headers keep null values."""
    headers = msg.headers()
    _kind, ts = msg.timestamp()
    return Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp=ts if ts is not None and ts >= 0 else 0,
        key=msg.key(),
        value=msg.value(),
        headers=tuple((str(k), v) for k, v in headers) if headers else (),
    )


def provenance_headers(record: Record, session_id: bytes | None) -> list[Header]:
    """The headers that say where a record came from, appended after its own."""
    out: list[Header] = [
        (SRC_TOPIC, record.topic.encode()),
        (SRC_PARTITION, str(record.partition).encode()),
        (SRC_OFFSET, str(record.offset).encode()),
    ]
    if session_id is not None:
        out.append((SESSION, session_id.hex().encode()))
    return out


def parse_provenance(headers: Sequence[Header] | None) -> tuple[str, int, int] | None:
    """(source topic, partition, offset) from provenance headers, or None if any is missing.

    The last occurrence wins: the diode appends its headers after the record's own.
    """
    if not headers:
        return None
    found: dict[str, bytes] = {}
    for name, value in headers:
        if name in PROVENANCE_HEADERS and value is not None:
            found[name] = value
    try:
        topic = found[SRC_TOPIC].decode("ascii")
        partition = int(found[SRC_PARTITION])
        offset = int(found[SRC_OFFSET])
    except (KeyError, UnicodeDecodeError, ValueError):
        return None
    if not topic or len(topic) > MAX_TOPIC_LENGTH or partition < 0 or offset < 0:
        return None
    return topic, partition, offset


def _bytes_headers(headers: Any) -> list[Header]:
    if not headers:
        return []
    if isinstance(headers, dict):
        headers = list(headers.items())
    return [(str(k), v.encode() if isinstance(v, str) else v) for k, v in headers]


def _error_text(err: Any) -> str:
    try:
        return f"{err.name()}: {err.str()}"
    except AttributeError:
        return str(err)


# ---------------------------------------------------------------------------------- consumer


class KafkaSource:
    """A consumer of the allowed source topics with manual, exact offset commits.

    ``on_revoke(partitions)`` is called before partitions are taken away in a rebalance, so
    the service can commit what it may. Errors that librdkafka retries by itself (broker
    down, ...) are logged and counted in ``errors``; fatal ones raise ``KafkaError``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        *,
        client: ClientConfig | None = None,
        on_revoke: Callable[[list[TopicPartitionKey]], None] | None = None,
    ) -> None:
        if not topics:
            raise KafkaError("no topics to consume: the policy forwards nothing")
        conf: dict[str, Any] = {"auto.offset.reset": "earliest", **(client or {})}
        conf.update(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        self.topics = tuple(topics)
        self.errors: dict[str, int] = {}
        self._on_revoke = on_revoke
        try:
            self._consumer = Consumer(conf)
            self._consumer.subscribe(list(topics), on_revoke=self._revoked)
        except KafkaException as exc:
            raise KafkaError(f"cannot start the consumer: {exc}") from exc

    def subscribe(self, topics: Sequence[str]) -> None:
        """Replace the subscription (after a policy reload); a rebalance follows."""
        if not topics:
            raise KafkaError("no topics to consume: the policy forwards nothing")
        try:
            self._consumer.subscribe(list(topics), on_revoke=self._revoked)
        except KafkaException as exc:
            raise KafkaError(f"cannot change the subscription: {exc}") from exc
        self.topics = tuple(topics)

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        if self._on_revoke is not None:
            self._on_revoke([(p.topic, p.partition) for p in partitions])

    def poll_batch(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first."""
        try:
            # Any: librdkafka's headers are (str, bytes | None) tuples, whatever its stubs say
            messages: list[Any] = self._consumer.consume(num_messages=max_records, timeout=timeout)
        except KafkaException as exc:
            raise KafkaError(f"consume failed: {exc}") from exc
        # the conversion of record_from_message, inlined: this loop runs once per record
        out: list[Record] = []
        append = out.append
        for msg in messages:
            err = msg.error()
            if err is None:
                headers = msg.headers()
                ts = msg.timestamp()[1]
                append(
                    Record(
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        ts if ts is not None and ts >= 0 else 0,
                        msg.key(),
                        msg.value(),
                        # librdkafka's headers are already (str, bytes | None) tuples
                        tuple(headers) if headers else (),
                    )
                )
                continue
            if err.code() == RdKafkaError._PARTITION_EOF:
                continue
            name = err.name()
            self.errors[name] = self.errors.get(name, 0) + 1
            if err.fatal():
                raise KafkaError(f"consumer failed: {_error_text(err)}")
            log.warning("consumer: %s", _error_text(err))
        return out

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Commit, per partition, the next offset to read (last handled + 1), synchronously."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise KafkaError(f"offset commit failed: {exc}") from exc
        for tp in result or ():
            if tp.error is not None:
                raise KafkaError(
                    f"offset commit of {tp.topic}[{tp.partition}] failed: {_error_text(tp.error)}"
                )

    def committed(
        self, partitions: Iterable[TopicPartitionKey], timeout: float = 10.0
    ) -> dict[TopicPartitionKey, int]:
        """Committed offsets of the group (partitions with none are left out)."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        try:
            result = self._consumer.committed(tps, timeout=timeout)
        except KafkaException as exc:
            raise KafkaError(f"reading committed offsets failed: {exc}") from exc
        return {(tp.topic, tp.partition): tp.offset for tp in result if tp.offset >= 0}

    def close(self) -> None:
        self._consumer.close()


# ---------------------------------------------------------------------------------- producer


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one produce call; ``error`` is None on success."""

    topic: str
    partition: int
    offset: int
    error: str | None
    retriable: bool
    opaque: object


DeliveryCallback = Callable[[Delivery], None]


class KafkaSink:
    """An idempotent producer (acks=all): per target partition, order is kept and a retry
    never writes a record twice.

    ``delivery_timeout`` 0 means librdkafka retries until the cluster answers, however long it
    is down; the caller bounds how much waits (``in_flight``).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        on_delivery: DeliveryCallback,
        *,
        client: ClientConfig | None = None,
        delivery_timeout: float = 0.0,
        linger_ms: float = 5.0,
    ) -> None:
        conf: dict[str, Any] = {"linger.ms": linger_ms, **(client or {})}
        conf.update(
            {
                "bootstrap.servers": bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "max.in.flight.requests.per.connection": 5,
                "message.timeout.ms": int(delivery_timeout * 1000),
            }
        )
        self._on_delivery = on_delivery
        try:
            # Any: None once closed, after which using the sink is a programming error
            self._producer: Any = Producer(conf, error_cb=self._error)
        except KafkaException as exc:
            raise KafkaError(f"cannot start the producer: {exc}") from exc
        self.errors: dict[str, int] = {}
        self.fatal: str | None = None

    def _error(self, err: Any) -> None:
        name = err.name() if hasattr(err, "name") else str(err)
        self.errors[name] = self.errors.get(name, 0) + 1
        if hasattr(err, "fatal") and err.fatal():
            self.fatal = _error_text(err)
        log.warning("producer: %s", _error_text(err))

    def produce(
        self,
        record: Record,
        topic: str,
        partition: int,
        extra_headers: Sequence[Header] = (),
        opaque: object = None,
    ) -> None:
        """Queue ``record`` for ``topic``/``partition``; the callback gets the outcome.

        Raises ``KafkaError`` if the producer cannot take it (its queue is full: the caller
        must bound what it hands over) or has failed for good.
        """
        if self.fatal is not None:
            raise KafkaError(f"producer failed for good: {self.fatal}")
        headers: list[tuple[str, str | bytes | None]] = list(record.headers)
        headers.extend(extra_headers)

        def done(err: Any, msg: Any) -> None:
            if err is not None:
                retriable = bool(getattr(err, "retriable", lambda: False)())
                self._on_delivery(
                    Delivery(topic, partition, -1, _error_text(err), retriable, opaque)
                )
            else:
                self._on_delivery(Delivery(topic, partition, msg.offset(), None, False, opaque))

        try:
            self._producer.produce(
                topic,
                value=record.value,
                key=record.key,
                headers=headers,
                partition=partition,
                timestamp=record.timestamp,
                on_delivery=done,
            )
        except BufferError as exc:
            raise KafkaError(f"producer queue is full: {exc}") from exc
        except KafkaException as exc:
            raise KafkaError(f"produce to {topic}[{partition}] failed: {exc}") from exc

    def refresh_metadata(self, topic: str, partitions: int, timeout: float = 10.0) -> int:
        """Make the producer see at least ``partitions`` partitions of ``topic``.

        A topic created or grown through the admin API is invisible to a producer until its
        metadata cache refreshes (5 minutes by default); producing to a new partition before
        that fails with ``_UNKNOWN_PARTITION``. A metadata request for the topic updates the
        cache. Returns the partition count the producer sees (which may still be smaller if
        the cluster has not propagated the change within ``timeout``).
        """
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            try:
                md = self._producer.list_topics(topic=topic, timeout=max(0.1, min(2.0, timeout)))
                meta = md.topics.get(topic)
                if meta is not None and meta.error is None:
                    seen = len(meta.partitions)
            except KafkaException as exc:
                log.warning("metadata of %s: %s", topic, exc)
            if seen >= partitions or time.monotonic() >= deadline:
                return seen
            time.sleep(0.05)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for every queued record; returns how many still wait."""
        return int(self._producer.flush(timeout))

    def __len__(self) -> int:
        """Records handed over and not yet acknowledged (or failed)."""
        return len(self._producer)

    def close(self) -> None:
        """Release the producer, its threads and its connections, once nothing more is to be
        produced (after ``flush`` or ``abandon``). The producer holds callbacks into its
        owner, a cycle the garbage collector may leave alone: without this it lives on,
        reconnecting to its cluster, after its service stopped. Idempotent."""
        self._producer = None

    def abandon(self) -> None:
        """Drop every record not yet acknowledged (their callbacks report a purge error), so a
        stopped service's producer does not go on delivering behind its back."""
        try:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(0)
        except KafkaException as exc:
            raise KafkaError(f"purging the producer failed: {exc}") from exc


# ---------------------------------------------------------------------------------- admin


def _admin(bootstrap_servers: str, client: ClientConfig | None) -> AdminClient:
    conf: dict[str, Any] = dict(client or {})
    conf["bootstrap.servers"] = bootstrap_servers
    return AdminClient(conf)


def partition_count(
    bootstrap_servers: str, topic: str, *, client: ClientConfig | None = None, timeout: float = 10
) -> int | None:
    """Partitions of ``topic``, or None if it does not exist."""
    try:
        md = _admin(bootstrap_servers, client).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot read metadata of {topic}: {exc}") from exc
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    client: ClientConfig | None = None,
    timeout: float = 30.0,
) -> int:
    """Make ``topic`` exist with at least ``partitions`` partitions; return how many it has."""
    admin = _admin(bootstrap_servers, client)
    have = partition_count(bootstrap_servers, topic, client=client, timeout=timeout)
    try:
        if have is None:
            fut = admin.create_topics(
                [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)]
            )[topic]
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != RdKafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        elif have < partitions:
            fut = admin.create_partitions([NewPartitions(topic, partitions)])[topic]
            fut.result(timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot create {topic} with {partitions} partitions: {exc}") from exc
    # metadata lags creation by a moment; wait until the broker reports the partitions
    deadline = time.monotonic() + timeout
    while True:
        have = partition_count(bootstrap_servers, topic, client=client, timeout=timeout)
        if have is not None and have >= partitions:
            return have
        if time.monotonic() > deadline:
            raise KafkaError(f"{topic} still has {have} partitions after {timeout}s")
        time.sleep(0.05)


def list_topics(
    bootstrap_servers: str, *, client: ClientConfig | None = None, timeout: float = 10.0
) -> dict[str, int]:
    """Every topic of the cluster with its partition count (internal ones left out)."""
    try:
        md = _admin(bootstrap_servers, client).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot list topics of {bootstrap_servers}: {exc}") from exc
    return {
        name: len(t.partitions)
        for name, t in md.topics.items()
        if t.error is None and not name.startswith("__")
    }


@dataclass(frozen=True, slots=True)
class PartitionScan:
    """How far back one IT partition was read when learning provenance."""

    topic: str
    partition: int
    low: int  # the partition's first offset
    high: int  # its end (next offset to be written)
    read_from: int  # the oldest offset read
    records: int  # records read
    complete: bool  # every expected source found, or read back to ``low``
    sources: tuple[TopicPartitionKey, ...]  # source partitions found in it


@dataclass(frozen=True, slots=True)
class Provenance:
    """The last source offset delivered per source partition, and how it was learned."""

    last: dict[TopicPartitionKey, int]
    partitions: tuple[PartitionScan, ...]

    @property
    def incomplete(self) -> tuple[PartitionScan, ...]:
        return tuple(p for p in self.partitions if not p.complete)


#: the IT-side source partitions expected in one IT partition; None: unknown (read to the start)
ExpectedSources = Callable[[str, int], set[TopicPartitionKey] | None]


def read_provenance(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    client: ClientConfig | None = None,
    window: int = DEFAULT_PROVENANCE_TAIL,
    max_records: int = DEFAULT_PROVENANCE_MAX,
    expected: ExpectedSources | None = None,
    timeout: float = 30.0,
) -> Provenance:
    """The highest source offset per (source topic, partition) delivered to ``topics``
    (IT-side topics the diode writes), read from their provenance headers.

    Each partition is read backwards in windows (``window`` records, doubling) until every
    source partition ``expected`` names for it has been found, or the partition's start is
    reached. Source partition p goes to IT partition p in offset order, so the newest window
    a source appears in holds its last offset; but only the start of the partition proves
    that no other source is hiding further back. At most ``max_records`` are read per
    partition: a partition given up on is reported with ``complete=False`` (a source whose
    last record lies beyond it is not de-duplicated). Records without provenance are ignored.
    """
    if window < 1 or max_records < 1:
        raise ValueError(f"window {window} and max_records {max_records} must be positive")
    conf: dict[str, Any] = dict(client or {})
    conf.update(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"diode-provenance-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer = Consumer(conf)
    last: dict[TopicPartitionKey, int] = {}
    scans: list[PartitionScan] = []
    deadline = time.monotonic() + timeout
    try:
        for topic in topics:
            md = consumer.list_topics(topic=topic, timeout=timeout)
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                continue
            for p in sorted(t.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout, cached=False
                )
                want = expected(topic, p) if expected is not None else None
                scans.append(
                    _scan_partition(
                        consumer, topic, p, low, high, window, max_records, want, last, deadline
                    )
                )
    except KafkaException as exc:
        raise KafkaError(f"reading provenance failed: {exc}") from exc
    finally:
        consumer.close()
    return Provenance(last, tuple(scans))


def _scan_partition(
    consumer: Any,
    topic: str,
    partition: int,
    low: int,
    high: int,
    window: int,
    max_records: int,
    want: set[TopicPartitionKey] | None,
    last: dict[TopicPartitionKey, int],
    deadline: float,
) -> PartitionScan:
    found: set[TopicPartitionKey] = set()
    end = high
    records = 0
    size = window
    while end > low:
        if want is not None and want <= found:
            break
        if records >= max_records:
            break
        start = max(low, end - min(size, max_records - records))
        consumer.assign(
            [TopicPartition(topic, partition, start if start > 0 else OFFSET_BEGINNING)]
        )
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"reading provenance of {topic}[{partition}] timed out at offset {start}"
                )
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == RdKafkaError._PARTITION_EOF:
                        done = True
                        continue
                    if err.fatal():
                        raise KafkaError(f"reading provenance failed: {_error_text(err)}")
                    continue
                offset = int(msg.offset() or 0)
                if offset >= end:
                    done = True  # into the window read before: this one is finished
                    continue
                records += 1
                if offset >= end - 1:
                    done = True
                prov = parse_provenance(_bytes_headers(msg.headers()))
                if prov is None:
                    continue
                src = (prov[0], prov[1])
                found.add(src)
                if prov[2] > last.get(src, -1):
                    last[src] = prov[2]
        end = start
        size *= 2
    complete = end <= low or (want is not None and want <= found)
    return PartitionScan(topic, partition, low, high, end, records, complete, tuple(sorted(found)))


__all__ = [
    "PROVENANCE_HEADERS",
    "SESSION",
    "SRC_OFFSET",
    "SRC_PARTITION",
    "SRC_TOPIC",
    "TARGET_TOPIC",
    "Delivery",
    "ExpectedSources",
    "KafkaSink",
    "KafkaSource",
    "PartitionScan",
    "Provenance",
    "ensure_topic",
    "list_topics",
    "parse_provenance",
    "partition_count",
    "provenance_headers",
    "read_provenance",
    "record_from_message",
]
