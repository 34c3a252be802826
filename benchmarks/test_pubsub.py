"""Pub/sub through a real bridge: 1 -> 1 (100 B and 4 KiB) and 1 -> 4 fan-out.

Baselines: a real nats-server (nats-py clients) and, for 1 -> 1, the raw asyncio TCP
hub (the Python ceiling). Every subscriber must receive every event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _measure
from benchmarks._config import Counts
from benchmarks._measure import Baselines
from benchmarks._report import EVENTS_PER_S, Recorder

HUB_NAME = "tcp-hub (raw asyncio + msgspec)"
SIZES = {"100B": 100, "4KiB": 4096}


def delivered_per_second(
    side: str,
    workdir: Path,
    counts: Counts,
    *,
    backend: str,
    events: int,
    size: int,
    subscribers: int,
) -> float:
    """Median over ``counts.repeats`` runs, each on a fresh broker and fresh clients;
    every run must deliver every event to every subscriber."""

    def once() -> float:
        with _measure.broker(side, workdir / side) as broker:
            run = _measure.pubsub(
                broker,
                backend=backend,
                events=events,
                size=size,
                subscribers=subscribers,
                idle_timeout=counts.idle_timeout,
            )
        assert run.counts == [events] * subscribers, (
            f"{side} ({backend}): sent {events} to {subscribers} subscriber(s), "
            f"they received {run.counts}"
        )
        return run.per_second

    return _measure.median_of(counts.repeats, once)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("label", list(SIZES))
def test_pubsub_1to1(
    label: str,
    backend: str,
    counts: Counts,
    workdir: Path,
    record: Recorder,
    baselines: Baselines,
) -> None:
    size = SIZES[label]
    events = counts.pubsub_events if size == 100 else counts.pubsub_events_4k

    def measure(side: str, on: str = "asyncio") -> float:
        return delivered_per_second(
            side, workdir, counts, backend=on, events=events, size=size, subscribers=1
        )

    nats = baselines.get(("pubsub", "nats", label), lambda: measure("nats"))
    hub = baselines.get(("pubsub", "hub", label), lambda: measure("hub"))
    loom = measure("loom", backend)
    scenario = f"pubsub_1to1_{label}"
    record(scenario, EVENTS_PER_S, loom, nats, "nats", backend)
    record(scenario, EVENTS_PER_S, loom, hub, HUB_NAME, backend)


@pytest.mark.timeout(900)
def test_fanout_1to4(
    backend: str, counts: Counts, workdir: Path, record: Recorder, baselines: Baselines
) -> None:
    n, events = counts.fanout_subscribers, counts.fanout_events

    def measure(side: str, on: str = "asyncio") -> float:
        return delivered_per_second(
            side, workdir, counts, backend=on, events=events, size=100, subscribers=n
        )

    nats = baselines.get(("fanout", "nats"), lambda: measure("nats"))
    loom = measure("loom", backend)
    record(f"fanout_1to{n}_100B", EVENTS_PER_S, loom, nats, "nats", backend)
