"""Configuration of the two long-running programs: ``SenderConfig`` and ``ReceiverConfig``.

Owns the settings models (pydantic, frozen, unknown keys refused), loading them from a TOML
file with environment overrides, the error messages an operator sees when a setting is wrong,
and the config fingerprint written into audit entries.

Environment variables override the file, with ``__`` between levels::

    DIODE_SENDER__UDP__PORT=5000            -> [udp] port = 5000 in the sender's file
    DIODE_RECEIVER__KAFKA__BOOTSTRAP_SERVERS=it-kafka:9092

The protocol section must be identical on both sides: there is no negotiation across a one-way
link, and the receiver rejects datagrams whose header carries a different protocol fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from diode.errors import ConfigError
from diode.protocol.crypto import Cipher
from diode.protocol.records import Compression
from diode.protocol.wire import ProtocolConfig

#: largest config file read: a config is a page of settings, not data
MAX_CONFIG_BYTES = 1 << 20

_CIPHERS = {"aes-256-gcm": Cipher.AES_256_GCM, "chacha20-poly1305": Cipher.CHACHA20_POLY1305}
_COMPRESSIONS = {"none": Compression.NONE, "zlib": Compression.ZLIB}

#: librdkafka settings the services set themselves: an operator value would break a promise
#: (offsets committed only once on the wire; idempotent, ordered production)
SENDER_RESERVED_KAFKA = frozenset({"enable.auto.commit", "enable.auto.offset.store"})
RECEIVER_RESERVED_KAFKA = frozenset(
    {"enable.idempotence", "acks", "max.in.flight.requests.per.connection"}
)

KafkaValue = str | int | float | bool


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProtocolSettings(_Section):
    """``[protocol]``: must be the same on sender and receiver."""

    payload_size: Annotated[int, Field(ge=512, le=8972)] = 1472
    k: Annotated[int, Field(ge=1, le=200)] = 32
    m: Annotated[int, Field(ge=0, le=200)] = 8
    codec: Literal["rs", "zfec", "raptorq"] = "rs"
    cipher: Literal["aes-256-gcm", "chacha20-poly1305"] = "aes-256-gcm"
    compression: Literal["none", "zlib"] = "none"
    interleave: Annotated[int, Field(ge=1, le=64)] = 4
    linger_ms: Annotated[float, Field(gt=0, le=10_000)] = 5.0
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.1
    manifest_interval_ms: Annotated[float, Field(gt=0, le=10_000)] = 5.0
    manifest_copies: Annotated[int, Field(ge=1, le=16)] = 3
    key_rotation_s: Annotated[float, Field(gt=0)] = 3600.0

    def protocol_config(self) -> ProtocolConfig:
        """The protocol core's config; raises ``ConfigError`` for a combination it refuses."""
        return ProtocolConfig(
            payload_size=self.payload_size,
            k=self.k,
            m=self.m,
            codec=self.codec,
            cipher=_CIPHERS[self.cipher],
            compression=_COMPRESSIONS[self.compression],
            interleave=self.interleave,
            linger=self.linger_ms / 1000,
            heartbeat_interval=self.heartbeat_interval_s,
            manifest_interval=self.manifest_interval_ms / 1000,
            manifest_copies=self.manifest_copies,
            key_rotation_seconds=self.key_rotation_s,
        )


class AuditSettings(_Section):
    """``[audit]``: where the program's tamper-evident log goes."""

    path: Path
    checkpoint_entries: Annotated[int, Field(ge=1)] | None = 1000
    checkpoint_seconds: Annotated[float, Field(gt=0)] | None = 60.0
    rotate_bytes: Annotated[int, Field(ge=1)] | None = 64 * 1024 * 1024
    #: also rotate when the live file is this old (None: by size only)
    rotate_seconds: Annotated[float, Field(gt=0)] | None = None
    fsync: Literal["never", "checkpoint", "entry"] = "checkpoint"
    #: what a refused or quarantined record's entry says of its content: "none" (topic,
    #: partition, offset, size), "digest" (+ SHA-256 of key and value, to match a copy
    #: without showing it) or "full" (+ key, value and header values, base64, each cut at
    #: record_content_max_bytes). The log is not encrypted: "full" puts plant data in it.
    record_content: Literal["none", "digest", "full"] = "none"
    record_content_max_bytes: Annotated[int, Field(ge=0, le=65536)] = 1024
    #: seconds over which per-record events (deliveries, rejections) are aggregated
    aggregate_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0


def _check_client(client: dict[str, KafkaValue], reserved: frozenset[str], where: str) -> None:
    bad = sorted(k for k in client if k in reserved or k == "bootstrap.servers")
    if bad:
        raise ValueError(
            f"{where}.client must not set {', '.join(bad)}: the service sets "
            f"{'it' if len(bad) == 1 else 'them'} itself"
        )


