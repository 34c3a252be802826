"""The benchmark harness must not rot: run ``pytest benchmarks/ --quick`` once and check
that it passed and wrote a complete results file. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

KEYS = {"scenario", "unit", "loom", "baseline", "baseline_name", "ratio", "backend"}
SCENARIOS = {
    "pubsub_1to1_100B",
    "pubsub_1to1_4KiB",
    "fanout_1to4_100B",
    "reqrep_seq_p50",
    "reqrep_seq_p99",
    "reqrep_inflight64",
    "tool_seq_p50",
    "tool_inflight64",
    "v1_grpcio_publish_100B",
    "scale_bridge_rss",
    "scale_rss_per_agent",
    "scale_connect_all",
    "scale_pubsub_1to1_100B",
    "transport_stream_echo_100B",
    "transport_unary_p50",
}


@pytest.mark.timeout(300)
def test_quick_benchmarks_run_and_report(tmp_path: Path) -> None:
    results = tmp_path / "latest.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/",
        "--quick",
        "-q",
        "-p",
        "no:cacheprovider",
        "--results",
        str(results),
    ]
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "loom benchmarks" in proc.stdout

    rows = json.loads(results.read_text())
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == KEYS, row
        assert isinstance(row["loom"], int | float) and isinstance(row["baseline"], int | float)
        assert row["ratio"] is None or isinstance(row["ratio"], int | float)
        assert "better" in row["unit"], row
    assert SCENARIOS <= {row["scenario"] for row in rows}
    backends = {row["backend"] for row in rows}
    assert {"asyncio", "trio"} <= backends
    for scenario in SCENARIOS:
        covered = {row["backend"] for row in rows if row["scenario"] == scenario}
        assert covered == backends, (scenario, covered)
