"""Scale: a bridge with many connected agents (full run: 4 processes x 250 agents),
each subscribed to 10 topics of its own.

Reports the bridge's RSS before and after they connect, the time to connect them all
(against as many NATS connections with as many subscriptions), and 1 -> 1 pub/sub
throughput while they are connected (against the same bridge before they connected).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _measure
from benchmarks._config import Counts
from benchmarks._measure import Baselines
from benchmarks._report import EVENTS_PER_S, KIB_PER_AGENT, MIB, SECONDS, Recorder

MiB = 1024 * 1024


def nats_scale(counts: Counts, workdir: Path) -> tuple[float, float]:
    """Seconds to connect, and nats-server RSS growth per connection (bytes)."""
    with _measure.broker("nats", workdir / "nats-scale") as broker:
        before = broker.child.rss()
        with _measure.hosts_connected(
            broker,
            backend="asyncio",
            processes=counts.scale_processes,
            per_process=counts.scale_agents_per_process,
            topics=counts.scale_topics_per_agent,
        ) as seconds:
            after = broker.child.rss()
    return seconds, (after - before) / counts.scale_agents


@pytest.mark.timeout(900)
def test_scale(
    backend: str, counts: Counts, workdir: Path, record: Recorder, baselines: Baselines
) -> None:
    agents = counts.scale_agents
    events = counts.scale_pubsub_events
    nats_seconds, nats_per_agent = baselines.get("scale-nats", lambda: nats_scale(counts, workdir))

    def pubsub(broker: _measure.Broker, tag: str) -> float:
        def once() -> float:
            run = _measure.pubsub(
                broker,
                backend=backend,
                events=events,
                size=100,
                subscribers=1,
                idle_timeout=counts.idle_timeout,
                tag=tag,
            )
            assert run.counts == [events], f"sent {events}, received {run.counts} ({tag})"
            return run.per_second

        return _measure.median_of(counts.repeats, once)

    with _measure.broker("loom", workdir / "scale") as broker:
        alone = pubsub(broker, "alone")
        before = broker.child.rss()
        with _measure.hosts_connected(
            broker,
            backend=backend,
            processes=counts.scale_processes,
            per_process=counts.scale_agents_per_process,
            topics=counts.scale_topics_per_agent,
        ) as seconds:
            after = broker.child.rss()
            crowded = pubsub(broker, "crowded")

    label = f"{agents} agents x {counts.scale_topics_per_agent} topics"
    record(
        "scale_bridge_rss", MIB, after / MiB, before / MiB, f"same bridge before {label}", backend
    )
    record(
        "scale_rss_per_agent",
        KIB_PER_AGENT,
        (after - before) / agents / 1024,
        nats_per_agent / 1024,
        f"nats-server, {label}",
        backend,
    )
    record("scale_connect_all", SECONDS, seconds, nats_seconds, f"nats-server, {label}", backend)
    record(
        "scale_pubsub_1to1_100B",
        EVENTS_PER_S,
        crowded,
        alone,
        f"same bridge before {label}",
        backend,
    )
