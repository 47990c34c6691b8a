"""The sender's batch path: runs of plain forwards go to the session together, yet every record
is judged, audited, counted and committed exactly as if handled one at a time."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from diode.audit import decode_line
from diode.config import SenderConfig, build_config
from diode.protocol.crypto import generate_key_files
from diode.protocol.records import Record
from diode.services import sender as sender_module
from diode.services.sender import SenderService

POLICY = """\
version: 1
name: batches
quarantine_topic: diode.quarantine
rules:
  - id: lines
    match: {exact: plant.a}
    prefix: "ot."
  - id: commands
    match: {exact: plant.cmd}
    action: drop
"""


class FakeSource:
    """Stands in for ``KafkaSource``: hands out the batches it is given, keeps the commits."""

    batches: ClassVar[list[list[Record]]] = []
    commits: ClassVar[list[dict[tuple[str, int], int]]] = []

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.topics: tuple[str, ...] = ()

    def poll_batch(self, max_records: int, timeout: float) -> list[Record]:
        return FakeSource.batches.pop(0) if FakeSource.batches else []

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        FakeSource.commits.append(dict(offsets))

    def subscribe(self, topics: Sequence[str]) -> None:
        self.topics = tuple(topics)

    def close(self) -> None:
        pass


class FakeSink:
    """Stands in for the quarantine ``KafkaSink``; this policy quarantines nothing."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("nothing is quarantined here")

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return 0


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SenderService]:
    monkeypatch.setattr(sender_module, "KafkaSource", FakeSource)
    monkeypatch.setattr(sender_module, "KafkaSink", FakeSink)
    FakeSource.batches = []
    FakeSource.commits = []
    generate_key_files(tmp_path / "keys")
    (tmp_path / "policy.yaml").write_text(POLICY)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    config = build_config(
        SenderConfig,
        {
            "kafka": {"bootstrap_servers": "ot:9092", "topics": ["plant.a", "plant.cmd"]},
            "udp": {"host": "127.0.0.1", "port": sink.getsockname()[1], "gso": False},
            "keys": {
                "signing_key": str(tmp_path / "keys" / "sender.key"),
                "receiver_public_key": str(tmp_path / "keys" / "receiver.pub"),
            },
            "policy_file": str(tmp_path / "policy.yaml"),
            "audit": {"path": str(tmp_path / "audit.jsonl")},
            # a small block, so a 200 kB record is too large for the protocol
            "protocol": {"payload_size": 512, "k": 2, "m": 1},
        },
    )
    clock = _Clock()
    svc = SenderService(config, clock=clock, wall=lambda: 1_700_000_000.0)
    try:
        yield svc
    finally:
        svc.close()
        sink.close()


class _Clock:
    """Monotonic time that moves 1 ms per reading: timers come due without waiting."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def _rec(topic: str, offset: int, size: int = 40) -> Record:
    return Record(topic, 0, offset, 1_700_000_000_000, b"k", b"v" * size, (("source", b"s"),))


def _refused(path: Path) -> list[tuple[str, int, str]]:
    out = []
    for line in path.read_bytes().splitlines():
        entry = decode_line(line)
        if entry.event == "record_refused":
            f = entry.fields
            out.append((str(f["topic"]), int(str(f["offset"])), str(f["reason"])))
    return out


def _run(svc: SenderService, batches: list[list[Record]]) -> None:
    FakeSource.batches = batches
    while FakeSource.batches:
        svc.step()
    svc.close()


def test_a_too_large_record_amid_forwards_is_refused_alone(
    service: SenderService, tmp_path: Path
) -> None:
    batch = [
        _rec("plant.a", 0),
        _rec("plant.a", 1),
        _rec("plant.a", 2, size=200_000),
        _rec("plant.a", 3),
        _rec("plant.cmd", 0),
        _rec("plant.a", 4),
    ]
    _run(service, [batch])
    stats = service.stats
    assert (stats.consumed, stats.forwarded, stats.too_large, stats.dropped) == (6, 4, 1, 1)
    refused = _refused(tmp_path / "audit.jsonl")
    # in record order: the too-large record, then the dropped command
    assert [(t, o) for t, o, _ in refused] == [("plant.a", 2), ("plant.cmd", 0)]
    assert "too large for the protocol" in refused[0][2]
    session = service.session
    assert session is not None and session.counters().records == 4
    last = FakeSource.commits[-1]
    assert last[("plant.a", 0)] == 5 and last[("plant.cmd", 0)] == 1


@pytest.mark.parametrize("split", [False, True])
def test_a_refused_last_record_does_not_hold_back_or_overstate_the_commit(
    service: SenderService, tmp_path: Path, split: bool
) -> None:
    records = [_rec("plant.a", 0), _rec("plant.a", 1), _rec("plant.a", 2, size=200_000)]
    batches = [records[:1], records[1:]] if split else [records]
    _run(service, batches)
    assert service.stats.forwarded == 2 and service.stats.too_large == 1
    assert [(t, o) for t, o, _ in _refused(tmp_path / "audit.jsonl")] == [("plant.a", 2)]
    # the refused record is the partition's last: everything consumed is safe to commit
    assert FakeSource.commits[-1][("plant.a", 0)] == 3


def test_forwards_split_over_batches_all_cross_and_commit(service: SenderService) -> None:
    records = [_rec("plant.a", i) for i in range(50)]
    _run(service, [records[:20], records[20:]])
    assert service.stats.forwarded == 50 and service.stats.datagrams > 0
    session = service.session
    assert session is not None and session.counters().records == 50
    assert FakeSource.commits[-1][("plant.a", 0)] == 50
