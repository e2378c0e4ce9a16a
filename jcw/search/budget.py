"""Latency budgets as users type them: "30ms", "0.03s", "30 ms", "250us", or several: "10ms,20ms,30ms"."""
from __future__ import annotations

import math
import re

from jcw.errors import JcwError

_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_BUDGET = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)\s*")


def parse_budget(text: str) -> float:
    """One budget in milliseconds."""
    m = _BUDGET.fullmatch(text or "")
    if not m:
        raise JcwError(f"cannot read latency budget {text!r}; write a positive number with a unit: "
                       "30ms, 0.03s, 250us")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise JcwError(f"latency budget {text!r} must be positive and finite, e.g. 30ms")
    return value


def parse_budgets(text: str) -> list[float]:
    """Comma-separated budgets in milliseconds, sorted ascending, duplicates removed."""
    if text is None or not str(text).strip():
        raise JcwError("empty latency budget; write one or more like 30ms or 10ms,20ms,30ms")
    return sorted({parse_budget(part) for part in str(text).split(",")})


def format_ms(ms: float) -> str:
    return f"{ms:g}ms"
