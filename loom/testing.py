"""An in-process bridge, for first programs and for tests.

:class:`EmbeddedBridge` runs the same routing core as ``loom bridge`` but carries
frames through memory instead of gRPC, under asyncio or trio::

    async with EmbeddedBridge() as bridge:
        async with Agent("a", ["t"], on_event=handler, address=bridge.address) as agent:
            ...

The address ``"embedded"`` (what the examples use when given no ``--address``) names
a process-wide default bridge that is created on first use.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType

from loom import _frames as fr
from loom._session import Connector, Registration, Session
from loom.bridge._core import AgentLink, BridgeCore, BridgeLimits
from loom.bridge._queues import TopicSnapshot
from loom.errors import ConfigurationError, ConnectionLost

__all__ = ["EmbeddedBridge", "embedded_connector"]

_bridges: dict[str, EmbeddedBridge] = {}
_names = itertools.count(1)


class EmbeddedBridge:
    """A bridge living in this process; agents reach it at :attr:`address`.

    Use it as ``async with`` (it is registered under its name while open), or just
    create it: it starts no tasks, so there is nothing to stop.
    """

    def __init__(self, name: str | None = None, *, limits: BridgeLimits | None = None) -> None:
        self.name = name if name is not None else f"bridge-{next(_names)}"
        if not self.name or ":" in self.name:
            raise ConfigurationError(f"invalid embedded bridge name {self.name!r}")
        self.core = BridgeCore(limits)

    @property
    def address(self) -> str:
        """The address to give ``Agent(address=...)``."""
        return f"embedded:{self.name}"

    def connector(self) -> Connector:
        return _EmbeddedConnector(self)

    def open(self) -> None:
        """Make the bridge reachable at :attr:`address` (``async with`` does this)."""
        current = _bridges.get(self.name)
        if current is not None and current is not self:
            raise ConfigurationError(f"an embedded bridge named {self.name!r} is already open")
        _bridges[self.name] = self

    def close(self) -> None:
        """Disconnect every agent, fail pending calls, and stop answering at the address."""
        self.core.close_all("the embedded bridge was closed")
        if _bridges.get(self.name) is self:
            del _bridges[self.name]

    async def __aenter__(self) -> EmbeddedBridge:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def disconnect(self, agent_id: str) -> bool:
        """Drop an agent's stream as a network failure would (for tests of reconnect)."""
        link = self.core._links.get(agent_id)
        if link is None:
            return False
        self.core.detach(link, f"agent {agent_id!r} was disconnected")
        return True

    def stats(self) -> list[TopicSnapshot]:
        """Per-topic counters: published, delivered, dropped, expired, subscribers, backlog."""
        return self.core.stats()[0]

    @property
    def connected_agents(self) -> list[str]:
        return sorted(self.core._links)


def embedded_connector(name: str = "default") -> Connector:
    """The connector for ``embedded:NAME``; the default bridge is created on first use."""
    bridge = _bridges.get(name)
    if bridge is None:
        if name != "default":
            raise ConfigurationError(f"no embedded bridge named {name!r} is open")
        bridge = EmbeddedBridge("default")
        bridge.open()
    return bridge.connector()


class _EmbeddedSession:
    __slots__ = ("_limit", "_link")

    def __init__(self, link: AgentLink, limit: int) -> None:
        self._link = link
        self._limit = limit

    @property
    def batched(self) -> bool:
        return True

    async def send(self, frames: Sequence[fr.Frame]) -> None:
        link = self._link
        if link.closed:
            raise ConnectionLost(link.close_reason or "the embedded bridge closed the stream")
        await link.handle(frames)

    async def close(self) -> None:
        """Nothing to wait for: ``send`` hands frames to the bridge directly."""

    async def receive(self) -> list[fr.Frame]:
        link = self._link
        while True:
            await link.wait()
            if link.closed:
                farewell, link.farewell = link.farewell, None
                if farewell is not None:
                    return [farewell]
                raise ConnectionLost(link.close_reason or "the embedded bridge closed the stream")
            events, control = link.take(self._limit)
            frames: list[fr.Frame] = [
                fr.Deliver(q.topic, q.item.batched())  # type: ignore[attr-defined]
                for q in events
            ]
            if control:
                frames.extend(control)
            if frames:
                return frames


class _EmbeddedConnector:
    def __init__(self, bridge: EmbeddedBridge) -> None:
        self._bridge = bridge

    @property
    def address(self) -> str:
        return self._bridge.address

    def connect(self, registration: Registration) -> AbstractAsyncContextManager[Session]:
        return self._connect(registration)

    @asynccontextmanager
    async def _connect(self, registration: Registration) -> AsyncIterator[Session]:
        core = self._bridge.core
        if _bridges.get(self._bridge.name) is not self._bridge:
            raise ConnectionLost(f"embedded bridge {self._bridge.name!r} is not open")
        core.register(registration, [fr.FEATURE_BATCH])
        link = core.attach(registration.agent_id, batched=True)
        try:
            yield _EmbeddedSession(link, core.limits.max_batch_events)
        finally:
            core.detach(link, "agent disconnected")
