"""The channel: one HTTP/2 connection to a gRPC server and the calls made over it."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute
from grpclib.metadata import encode_metadata

from loom._grpc._call import GrpcStream, open_call
from loom._grpc._connection import Http2Connection
from loom._grpc._status import Headers
from loom.errors import ConfigurationError, ConnectionLost, MessageTooLarge, ProtocolError

__all__ = ["GrpcChannel"]

_USER_AGENT = "loom-grpc"


class GrpcChannel:
    """A gRPC client channel over one HTTP/2 connection, on anyio (asyncio or trio).

    ``async with GrpcChannel(host, port) as channel`` connects (TCP, or TLS with
    ALPN ``h2`` when ``ssl_context`` is given) and runs the connection's reader
    and keepalive tasks in a task group owned by the ``async with`` block;
    leaving the block closes the connection and stops those tasks. Calls still
    open then fail with :class:`~loom.errors.ConnectionLost`.

    Any number of concurrent calls share the connection. When the connection
    dies (dropped socket, GOAWAY, keepalive timeout) every pending call fails
    with ``ConnectionLost`` and :attr:`closed` becomes true; a channel can be
    entered again to reconnect.

    ``ssl_context`` gets ``h2`` set as its ALPN protocol list (gRPC needs h2).
    ``keepalive_interval``: send a PING once nothing was received for that
    long (``None`` turns keepalive off); no ack within ``keepalive_timeout``
    declares the connection dead.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_message_size: int = 64 * 1024 * 1024,
        keepalive_interval: float | None = 10.0,
        keepalive_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not host:
            raise ConfigurationError("host must not be empty")
        if not 0 < port < 65536:
            raise ConfigurationError(f"invalid port {port}")
        if max_message_size <= 0:
            raise ConfigurationError("max_message_size must be positive")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise ConfigurationError("keepalive_interval must be positive or None")
        if keepalive_timeout <= 0:
            raise ConfigurationError("keepalive_timeout must be positive")
        if connect_timeout <= 0:
            raise ConfigurationError("connect_timeout must be positive")
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._max_message_size = max_message_size
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._connect_timeout = connect_timeout
        host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._authority = f"{host_part}:{port}"
        self._scheme = "http" if ssl_context is None else "https"
        self._connection: Http2Connection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def closed(self) -> bool:
        """True unless the channel is connected and usable."""
        return self._connection is None or self._connection.closed

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> GrpcChannel:
        if self._task_group is not None:
            raise RuntimeError("the channel is already open")
        connection = await self._connect()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(connection.run)
        self._connection = connection
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        connection, task_group = self._connection, self._task_group
        if connection is None or task_group is None:
            return None
        self._task_group = None
        await connection.aclose()  # stops the background tasks
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return await task_group.__aexit__(exc_type, exc, tb)
        # Any other exception of the body propagates as it is, not wrapped in
        # an exception group by the task group.
        await task_group.__aexit__(None, None, None)
        return None

    async def _connect(self) -> Http2Connection:
        where = self._authority
        context = self._ssl_context
        stream: anyio.abc.ByteStream
        try:
            with anyio.fail_after(self._connect_timeout):
                if context is None:
                    stream = await anyio.connect_tcp(self._host, self._port)
                else:
                    context.set_alpn_protocols(["h2"])
                    stream = await anyio.connect_tcp(
                        self._host,
                        self._port,
                        tls=True,
                        ssl_context=context,
                        tls_standard_compatible=False,
                        tls_hostname=self._server_hostname or self._host,
                    )
                try:
                    if context is not None:
                        protocol = stream.extra(TLSAttribute.alpn_protocol, None)
                        if protocol not in (None, "h2"):
                            raise ProtocolError(f"the server negotiated {protocol!r} instead of h2")
                    connection = Http2Connection(
                        stream,
                        keepalive_interval=self._keepalive_interval,
                        keepalive_timeout=self._keepalive_timeout,
                    )
                    await connection.handshake()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await anyio.aclose_forcefully(stream)
                    raise
        except (ConnectionLost, ProtocolError):
            raise
        except TimeoutError:
            raise ConnectionLost(
                f"could not connect to {where} within {self._connect_timeout} s"
            ) from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise ConnectionLost(f"could not connect to {where}: {exc!r}") from exc
        return connection

    # ---------------------------------------------------------------- calls

    def _open_connection(self) -> Http2Connection:
        connection = self._connection
        if connection is None or self._task_group is None:
            raise ConnectionLost("the channel is not open")
        return connection

    def _headers(self, path: str, metadata: Mapping[str, str] | None) -> tuple[Headers, Headers]:
        if not path.startswith("/"):
            raise ConfigurationError(f"invalid method path {path!r}: it must start with '/'")
        headers: Headers = [
            (":method", "POST"),
            (":scheme", self._scheme),
            (":path", path),
            (":authority", self._authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        extra: Headers = [("user-agent", _USER_AGENT)]
        if metadata:
            try:
                encoded = encode_metadata(metadata)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"invalid metadata: {exc}") from exc
            extra.extend((str(key), str(value)) for key, value in encoded)
        return headers, extra

    def stream(
        self,
        path: str,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[GrpcStream]:
        """A bidirectional-streaming call, open inside ``async with``.

        Leaving the block before the call finished resets the stream
        (RST_STREAM CANCEL). ``timeout`` is the call's deadline, in seconds.
        """
        connection = self._open_connection()
        headers, extra = self._headers(path, metadata)
        return open_call(
            connection,
            headers,
            extra,
            max_message_size=self._max_message_size,
            timeout=timeout,
        )

    async def unary(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's gRPC deadline
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """A unary call: one request message, one reply message."""
        if len(request) > self._max_message_size:
            raise MessageTooLarge(len(request), self._max_message_size)
        async with self.stream(path, timeout=timeout, metadata=metadata) as call:
            try:
                await call._send(request, end_stream=True)
            except anyio.BrokenResourceError:
                pass  # the server answered before reading it all: take its answer
            try:
                reply = await call.receive()
            except anyio.EndOfStream:
                raise ProtocolError("the server ended a unary call without a reply") from None
            try:
                await call.receive()
            except anyio.EndOfStream:
                return reply
            raise ProtocolError("the server sent more than one reply to a unary call")
