"""The side of a benchmark worker process that talks to the parent.

A worker is started as ``python -m benchmarks.<module> ROLE PARAMS_JSON``. It reports
to the parent with JSON lines on stdout (``{"event": "ready"}``, ``{"event": "result",
...}``) and takes commands as lines on stdin (``go``; end of input means stop). An
exception is reported as ``{"event": "error"}`` before the process exits with status 1.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

Params = dict[str, Any]
Role = Callable[[Params], Awaitable[None]]

now = time.monotonic
"""The clock every process stamps events with (CLOCK_MONOTONIC: one clock per machine)."""


def report(event: str, **fields: Any) -> None:
    """Send one JSON line to the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def command() -> str:
    """The parent's next command; ``"stop"`` when stdin is closed."""
    line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip() or "stop"


async def wait_for_go() -> bool:
    return await command() == "go"


def backend_args(backend: str) -> tuple[str, dict[str, Any]]:
    """``asyncio``, ``trio`` or ``asyncio+uvloop`` -> arguments of :func:`anyio.run`."""
    if backend == "asyncio+uvloop":
        return "asyncio", {"use_uvloop": True}
    if backend in ("asyncio", "trio"):
        return backend, {}
    raise ValueError(f"unknown backend {backend!r}")


def main(roles: Mapping[str, Role]) -> None:
    """Run the role named on the command line under the backend in its params."""
    role_name, params = sys.argv[1], json.loads(sys.argv[2])
    role = roles[role_name]
    backend, options = backend_args(params.get("backend", "asyncio"))
    try:
        anyio.run(role, params, backend=backend, backend_options=options)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        report("error", role=role_name, message="".join(traceback.format_exception(exc)))
        raise SystemExit(1) from None


class Progress:
    """Counts received events and stamps the first and the last."""

    __slots__ = ("count", "done", "expect", "t_first", "t_last")

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.count = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.done = anyio.Event()

    def hit(self) -> None:
        self.count += 1
        self.t_last = now()
        if self.count == 1:
            self.t_first = self.t_last
        if self.count == self.expect:
            self.done.set()

    async def wait(self, idle_timeout: float) -> None:
        """Wait until everything expected has arrived, or nothing arrived for
        ``idle_timeout`` seconds (the parent then sees a short count)."""
        seen = -1
        while not self.done.is_set() and self.count != seen:
            seen = self.count
            with anyio.move_on_after(idle_timeout):
                await self.done.wait()

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "t_first": self.t_first, "t_last": self.t_last}


def percentile(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(q / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


async def run_phase(call: Callable[[], Awaitable[None]], phase: Mapping[str, Any]) -> Params:
    """Time ``call`` as a benchmark phase: ``seq`` (one at a time, latencies) or
    ``inflight`` (``inflight`` concurrent callers, throughput); warm-up calls first."""
    for _ in range(phase.get("warmup", 0)):
        await call()
    count = int(phase["count"])
    if phase["mode"] == "seq":
        samples: list[float] = []
        clock = time.perf_counter
        for _ in range(count):
            t0 = clock()
            await call()
            samples.append(clock() - t0)
        samples.sort()
        return {
            **phase,
            "p50_us": percentile(samples, 50) * 1e6,
            "p99_us": percentile(samples, 99) * 1e6,
            "mean_us": sum(samples) / len(samples) * 1e6,
        }
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(int(phase["inflight"])):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - t0
    return {**phase, "seconds": elapsed, "per_second": count / elapsed}
