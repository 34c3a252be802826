"""The bare gRPC transport, no bridge: loom's own gRPC client (``loom._grpc``, anyio +
h2) against grpclib's own client, both talking to the same kind of grpclib echo server
(asyncio, raw-bytes codec) in a process of its own.

* ``transport_stream_echo_100B``: messages/s of 100 B messages echoed through ONE
  bidirectional stream, pipelined (a sender task sends them all while a receiver task
  reads the echoes); every echo must come back, unchanged and in order.
* ``transport_unary_p50``: p50 latency of sequential unary echo calls (after a
  warm-up); every reply must equal its request.

The loom client runs on the backend under test; grpclib's client is asyncio code, so
the baseline is measured once per run. Both clients get the same warm-up and the same
checks (:mod:`benchmarks._transport_side`).
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from benchmarks import _procs
from benchmarks._config import Counts
from benchmarks._measure import READY_TIMEOUT, Baselines
from benchmarks._report import HIGHER, MICROSECONDS, Recorder

SIZE = 100
MESSAGES_PER_S = f"msg/s, {HIGHER}"
BASELINE_NAME = "grpclib client (asyncio)"
MODULE = "_transport_side"


@dataclass(frozen=True)
class TransportRun:
    per_second: float
    """Echoes received per second on the one stream (first send to last echo)."""
    p50_us: float
    """Median latency of the sequential unary calls."""


def transport_once(client: str, backend: str, counts: Counts) -> TransportRun:
    """One run on fresh processes: a grpclib echo server, then one client
    (``loom`` or ``grpclib``) that streams and then makes unary calls."""
    messages, calls = counts.transport_messages, counts.transport_unary_calls
    with ExitStack() as stack:
        server = stack.enter_context(_procs.worker(MODULE, "server", "grpclib echo server"))
        port = int(server.expect("ready", READY_TIMEOUT)["port"])
        child = stack.enter_context(
            _procs.worker(
                MODULE,
                client,
                f"{client} gRPC client ({backend})",
                backend=backend,
                port=port,
                messages=messages,
                size=SIZE,
                calls=calls,
                warmup=counts.warmup,
            )
        )
        child.expect("ready", READY_TIMEOUT)
        child.send("go")
        result = child.expect("result", READY_TIMEOUT + messages / 500 + calls / 100)
    stream = result["stream"]
    assert stream["received"] == messages and stream["wrong"] == 0, (
        f"{client} ({backend}): sent {messages} messages on one stream, got "
        f"{stream['received']} echoes back, {stream['wrong']} of them wrong"
    )
    assert result["wrong_unary"] == 0, (
        f"{client} ({backend}): {result['wrong_unary']} unary replies differed from the request"
    )
    return TransportRun(float(stream["per_second"]), float(result["unary"]["p50_us"]))


def transport(client: str, backend: str, counts: Counts) -> TransportRun:
    """Median of each number over ``counts.repeats`` runs on fresh processes."""
    runs = [transport_once(client, backend, counts) for _ in range(counts.repeats)]
    return TransportRun(
        statistics.median(run.per_second for run in runs),
        statistics.median(run.p50_us for run in runs),
    )


@pytest.mark.timeout(600)
def test_transport(backend: str, counts: Counts, record: Recorder, baselines: Baselines) -> None:
    grpclib = baselines.get(
        ("transport", "grpclib"), lambda: transport("grpclib", "asyncio", counts)
    )
    loom = transport("loom", backend, counts)
    record(
        "transport_stream_echo_100B",
        MESSAGES_PER_S,
        loom.per_second,
        grpclib.per_second,
        BASELINE_NAME,
        backend,
    )
    record("transport_unary_p50", MICROSECONDS, loom.p50_us, grpclib.p50_us, BASELINE_NAME, backend)
