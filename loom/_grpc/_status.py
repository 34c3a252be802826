"""Turning gRPC response headers and trailers into the call's outcome."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from grpclib.const import Status
from grpclib.metadata import decode_grpc_message

from loom.errors import ProtocolError, RpcError

__all__ = ["Headers", "check_response_headers", "final_status", "normalize_headers", "rpc_error"]

Headers = list[tuple[str, str]]

# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_GRPC = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}


def rpc_error(status: Status, message: str = "") -> RpcError:
    return RpcError(status.value, status.name, message)


def normalize_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Headers:
    """Header pairs as text (h2 hands out ``str`` or ``bytes`` depending on its config)."""
    result: Headers = []
    for name, value in headers:
        if isinstance(name, bytes):
            name = name.decode("ascii", errors="replace")
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        result.append((name, value))
    return result


def _get(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def check_response_headers(headers: Headers) -> BaseException | None:
    """Validate the first HEADERS block of a response.

    Returns the error the call fails with, or ``None`` if the response may go on.
    A trailers-only response (``grpc-status`` already present) is left for
    :func:`final_status`.
    """
    http_status = _get(headers, ":status")
    if http_status is None:
        return ProtocolError("response without :status")
    if _get(headers, "grpc-status") is not None:
        return None
    if http_status != "200":
        try:
            code = int(http_status)
        except ValueError:
            return ProtocolError(f"invalid :status {http_status!r}")
        return rpc_error(_HTTP_TO_GRPC.get(code, Status.UNKNOWN), f"HTTP status {code}")
    content_type = _get(headers, "content-type")
    if content_type is None or not content_type.startswith("application/grpc"):
        return ProtocolError(f"unexpected content-type {content_type!r}")
    return None


def final_status(trailers: Headers) -> RpcError | None:
    """The outcome carried by the trailers (or a trailers-only response).

    ``None`` means status OK. Raises :class:`~loom.errors.ProtocolError` when no
    valid ``grpc-status`` is present.
    """
    raw_status = _get(trailers, "grpc-status")
    if raw_status is None:
        raise ProtocolError("response ended without grpc-status")
    try:
        code = int(raw_status)
    except ValueError:
        raise ProtocolError(f"invalid grpc-status {raw_status!r}") from None
    raw_message = _get(trailers, "grpc-message")
    message = decode_grpc_message(raw_message) if raw_message else ""
    if code == Status.OK.value:
        return None
    try:
        status = Status(code)
    except ValueError:
        # Unknown codes are treated as UNKNOWN, as the gRPC spec asks.
        detail = f"grpc-status {code}: {message}" if message else f"grpc-status {code}"
        return rpc_error(Status.UNKNOWN, detail)
    return rpc_error(status, message)
