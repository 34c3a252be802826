"""Request/reply and tool calls through a real bridge.

Request/reply: p50 and p99 of sequential requests and requests/s with 64 in flight,
against NATS request-reply. Tool calls (``ctx.tool``): the same numbers against loom's
own request/reply measured by the same requester in the same run (the ratio is the
tool overhead), and against NATS request-reply. Requests and tool calls do the same
work on the responder: decode ``{"a": 1, "b": 2}`` and answer ``3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import _measure
from benchmarks._config import Counts
from benchmarks._measure import Baselines
from benchmarks._report import CALLS_PER_S, MICROSECONDS, REQUESTS_PER_S, Recorder

LOOM_REQUEST = "loom request/reply (same run)"


def phase(kind: str, mode: str, counts: Counts) -> dict[str, Any]:
    if mode == "seq":
        return {"kind": kind, "mode": "seq", "count": counts.seq_requests, "warmup": counts.warmup}
    return {
        "kind": kind,
        "mode": "inflight",
        "count": counts.inflight_requests,
        "inflight": counts.inflight,
        "warmup": counts.warmup,
    }


def run_requests(
    side: str, workdir: Path, backend: str, phases: list[dict[str, Any]], repeats: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """The phases, run ``repeats`` times on fresh processes; medians of each number."""
    runs = []
    for _ in range(repeats):
        with _measure.broker(side, workdir / side) as broker:
            runs.append(_measure.requests(broker, backend=backend, phases=phases))
    return _measure.median_phases(runs)


def nats_requests(counts: Counts, workdir: Path, baselines: Baselines) -> Any:
    phases = [phase("request", "seq", counts), phase("request", "inflight", counts)]
    return baselines.get(
        ("requests", "nats"),
        lambda: run_requests("nats", workdir, "asyncio", phases, counts.repeats),
    )


@pytest.mark.timeout(900)
def test_request_reply(
    backend: str, counts: Counts, workdir: Path, record: Recorder, baselines: Baselines
) -> None:
    nats = nats_requests(counts, workdir, baselines)
    loom = run_requests(
        "loom",
        workdir,
        backend,
        [phase("request", "seq", counts), phase("request", "inflight", counts)],
        counts.repeats,
    )
    seq, nats_seq = loom["request", "seq"], nats["request", "seq"]
    record("reqrep_seq_p50", MICROSECONDS, seq["p50_us"], nats_seq["p50_us"], "nats", backend)
    record("reqrep_seq_p99", MICROSECONDS, seq["p99_us"], nats_seq["p99_us"], "nats", backend)
    record(
        f"reqrep_inflight{counts.inflight}",
        REQUESTS_PER_S,
        loom["request", "inflight"]["per_second"],
        nats["request", "inflight"]["per_second"],
        "nats",
        backend,
    )


@pytest.mark.timeout(900)
def test_tool_calls(
    backend: str, counts: Counts, workdir: Path, record: Recorder, baselines: Baselines
) -> None:
    nats = nats_requests(counts, workdir, baselines)
    loom = run_requests(
        "loom",
        workdir,
        backend,
        [
            phase("request", "seq", counts),
            phase("tool", "seq", counts),
            phase("request", "inflight", counts),
            phase("tool", "inflight", counts),
        ],
        counts.repeats,
    )
    tool_p50 = loom["tool", "seq"]["p50_us"]
    tool_rate = loom["tool", "inflight"]["per_second"]
    inflight = f"tool_inflight{counts.inflight}"
    record(
        "tool_seq_p50",
        MICROSECONDS,
        tool_p50,
        loom["request", "seq"]["p50_us"],
        LOOM_REQUEST,
        backend,
    )
    record(
        "tool_seq_p50",
        MICROSECONDS,
        tool_p50,
        nats["request", "seq"]["p50_us"],
        "nats request/reply",
        backend,
    )
    record(
        inflight,
        CALLS_PER_S,
        tool_rate,
        loom["request", "inflight"]["per_second"],
        LOOM_REQUEST,
        backend,
    )
    record(
        inflight,
        CALLS_PER_S,
        tool_rate,
        nats["request", "inflight"]["per_second"],
        "nats request/reply",
        backend,
    )
