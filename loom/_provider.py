"""Serving capability calls that the bridge routes to this agent.

A ``Call`` frame names a capability and a version (empty: any version). Calls run on
a pool of at most ``max_concurrent`` worker tasks; calls beyond that wait for a worker,
and beyond ``max_queued`` waiting calls the agent answers ``RETRYABLE``/``BUSY`` at
once rather than let work pile up without bound.
Every call is answered with one ``Result``:

* ``OK`` with the JSON output;
* ``ERROR``/``INVALID_INPUT`` when the arguments do not validate;
* ``ERROR``/``CAPABILITY_ERROR`` with ``"ExcType: message"`` when the function raised;
* ``ERROR``/``NOT_FOUND`` when this agent has no such capability;
* ``TIMEOUT`` when it ran past the call's ``timeout_ms``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import anyio
from anyio.abc import TaskGroup

from loom._dispatch import INSIDE_AGENT
from loom._frames import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RETRYABLE,
    STATUS_TIMEOUT,
    Call,
    Result,
)
from loom._session import CapabilityInfo
from loom.capability import Capability
from loom.errors import CapabilityError, InvalidArguments

__all__ = ["CapabilityTable", "ToolServer"]

log = logging.getLogger("loom")

INVALID_INPUT: Final = "INVALID_INPUT"
CAPABILITY_ERROR: Final = "CAPABILITY_ERROR"
NOT_FOUND: Final = "NOT_FOUND"
TIMEOUT: Final = "TIMEOUT"
BUSY: Final = "BUSY"
UNAVAILABLE: Final = "UNAVAILABLE"


class CapabilityTable:
    """The capabilities of one agent, by name and version."""

    __slots__ = ("_by_key", "_by_name")

    def __init__(self, capabilities: Iterable[Capability]) -> None:
        self._by_key: dict[tuple[str, str], Capability] = {}
        self._by_name: dict[str, Capability] = {}
        for cap in capabilities:
            self._by_key[(cap.name, cap.version)] = cap
            self._by_name.setdefault(cap.name, cap)

    def __len__(self) -> int:
        return len(self._by_key)

    def find(self, name: str, version: str) -> Capability | None:
        """The capability ``name`` at ``version``; an empty version matches any."""
        if not version:
            return self._by_name.get(name)
        return self._by_key.get((name, version))

    def infos(self) -> list[CapabilityInfo]:
        return [cap.as_info() for cap in self._by_key.values()]


def error_result(call_id: str, status: int, code: str, message: str) -> Result:
    return Result(call_id, status, error_code=code, error_message=message)


class ToolServer:
    """Runs incoming calls on a pool of worker tasks, bounded, and hands back results.

    Workers are started on demand, up to ``max_concurrent``, in the task group given to
    :meth:`admit`, and live until :meth:`close`: a call costs a queue hand-off, not a
    new task.
    """

    __slots__ = (
        "_admitted",
        "_idle",
        "_max_admitted",
        "_max_workers",
        "_owner",
        "_queue_receive",
        "_queue_send",
        "_reply",
        "_running",
        "_table",
        "_workers",
    )

    def __init__(
        self,
        table: CapabilityTable,
        reply: Callable[[Result], Awaitable[None]],
        *,
        max_concurrent: int,
        max_queued: int,
        owner: object,
    ) -> None:
        self._table = table
        self._reply = reply
        self._max_workers = max_concurrent
        self._max_admitted = max_concurrent + max_queued
        self._admitted = 0
        self._running = 0
        self._workers = 0
        self._idle = 0
        self._owner = owner
        self._queue_send, self._queue_receive = anyio.create_memory_object_stream[
            tuple[Capability, Call]
        ](self._max_admitted)

    @property
    def running(self) -> int:
        """Calls running right now."""
        return self._running

    @property
    def admitted(self) -> int:
        """Calls running or waiting for a slot."""
        return self._admitted

    def admit(self, call: Call, task_group: TaskGroup) -> Result | None:
        """Start serving ``call``; or return the answer to send at once."""
        cap = self._table.find(call.capability, call.version)
        if cap is None:
            version = f" version {call.version!r}" if call.version else ""
            return error_result(
                call.id,
                STATUS_ERROR,
                NOT_FOUND,
                f"this agent has no capability {call.capability!r}{version}",
            )
        if self._admitted >= self._max_admitted:
            return error_result(
                call.id,
                STATUS_RETRYABLE,
                BUSY,
                f"{self._admitted} calls are already running or waiting; try again later",
            )
        try:
            self._queue_send.send_nowait((cap, call))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return error_result(call.id, STATUS_RETRYABLE, UNAVAILABLE, "the agent is stopping")
        self._admitted += 1
        if self._idle == 0 and self._workers < self._max_workers:
            self._workers += 1
            task_group.start_soon(self._worker, name="loom tool worker")
        return None

    def close(self) -> None:
        """Take no more calls; workers finish what is queued, then end."""
        self._queue_send.close()

    def close_all(self) -> None:
        """Release the queue (the workers have ended with their task group)."""
        self._queue_send.close()
        self._queue_receive.close()

    async def _worker(self) -> None:
        INSIDE_AGENT.set(self._owner)
        receive = self._queue_receive
        try:
            while True:
                try:
                    cap, call = receive.receive_nowait()
                except anyio.WouldBlock:
                    self._idle += 1
                    try:
                        cap, call = await receive.receive()
                    except anyio.EndOfStream:
                        return
                    finally:
                        self._idle -= 1
                except anyio.EndOfStream:
                    return
                self._running += 1
                try:
                    result = await self._run(cap, call)
                finally:
                    self._running -= 1
                    self._admitted -= 1
                await self._reply(result)
        finally:
            self._workers -= 1

    async def _run(self, cap: Capability, call: Call) -> Result:
        timeout = call.timeout_ms / 1000 if call.timeout_ms > 0 else None
        try:
            with anyio.move_on_after(timeout) as scope:
                output = await cap.invoke(call.payload)
                return Result(call.id, STATUS_OK, output)
        except InvalidArguments as exc:
            return error_result(call.id, STATUS_ERROR, INVALID_INPUT, exc.message)
        except CapabilityError as exc:
            log.warning("capability %s@%s failed: %s", cap.name, cap.version, exc)
            return error_result(call.id, STATUS_ERROR, CAPABILITY_ERROR, exc.message)
        except Exception as exc:
            log.warning(
                "capability %s@%s raised %s",
                cap.name,
                cap.version,
                type(exc).__name__,
                exc_info=True,
            )
            return error_result(
                call.id, STATUS_ERROR, CAPABILITY_ERROR, f"{type(exc).__name__}: {exc}"
            )
        assert scope.cancelled_caught
        return error_result(
            call.id,
            STATUS_TIMEOUT,
            TIMEOUT,
            f"capability {cap.name!r} did not finish within {call.timeout_ms} ms",
        )
