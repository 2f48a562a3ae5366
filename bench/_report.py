"""Statistics and the figure rows shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def row(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_name: str | None = None,
    note: str = "",
    n: int | None = None,
    p90_value: float | None = None,
) -> dict[str, Any]:
    """One reported figure, with its baseline and the ratio value/baseline when it has one."""
    ratio = value / baseline if baseline else None
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "p90": round(p90_value, 3) if p90_value is not None else None,
        "baseline": round(baseline, 3) if baseline is not None else None,
        "baseline_name": baseline_name,
        "ratio": round(ratio, 2) if ratio is not None else None,
        "n": n,
        "note": note,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table: figure, value, p90, baseline, ratio, samples."""
    lines = [
        "| figure | value | p90 | baseline | ratio | n |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        value = f"{r['value']:g} {r['unit']}"
        high = "" if r.get("p90") is None else f"{r['p90']:g}"
        base = (
            "" if r["baseline"] is None else f"{r['baseline']:g} {r['unit']} ({r['baseline_name']})"
        )
        ratio = "" if r["ratio"] is None else f"{r['ratio']:g}x"
        count = "" if r["n"] is None else str(r["n"])
        lines.append(f"| {r['name']} | {value} | {high} | {base} | {ratio} | {count} |")
    return "\n".join(lines)


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write a benchmark's full result as JSON, when a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
