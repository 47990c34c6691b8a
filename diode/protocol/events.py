"""What the protocol sessions tell the program that drives them.

Owns the event types (frozen, slotted dataclasses) returned by ``ReceiverSession.next_event``
/ ``events`` and ``SenderSession.events``, and the frozen counter snapshots of both sessions.
Events carry everything an audit entry needs; they hold no reference to session internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diode.protocol.records import Record


@dataclass(frozen=True, slots=True)
class RecordsDelivered:
    """Records of one rebuilt, authenticated block, in the order the sender put them.

    Records of one source partition always arrive in offset order across events, because
    blocks are delivered in block order.
    """

    session_id: bytes
    block: int
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class GapDetected:
    """Records of one source partition that were sent but will never be delivered.

    ``first_offset``..``last_offset`` and ``count`` come from the sender's signed manifest
    (or, for reason ``"unaccounted"``, from the heartbeat's counts: then ``count`` is exact and
    the offsets bound the missing records). Offsets inside the range need not be contiguous.
    """

    session_id: bytes
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    count: int
    reason: str
    block: int


@dataclass(frozen=True, slots=True)
class BlocksLost:
    """Blocks that were lost before any signed manifest told what they carried.

    Their records are reported later as ``GapDetected(reason="unaccounted")`` once a
    heartbeat gives the sender's per-partition counts.
    """

    session_id: bytes
    first_block: int
    last_block: int
    reason: str


@dataclass(frozen=True, slots=True)
class DatagramRejected:
    """A datagram was dropped; ``reason`` is also the name of the counter it went into."""

    reason: str
    detail: str
    session_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A new sender session (a signed key announcement with a new session id) was accepted.

    ``restart`` is true when another session was active before: everything still open in
    that one was closed as delivered or as a gap just before this event.
    """

    session_id: bytes
    restart: bool
    previous_session_id: bytes | None
    key_id: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session was closed (replaced by a restart); its late datagrams are now replays."""

    session_id: bytes
    blocks_delivered: int
    blocks_lost: int


@dataclass(frozen=True, slots=True)
class KeyRotated:
    """A new session key was verified and installed (on the sender: created and announced)."""

    session_id: bytes
    key_id: int
    previous_key_id: int | None


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """One partition's high-water mark as of a heartbeat.

    ``last_offset`` is the last offset put on the wire, ``last_block`` the block that carried
    it, ``records`` how many records of the partition the session has put on the wire.
    """

    topic: str
    partition: int
    last_offset: int
    last_block: int
    records: int


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """An authenticated heartbeat: the sender's view, as of when it was sent."""

    session_id: bytes
    sequence: int
    next_block: int
    records_sent: int
    record_bytes_sent: int
    datagrams_sent: int
    policy_fingerprint: bytes
    marks: tuple[PartitionMark, ...]


@dataclass(frozen=True, slots=True)
class PartitionUnseen:
    """A session this receiver joined after it had started sent records of this partition
    (up to ``last_offset``, in blocks up to ``last_block``) of which none reached the receiver:
    its heartbeat says so once every block up to ``last_block`` is resolved. The receiver
    knows no more of them; what it had delivered before (from IT Kafka) bounds the loss."""

    session_id: bytes
    topic: str
    partition: int
    last_offset: int
    last_block: int


@dataclass(frozen=True, slots=True)
class HeartbeatMissed:
    """No authenticated datagram for longer than the heartbeat timeout: the link may be dead."""

    session_id: bytes
    silent_for: float


@dataclass(frozen=True, slots=True)
class LinkUp:
    """Authenticated traffic arrived (first time, or again after ``HeartbeatMissed``)."""

    session_id: bytes
    after_silence: float | None


@dataclass(frozen=True, slots=True)
class ManifestVerified:
    """A signed manifest verified; its blocks are now covered by the sender's signature."""

    session_id: bytes
    sequence: int
    first_block: int
    last_block: int
    blocks: int


Event = (
    RecordsDelivered
    | GapDetected
    | BlocksLost
    | DatagramRejected
    | SessionStarted
    | SessionEnded
    | KeyRotated
    | HeartbeatReceived
    | PartitionUnseen
    | HeartbeatMissed
    | LinkUp
    | ManifestVerified
)


@dataclass(frozen=True, slots=True)
class SenderCounters:
    """Snapshot of a ``SenderSession``'s counters."""

    records: int = 0
    record_bytes: int = 0
    blocks: int = 0
    padding_bytes: int = 0
    block_bytes: int = 0
    datagrams: int = 0
    bytes: int = 0
    data_datagrams: int = 0
    repair_datagrams: int = 0
    announce_datagrams: int = 0
    manifest_datagrams: int = 0
    heartbeat_datagrams: int = 0
    keys: int = 0


@dataclass(frozen=True, slots=True)
class ReceiverCounters:
    """Snapshot of a ``ReceiverSession``'s counters; ``rejected`` maps reason -> count."""

    datagrams: int = 0
    bytes: int = 0
    accepted: int = 0
    duplicates: int = 0
    redundant: int = 0
    blocks_complete: int = 0
    blocks_recovered: int = 0
    blocks_lost: int = 0
    records_delivered: int = 0
    records_lost: int = 0
    manifests_verified: int = 0
    announcements_verified: int = 0
    heartbeats: int = 0
    sessions: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())
