"""Benchmark results: rows with a ratio, printed as a table and written as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

HIGHER = "higher is better"
LOWER = "lower is better"

RATIO_NOTE = (
    "ratio = loom / baseline. For units marked 'higher is better' (throughput) a ratio "
    "above 1 means loom is faster; for 'lower is better' (latency, time, memory) a "
    "ratio below 1 means loom is better."
)


@dataclass(frozen=True)
class Row:
    scenario: str
    unit: str
    loom: float
    baseline: float
    baseline_name: str
    ratio: float | None
    backend: str


def make_row(
    scenario: str, unit: str, loom: float, baseline: float, baseline_name: str, backend: str
) -> Row:
    ratio = loom / baseline if baseline else None
    return Row(scenario, unit, loom, baseline, baseline_name, ratio, backend)


class Recorder:
    """Collects the rows of the results table."""

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows

    def __call__(
        self,
        scenario: str,
        unit: str,
        loom: float,
        baseline: float,
        baseline_name: str,
        backend: str,
    ) -> None:
        self._rows.append(make_row(scenario, unit, loom, baseline, baseline_name, backend))


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


_COLUMNS = ("scenario", "backend", "loom", "baseline", "baseline_name", "ratio", "unit")


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table, with the ratio convention above it."""
    cells = [list(_COLUMNS)]
    for row in rows:
        cells.append(
            [
                row.scenario,
                row.backend,
                _number(row.loom),
                _number(row.baseline),
                row.baseline_name,
                "-" if row.ratio is None else f"{row.ratio:.2f}",
                row.unit,
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    numeric = {2, 3, 5}

    def fmt(line: list[str]) -> str:
        return "  ".join(
            text.rjust(width) if i in numeric else text.ljust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([RATIO_NOTE, "", fmt(cells[0]), rule, *(fmt(line) for line in cells[1:])])


def write_json(rows: list[Row], path: Path) -> None:
    """Write the rows as a JSON list of objects with the keys of :class:`Row`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")


# Units, each with the direction that is better.
EVENTS_PER_S = f"events/s, {HIGHER}"
REQUESTS_PER_S = f"requests/s, {HIGHER}"
CALLS_PER_S = f"calls/s, {HIGHER}"
MICROSECONDS = f"us, {LOWER}"
SECONDS = f"s, {LOWER}"
MIB = f"MiB, {LOWER}"
KIB_PER_AGENT = f"KiB/agent, {LOWER}"