class SenderKafka(_Section):
    """``[kafka]`` of the sender: the OT cluster."""

    bootstrap_servers: Annotated[str, Field(min_length=1)]
    group_id: Annotated[str, Field(min_length=1)] = "kafka-data-diode"
    #: librdkafka settings passed through unchanged (security.protocol, ssl.*, sasl.*, ...)
    client: dict[str, KafkaValue] = Field(default_factory=dict)
    #: topics to consume; empty: every topic a forwarding rule of the policy matches
    topics: list[Annotated[str, Field(min_length=1, max_length=249)]] = Field(default_factory=list)
    #: most records taken from the consumer per poll
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000

    @model_validator(mode="after")
    def _client(self) -> Self:
        _check_client(self.client, SENDER_RESERVED_KAFKA, "kafka")
        return self


class ReceiverKafka(_Section):
    """``[kafka]`` of the receiver: the IT cluster."""

    bootstrap_servers: Annotated[str, Field(min_length=1)]
    client: dict[str, KafkaValue] = Field(default_factory=dict)
    #: create a missing target topic (with as many partitions as its source partition needs)
    create_topics: bool = True
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 1
    replication_factor: Annotated[int, Field(ge=1, le=16)] = 1
    #: seconds a delivery may take before it counts as failed (and lost, as an audited gap);
    #: 0: retry until the cluster returns, records waiting in the spool meanwhile
    delivery_timeout_s: Annotated[float, Field(ge=0, le=86400)] = 0.0

    @model_validator(mode="after")
    def _client(self) -> Self:
        _check_client(self.client, RECEIVER_RESERVED_KAFKA, "kafka")
        return self


class SenderUdp(_Section):
    """``[udp]`` of the sender: where the diode's OT-side port is, and how fast the link is."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]
    source_host: str | None = None
    interface: str | None = None
    #: link rate in Mbit/s the sender paces to (Ethernet framing included); 0: unpaced
    rate_mbit: Annotated[float, Field(ge=0, le=400_000)] = 100.0
    gso: bool = True


class ReceiverUdp(_Section):
    """``[udp]`` of the receiver: where it listens."""

    host: Annotated[str, Field(min_length=1)] = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)]
    interface: str | None = None
    rcvbuf_bytes: Annotated[int, Field(ge=65536, le=1 << 30)] = 8 * 1024 * 1024
    gro: bool = True


class SenderKeys(_Section):
    """``[keys]`` of the sender (files from ``diode keys generate``)."""

    signing_key: Path
    receiver_public_key: Path


class ReceiverKeys(_Section):
    """``[keys]`` of the receiver."""

    receiver_key: Path
    sender_public_key: Path
    #: Ed25519 key that signs the receiver's audit checkpoints
    audit_key: Path


class ReceiverLimits(_Section):
    """``[receiver]``: limits and timeouts of the receiving session."""

    block_timeout_s: Annotated[float, Field(gt=0, le=600)] = 0.5
    #: on a slow link the block timeout is stretched by the time an interleaved group of
    #: blocks takes to arrive (measured), up to this many seconds in all
    max_block_wait_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_open_blocks: Annotated[int, Field(ge=16, le=1_000_000)] = 512
    receive_window: Annotated[int, Field(ge=16, le=10_000_000)] = 4096
    #: records in the newest window read back from each IT partition at start (provenance)
    provenance_window: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    #: most records read back from one IT partition before giving up (audited)
    provenance_max_records: Annotated[int, Field(ge=1, le=1_000_000_000)] = 200_000

    @model_validator(mode="after")
    def _waits(self) -> Self:
        if self.max_block_wait_s < self.block_timeout_s:
            raise ValueError(
                f"max_block_wait_s {self.max_block_wait_s} is shorter than block_timeout_s "
                f"{self.block_timeout_s}: it bounds the stretched timeout, so it must be at "
                "least as long"
            )
        return self


class SpoolSettings(_Section):
    """``[spool]``: records not yet acknowledged by IT Kafka. When full, new records are lost
    as an audited gap. With ``path`` set they are kept on disk and survive a stop or crash."""

    #: spool directory (segment files); unset: memory only, and a stop turns what is left
    #: into audited gaps
    path: Path | None = None
    max_records: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    max_bytes: Annotated[int, Field(ge=1024, le=1 << 40)] = 256 * 1024 * 1024
    #: when appended records are forced to disk: every loop turn, every record, or never
    fsync: Literal["never", "batch", "entry"] = "batch"
    segment_bytes: Annotated[int, Field(ge=4096, le=1 << 32)] = 16 * 1024 * 1024
    #: seconds a stopping receiver keeps handing spooled records to IT Kafka
    stop_flush_s: Annotated[float, Field(ge=0, le=3600)] = 10.0


class _ServiceConfig(BaseSettings):
    """What both programs' configurations share: frozen, unknown keys refused, environment
    overrides (each subclass adds its ``env_prefix``; pydantic merges the two configs)."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment wins over the file: a container sets one value without a new file
        return (env_settings, init_settings)

    @staticmethod
    def _check_protocol(protocol: ProtocolSettings) -> None:
        try:
            protocol.protocol_config()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class SenderConfig(_ServiceConfig):
    """The sender's whole configuration (see ``sender/diode.example.toml``)."""

    model_config = SettingsConfigDict(env_prefix="DIODE_SENDER__")

    kafka: SenderKafka
    udp: SenderUdp
    keys: SenderKeys
    policy_file: Path
    audit: AuditSettings
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    #: seconds between two commits of consumed offsets to the OT cluster
    commit_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    #: seconds between two counter lines in the log
    stats_interval_s: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _protocol(self) -> Self:
        self._check_protocol(self.protocol)
        return self


