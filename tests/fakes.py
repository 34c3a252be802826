"""A scripted bridge for unit tests of the agent.

:class:`FakeConnector` implements the ``Connector`` protocol. Each successful
``connect()`` creates a :class:`FakeLink`, which the test receives from
:meth:`FakeConnector.next_link` and uses to play the bridge: read what the agent sent
(:meth:`FakeLink.next_frame`, :meth:`FakeLink.next_batch`), inject frames
(:meth:`FakeLink.inject`), hold the agent's sends (:meth:`FakeLink.hold_sends`), or
kill the connection (:meth:`FakeLink.drop`, :meth:`FakeLink.end`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from loom._frames import (
    Call,
    Deliver,
    Frame,
    Ping,
    Pong,
    Publish,
    decode_envelope,
    encode_envelope,
)
from loom._session import Registration, Session
from loom.agent import Agent
from loom.envelope import Envelope
from loom.errors import ConnectionLost, MessageTooLarge

F = TypeVar("F")


class FakeSession:
    """The agent's side of a :class:`FakeLink`."""

    def __init__(self, link: FakeLink) -> None:
        self._link = link

    @property
    def batched(self) -> bool:
        return True

    async def send(self, frames: list[Frame]) -> None:
        await self._link._agent_sends(frames)

    async def receive(self) -> list[Frame]:
        item = await self._link._to_agent_recv.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self._link.closed_gracefully = True


def _size(frame: Frame) -> int:
    if isinstance(frame, Publish):
        return len(frame.event)
    if isinstance(frame, Call):
        return len(frame.payload)
    return 0


