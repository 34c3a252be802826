"""loom: event-driven multi-agent systems on asyncio or trio.

The whole public API is re-exported here; modules whose names start with ``_`` are
internal and may change.
"""

from loom._logging import configure_from_env as _configure_logging
from loom.agent import Agent
from loom.capability import Capability, capability
from loom.context import Context, EventHandler
from loom.envelope import Envelope
from loom.errors import (
    BridgeRejected,
    CapabilityError,
    CapabilityNotFound,
    ConfigurationError,
    ConnectionLost,
    InvalidArguments,
    LoomError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    RpcError,
    ToolTimeout,
)

__all__ = [
    "Agent",
    "BridgeRejected",
    "Capability",
    "CapabilityError",
    "CapabilityNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "Context",
    "Envelope",
    "EventHandler",
    "InvalidArguments",
    "LoomError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RpcError",
    "ToolTimeout",
    "capability",
]

__version__ = "0.2.0"

_configure_logging()
