"""Rendering for the CLI: aligned tables for people, JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from userseg.core.table import (
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    Op,
    Plan,
    SetRules,
)


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit code 2."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def describe_op(op: Op) -> str:
    if isinstance(op, AddTable):
        return "add table inet userseg"
    if isinstance(op, DeleteTable):
        return "delete table inet userseg (rebuilt in the same transaction)"
    if isinstance(op, AddSet):
        return f"add set {op.spec.name} ({op.spec.kind.value})"
    if isinstance(op, AddChain):
        return f"add chain {op.name}" + (" (base, hook forward)" if op.base else "")
    if isinstance(op, SetRules):
        return (
            f"set rules of chain {op.chain}: {len(op.rules)} rule(s)"
            if op.rules
            else f"flush chain {op.chain}"
        )
    if isinstance(op, AddElements):
        return f"add {len(op.elements)} element(s) to {op.set_name}"
    if isinstance(op, DeleteElements):
        return f"delete {len(op.elements)} element(s) from {op.set_name}"
    if isinstance(op, DeleteChain):
        return f"delete chain {op.name}"
    assert isinstance(op, DeleteSet)
    return f"delete set {op.name}"


def plan_lines(plan: Plan) -> list[str]:
    if plan.is_empty:
        return ["kernel matches the desired state; nothing to do"]
    out = []
    for phase, ops in (("prelude", plan.prelude), ("bulk", plan.bulk), ("main", plan.main)):
        out += [f"{phase:8} {describe_op(op)}" for op in ops]
    return out


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "empty": plan.is_empty,
        "elements": plan.element_count(),
        "prelude": [describe_op(op) for op in plan.prelude],
        "bulk": [describe_op(op) for op in plan.bulk],
        "main": [describe_op(op) for op in plan.main],
    }
