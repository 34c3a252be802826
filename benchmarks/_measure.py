"""One measurement each: start the processes a scenario needs, run it, return numbers.

Each function starts its workers, waits for them to be ready, sends ``go``, collects
their JSON results and stops them (also on failure). The broker (loom bridge,
nats-server or TCP hub) is started separately with :func:`broker`, so a measurement
can run on a broker that already carries load (the scale scenario).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import _procs
from benchmarks._procs import Child

T = TypeVar("T")

READY_TIMEOUT = 60.0
"""Seconds a worker gets to start and connect."""

MODULES = {"loom": "_loom_side", "nats": "_nats_side", "hub": "_tcp_hub"}


class Baselines:
    """Baselines that do not depend on the loom backend are measured once per run."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def get(self, key: Any, measure: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = measure()
        return self._values[key]  # type: ignore[no-any-return]


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    """Run ``measure`` ``repeats`` times and return the median."""
    return statistics.median(measure() for _ in range(repeats))


def median_phases(runs: list[list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Phases of repeated :func:`requests` runs, keyed by (kind, mode), each number
    the median over the runs."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for phases in zip(*runs, strict=True):
        first = dict(phases[0])
        for key in ("p50_us", "p99_us", "mean_us", "per_second"):
            if key in first:
                first[key] = statistics.median(p[key] for p in phases)
        merged[first["kind"], first["mode"]] = first
    return merged


@dataclass
class Broker:
    """A running broker: ``side`` is loom, nats or hub; ``params`` tell a client of
    that side where it is."""

    side: str
    child: Child
    params: dict[str, Any]


@contextmanager
def broker(side: str, workdir: Path) -> Iterator[Broker]:
    if side == "loom":
        child, address = _procs.start_bridge()
        params: dict[str, Any] = {"address": address}
    elif side == "nats":
        child, url = _procs.start_nats(workdir)
        params = {"url": url}
    elif side == "hub":
        child, port = _procs.start_hub()
        params = {"port": port}
    else:
        raise ValueError(side)
    with child:
        yield Broker(side, child, params)


def _client_backend(side: str, backend: str) -> str:
    """The loom side runs on the backend under test; nats-py and the hub's clients are
    asyncio code."""
    return backend if side == "loom" else "asyncio"


@dataclass
class PubSubRun:
    sent: int
    counts: list[int]
    per_second: float
    """Events delivered (to all subscribers together) per second, from the publisher's
    first publish to the last subscriber's last event."""
    publisher_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)


def pubsub(
    broker: Broker,
    *,
    backend: str,
    events: int,
    size: int,
    subscribers: int,
    idle_timeout: float,
    topic: str = "bench.events",
    tag: str = "ps",
) -> PubSubRun:
    """1 -> ``subscribers`` pub/sub of ``events`` events of ``size`` bytes."""
    module = MODULES[broker.side]
    common = {"backend": _client_backend(broker.side, backend), "topic": topic, **broker.params}
    run_timeout = READY_TIMEOUT + idle_timeout + events / 500
    with ExitStack() as stack:
        subs = [
            stack.enter_context(
                _procs.worker(
                    module,
                    "sub",
                    f"{broker.side} sub {i}",
                    agent_id=f"{tag}-sub-{i}",
                    expect=events,
                    idle_timeout=idle_timeout,
                    **common,
                )
            )
            for i in range(subscribers)
        ]
        for child in subs:
            child.expect("ready", READY_TIMEOUT)
        pub = stack.enter_context(
            _procs.worker(
                module,
                "pub",
                f"{broker.side} pub",
                agent_id=f"{tag}-pub",
                count=events,
                size=size,
                **common,
            )
        )
        pub.expect("ready", READY_TIMEOUT)
        pub.send("go")
        results = [child.expect("result", run_timeout) for child in subs]
        published = pub.expect("result", READY_TIMEOUT)
    counts = [int(r["count"]) for r in results]
    t_start = float(published["t_start"])
    t_last = max(float(r["t_last"]) for r in results)
    delivered = sum(counts)
    return PubSubRun(
        sent=events,
        counts=counts,
        per_second=delivered / (t_last - t_start) if delivered else 0.0,
        publisher_per_second=events / (float(published["t_end"]) - t_start),
    )


def requests(broker: Broker, *, backend: str, phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run request (and tool) phases from one requester against one responder; returns
    the phases with their numbers (``p50_us``/``p99_us`` or ``per_second``)."""
    module = MODULES[broker.side]
    common = {
        "backend": _client_backend(broker.side, backend),
        "topic": "bench.add",
        **broker.params,
    }
    with ExitStack() as stack:
        responder = stack.enter_context(
            _procs.worker(
                module, "responder", f"{broker.side} responder", agent_id="rr-responder", **common
            )
        )
        responder.expect("ready", READY_TIMEOUT)
        requester = stack.enter_context(
            _procs.worker(
                module,
                "requester",
                f"{broker.side} requester",
                agent_id="rr-requester",
                phases=phases,
                **common,
            )
        )
        requester.expect("ready", READY_TIMEOUT)
        requester.send("go")
        calls = sum(int(p["count"]) + int(p.get("warmup", 0)) for p in phases)
        result = requester.expect("result", READY_TIMEOUT + calls / 100)
    if result["wrong"]:
        raise AssertionError(f"{result['wrong']} {broker.side} answers were wrong")
    return list(result["phases"])


@dataclass
class V1Run:
    sent: int
    count: int | None
    """Events the loom subscriber received (None without a subscriber)."""
    per_second: float


def v1_publish(
    broker: Broker,
    *,
    backend: str,
    stubs: Path,
    events: int,
    size: int,
    subscribe: bool,
    idle_timeout: float,
) -> V1Run:
    """The grpcio v1 client publishes ``events`` events, to a loom SDK subscriber on
    ``backend`` (``subscribe``) or to a topic nobody subscribed to."""
    assert broker.side == "loom"
    topic = "bench.v1" if subscribe else "bench.v1.sink"
    run_timeout = READY_TIMEOUT + idle_timeout + events / 500
    with ExitStack() as stack:
        sub = None
        if subscribe:
            sub = stack.enter_context(
                _procs.worker(
                    "_loom_side",
                    "sub",
                    "loom sub",
                    backend=backend,
                    agent_id="v1-sub",
                    topic=topic,
                    expect=events,
                    idle_timeout=idle_timeout,
                    **broker.params,
                )
            )
            sub.expect("ready", READY_TIMEOUT)
        pub = stack.enter_context(
            _procs.worker(
                "_grpcio_side",
                "publisher",
                "grpcio publisher",
                agent_id="v1-pub",
                topic=topic,
                count=events,
                size=size,
                stubs=str(stubs),
                **broker.params,
            )
        )
        pub.expect("ready", READY_TIMEOUT)
        pub.send("go")
        received = sub.expect("result", run_timeout) if sub is not None else None
        published = pub.expect("result", run_timeout)
    if published["unexpected_messages"]:
        raise AssertionError(f"the bridge sent {published['unexpected_messages']} messages back")
    t_start = float(published["t_start"])
    if received is None:
        return V1Run(events, None, events / (float(published["t_end"]) - t_start))
    count = int(received["count"])
    return V1Run(events, count, count / (float(received["t_last"]) - t_start))


@contextmanager
def hosts_connected(
    broker: Broker, *, backend: str, processes: int, per_process: int, topics: int
) -> Iterator[float]:
    """Connect ``processes * per_process`` agents (or NATS connections), each with
    ``topics`` subscriptions of its own, spread over ``processes`` processes; yields
    the seconds it took for all of them to be connected, and keeps them connected
    until the block ends."""
    module = MODULES[broker.side]
    with ExitStack() as stack:
        hosts = [
            stack.enter_context(
                _procs.worker(
                    module,
                    "hosts",
                    f"{broker.side} hosts {p}",
                    backend=_client_backend(broker.side, backend),
                    count=per_process,
                    topics=topics,
                    prefix=f"h{p}",
                    **broker.params,
                )
            )
            for p in range(processes)
        ]
        for child in hosts:
            child.expect("ready", READY_TIMEOUT)
        for child in hosts:
            child.send("go")
        connect_timeout = READY_TIMEOUT + per_process * processes / 10
        done = [child.expect("connected", connect_timeout) for child in hosts]
        seconds = max(float(d["t_done"]) for d in done) - min(float(d["t_go"]) for d in done)
        yield seconds
        for child in hosts:
            child.end_input()
        for child in hosts:
            child.expect("stopped", READY_TIMEOUT)
