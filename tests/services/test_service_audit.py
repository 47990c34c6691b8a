"""What the services put in their audit logs from ``[audit]``: the content of refused records
(none, digests, or cut copies) and rotation by age."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from diode.audit import Actor, AuditEvent, verify
from diode.config import AuditSettings
from diode.protocol.crypto import SigningKey
from diode.protocol.records import Record
from diode.services.common import open_audit_log, record_content

RECORD = Record(
    "plant.cmd", 3, 41, 1_700_000_000_000, b"valve-7", b"OPEN" * 10, (("user", b"op1"), ("n", None))
)


def _settings(tmp_path: Path, **kw: object) -> AuditSettings:
    return AuditSettings.model_validate({"path": tmp_path / "audit.jsonl", **kw})


def test_by_default_nothing_of_the_content_is_written(tmp_path: Path) -> None:
    assert record_content(_settings(tmp_path), RECORD) == {}


def test_digest_mode_names_the_record_without_showing_it(tmp_path: Path) -> None:
    fields = record_content(_settings(tmp_path, record_content="digest"), RECORD)
    assert fields == {
        "key_sha256": hashlib.sha256(b"valve-7").hexdigest(),
        "value_sha256": hashlib.sha256(b"OPEN" * 10).hexdigest(),
    }
    no_key = Record("t", 0, 0, 0, None, b"", ())
    assert record_content(_settings(tmp_path, record_content="digest"), no_key) == {
        "key_sha256": None,
        "value_sha256": hashlib.sha256(b"").hexdigest(),
    }


def test_full_mode_copies_and_cuts_at_the_limit(tmp_path: Path) -> None:
    whole = record_content(_settings(tmp_path, record_content="full"), RECORD)
    assert base64.b64decode(str(whole["value_b64"])) == b"OPEN" * 10
    assert base64.b64decode(str(whole["key_b64"])) == b"valve-7"
    assert whole["headers_b64"] == [["user", base64.b64encode(b"op1").decode()], ["n", None]]
    assert whole["content_truncated"] is False
    assert whole["value_sha256"] == hashlib.sha256(b"OPEN" * 10).hexdigest()

    cut = record_content(
        _settings(tmp_path, record_content="full", record_content_max_bytes=8), RECORD
    )
    assert base64.b64decode(str(cut["value_b64"])) == b"OPENOPEN"
    assert base64.b64decode(str(cut["key_b64"])) == b"valve-7"  # shorter than the limit
    assert cut["content_truncated"] is True
    # the digest is of the whole value, so a copy elsewhere can still be matched
    assert cut["value_sha256"] == whole["value_sha256"]


def test_bad_content_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="record_content"):
        _settings(tmp_path, record_content="payload")
    with pytest.raises(ValueError, match="record_content_max_bytes"):
        _settings(tmp_path, record_content_max_bytes=70_000)
    with pytest.raises(ValueError, match="rotate_seconds"):
        _settings(tmp_path, rotate_seconds=0)


def test_content_fields_go_into_a_verifiable_log(tmp_path: Path) -> None:
    key = SigningKey.generate()
    settings = _settings(tmp_path, record_content="full")
    log = open_audit_log(settings, Actor.SENDER, key, lambda: 1_700_000_000.0)
    log.append(
        AuditEvent.RECORD_REFUSED,
        {
            "topic": RECORD.topic,
            "partition": RECORD.partition,
            "offset": RECORD.offset,
            "rule": "commands",
            "reason": "deny pattern",
            **record_content(settings, RECORD),
        },
    )
    log.close()
    report = verify([tmp_path / "audit.jsonl"], key.verify_key)
    assert report.ok, report.problems
    refused = [
        json.loads(line)
        for line in (tmp_path / "audit.jsonl").read_text().splitlines()
        if '"record_refused"' in line
    ]
    assert base64.b64decode(refused[0]["fields"]["value_b64"]) == RECORD.value


def test_services_rotate_their_log_by_age(tmp_path: Path) -> None:
    key = SigningKey.generate()
    now = [1_700_000_000.0]
    log = open_audit_log(
        _settings(tmp_path, rotate_seconds=60, rotate_bytes=None),
        Actor.RECEIVER,
        key,
        lambda: now[0],
    )
    log.append(AuditEvent.LINK_UP, {"session_id": "aa"})
    now[0] += 61
    log.append(AuditEvent.LINK_DOWN, {"session_id": "aa"})
    log.close()
    assert (tmp_path / "audit.jsonl.000001").exists()
    report = verify([tmp_path], key.verify_key)
    assert report.ok, report.problems
    assert len(report.chains[0].files) == 2
