"""The agent's one bounded buffer of outgoing frames.

Everything an agent sends (events, replies, requests, tool calls, results,
subscription changes, pings) goes through one :class:`Outbox` that outlives
connections: while the agent is disconnected frames wait in it, and a full outbox makes
the sender wait (back-pressure). The connection's writer takes everything queued at
that moment as one batch, so a lone frame goes out at once and a burst goes out
together.

A frame may carry the :class:`~loom._pending.Waiter` of the caller waiting for its
answer. A frame whose caller already gave up is skipped instead of sent, and a waiter
is marked ``sent`` once its frame was handed to a session. A batch whose send did not
complete is kept and goes out first on the next connection.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import anyio

from loom._frames import Call, Frame, Publish, Result
from loom._pending import Waiter

__all__ = ["Item", "Outbox"]

Item: TypeAlias = tuple[Frame, Waiter[Any] | None]

BATCH_BYTES: Final = 256 * 1024
"""Payload bytes after which a batch is cut. Smaller messages let every hop start on
one while the next is on the wire, rather than wait for a few large ones whole."""


def _payload_size(frame: Frame) -> int:
    if isinstance(frame, Publish):
        return len(frame.event) + len(frame.topic)
    if isinstance(frame, Call):
        return len(frame.payload)
    if isinstance(frame, Result):
        return len(frame.output)
    return 32


class Outbox:
    """A bounded FIFO of frames shared by every connection of one running agent."""

    __slots__ = ("_in_flight", "_receive", "_send")

    def __init__(self, size: int) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Item](size)
        self._in_flight: list[Item] = []

    async def put(self, frame: Frame, waiter: Waiter[Any] | None = None) -> None:
        """Queue ``frame``, waiting while the outbox is full.

        When there is room this returns without yielding to the event loop: a burst of
        sends then queues up and the writer takes it as one batch, instead of waking
        for every frame. Raises ``anyio.ClosedResourceError`` once the outbox is closed.
        """
        item = (frame, waiter)
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            await self._send.send(item)

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` if there is room right now (for frames worth dropping)."""
        try:
            self._send.send_nowait((frame, None))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def next_batch(self, limit: int, max_bytes: int = BATCH_BYTES) -> list[Item]:
        """The batch to send: the unfinished one, else what is queued (at least one),
        up to ``limit`` frames and about ``max_bytes`` of payload.

        Raises ``anyio.EndOfStream`` once the outbox is closed and empty.
        """
        if self._in_flight:
            return self._in_flight
        receive = self._receive
        first = await receive.receive()
        batch = [first]
        size = _payload_size(first[0])
        while len(batch) < limit and size < max_bytes:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            batch.append(item)
            size += _payload_size(item[0])
        self._in_flight = batch
        return batch

    @staticmethod
    def live(batch: list[Item]) -> list[Item]:
        """The items of ``batch`` whose caller still waits (or that need no answer)."""
        return [item for item in batch if item[1] is None or not item[1].done]

    def batch_sent(self) -> None:
        """The current batch went out: its waiters may now lose it to a dropped link."""
        for _, waiter in self._in_flight:
            if waiter is not None:
                waiter.sent = True
        self._in_flight = []

    def empty(self) -> bool:
        return not self._in_flight and self._receive.statistics().current_buffer_used == 0

    def __len__(self) -> int:
        return len(self._in_flight) + self._receive.statistics().current_buffer_used

    def close(self) -> None:
        """Refuse new frames; the writer still drains what is queued."""
        self._send.close()

    def close_all(self) -> None:
        """Close both ends (the agent has stopped; whatever is left is dropped)."""
        self._send.close()
        self._receive.close()
