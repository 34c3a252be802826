"""The one exception tree of loom.

Every error a user can meet in production is a subclass of :class:`LoomError`.
Errors from the libraries loom is built on (grpclib, h2, anyio, msgspec) are
translated at the boundary, so callers never need to catch another package's
internals.
"""

from __future__ import annotations

__all__ = [
    "BridgeRejected",
    "CapabilityError",
    "CapabilityNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "InvalidArguments",
    "LoomError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RpcError",
    "ToolTimeout",
]


class LoomError(Exception):
    """Root of every error raised by loom."""


class ConfigurationError(LoomError, ValueError):
    """A bad argument or setting given to loom itself (address, topic name, ...)."""


class ProtocolError(LoomError):
    """The peer sent something that breaks the wire protocol (malformed frame, ...)."""


class MessageTooLarge(LoomError):
    """A message is larger than the configured limit; it was not sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class ConnectionLost(LoomError, ConnectionError):
    """The connection to the bridge went away (dropped socket, GOAWAY, keepalive
    timeout, bridge shutdown). The agent reconnects on its own; calls that were in
    flight fail with this error rather than hang."""


class RpcError(LoomError):
    """A gRPC call ended with a non-OK status.

    ``status`` is the numeric gRPC status code, ``status_name`` its name
    (``"INVALID_ARGUMENT"``, ...), ``message`` the ``grpc-message`` text.
    """

    def __init__(self, status: int, status_name: str, message: str = "") -> None:
        text = f"{status_name}: {message}" if message else status_name
        super().__init__(text)
        self.status = status
        self.status_name = status_name
        self.message = message


class BridgeRejected(LoomError):
    """The bridge refused a registration or a stream (empty or duplicate agent_id, ...)."""


class RequestTimeout(LoomError, TimeoutError):
    """No reply arrived within the request's timeout."""


class ToolTimeout(RequestTimeout):
    """A tool call got no result within its timeout."""


class RemoteError(LoomError):
    """A remote party answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class CapabilityNotFound(RemoteError):
    """No connected agent provides the requested capability (and version)."""


class InvalidArguments(RemoteError, ValueError):
    """Arguments of a capability call failed validation; ``message`` names the field."""


class CapabilityError(RemoteError):
    """The capability ran and raised; ``message`` carries the remote error text."""
