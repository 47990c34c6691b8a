"""The shipped policies validate and do what their comments say on realistic records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from diode.errors import DecodeError
from diode.policy import Action, PolicyEngine, load_policy
from diode.policy.replay import parse_line
from diode.protocol.records import Record

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = 1_700_000_000.0
TS = int(NOW * 1000)


@pytest.mark.parametrize("name", ["default.yaml", "bottling-plant.yaml", "water-utility.yaml"])
def test_shipped_policies_validate(name: str) -> None:
    pol = load_policy(POLICIES / name)
    assert pol.model.rules and len(pol.fingerprint) == 64


def r(topic: str, doc: object, headers: tuple[tuple[str, bytes | None], ...] = ()) -> Record:
    value = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return Record(topic, 0, 0, TS, None, value, headers)


TELEMETRY = {
    "site": "bottling-1",
    "tag": "TI-101",
    "ts": TS,
    "value": 81.5,
    "unit": "degC",
    "quality": "good",
}
ALARM = {
    "site": "bottling-1",
    "alarm_id": "A-17",
    "tag": "LSH-3",
    "ts": TS,
    "state": "raised",
    "priority": 2,
    "message": "Filler bowl level high",
}
ORDER = {
    "order_id": "PO-2026-000123",
    "line": "L1",
    "product": "water-0.5l",
    "status": "started",
    "planned_qty": 12000,
    "good_qty": 0,
    "ts": TS,
}
METER = {
    "meter_id": "EM-104",
    "ts": TS,
    "active_energy_kwh": 123456.7,
    "active_power_kw": 412.0,
    "power_factor": 0.97,
}


def test_bottling_plant() -> None:
    e = PolicyEngine(load_policy(POLICIES / "bottling-plant.yaml"))
    src = (("source", b"historian"),)
    d = e.evaluate(r("plant.line1.telemetry", TELEMETRY, src), NOW)
    assert (d.action, d.target_topic) == (Action.FORWARD, "ot.plant.line1.telemetry")
    d = e.evaluate(r("plant.line1.telemetry", TELEMETRY), NOW)
    assert d.action is Action.DROP and d.reasons == ("headers: missing source",)
    d = e.evaluate(r("plant.line2.telemetry", {**TELEMETRY, "tag": "bad tag"}, src), NOW)
    assert d.action is Action.QUARANTINE and d.target_topic == "diode.quarantine"
    assert e.evaluate(r("plant.alarms", ALARM), NOW).target_topic == "ot.alarms"
    d = e.evaluate(r("plant.alarms", {**ALARM, "priority": 9}), NOW)
    assert d.action is Action.QUARANTINE  # fields: quarantine beats schema: alert
    d = e.evaluate(r("plant.alarms", {**ALARM, "colour": "red"}), NOW)
    assert (d.action, d.target_topic) == (Action.ALERT, "ot.alarms")
    assert e.evaluate(r("mes.orders", ORDER), NOW).target_topic == "ot.mes.orders"
    assert e.evaluate(r("mes.orders.commands", ORDER), NOW).rule == "no-commands"
    assert e.evaluate(r("plant.line1.commands", b"START"), NOW).action is Action.DROP
    assert e.evaluate(r("energy.meters.em104", METER), NOW).target_topic == "ot.energy.meters.em104"
    d = e.evaluate(r("energy.meters.em104", {**METER, "active_power_kw": 90000}), NOW)
    assert d.action is Action.QUARANTINE
    leak = {**ORDER, "product": "password: hunter2"}
    assert e.evaluate(r("mes.orders", leak), NOW).action is Action.BLOCK_TOPIC
    assert e.evaluate(r("mes.orders", ORDER), NOW).action is Action.DROP
    assert e.evaluate(r("plant.hr.salaries", b"{}"), NOW).rule == "default-deny"


def test_water_utility() -> None:
    e = PolicyEngine(load_policy(POLICIES / "water-utility.yaml"))
    tele = {**TELEMETRY, "site": "wtw-north", "tag": "FT-201", "unit": "l/s"}
    assert e.evaluate(r("wtw.telemetry.filters", tele), NOW).target_topic == (
        "ot.wtw.telemetry.filters"
    )
    d = e.evaluate(r("pumping.ps12.telemetry", tele, (("station", b"ps12"),)), NOW)
    assert d.target_topic == "ot.pumping.telemetry"
    assert e.evaluate(r("pumping.ps12.telemetry", tele), NOW).action is Action.DROP
    d = e.evaluate(r("scada.engineering.plc7", b"\x00\x01project"), NOW)
    assert (d.action, d.target_topic) == (Action.QUARANTINE, "ot.quarantine.engineering")
    wo = {**ORDER, "status": "completed"}
    assert e.evaluate(r("wtw.work-orders", wo), NOW).target_topic == "ot.maintenance.orders"
    d = e.evaluate(r("wtw.work-orders", {**wo, "product": "pin=1234"}), NOW)
    assert d.action is Action.QUARANTINE
    d = e.evaluate(r("energy.wtw.meters", {**METER, "power_factor": 0.9}), NOW)
    assert d.action is Action.FORWARD


def test_replay_line_format() -> None:
    line = json.dumps(
        {
            "topic": "t",
            "partition": 2,
            "offset": 9,
            "timestamp": TS,
            "key_b64": base64.b64encode(b"\x00k").decode(),
            "value": {"a": 1},
            "headers": [["h", "1"], ["h", None]],
        }
    ).encode()
    record, now = parse_line(line, 1)
    assert record == Record("t", 2, 9, TS, b"\x00k", b'{"a":1}', (("h", b"1"), ("h", None)))
    assert now == NOW
    record, now = parse_line(b'{"topic": "t", "now": 5.5, "value": "text"}', 3)
    assert (record.offset, record.timestamp, record.value, now) == (3, 5500, b"text", 5.5)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"[]", "JSON object"),
        (b"{oops", "not JSON"),
        (b'{"now": 1}', "topic"),
        (b'{"topic": "t"}', "timestamp"),
        (b'{"topic": "t", "now": 1, "colour": 2}', "unknown field"),
        (b'{"topic": "t", "now": 1, "headers": {"h": 1}}', "string or null"),
        (b'{"topic": "t", "now": 1, "value_b64": "!!"}', "base64"),
        (b'{"topic": "t", "now": 1, "partition": -1}', "partition must be an integer >= 0"),
        (b'{"topic": "t", "now": 1, "offset": 1.5}', "offset must be an integer >= 0"),
        (b'{"topic": "t", "now": 1, "partition": true}', "partition must be an integer"),
    ],
)
def test_replay_line_errors(line: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        parse_line(line, 1)


def test_policy_json_schema_is_current_and_accepts_shipped_policies() -> None:
    import jsonschema_rs
    from ruamel.yaml import YAML

    from diode.policy.model import policy_json_schema

    shipped = json.loads((POLICIES / "policy.schema.json").read_text())
    assert shipped == json.loads(json.dumps(policy_json_schema())), (
        "run: diode policy schema > policies/policy.schema.json"
    )
    validator = jsonschema_rs.validator_for(shipped)
    for name in ("default.yaml", "bottling-plant.yaml", "water-utility.yaml"):
        doc = json.loads(json.dumps(YAML(typ="safe").load((POLICIES / name).read_text())))
        assert validator.is_valid(doc), name
        doc["rules"][0]["colour"] = "red"
        assert not validator.is_valid(doc)
