"""The commented starting policy written by ``diode policy init`` (and kept as
``policies/default.yaml``): valid as it stands, safe by default, and a tour of every key."""

from __future__ import annotations

TEMPLATE = """\
# Diode policy: what may leave the plant (OT) for the IT side.
#
# Default deny: a record whose topic no rule matches is dropped (rule "default-deny").
# Rules are tried top to bottom; rules that can match the same topic must have the same
# action (validation refuses the file otherwise), so list carve-outs under `except`.
#
# Check it:   diode policy validate THIS_FILE
# Try it:     diode policy test THIS_FILE --topic plant.telemetry.boiler \\
#                 --value '{"tag": "TI-101", "value": 81.5, "unit": "degC"}'
version: 1
name: starting-policy
description: Telemetry out, nothing else. Edit before use.

# OT-side topic that receives quarantined records. They never cross the diode.
quarantine_topic: diode.quarantine

defaults:
  max_bytes: 65536          # records larger than this break the `size` check
  deny_scan_bytes: 16384    # a field larger than this cannot be scanned: a `deny` violation
  on_violation:             # drop | quarantine | alert (forward, but record) | block_topic
    size: drop
    rate: drop
    format: quarantine
    schema: quarantine
    fields: quarantine
    deny: quarantine
    headers: drop
    anomaly: alert

rules:
  - id: telemetry
    description: Process values from the historian bridge.
    match: {glob: "plant.telemetry.*"}   # or {exact: NAME} or {regex: "..."} (full match)
    prefix: "ot."                        # IT-side topic = ot.<source topic>; or `to: NAME`
    max_bytes: 4096
    rate:                                # token buckets; a record must fit both
      records_per_s: 2000
      bytes_per_s: 2000000
      burst_records: 4000
    value:
      format: json                       # json | raw; `schema: file.json` adds a JSON Schema
      fields:
        tag: {type: string, required: true, max_length: 64}
        value: {type: number, required: true, min: -1.0e6, max: 1.0e6}
        unit: {enum: [degC, bar, kW, "m3/h", rpm, "%"]}
    deny:                                # regexes that must not occur; cost-bounded
      - pattern: '(?i)password\\s*[:=]'
        in: [key, value, headers]
        description: credentials in clear text
    anomaly:
      rate: {window_s: 1, z: 6, warmup_windows: 30}
      size: {z: 6, warmup: 200}
      fields:
        value: {z: 6, warmup: 200}
      timestamp: {max_future_s: 60, max_past_s: 86400}
      silence: {after_s: 120}

  - id: no-commands
    description: Nothing that looks like a command or setpoint ever leaves.
    match: {regex: "plant\\\\.(commands|setpoints)(\\\\..*)?"}
    action: drop
"""
