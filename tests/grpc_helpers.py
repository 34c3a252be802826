"""Shared fixtures for the gRPC client tests.

* :class:`ServerThread` runs a grpclib server (asyncio only) in a background
  thread with its own event loop, so tests on any anyio backend can use it.
* :class:`RawCodec` passes message bytes through untouched.
* :class:`TestService` is a hand-written grpclib service (no generated code).
* :func:`fake_http2_server` is a scripted HTTP/2 peer for misbehaviour tests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
from anyio.abc import SocketAttribute
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

SERVICE = "/loom.test.Test"
ABORT_MESSAGE = "refusé: 100% ünïcode\nsecond line"


class RawCodec(CodecBase):
    """grpclib codec for raw bytes: messages are already serialized."""

    __content_subtype__ = "proto"  # so plain "application/grpc" is accepted

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class TestService:
    """Test handlers; ``live`` counts handlers currently running."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.live = 0
        self.flood_sent = 0
        self.started = 0
        self._cond = threading.Condition()

    # -- bookkeeping (thread-safe: read from the test's thread)

    def _enter(self) -> None:
        with self._cond:
            self.live += 1
            self.started += 1
            self._cond.notify_all()

    def _leave(self) -> None:
        with self._cond:
            self.live -= 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[TestService], bool], timeout: float) -> bool:
        """Block (in a worker thread) until ``predicate(self)`` holds."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    async def wait_until(self, predicate: Callable[[TestService], bool], limit: float = 5) -> None:
        """Wait (event-driven, bounded) until ``predicate`` holds on the server side."""
        with anyio.fail_after(limit + 5):
            ok = await anyio.to_thread.run_sync(self.wait_for, predicate, limit)
        assert ok, "server-side condition not reached"

    def _tracked(
        self, func: Callable[[Stream[Any, Any]], Awaitable[None]]
    ) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        async def wrapper(stream: Stream[Any, Any]) -> None:
            self._enter()
            try:
                await func(stream)
            finally:
                self._leave()

        return wrapper

    # -- handlers

    async def unary(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        if request == b"deadline?":
            request = (
                b"none" if stream.deadline is None else b"%.1f" % stream.deadline.time_remaining()
            )
        elif request == b"metadata?":
            assert stream.metadata is not None
            value = stream.metadata.get("x-loom-test", "")
            request = value.encode() if isinstance(value, str) else value
        await stream.send_message(request)

    async def echo(self, stream: Stream[Any, Any]) -> None:
        async for message in stream:
            await stream.send_message(message)

    async def flood(self, stream: Stream[Any, Any]) -> None:
        """Request ``b"count,size"``: sends ``count`` messages of ``size`` bytes."""
        request = await stream.recv_message()
        assert request is not None
        count, size = (int(part) for part in request.split(b","))
        for index in range(count):
            await stream.send_message(index.to_bytes(4, "big") + b"f" * (size - 4))
            self.flood_sent += 1

    async def abort(self, stream: Stream[Any, Any]) -> None:
        """Request ``b"trailers-only"``: fails at once; otherwise after one reply."""
        request = await stream.recv_message()
        if request == b"trailers-only":
            raise GRPCError(Status.PERMISSION_DENIED, ABORT_MESSAGE)
        await stream.send_message(b"partial")
        raise GRPCError(Status.RESOURCE_EXHAUSTED, ABORT_MESSAGE)

    async def sleep(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await asyncio.sleep(60)

    async def hold(self, stream: Stream[Any, Any]) -> None:
        """Never reads nor replies (the client's sends run out of window)."""
        await asyncio.sleep(60)

    async def size(self, stream: Stream[Any, Any]) -> None:
        """Request ``b"<n>"``: replies with ``n`` bytes."""
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(b"s" * int(request))

    def __mapping__(self) -> dict[str, Handler]:
        handlers = {
            "Unary": (self.unary, Cardinality.UNARY_UNARY),
            "Echo": (self.echo, Cardinality.STREAM_STREAM),
            "Flood": (self.flood, Cardinality.UNARY_STREAM),
            "Abort": (self.abort, Cardinality.UNARY_STREAM),
            "Sleep": (self.sleep, Cardinality.UNARY_UNARY),
            "Hold": (self.hold, Cardinality.STREAM_STREAM),
            "Size": (self.size, Cardinality.UNARY_UNARY),
        }
        return {
            f"{SERVICE}/{name}": Handler(self._tracked(func), cardinality, bytes, bytes)
            for name, (func, cardinality) in handlers.items()
        }


class _TrackingServer(Server):
    """grpclib Server that can drop its open connections (a real server stop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transports: set[asyncio.Transport] = set()

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made, lost = protocol.connection_made, protocol.connection_lost
        mine: list[asyncio.Transport] = []

        def connection_made(transport: asyncio.Transport) -> None:
            mine.append(transport)
            self.transports.add(transport)
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            self.transports.difference_update(mine)
            lost(exc)

        protocol.connection_made = connection_made  # type: ignore[method-assign,assignment]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol


class ServerThread:
    """A grpclib server on 127.0.0.1 in a thread with its own asyncio loop."""

    def __init__(
        self, service: TestService | None = None, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.service = service or TestService()
        self.port = 0
        self._ssl_context = ssl_context
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, port: int = 0) -> int:
        """Start serving (on ``port``, 0 = any free port); returns the port."""
        assert self._thread is None, "already running"
        self._started.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("test server did not start")
        if self._error is not None:
            raise self._error
        return self.port

    def stop(self) -> None:
        """Stop serving, dropping every open connection; waits for the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        assert not thread.is_alive(), "test server did not stop"
        self._thread = None

    def _run(self, port: int) -> None:
        try:
            asyncio.run(self._main(port))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._started.set()

    async def _main(self, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        server = _TrackingServer([self.service], codec=RawCodec())
        await server.start(sock=sock, ssl=self._ssl_context)
        self.port = sock.getsockname()[1]
        self._started.set()
        await self._stop.wait()
        server.close()
        for transport in list(server.transports):
            transport.abort()
        await server.wait_closed()
        # Let aborted transports finish their connection_lost callbacks.
        await asyncio.sleep(0)


@asynccontextmanager
async def fake_http2_server(
    on_request: Callable[[h2.connection.H2Connection, int], bytes] | None,
) -> AsyncIterator[int]:
    """A scripted HTTP/2 server (runs in the test's own event loop).

    It completes the connection preface and SETTINGS exchange normally. On the
    first request it calls ``on_request(conn, stream_id)`` and sends what that
    returns (frames queued on ``conn`` plus the returned raw bytes), then goes
    silent: from then on it reads and ignores everything, PINGs included. With
    ``on_request=None`` it goes silent right away. Yields the port.
    """

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            await stream.send(conn.data_to_send())
            silent = False
            try:
                while True:
                    data = await stream.receive()
                    if silent:
                        continue
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            silent = True
                            extra = b"" if on_request is None else on_request(conn, event.stream_id)
                            await stream.send(conn.data_to_send() + extra)
                            break
                    else:
                        out = conn.data_to_send()
                        if out:
                            await stream.send(out)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield listener.extra(SocketAttribute.local_port)
        finally:
            tg.cancel_scope.cancel()