class ReceiverConfig(_ServiceConfig):
    """The receiver's whole configuration (see ``receiver/diode.example.toml``).

    ``allowed_topics`` (IT-side topic globs) and/or ``policy_file`` (the sender's policy: a
    record's IT topic must be the one its rule maps its source topic to) form the receiver's
    own allow-list; at least one is required.
    """

    model_config = SettingsConfigDict(env_prefix="DIODE_RECEIVER__")

    kafka: ReceiverKafka
    udp: ReceiverUdp
    keys: ReceiverKeys
    audit: AuditSettings
    allowed_topics: list[Annotated[str, Field(min_length=1, max_length=249)]] = Field(
        default_factory=list
    )
    policy_file: Path | None = None
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    receiver: ReceiverLimits = Field(default_factory=ReceiverLimits)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    #: seconds to wait at start for the IT cluster to answer the provenance scan
    startup_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    stats_interval_s: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if not self.allowed_topics and self.policy_file is None:
            raise ValueError(
                "the receiver needs its own allow-list: set allowed_topics (IT topic globs) "
                "or policy_file (or both)"
            )
        self._check_protocol(self.protocol)
        return self


AnyConfig = SenderConfig | ReceiverConfig
C = TypeVar("C", SenderConfig, ReceiverConfig)


def _describe(error: Any) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ())) or "(top level)"
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid"))
    if kind == "missing":
        return f"{loc}: required setting is missing"
    if kind == "extra_forbidden":
        return f"{loc}: unknown setting (check the spelling against the example config)"
    value = error.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if isinstance(value, dict):
        return f"{loc}: {msg}"
    return f"{loc}: {msg} (got {shown})"


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in a config file are relative to the file, not to the cwd."""
    for section, keys in (
        ("keys", ("signing_key", "receiver_public_key", "receiver_key", "sender_public_key")),
        ("keys", ("audit_key",)),
        ("audit", ("path",)),
    ):
        table = data.get(section)
        if isinstance(table, dict):
            for key in keys:
                value = table.get(key)
                if isinstance(value, str) and value and not os.path.isabs(value):
                    table[key] = str(base / value)
    spool = data.get("spool")
    if isinstance(spool, dict):
        value = spool.get("path")
        if isinstance(value, str) and value and not os.path.isabs(value):
            spool["path"] = str(base / value)
    value = data.get("policy_file")
    if isinstance(value, str) and value and not os.path.isabs(value):
        data["policy_file"] = str(base / value)


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, or ``ConfigError`` naming the file and what is wrong with it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {size} bytes, exceeding limit {MAX_CONFIG_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def build_config(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Validate ``data`` (plus environment overrides) into ``cls``; one line per problem."""
    try:
        return cls(**data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_config(cls: type[C], path: Path) -> C:
    """Read ``path`` (TOML) into ``cls``; relative paths inside are relative to the file."""
    data = read_toml(path)
    _resolve_paths(data, path.resolve().parent)
    return build_config(cls, data, str(path))


def load_sender_config(path: Path) -> SenderConfig:
    return load_config(SenderConfig, path)


def load_receiver_config(path: Path) -> ReceiverConfig:
    return load_config(ReceiverConfig, path)


def config_fingerprint(config: AnyConfig) -> str:
    """SHA-256 (hex) of the config as canonical JSON: sorted keys, no whitespace."""
    data = config.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "AuditSettings",
    "ConfigError",
    "ProtocolSettings",
    "ReceiverConfig",
    "SenderConfig",
    "SpoolSettings",
    "build_config",
    "config_fingerprint",
    "load_config",
    "load_receiver_config",
    "load_sender_config",
    "read_toml",
]
