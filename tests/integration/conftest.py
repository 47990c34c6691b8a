"""Fixtures of the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; those still running when it ends (it failed) are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)
