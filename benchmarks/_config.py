"""How much each benchmark does (full run and ``--quick``), and which backends run."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    pubsub_events: int
    """Events published in the 1 -> 1 benchmark, 100 B payloads."""
    pubsub_events_4k: int
    """Events published in the 1 -> 1 benchmark, 4 KiB payloads."""
    fanout_events: int
    """Events published in the 1 -> 4 benchmark (each is delivered 4 times)."""
    seq_requests: int
    """Sequential requests (or tool calls) timed one by one for p50/p99."""
    inflight_requests: int
    """Requests (or tool calls) made by 64 concurrent callers for the throughput."""
    warmup: int
    """Untimed calls before each timed request/tool phase."""
    v1_events: int
    """Events the grpcio v1 client publishes."""
    scale_processes: int
    scale_agents_per_process: int
    scale_pubsub_events: int
    """Events of the 1 -> 1 run with (and without) the scale agents connected."""
    transport_messages: int
    """Messages of 100 B echoed through one bidirectional gRPC stream (loom's gRPC
    client against grpclib's, no bridge)."""
    transport_unary_calls: int
    """Sequential unary gRPC calls timed one by one in the same transport benchmark."""
    idle_timeout: float
    """Seconds a subscriber waits without receiving anything before it reports a
    short count (which fails the benchmark)."""
    repeats: int
    """Each measurement runs this many times (fresh processes each time); the table
    reports the median."""
    fanout_subscribers: int = 4
    inflight: int = 64
    scale_topics_per_agent: int = 10

    @property
    def scale_agents(self) -> int:
        return self.scale_processes * self.scale_agents_per_process


FULL = Counts(
    pubsub_events=200_000,
    pubsub_events_4k=100_000,
    fanout_events=100_000,
    seq_requests=5_000,
    inflight_requests=30_000,
    warmup=200,
    v1_events=100_000,
    scale_processes=4,
    scale_agents_per_process=250,
    scale_pubsub_events=100_000,
    transport_messages=50_000,
    transport_unary_calls=2_000,
    idle_timeout=20.0,
    repeats=3,
)

QUICK = Counts(
    pubsub_events=300,
    pubsub_events_4k=300,
    fanout_events=300,
    seq_requests=100,
    inflight_requests=300,
    warmup=20,
    v1_events=300,
    scale_processes=2,
    scale_agents_per_process=10,
    scale_pubsub_events=300,
    transport_messages=500,
    transport_unary_calls=100,
    idle_timeout=20.0,
    repeats=1,
)


def backends() -> list[str]:
    """The anyio backends the loom side runs on: asyncio, trio, and asyncio with
    uvloop when uvloop is installed."""
    names = ["asyncio", "trio"]
    if importlib.util.find_spec("uvloop") is not None:
        names.append("asyncio+uvloop")
    return names
