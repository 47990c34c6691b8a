"""docker-compose.yml, checked without a Docker engine: the file parses, every service
points at files that exist, the two halves agree with each other and with their configs,
and the networks keep OT and IT apart with only the sender and receiver on the diode path."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from diode.config import (
    ReceiverConfig,
    SenderConfig,
    load_receiver_config,
    load_sender_config,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = YAML(typ="safe").load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    s = compose["services"]
    assert isinstance(s, dict)
    return s


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (bind path or volume name) of a service's volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *_ = str(spec).split(":")
        out[target] = source
    return out


def _config_mount(service: dict[str, Any]) -> Path:
    source = _mounts(service)["/etc/diode/diode.toml"]
    assert source.startswith("./"), source
    return ROOT / source


def test_services_and_images(services: dict[str, Any]) -> None:
    assert set(services) == {
        "kafka-ot",
        "kafka-it",
        "keys",
        "receiver",
        "sender",
        "plant-simulator",
    }
    for name in ("kafka-ot", "kafka-it"):
        assert services[name]["image"] == "apache/kafka:4.1.1"
        env = services[name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@{name}:9093"
    assert services["plant-simulator"]["profiles"] == ["demo"]


def test_build_contexts_and_bind_mounts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for target, source in _mounts(service).items():
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} -> {target}"
    assert services["receiver"]["build"]["dockerfile"] == "receiver/Dockerfile"
    assert services["sender"]["build"]["dockerfile"] == "sender/Dockerfile"
    # the simulator and the keys service run scripts/demo.py from the mounted scripts dir
    assert (ROOT / "scripts" / "demo.py").is_file()


def test_volumes_and_networks_are_declared(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared_volumes = set(compose["volumes"])
    declared_networks = set(compose["networks"])
    for name, service in services.items():
        for source in _mounts(service).values():
            if not source.startswith(("./", "/")):
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        for net in service.get("networks", []):
            assert net in declared_networks, f"{name}: network {net} not declared"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_only_the_pair_is_on_the_diode_path(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    on = {n: set(s.get("networks", [])) for n, s in services.items()}
    assert {n for n, nets in on.items() if "diode" in nets} == {"sender", "receiver"}
    assert on["sender"] == {"ot", "diode"} and on["receiver"] == {"it", "diode"}
    assert on["kafka-ot"] == {"ot"} and on["kafka-it"] == {"it"}
    assert on["plant-simulator"] == {"ot"}
    assert services["keys"]["network_mode"] == "none"
    assert compose["networks"]["diode"]["internal"] is True


def test_configs_match_the_services(services: dict[str, Any]) -> None:
    sender_file = _config_mount(services["sender"])
    receiver_file = _config_mount(services["receiver"])
    assert sender_file == ROOT / "sender" / "diode.compose.toml"
    assert receiver_file == ROOT / "receiver" / "diode.compose.toml"
    # the product's own loader accepts both files
    s: SenderConfig = load_sender_config(sender_file)
    r: ReceiverConfig = load_receiver_config(receiver_file)

    # the sender sends to the receiver service on the port it listens on, over UDP
    assert s.udp.host == "receiver"
    assert s.udp.port == r.udp.port
    assert r.udp.host == "0.0.0.0"
    assert f"{r.udp.port}/udp" in services["receiver"]["expose"]
    # no negotiation across a one-way link: the protocol sections are identical
    assert (
        tomllib.loads(sender_file.read_text())["protocol"]
        == tomllib.loads(receiver_file.read_text())["protocol"]
    )
    assert s.protocol == r.protocol

    # each side talks to the cluster on its own network, at its advertised listener
    assert s.kafka.bootstrap_servers == "kafka-ot:9092"
    assert r.kafka.bootstrap_servers == "kafka-it:9092"
    assert "kafka-ot" in services["sender"]["depends_on"]
    assert "kafka-it" in services["receiver"]["depends_on"]


def test_key_files_come_from_the_right_volume(services: dict[str, Any]) -> None:
    s = load_sender_config(_config_mount(services["sender"]))
    r = load_receiver_config(_config_mount(services["receiver"]))
    sender_mounts, receiver_mounts = _mounts(services["sender"]), _mounts(services["receiver"])
    for path in (s.keys.signing_key, s.keys.receiver_public_key):
        assert str(path.parent) in sender_mounts
        assert sender_mounts[str(path.parent)] == "ot-keys"
    for path in (r.keys.receiver_key, r.keys.sender_public_key, r.keys.audit_key):
        assert receiver_mounts[str(path.parent)] == "it-keys"
    # the keys service copies into each side's volume exactly the files its config names
    keys = services["keys"]
    script = "\n".join(keys["command"])
    keys_mounts = {v: k for k, v in _mounts(keys).items()}
    ot_dir, it_dir = keys_mounts["ot-keys"], keys_mounts["it-keys"]
    for path in (s.keys.signing_key, s.keys.receiver_public_key):
        assert f"{ot_dir}/" in script and f"/key-master/{path.name}" in script
    ot_line = next(line for line in script.splitlines() if line.rstrip().endswith(f"{ot_dir}/"))
    it_line = next(line for line in script.splitlines() if line.rstrip().endswith(f"{it_dir}/"))
    assert "receiver.key" not in ot_line, "the OT side must never get the receiver's secret"
    assert "sender.key" not in it_line, "the IT side must never get the sender's secret"
    for path in (r.keys.receiver_key, r.keys.sender_public_key, r.keys.audit_key):
        assert f"/key-master/{path.name}" in it_line
    for path in (s.keys.signing_key, s.keys.receiver_public_key):
        assert f"/key-master/{path.name}" in ot_line
    # both sides load the policy the keys service writes
    assert s.policy_file == r.policy_file
    assert _mounts(services["sender"])[str(s.policy_file.parent)] == "policy"
    assert f"--out {keys_mounts['policy']}/{s.policy_file.name}" in script


def test_commands_run_the_programs(services: dict[str, Any]) -> None:
    assert services["receiver"]["command"] == [
        "receiver",
        "run",
        "--config",
        "/etc/diode/diode.toml",
    ]
    assert services["sender"]["command"] == ["sender", "run", "--config", "/etc/diode/diode.toml"]
    sim = services["plant-simulator"]
    assert sim["command"][0] == "simulate"
    assert sim["command"][sim["command"].index("--bootstrap") + 1] == "kafka-ot:9092"
