"""Config loading, the example configs, and the start-up errors of ``diode sender/receiver run``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from diode.cli import main
from diode.config import (
    ReceiverConfig,
    SenderConfig,
    build_config,
    config_fingerprint,
    load_receiver_config,
    load_sender_config,
)
from diode.errors import ConfigError
from diode.io.kafka import SRC_OFFSET, SRC_PARTITION, SRC_TOPIC, parse_provenance
from diode.protocol.records import Record

ROOT = Path(__file__).resolve().parents[2]


def _sender_data() -> dict[str, object]:
    return {
        "kafka": {"bootstrap_servers": "ot:9092"},
        "udp": {"host": "127.0.0.1", "port": 5000},
        "keys": {"signing_key": "s.key", "receiver_public_key": "r.pub"},
        "policy_file": "p.yaml",
        "audit": {"path": "a.jsonl"},
    }


def test_example_configs_load() -> None:
    s = load_sender_config(ROOT / "sender" / "diode.example.toml")
    r = load_receiver_config(ROOT / "receiver" / "diode.example.toml")
    # both sides must agree on the protocol, or every datagram is rejected
    assert s.protocol.protocol_config().fingerprint == r.protocol.protocol_config().fingerprint
    assert s.keys.signing_key.is_absolute()
    assert s.keys.signing_key == (ROOT / "sender" / "keys" / "sender.key").resolve()


def test_errors_name_the_key_and_the_value() -> None:
    data = _sender_data()
    data["udp"] = {"host": "127.0.0.1", "port": 70000}
    data["typo"] = 1
    with pytest.raises(ConfigError) as err:
        build_config(SenderConfig, data)
    text = str(err.value)
    assert "udp.port" in text and "70000" in text
    assert "typo: unknown setting" in text


def test_missing_section_is_named() -> None:
    data = _sender_data()
    del data["keys"]
    with pytest.raises(ConfigError, match="keys: required setting is missing"):
        build_config(SenderConfig, data)


def test_reserved_kafka_settings_refused() -> None:
    data = _sender_data()
    data["kafka"] = {"bootstrap_servers": "x:1", "client": {"enable.auto.commit": True}}
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        build_config(SenderConfig, data)


def test_receiver_needs_an_allow_list() -> None:
    data = {
        "kafka": {"bootstrap_servers": "it:9092"},
        "udp": {"port": 5000},
        "keys": {"receiver_key": "r.key", "sender_public_key": "s.pub", "audit_key": "a.key"},
        "audit": {"path": "a.jsonl"},
    }
    with pytest.raises(ConfigError, match="allow-list"):
        build_config(ReceiverConfig, data)
    data["allowed_topics"] = ["ot.*"]
    assert build_config(ReceiverConfig, data).allowed_topics == ["ot.*"]


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    base = build_config(SenderConfig, _sender_data())
    monkeypatch.setenv("DIODE_SENDER__UDP__PORT", "6000")
    cfg = build_config(SenderConfig, _sender_data())
    assert cfg.udp.port == 6000
    assert cfg.kafka.bootstrap_servers == "ot:9092"  # the rest of the section is kept
    assert config_fingerprint(cfg) != config_fingerprint(base)


def test_fingerprint_is_stable() -> None:
    a = build_config(SenderConfig, _sender_data())
    b = build_config(SenderConfig, _sender_data())
    assert config_fingerprint(a) == config_fingerprint(b)
    assert len(config_fingerprint(a)) == 64


def test_provenance_last_occurrence_wins() -> None:
    rec = Record("t", 0, 0, 0, None, None, ())
    assert parse_provenance(rec.headers) is None
    headers = [
        (SRC_TOPIC, b"old"),
        (SRC_PARTITION, b"9"),
        (SRC_OFFSET, b"1"),
        (SRC_TOPIC, b"plant.a"),
        (SRC_PARTITION, b"1"),
        (SRC_OFFSET, b"42"),
    ]
    assert parse_provenance(headers) == ("plant.a", 1, 42)
    assert parse_provenance([(SRC_TOPIC, b"a"), (SRC_PARTITION, b"x"), (SRC_OFFSET, b"1")]) is None


def test_cli_start_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text("[udp]\nport = 'x'\n")
    for program in ("sender", "receiver"):
        result = runner.invoke(main, [program, "run", "--config", str(bad)])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and f"{program} cannot start" in lines[0]
        assert "udp.port" in lines[0]
    # a valid config whose key file does not exist
    cfg = tmp_path / "s.toml"
    cfg.write_text((ROOT / "sender" / "diode.example.toml").read_text().replace("keys/", "nokeys/"))
    result = runner.invoke(main, ["sender", "run", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "sender.key does not exist" in result.output


EXPECT_POLICY = """\
version: 1
name: expect
rules:
  - id: boiler
    match: {exact: plant.boiler}
    to: ot.shared
  - id: turbine
    match: {exact: plant.turbine}
    to: ot.shared
  - id: tel
    match: {glob: "plant.tel.*"}
    prefix: "ot."
  - id: many
    match: {glob: "plant.log.*"}
    to: ot.logs
  - id: off
    match: {exact: plant.secret}
    action: drop
"""


def test_expected_sources_from_the_receivers_policy(tmp_path: Path) -> None:
    from diode.policy import PolicyEngine, load_policy
    from diode.services.receiver import AllowList

    path = tmp_path / "p.yaml"
    path.write_text(EXPECT_POLICY)
    allow = AllowList([], PolicyEngine(load_policy(path)))
    # two exact sources share one target: the scan can stop once both are found
    assert allow.expected_sources("ot.shared", 3) == {("plant.boiler", 3), ("plant.turbine", 3)}
    # a prefixed glob maps one source to one target
    assert allow.expected_sources("ot.plant.tel.a", 0) == {("plant.tel.a", 0)}
    # a glob mapped to one target: any number of sources, so unknown
    assert allow.expected_sources("ot.logs", 0) is None
    # nothing the policy forwards ends there
    assert allow.expected_sources("ot.nothing", 0) == set()
    assert AllowList(["ot.*"], None).expected_sources("ot.shared", 0) is None
