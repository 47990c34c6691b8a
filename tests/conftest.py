"""Session fixtures shared by the whole suite.

``ot_kafka`` and ``it_kafka`` are two separate real Apache Kafka clusters (single-node KRaft,
jars from Maven Central via ``scripts/kafkactl.py``), started once per test session in
parallel and stopped at its end. Only tests that ask for them pay the start-up.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_kafkactl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafkactl", ROOT / "scripts" / "kafkactl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafkactl"] = module
    spec.loader.exec_module(module)
    return module


kafkactl = _load_kafkactl()


class KafkaPair:
    def __init__(self, ot: object, it: object) -> None:
        self.ot = ot
        self.it = it


@pytest.fixture(scope="session")
def kafka_pair(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[KafkaPair]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    base = tmp_path_factory.mktemp("kafka")
    cached = (kafkactl.jars_dir() / ".complete").exists()
    began = time.monotonic()
    jars = kafkactl.fetch(quiet=True)
    fetched = time.monotonic() - began
    source = f"jars cached in {jars}" if cached else f"jars fetched in {fetched:.1f}s into {jars}"
    began = time.monotonic()
    ot, it = kafkactl.start_many([("ot", base / "ot"), ("it", base / "it")])
    total = time.monotonic() - began
    line = (
        f"Kafka {kafkactl.KAFKA_VERSION} ({source}): OT cluster at {ot.bootstrap} ready in "
        f"{ot.startup_seconds:.1f}s, IT cluster at {it.bootstrap} ready in "
        f"{it.startup_seconds:.1f}s; both up after {total:.1f}s"
    )
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    else:
        print(line)
    try:
        yield KafkaPair(ot, it)
    finally:
        ot.stop()
        it.stop()


@pytest.fixture(scope="session")
def ot_kafka(kafka_pair: KafkaPair) -> object:
    """The OT (plant) side cluster: has ``.bootstrap``."""
    return kafka_pair.ot


@pytest.fixture(scope="session")
def it_kafka(kafka_pair: KafkaPair) -> object:
    """The IT (enterprise) side cluster: has ``.bootstrap``."""
    return kafka_pair.it
