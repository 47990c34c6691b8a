"""What differs between two policies, in terms of their meaning rather than their text.

Both sides are compared in canonical form (every default filled in), so reformatting,
comments and spelled-out defaults make no difference; rules are paired by id.
"""

from __future__ import annotations

from typing import Any

from diode.policy.loader import Policy


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def _flat(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten(value, "", out)
    return out


def _show(v: Any) -> str:
    return "(unset)" if v is None else repr(v) if isinstance(v, str) else str(v)


def diff_policies(a: Policy, b: Policy) -> list[str]:
    """Lines describing how ``b`` differs from ``a``; empty when they mean the same."""
    lines: list[str] = []
    da = a.model.model_dump(mode="json", by_alias=True)
    db = b.model.model_dump(mode="json", by_alias=True)
    rules_a = {r["id"]: r for r in da.pop("rules")}
    rules_b = {r["id"]: r for r in db.pop("rules")}
    fa, fb = _flat(da), _flat(db)
    for key in sorted(fa.keys() | fb.keys()):
        if fa.get(key) != fb.get(key):
            lines.append(f"~ {key}: {_show(fa.get(key))} -> {_show(fb.get(key))}")
    for rid, r in rules_a.items():  # file order, so the output is the same every run
        if rid not in rules_b:
            lines.append(f"- rule {rid!r} ({r['action']} {_match(r)})")
    for rid, r in rules_b.items():
        if rid not in rules_a:
            lines.append(f"+ rule {rid!r} ({r['action']} {_match(r)})")
            continue
        ra, rb = _flat(rules_a[rid]), _flat(r)
        for key in sorted(ra.keys() | rb.keys()):
            if ra.get(key) != rb.get(key):
                lines.append(f"~ rule {rid!r} {key}: {_show(ra.get(key))} -> {_show(rb.get(key))}")
    order_a = [rid for rid in rules_a if rid in rules_b]
    order_b = [rid for rid in rules_b if rid in rules_a]
    if order_a != order_b:
        lines.append(f"~ rule order: {', '.join(order_a)} -> {', '.join(order_b)}")
    for name in sorted(a.schemas.keys() | b.schemas.keys()):
        sa, sb = a.schemas.get(name), b.schemas.get(name)
        if sa is not None and sb is not None and sa.sha256 != sb.sha256:
            lines.append(f"~ schema file {name!r} content changed")
    return lines


def _match(rule: dict[str, Any]) -> str:
    m = rule["match"]
    for kind in ("exact", "glob", "regex"):
        if m.get(kind) is not None:
            return f"{kind} {m[kind]}"
    return "?"
