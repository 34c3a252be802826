"""Call objects: one gRPC call (an HTTP/2 stream) as seen by the application."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from types import TracebackType

import anyio
import anyio.lowlevel
from grpclib.const import Status
from grpclib.metadata import encode_timeout

from loom._grpc._connection import Http2Connection, StreamState, clone_error
from loom._grpc._framing import MessageDecoder, encode_message
from loom._grpc._status import Headers, rpc_error
from loom.errors import MessageTooLarge, ProtocolError, RpcError

__all__ = ["GrpcStream", "open_call"]


def _deadline_error() -> RpcError:
    return rpc_error(Status.DEADLINE_EXCEEDED, "deadline exceeded")


class GrpcStream:
    """One bidirectional-streaming gRPC call.

    Messages are raw (already serialized) bytes; the gRPC length prefix is added
    and stripped here. Get one from :meth:`GrpcChannel.stream`.

    * :meth:`send` waits for flow-control window when needed;
    * :meth:`end` half-closes the request side;
    * :meth:`receive` returns the next reply, raises :class:`anyio.EndOfStream`
      when the server finished with status OK, :class:`~loom.errors.RpcError` for
      any other status, :class:`~loom.errors.ConnectionLost` if the connection
      died and :class:`~loom.errors.MessageTooLarge` for an oversized reply.

    When the call has a deadline, every operation is bounded by it and raises
    ``RpcError`` with status ``DEADLINE_EXCEEDED`` once it has passed.
    """

    def __init__(
        self,
        connection: Http2Connection,
        state: StreamState,
        *,
        max_message_size: int,
        deadline: float | None,
    ) -> None:
        self._connection = connection
        self._state = state
        self._max_message_size = max_message_size
        self._deadline = deadline
        self._decoder = MessageDecoder(max_message_size)
        self._send_lock = anyio.Lock(fast_acquire=True)

    # ------------------------------------------------------------ deadlines

    def _deadline_passed(self) -> bool:
        return self._deadline is not None and anyio.current_time() >= self._deadline

    def _expire(self) -> RpcError:
        self._connection.abort_stream(self._state, _deadline_error())
        return _deadline_error()

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """Bound one operation by the call's deadline (an anyio cancel scope).

        Once the server has ended the call the deadline no longer matters: what
        it sent is delivered."""
        if self._deadline is None or self._state.remote_ended:
            yield
            return
        if self._deadline_passed():
            raise self._expire()
        with anyio.CancelScope(deadline=self._deadline) as scope:
            yield
        if scope.cancelled_caught:
            raise self._expire()

    # ----------------------------------------------------------------- send

    async def send(self, message: bytes) -> None:
        """Send one message; waits for the flow-control window when needed."""
        await self._send(message, end_stream=False)

    async def _send(self, message: bytes, *, end_stream: bool) -> None:
        framed = encode_message(message, self._max_message_size)
        with self._operation():
            async with self._send_lock:
                try:
                    await self._connection.send_data(self._state, framed, end_stream=end_stream)
                except BaseException:
                    state = self._state
                    if state.reset_sent and state.error is None and not state.remote_ended:
                        # Interrupted half-way through the message: the stream
                        # was reset, the call cannot go on.
                        state.fail(
                            _deadline_error()
                            if self._deadline_passed()
                            else rpc_error(Status.CANCELLED, "the call was cancelled by the client")
                        )
                    raise

    async def end(self) -> None:
        """Half-close the call from our side (END_STREAM). Idempotent."""
        with self._operation():
            async with self._send_lock:
                await self._connection.end_stream(self._state)

    # -------------------------------------------------------------- receive

    async def receive(self) -> bytes:
        """The next reply message (see the class docstring for how the call ends)."""
        state = self._state
        with self._operation():
            # Cancellation is honoured here; a message already buffered is returned
            # without a trip through the scheduler (the reader task refills the buffer
            # only when this task yields, so nothing is starved).
            await anyio.lowlevel.checkpoint_if_cancelled()
            while True:
                if state.error is not None:
                    raise clone_error(state.error)
                message = self._decoder.next_message()
                if message is not None:
                    return message
                if state.chunks:
                    data, size = state.chunks.popleft()
                    try:
                        self._decoder.feed(data)
                    except (MessageTooLarge, ProtocolError) as exc:
                        self._connection.abort_stream(state, exc)
                        raise
                    self._connection.consumed(state, size)
                    continue
                if state.remote_ended:
                    if self._decoder.has_partial_message:
                        error = ProtocolError(
                            "the server ended the stream in the middle of a message"
                        )
                        self._connection.abort_stream(state, error)
                        raise error
                    outcome = state.outcome()
                    if outcome is not None:
                        raise clone_error(outcome)
                    raise anyio.EndOfStream
                await state.wait()

    def __aiter__(self) -> GrpcStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # ---------------------------------------------------------------- close

    def _release(self) -> None:
        """Synchronous cleanup: resets the stream (CANCEL) if the call is unfinished."""
        state = self._state
        if state.error is None and not state.remote_ended:
            state.fail(rpc_error(Status.CANCELLED, "the call was closed by the client"))
        self._connection.release(state)


class _CallContext(AbstractAsyncContextManager[GrpcStream]):
    def __init__(
        self,
        connection: Http2Connection,
        headers: Headers,
        metadata: Headers,
        *,
        max_message_size: int,
        timeout: float | None,
    ) -> None:
        self._connection = connection
        self._headers = headers
        self._metadata = metadata
        self._max_message_size = max_message_size
        self._timeout = timeout
        self._call: GrpcStream | None = None

    async def __aenter__(self) -> GrpcStream:
        if self._call is not None:
            raise RuntimeError("this call context was already entered")
        timeout = self._timeout
        deadline = None if timeout is None else anyio.current_time() + timeout
        if timeout is not None and timeout <= 0:
            raise _deadline_error()

        def make_headers() -> Headers:
            headers = list(self._headers)
            if deadline is not None:
                remaining = max(deadline - anyio.current_time(), 0.0)
                headers.append(("grpc-timeout", encode_timeout(remaining)))
            headers.extend(self._metadata)
            return headers

        state: StreamState | None = None
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
            state = await self._connection.open_stream(make_headers)
        if state is None:
            raise _deadline_error()
        self._call = GrpcStream(
            self._connection,
            state,
            max_message_size=self._max_message_size,
            deadline=deadline,
        )
        return self._call

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._call is not None:
            self._call._release()


def open_call(
    connection: Http2Connection,
    headers: Headers,
    metadata: Headers,
    *,
    max_message_size: int,
    timeout: float | None,
) -> AbstractAsyncContextManager[GrpcStream]:
    """A context manager that opens a call on entry and closes it on exit."""
    return _CallContext(
        connection, headers, metadata, max_message_size=max_message_size, timeout=timeout
    )
