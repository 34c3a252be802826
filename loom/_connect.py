"""From an address string to the :class:`~loom._session.Connector` that reaches it."""

from __future__ import annotations

import os
from typing import Final

from loom._session import Connector
from loom.errors import ConfigurationError

__all__ = ["ADDRESS_ENV", "DEFAULT_ADDRESS", "check_address", "connector_for"]

ADDRESS_ENV: Final = "LOOM_BRIDGE_ADDR"
DEFAULT_ADDRESS: Final = "127.0.0.1:50051"

_EMBEDDED: Final = "embedded"
_SCHEMES: Final = ("grpc://", "grpcs://")


def connector_for(address: str | None) -> Connector:
    """The connector for a bridge address.

    * ``None``: ``$LOOM_BRIDGE_ADDR``, else ``127.0.0.1:50051``;
    * ``"embedded"`` / ``"embedded:NAME"``: the in-process bridge of that name
      (:mod:`loom.testing`; ``NAME`` defaults to ``default``);
    * ``HOST:PORT``, ``grpc://HOST:PORT``, ``grpcs://HOST:PORT`` (TLS): a bridge over
      gRPC. IPv6 hosts are written in brackets: ``[::1]:50051``.

    Raises :class:`~loom.errors.ConfigurationError` for an address of another form.
    """
    if address is None:
        address = os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
    name = check_address(address)
    if name is not None:
        from loom.testing import embedded_connector

        return embedded_connector(name)
    from loom._grpc_connector import GrpcConnector

    return GrpcConnector(address.strip())


def check_address(address: str) -> str | None:
    """Check the form of an address (see :func:`connector_for`); returns the bridge
    name of an ``embedded`` address, None for a network address."""
    if not isinstance(address, str):
        raise ConfigurationError(f"bridge address must be a string, got {type(address).__name__}")
    text = address.strip()
    if text == _EMBEDDED or text.startswith(_EMBEDDED + ":"):
        return text[len(_EMBEDDED) + 1 :] or "default"
    rest = text
    for scheme in _SCHEMES:
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            break
    host, sep, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    valid = (
        bool(sep)
        and bool(host)
        and "/" not in host
        and not any(char.isspace() for char in host)
        and port_text.isdigit()
        and 0 < int(port_text) < 65536
    )
    if not valid:
        raise ConfigurationError(
            f"invalid bridge address {address!r}; expected HOST:PORT, grpc://HOST:PORT, "
            "grpcs://HOST:PORT, 'embedded' or 'embedded:NAME'"
        )
    return None
