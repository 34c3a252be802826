"""Handler dispatch: events in per-topic order, different topics concurrently.

An :class:`EventLanes` runs a fixed number of worker tasks ("lanes"), each with its
own bounded inbox. An event goes to the lane its topic hashes to, so the events of
one topic reach the handler one at a time and in order, while events of other topics
run on other lanes. When a lane's inbox is full the reader waits for it (that wait is
the agent's back-pressure on the bridge). An exception raised by the handler is
logged and the lane carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from loom.envelope import Envelope

__all__ = ["INSIDE_AGENT", "EventLanes"]

log = logging.getLogger("loom")

INSIDE_AGENT: ContextVar[object | None] = ContextVar("loom_inside_agent", default=None)
"""The running agent whose handler or capability the current task is serving."""

Handler: TypeAlias = Callable[[Any, str, Envelope], Awaitable[None]]
_Event: TypeAlias = tuple[str, Envelope]


class EventLanes:
    """``lanes`` ordered inboxes feeding ``handler(ctx, topic, event)``."""

    __slots__ = ("_ctx", "_handler", "_owner", "_receivers", "_senders")

    def __init__(
        self, handler: Handler, ctx: object, *, lanes: int, buffer: int, owner: object
    ) -> None:
        self._handler = handler
        self._ctx = ctx
        self._owner = owner
        self._senders: list[MemoryObjectSendStream[_Event]] = []
        self._receivers: list[MemoryObjectReceiveStream[_Event]] = []
        for _ in range(lanes):
            send, receive = anyio.create_memory_object_stream[_Event](buffer)
            self._senders.append(send)
            self._receivers.append(receive)

    def start(self, task_group: TaskGroup) -> None:
        for index, receive in enumerate(self._receivers):
            task_group.start_soon(self._lane, receive, name=f"loom lane {index}")

    async def dispatch(self, topic: str, event: Envelope) -> bool:
        """Queue ``event`` on its topic's lane (waiting for room); False once closed."""
        senders = self._senders
        send = senders[hash(topic) % len(senders)]
        try:
            try:
                send.send_nowait((topic, event))
            except anyio.WouldBlock:
                await send.send((topic, event))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        """Take no more events; the lanes finish what is queued, then end."""
        for send in self._senders:
            send.close()

    def close_all(self) -> None:
        for send in self._senders:
            send.close()
        for receive in self._receivers:
            receive.close()

    async def _lane(self, receive: MemoryObjectReceiveStream[_Event]) -> None:
        INSIDE_AGENT.set(self._owner)
        handler, ctx = self._handler, self._ctx
        with receive:
            while True:
                # Take what is queued without a scheduler round trip per event.
                try:
                    topic, event = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        topic, event = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                try:
                    await handler(ctx, topic, event)
                except Exception:
                    log.exception(
                        "event handler failed on %s event %s from topic %r",
                        event.type,
                        event.id,
                        topic,
                    )
