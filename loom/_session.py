"""What the SDK needs from a connection to a bridge, whatever carries it.

An agent talks to a bridge through a :class:`Connector`: ``connect()`` registers the
agent and opens its event stream, yielding a :class:`Session` that moves lists of
frames (see ``loom._frames``) both ways. The gRPC connector (``loom._grpc_connector``)
and the in-process embedded bridge (``loom.testing``) both implement it, so the agent
code is the same over the network and in memory.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

from loom._frames import Frame


class CapabilityInfo(msgspec.Struct, frozen=True):
    """A capability an agent provides, as announced at registration."""

    name: str
    version: str
    metadata: dict[str, str] = {}


class Registration(msgspec.Struct):
    """Everything the bridge needs to register an agent."""

    agent_id: str
    topics: list[str]
    capabilities: list[CapabilityInfo] = []
    metadata: dict[str, str] = {}
    subscription_qos: dict[str, int] = {}


class Session(Protocol):
    """One registered agent's open event stream.

    ``receive`` raises :class:`loom.errors.ConnectionLost` when the stream ends, for
    whatever reason (the bridge closed it, the connection died): the agent reconnects.
    """

    @property
    def batched(self) -> bool:
        """True when the session speaks the batched wire (``loom.batch.v1``)."""
        ...

    async def send(self, frames: list[Frame]) -> None: ...

    async def receive(self) -> list[Frame]: ...

    async def close(self) -> None:
        """End the stream gracefully: returns once the bridge has taken in everything
        sent on it (or raises when the connection dies first). Frames that arrive
        meanwhile are discarded."""
        ...


class Connector(Protocol):
    """Opens sessions to one bridge."""

    def connect(self, registration: Registration) -> AbstractAsyncContextManager[Session]:
        """Register and open the event stream. Raises ``BridgeRejected`` when the bridge
        refuses the registration and ``ConnectionLost`` when it cannot be reached."""
        ...

    @property
    def address(self) -> str: ...
