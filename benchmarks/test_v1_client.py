"""The v1 client path: an official grpcio client (stubs generated from
``proto/loom/v1/bridge.proto`` at run time) publishes one protobuf
``ClientEvent.publish`` per event on ``EventStream`` through a real bridge to a loom
SDK subscriber. Baseline: the same client publishing to a topic nobody subscribed to,
i.e. how fast that client can publish at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _measure
from benchmarks._config import Counts
from benchmarks._grpcio_side import generate_stubs
from benchmarks._measure import Baselines
from benchmarks._report import EVENTS_PER_S, Recorder

SIZE = 100


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_stubs(tmp_path_factory.mktemp("grpcio-stubs"))


def run_v1(workdir: Path, stubs: Path, counts: Counts, backend: str, *, subscribe: bool) -> float:
    """Events per second (median of ``counts.repeats`` runs on fresh processes)."""

    def once() -> float:
        with _measure.broker("loom", workdir / "v1") as broker:
            run = _measure.v1_publish(
                broker,
                backend=backend,
                stubs=stubs,
                events=counts.v1_events,
                size=SIZE,
                subscribe=subscribe,
                idle_timeout=counts.idle_timeout,
            )
        if subscribe:
            assert run.count == run.sent, (
                f"sent {run.sent} v1 events, the loom subscriber ({backend}) got {run.count}"
            )
        return run.per_second

    return _measure.median_of(counts.repeats, once)


@pytest.mark.timeout(900)
def test_v1_grpcio_publish(
    backend: str,
    counts: Counts,
    workdir: Path,
    stubs: Path,
    record: Recorder,
    baselines: Baselines,
) -> None:
    alone = baselines.get(
        "v1-alone", lambda: run_v1(workdir, stubs, counts, "asyncio", subscribe=False)
    )
    delivered = run_v1(workdir, stubs, counts, backend, subscribe=True)
    record(
        "v1_grpcio_publish_100B",
        EVENTS_PER_S,
        delivered,
        alone,
        "same grpcio client, no subscriber",
        backend,
    )
