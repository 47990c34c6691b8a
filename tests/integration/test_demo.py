"""``scripts/demo`` end to end against the suite's two Kafka clusters, through a lossy relay.

The demo runs as its own process (as ``make demo`` does), with the sender and receiver as its
children and a relay that drops 2% of the datagrams (seeded). Its JSON summary must show every
allowed record on IT byte for byte, none of the denied or quarantined ones, no gap, and both
audit logs verified; and the demo must leave no process of its own behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


def _running_pids(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        # a zombie ("Z") has exited: only its parent's bookkeeping is left
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


def test_demo_through_a_lossy_relay(tmp_path: Path, ot_kafka: Any, it_kafka: Any) -> None:
    work = tmp_path / "demo"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "demo.py"),
        "--seconds", "3",
        "--rate", "300",
        "--loss", "0.02",
        "--seed", "7",
        # a low rate makes small blocks: long linger and m = k keep them rebuildable at 2% loss
        "--k", "16", "--m", "16", "--linger-ms", "100",
        "--json",
        "--work-dir", str(work),
        "--ot-bootstrap", ot_kafka.bootstrap,
        "--it-bootstrap", it_kafka.bootstrap,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = json.loads(done.stdout)

    assert s["ok"] is True
    assert all(c["ok"] for c in s["checks"]), s["checks"]
    assert s["namespace"].startswith("demo-")  # shared clusters: its own topic names
    expected = s["expected"]
    assert s["produced_total"] == expected["forward"] + expected["denied"] + expected["quarantined"]
    assert s["produced_total"] >= 800  # 3 s at 300 records/s, give or take a tick
    assert expected["denied"] > 0 and expected["quarantined"] > 0
    # every allowed record arrived, once, byte for byte; nothing denied or quarantined did
    assert s["matched"] == expected["forward"] == s["arrived_total"]
    assert s["missing"] == s["mismatched"] == s["duplicates"] == 0
    assert s["leaked"] == s["unexpected"] == 0
    assert s["arrived"] == s["expected_by_it_topic"]
    assert s["denied"] == expected["denied"]
    assert s["quarantined"] == s["quarantine_topic_records"] == expected["quarantined"]
    assert s["gaps"] == 0 and s["records_lost"] == 0
    # the relay really dropped datagrams, and FEC made up for them
    relay = s["relay"]
    assert relay["dropped"] > 0
    assert relay["received"] == relay["dropped"] + relay["forwarded"] + relay["send_errors"]
    assert s["audit"]["sender"]["verify_ok"] and s["audit"]["receiver"]["verify_ok"]
    assert all(p["exit"] == 0 for p in s["processes"].values())
    assert set(s["processes"]) == {"sender", "relay", "receiver"}

    # the demo's children are gone: nothing of this run still runs
    pids = [int(p) for p in _pids_of(work)]
    assert pids and _running_pids(pids) == []


def _pids_of(work: Path) -> list[str]:
    text = (work / "pids").read_text() if (work / "pids").exists() else ""
    return text.split()
