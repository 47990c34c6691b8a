"""``diode bench``: what it measures, what it checks, and how it refuses bad settings.

Behaviour only: every figure must be a positive number, never above or below a threshold.
Runs are ``--quick`` with a tiny ``--seconds`` to keep the suite short.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from diode.benchmark import ProtocolWorkload, measure_protocol, protocol_records
from diode.cli import main
from diode.errors import BenchmarkError
from diode.protocol.records import Record
from diode.protocol.wire import ProtocolConfig

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--quick", "--seconds", "0.01"]

FIGURES = {
    "protocol": [
        "sender_mb_s",
        "sender_datagrams_per_s",
        "sender_link_mbit_s",
        "receiver_mb_s",
        "receiver_datagrams_per_s",
        "receiver_link_mbit_s",
        "wire_bytes_per_payload_byte",
        "link_bytes_per_payload_byte",
    ],
    "fec": ["encode_mb_s", "decode_mb_s"],
    "policy": ["decisions_per_s", "us_per_decision"],
    "audit": ["sync_entries_per_s", "threaded_entries_per_s"],
}


def _bench(*args: str) -> Result:
    return CliRunner().invoke(main, ["bench", *args])


def _json(*args: str) -> dict[str, Any]:
    result = _bench(*FAST, "--json", *args)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_all_sections_give_positive_figures_and_a_summary() -> None:
    report = _json()
    assert report["sections"] == ["protocol", "fec", "policy", "audit"]
    for section, keys in FIGURES.items():
        for key in keys:
            assert _positive(report[section][key]), (section, key, report[section][key])
    summary = report["summary"]
    for key in ("payload_mb_s", "link_mbit_s", "max_rate_mbit", "sender_records_per_s_with_policy"):
        assert _positive(summary[key]), key
    assert summary["limited_by"] in ("sender", "receiver")
    assert summary["max_rate_mbit"] <= summary["link_mbit_s"]
    assert report["machine"]["cpus"] >= 1
    assert report["quick"] is True and report["seconds_per_figure"] == 0.01


def test_protocol_reports_what_it_delivered_and_checked() -> None:
    p = _json("protocol")["protocol"]
    assert p["delivery_checked"] is True
    assert p["records_sent"] == p["records"] > 0
    assert p["records_delivered"] == p["records_sent"] - p["records_lost"]
    assert p["gap_records"] == p["records_lost"]
    assert p["records_mismatched"] == 0
    assert p["datagrams_dropped"] > 0  # 5 % loss by default
    assert (p["k"], p["m"], p["codec"], p["cipher"]) == (32, 8, "rs", "aes-256-gcm")
    assert p["wire_bytes_per_payload_byte"] > 1


def test_protocol_settings_are_used_and_loss_beyond_repair_is_accounted_for() -> None:
    p = _json(
        "protocol",
        "--k",
        "8",
        "--m",
        "1",
        "--loss",
        "0.3",
        "--record-size",
        "300",
        "--payload-size",
        "600",
        "--cipher",
        "chacha20-poly1305",
        "--codec",
        "zfec",
    )["protocol"]
    assert (p["k"], p["m"], p["payload_size"], p["record_size"]) == (8, 1, 600, 300)
    assert (p["codec"], p["cipher"]) == ("zfec", "chacha20-poly1305")
    assert p["records_lost"] > 0 and p["blocks_lost"] > 0
    assert p["records_delivered"] + p["records_lost"] == p["records_sent"]
    assert p["gap_records"] == p["records_lost"]
    assert p["delivery_checked"] is True


def test_the_delivery_check_catches_a_record_that_arrives_different() -> None:
    records = protocol_records(300, 100)
    work = ProtocolWorkload(ProtocolConfig(), records, loss=0.0)
    assert work.check().ok
    # what the receiver delivers is compared with what was sent, record by record
    first = records[0]
    work.records[0] = Record(
        first.topic, first.partition, first.offset, first.timestamp, first.key, b"other"
    )
    check = work.check()
    assert not check.ok and check.records_mismatched == 1
    with pytest.raises(BenchmarkError, match="delivery check failed"):
        measure_protocol(work, seconds=0.0)


def test_fec_uses_the_protocol_shape_and_skips_without_repair() -> None:
    f = _json("fec", "--k", "16", "--m", "4", "--payload-size", "1000")["fec"]
    assert (f["codec"], f["k"], f["m"], f["lost_source_symbols"]) == ("rs", 16, 4, 4)
    assert 0 < f["symbol_size"] < 1000
    raptorq = _json("fec", "--codec", "raptorq")["fec"]
    assert raptorq["decode_symbols_given"] == "k+2"
    skipped = _json("fec", "--m", "0")["fec"]
    assert "m=0" in skipped["skipped"]


def test_only_the_sections_asked_for_run() -> None:
    report = _json("audit", "fec", "fec")
    assert report["sections"] == ["fec", "audit"]
    assert "protocol" not in report and "policy" not in report and "summary" not in report


def test_table_names_every_section_and_the_summary() -> None:
    result = _bench(*FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    for title in ("protocol: k=32 m=8 rs", "fec: rs", "policy: built-in", "audit: "):
        assert title in out, title
    for figure in ("sender", "receiver", "wire overhead", "delivered", "decisions", "threaded"):
        assert figure in out, figure
    assert "[udp] rate_mbit" in out  # printed as text, not swallowed as markup
    assert "one core" in out


def test_default_policy_is_built_in_and_forwards_everything() -> None:
    p = _json("policy")["policy"]
    assert p["policy"] == "built-in" and p["rules"] == 20 and p["topics"] == 40
    assert p["forwarded_share"] == 1.0 and p["decisions"] == {"forward": p["records"]}
    assert p["value_bytes_median"] == 500


def test_policy_file_of_the_operator_is_measured_on_records_it_forwards() -> None:
    path = ROOT / "policies" / "bottling-plant.yaml"
    p = _json("policy", "--policy", str(path))["policy"]
    assert p["policy"] == str(path) and p["name"] == "bottling-plant"
    assert p["forwarded_share"] == 1.0
    assert p["topics"] > 4 and p["skipped_rules"] == []
    assert _positive(p["decisions_per_s"])
    # the production-order rule allows 50 records/s per topic: the stream stays below it
    assert p["records_per_s_simulated"] < 100_000


def test_invalid_policy_file_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nrules:\n  - id: a\n    matchh: {glob: 'a.*'}\n")
    result = _bench(*FAST, "policy", "--policy", str(bad))
    assert result.exit_code == 2
    assert "Invalid value for '--policy'" in result.output
    assert f"{bad} is not a valid policy" in result.output
    assert f"{bad}:5:" in result.output
    missing = _bench(*FAST, "policy", "--policy", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_policy_that_forwards_nothing_is_refused_with_the_reason(tmp_path: Path) -> None:
    drops = tmp_path / "drops.yaml"
    drops.write_text(
        "version: 1\nname: drops\nrules:\n  - id: all\n    match: {glob: 'plant.*'}\n"
        "    action: drop\n"
    )
    result = _bench(*FAST, "policy", "--policy", str(drops))
    assert result.exit_code == 2
    assert "has no rule that forwards" in result.output
    # a rule that forwards, but whose own deny pattern refuses every record made for it
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "version: 1\nname: strict\nrules:\n  - id: tele\n    match: {glob: 'plant.*'}\n"
        "    deny:\n      - pattern: '[{]'\n"
    )
    result = _bench(*FAST, "policy", "--policy", str(strict))
    assert result.exit_code == 2
    assert "forwards none of the records made up for its rules" in result.output
    assert "rule 'tele': deny: value matches" in result.output


def test_bad_options_name_the_value_and_what_is_expected() -> None:
    cases = [
        (["nonsense"], "'nonsense' is not one of 'protocol', 'fec', 'policy', 'audit'"),
        (["--loss", "1.5"], "1.5 is not a probability in [0, 1)"),
        (["--seconds", "0"], "0.0 is not in the range 0.0<x<=600.0"),
        (["--k", "0"], "0 is not in the range 1<=x<=200"),
        (["--payload-size", "100"], "100 is not in the range 512<=x<=8972"),
        (["--codec", "lt"], "'lt' is not one of 'rs', 'zfec', 'raptorq'"),
        (["protocol", "--k", "8", "--m", "9"], "m=9 exceeds k=8"),
        (["fec", "--k", "200", "--m", "100"], "exceeds the rs limit of 256"),
    ]
    for args, message in cases:
        result = _bench(*FAST, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    big = _bench(*FAST, "protocol", "--record-size", "1000000")
    assert big.exit_code == 2
    assert "Invalid value for '--record-size': 1000000:" in big.output
    assert "exceeds the largest block payload" in big.output


def test_audit_logs_are_written_under_the_directory_given_and_removed(tmp_path: Path) -> None:
    a = _json("audit", "--audit-dir", str(tmp_path))["audit"]
    assert a["directory"] == str(tmp_path) and a["verified"] is True
    assert a["checkpoint_every"] == 1000 and a["fsync"] == "checkpoint"
    assert list(tmp_path.iterdir()) == []


def test_help_teaches_the_figures_and_gives_examples() -> None:
    out = _bench("--help").output
    for text in (
        "this machine and",
        "one core",
        "Examples:",
        "diode bench --quick",
        "--policy plant.yaml",
        "decisions/s",
        "entries/s",
        "rate_mbit",
    ):
        assert text in out, text


def test_installed_script_runs_outside_the_checkout(tmp_path: Path) -> None:
    script = shutil.which("diode", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run(
        [script, "bench", "fec", *FAST, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert _positive(json.loads(done.stdout)["fec"]["encode_mb_s"])