class FakeLink:
    """One connection, as the bridge sees it."""

    def __init__(
        self, registration: Registration, *, auto_pong: bool, max_batch_bytes: int | None = None
    ) -> None:
        self.registration = registration
        self.auto_pong = auto_pong
        self.max_batch_bytes = max_batch_bytes
        self.session = FakeSession(self)
        self._to_agent_send, self._to_agent_recv = anyio.create_memory_object_stream[
            list[Frame] | BaseException
        ](math.inf)
        self._from_agent_send, self._from_agent_recv = anyio.create_memory_object_stream[
            list[Frame]
        ](math.inf)
        self._pending: deque[Frame] = deque()
        self._gate: anyio.Event | None = None
        self.send_blocked = anyio.Event()
        self.closed = anyio.Event()
        self.broken = False
        self.closed_gracefully = False
        self.send_calls = 0
        self.pings = 0
        self._ping_event = anyio.Event()

    # -- the bridge's side ----------------------------------------------------------

    async def next_batch(self) -> list[Frame]:
        """The frames of the agent's next ``send()`` call (pings left out)."""
        assert not self._pending, "next_batch() after a partial next_frame()"
        while True:
            frames: list[Frame] = [
                f for f in await self._from_agent_recv.receive() if not isinstance(f, Ping)
            ]
            if frames:
                return frames

    async def next_frame(self, kind: type[F] | None = None) -> F | Frame:
        """The next frame the agent sent (pings left out); checks its type if given."""
        while not self._pending:
            self._pending.extend(
                f for f in await self._from_agent_recv.receive() if not isinstance(f, Ping)
            )
        frame = self._pending.popleft()
        if kind is not None:
            assert isinstance(frame, kind), f"expected {kind.__name__}, got {frame!r}"
        return frame

    async def expect(self, kind: type[F]) -> F:
        frame = await self.next_frame(kind)
        assert isinstance(frame, kind)
        return frame

    async def published(self) -> tuple[str, Envelope]:
        """The next frame, which must be a Publish: its topic and decoded envelope."""
        frame = await self.expect(Publish)
        return frame.topic, decode_envelope(frame.event)

    def drain(self) -> list[Frame]:
        """Everything the agent has sent and the test has not read yet (pings left out)."""
        frames = list(self._pending)
        self._pending.clear()
        while True:
            try:
                batch = self._from_agent_recv.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return frames
            frames.extend(f for f in batch if not isinstance(f, Ping))

    async def inject(self, *frames: Frame) -> None:
        """Deliver frames to the agent (as one batch)."""
        await self._to_agent_send.send(list(frames))

    async def deliver(self, topic: str, envelope: Envelope) -> None:
        await self.inject(Deliver(topic, encode_envelope(envelope)))

    async def wait_for_pings(self, count: int) -> None:
        while self.pings < count:
            await self._ping_event.wait()

    def drop(self, error: BaseException | None = None) -> None:
        """The connection dies: the agent's receive() raises, its send() too."""
        self.broken = True
        self._to_agent_send.send_nowait(error or ConnectionLost("the fake link dropped"))

    def end(self) -> None:
        """The bridge closes the stream cleanly (EndOfStream on the agent's side)."""
        self._to_agent_send.close()

    def hold_sends(self) -> None:
        """From now on the agent's send() waits until :meth:`release_sends`."""
        self._gate = anyio.Event()
        self.send_blocked = anyio.Event()

    def release_sends(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    # -- internals ----------------------------------------------------------------------

    async def _agent_sends(self, frames: Sequence[Frame]) -> None:
        if self.broken:
            raise ConnectionLost("the fake link dropped")
        self.send_calls += 1
        gate = self._gate
        if gate is not None:
            self.send_blocked.set()
            await gate.wait()
        if self.broken:
            raise ConnectionLost("the fake link dropped")
        if self.max_batch_bytes is not None:
            size = sum(_size(frame) for frame in frames)
            if size > self.max_batch_bytes:
                raise MessageTooLarge(size, self.max_batch_bytes)
        pings = [f for f in frames if isinstance(f, Ping)]
        if pings:
            self.pings += len(pings)
            self._ping_event.set()
            self._ping_event = anyio.Event()
        if pings and self.auto_pong:
            for ping in pings:
                self._to_agent_send.send_nowait([Pong(ping.timestamp_ms)])
        self._from_agent_send.send_nowait(list(frames))

    def close_streams(self) -> None:
        for stream in (
            self._to_agent_send,
            self._to_agent_recv,
            self._from_agent_send,
            self._from_agent_recv,
        ):
            stream.close()


class FakeConnector:
    """A connector whose connections the test drives.

    ``fail_next(exc, ...)`` makes the next connects raise those errors, in order;
    ``hold_connects()`` makes connect() wait (``connect_waiting`` is set meanwhile)
    until ``release_connects()``; ``hang_connects = True`` makes it wait forever.
    """

    address = "fake:1"

    def __init__(self, *, auto_pong: bool = True, max_batch_bytes: int | None = None) -> None:
        self.auto_pong = auto_pong
        self.max_batch_bytes = max_batch_bytes
        self.links: list[FakeLink] = []
        self.registrations: list[Registration] = []
        self.attempts = 0
        self.hang_connects = False
        self.on_connect: list[Frame] = []
        self._failures: deque[BaseException] = deque()
        self._links_send: MemoryObjectSendStream[FakeLink]
        self._links_recv: MemoryObjectReceiveStream[FakeLink]
        self._links_send, self._links_recv = anyio.create_memory_object_stream[FakeLink](math.inf)
        self._connect_gate: anyio.Event | None = None
        self._connect_waiting: anyio.Event | None = None

    def fail_next(self, *errors: BaseException) -> None:
        self._failures.extend(errors)

    def hold_connects(self) -> None:
        self._connect_gate = anyio.Event()
        self._connect_waiting = anyio.Event()

    async def wait_connect_waiting(self) -> None:
        assert self._connect_waiting is not None
        await self._connect_waiting.wait()

    def release_connects(self) -> None:
        gate, self._connect_gate = self._connect_gate, None
        if gate is not None:
            gate.set()

    async def next_link(self) -> FakeLink:
        return await self._links_recv.receive()

    def connect(self, registration: Registration) -> AbstractAsyncContextManager[Session]:
        return self._connect(registration)

    @asynccontextmanager
    async def _connect(self, registration: Registration) -> AsyncIterator[Session]:
        self.attempts += 1
        self.registrations.append(registration)
        gate = self._connect_gate
        if gate is not None:
            assert self._connect_waiting is not None
            self._connect_waiting.set()
            await gate.wait()
        if self.hang_connects:
            await anyio.sleep_forever()
        if self._failures:
            raise self._failures.popleft()
        await anyio.lowlevel.checkpoint()
        link = FakeLink(
            registration, auto_pong=self.auto_pong, max_batch_bytes=self.max_batch_bytes
        )
        self.links.append(link)
        if self.on_connect:
            link._to_agent_send.send_nowait(list(self.on_connect))
        self._links_send.send_nowait(link)
        try:
            yield link.session
        finally:
            link.closed.set()

    def close(self) -> None:
        for link in self.links:
            link.close_streams()
        self._links_send.close()
        self._links_recv.close()


def envelope(type: str = "test.event", payload: bytes = b"", **fields: Any) -> Envelope:
    """An envelope as another agent would have sent it."""
    fields.setdefault("sender", "peer")
    return Envelope.new(type=type, payload=payload, **fields)


@asynccontextmanager
async def running_agent(
    connector: FakeConnector,
    agent_id: str = "a",
    topics: Sequence[str] = ("t",),
    **options: Any,
) -> AsyncIterator[tuple[Agent, FakeLink]]:
    """An started agent on ``connector`` (fast reconnects), and its first link."""
    options.setdefault("reconnect_initial", 0.001)
    options.setdefault("reconnect_max", 0.01)
    agent = Agent(agent_id, list(topics), connector=connector, **options)
    async with agent:
        link = await connector.next_link()
        yield agent, link


@pytest.fixture
def connector() -> Iterator[FakeConnector]:
    fake = FakeConnector()
    yield fake
    fake.close()
