"""HTTP/2 connection driver: one byte stream, one ``h2`` state machine, many streams.

Concurrency model
-----------------
* All ``h2`` calls are synchronous, so every state change of the connection is
  atomic with respect to other tasks.
* Socket writes are serialized by ``_write_lock``. A task that sends HEADERS or
  DATA changes the ``h2`` state and takes the bytes out of ``h2`` *while holding
  the lock*, then writes them itself, so nobody ever writes another task's
  messages. Socket writes are shielded from cancellation: a write cut in half
  would corrupt the connection for every stream.
* Small control frames produced outside the lock (SETTINGS/PING acks, window
  updates, RST_STREAM) are moved to ``_pending_output`` and written, in order,
  by the flusher task or by the next writer, whichever comes first.
* One reader task feeds received bytes to ``h2`` and dispatches the events to
  per-stream :class:`StreamState`; it never waits for consumers or the lock.

Flow control
------------
The connection-level receive window is handed back as soon as data is
buffered; the stream-level window only when the application consumes the data
(:meth:`Http2Connection.consumed`). A stream's receive buffer is therefore
bounded by its window (:data:`STREAM_WINDOW`), and a consumer that stops
reading stalls only its own stream.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from loom import _h2patch
from loom._grpc._status import (
    Headers,
    check_response_headers,
    final_status,
    normalize_headers,
)
from loom.errors import ConnectionLost, MessageTooLarge, ProtocolError, RpcError

__all__ = [
    "CONNECTION_WINDOW",
    "STREAM_WINDOW",
    "Http2Connection",
    "StreamState",
    "clone_error",
]

_h2patch.install()

#: Receive window of each stream; bounds the data buffered for a stream.
STREAM_WINDOW = 1024 * 1024
#: Receive window of the whole connection.
CONNECTION_WINDOW = 8 * 1024 * 1024
#: Most bytes one writer sends per turn of the write lock.
WRITE_CHUNK = 64 * 1024
#: Bytes queued for the flusher beyond which a sender waits for the socket.
_HIGH_WATER = 512 * 1024
_READ_SIZE = 64 * 1024
_DEFAULT_WINDOW = 65535
_CLOSE_TIMEOUT = 0.5


def clone_error(error: BaseException) -> BaseException:
    """A fresh copy of a stored error, to raise it again without piling up tracebacks."""
    new: BaseException
    if isinstance(error, RpcError):
        new = RpcError(error.status, error.status_name, error.message)
    elif isinstance(error, MessageTooLarge):
        new = MessageTooLarge(error.size, error.limit)
    elif isinstance(error, ConnectionLost | ProtocolError):
        new = type(error)(*error.args)
    else:
        return error
    new.__cause__ = error.__cause__
    return new


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error code {code:#x}"


class StreamState:
    """What the reader task learned about one stream, waiting for the call to consume it."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.headers: Headers | None = None
        self.trailers: Headers | None = None
        # Raw DATA payloads with their flow-controlled sizes, not yet consumed.
        self.chunks: deque[tuple[bytes, int]] = deque()
        # Consumed bytes not yet handed back to the server as stream window.
        self.unacked = 0
        self.remote_ended = False
        self.local_ended = False
        self.reset_sent = False
        self.error: BaseException | None = None
        self._changed = anyio.Event()

    def wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self) -> None:
        """Wait for the next change (the caller checked the state just before)."""
        await self._changed.wait()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.wake()

    def outcome(self) -> BaseException | None:
        """The call's result once the server ended the stream: ``None`` for OK."""
        source = self.trailers if self.trailers is not None else self.headers
        if source is None:
            return ProtocolError("the server ended the stream without response headers")
        try:
            return final_status(source)
        except ProtocolError as exc:
            return exc


class Http2Connection:
    """Client side of one HTTP/2 connection carrying gRPC calls."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        keepalive_interval: float | None,
        keepalive_timeout: float,
    ) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._stream = stream
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._pending_output = bytearray()
        self._flush_wanted = anyio.Event()
        self._drained: anyio.Event | None = None
        self._window_changed = anyio.Event()
        self._slots_changed = anyio.Event()
        self._streams: dict[int, StreamState] = {}
        self._error: BaseException | None = None
        self._goaway: ConnectionLost | None = None
        self._socket_closed = False
        self._background = anyio.CancelScope()
        self._conn_unacked = 0
        self._last_received = anyio.current_time()
        self._remote_settings_received = False
        self._ping_payload = b""
        self._ping_acked: anyio.Event | None = None
        self._ping_count = 0

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._error is not None

    def _check_usable(self) -> None:
        if self._error is not None:
            raise clone_error(self._error)

    # ------------------------------------------------------------- lifecycle

    async def handshake(self) -> None:
        """Exchange the connection preface and SETTINGS (the caller bounds the time)."""
        h2conn = self._h2
        h2conn.initiate_connection()
        h2conn.update_settings(
            {SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        )
        h2conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        async with self._write_lock:
            await self._write(self._take_output())
        # Wait for the server's SETTINGS and the ack of ours, so that every
        # stream opens with the final window sizes.
        while not (
            self._remote_settings_received
            and h2conn.local_settings.initial_window_size == STREAM_WINDOW
        ):
            try:
                data = await self._stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                raise ConnectionLost(
                    "the server closed the connection during the handshake"
                ) from None
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"the connection broke during the handshake: {exc!r}") from exc
            self._process(data)
            async with self._write_lock:
                await self._write(self._take_output())

    async def run(self) -> None:
        """Run the reader, flusher and keepalive tasks until the connection dies."""
        with self._background:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader)
                tg.start_soon(self._flusher)
                if self._keepalive_interval is not None:
                    tg.start_soon(self._keepalive, self._keepalive_interval)

    async def aclose(self) -> None:
        """Fail every call still open, say GOAWAY if the connection is healthy, close."""
        error = ConnectionLost("the channel is closed")
        if self._error is None:
            # Fail first: after GOAWAY h2 rejects any further frame, and calls
            # must see "channel closed", not a protocol error.
            self._fail(error)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
        await self._die(error, flush=True)

    def _fail(self, error: BaseException) -> None:
        """Declare the connection dead: every pending call fails with ``error``."""
        if self._error is None:
            self._error = error
            for state in self._streams.values():
                if not state.remote_ended:
                    state.fail(error)
                else:
                    state.wake()
            self._window_changed.set()
            self._slots_changed.set()
            if self._ping_acked is not None:
                self._ping_acked.set()
        self._background.cancel()

    async def _die(self, error: BaseException, *, flush: bool = False) -> None:
        """:meth:`_fail`, then close the socket (after a bounded attempt to send
        what ``h2`` still has queued, such as a GOAWAY, when ``flush`` is set)."""
        self._fail(error)
        if self._socket_closed:
            return
        self._socket_closed = True
        with anyio.CancelScope(shield=True):
            if flush:
                with anyio.move_on_after(_CLOSE_TIMEOUT):
                    try:
                        async with self._write_lock:
                            await self._stream.send(self._take_output())
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
            await anyio.aclose_forcefully(self._stream)

    # ---------------------------------------------------------------- output

    def _queue_output(self) -> None:
        """Move control frames produced outside the write lock to the flusher."""
        data = self._h2.data_to_send()
        if data:
            self._pending_output += data
            self._flush_wanted.set()

    def _take_output(self) -> bytes:
        """All bytes due on the wire, in order. Call with the write lock held."""
        data = self._h2.data_to_send()
        if self._pending_output:
            data = bytes(self._pending_output) + data
            self._pending_output.clear()
        return data

    async def _write(self, data: bytes) -> None:
        """Write ``data`` (write lock held). Shielded: a half-written frame would
        break the connection for everyone. A stuck write ends when the socket is
        closed by whoever declares the connection dead."""
        if not data:
            return
        if self._error is not None:
            raise clone_error(self._error)
        try:
            with anyio.CancelScope(shield=True):
                await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            await self._die(ConnectionLost(f"the connection to the server broke: {exc!r}"))
            assert self._error is not None
            raise clone_error(self._error) from exc

    async def _flusher(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = anyio.Event()
            async with self._write_lock:
                try:
                    await self._write(self._take_output())
                    drained, self._drained = self._drained, None
                    if drained is not None:
                        drained.set()
                except (ConnectionLost, ProtocolError):
                    return

    # ----------------------------------------------------------------- input

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    data = await self._stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    raise ConnectionLost("the server closed the connection") from None
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    if self._error is not None:
                        return
                    raise ConnectionLost(f"the connection to the server broke: {exc!r}") from exc
                self._process(data)
        except ConnectionLost as exc:
            await self._die(exc)
        except ProtocolError as exc:
            await self._die(exc, flush=True)  # h2 queued a GOAWAY telling why

    def _process(self, data: bytes) -> None:
        self._last_received = anyio.current_time()
        try:
            for event in self._h2.receive_data(data):
                self._dispatch(event)
        except h2.exceptions.ProtocolError as exc:
            if self._goaway is not None:
                raise self._goaway from exc
            raise ProtocolError(f"invalid HTTP/2 data from the server: {exc}") from exc
        self._queue_output()
        if self._goaway is not None:
            raise self._goaway

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.ResponseReceived):
            state = self._streams.get(event.stream_id)
            if state is not None:
                state.headers = normalize_headers(event.headers)
                error = check_response_headers(state.headers)
                if error is not None:
                    self.abort_stream(state, error)
                state.wake()
        elif isinstance(event, h2.events.TrailersReceived):
            state = self._streams.get(event.stream_id)
            if state is not None:
                state.trailers = normalize_headers(event.headers)
                state.wake()
        elif isinstance(event, h2.events.StreamEnded):
            state = self._streams.get(event.stream_id)
            if state is not None:
                state.remote_ended = True
                state.wake()
            self._notify_slots()
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event)
        elif isinstance(event, h2.events.WindowUpdated):
            self._notify_window()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._remote_settings_received = True
            self._notify_window()
            self._notify_slots()
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_acked is not None and event.ping_data == self._ping_payload:
                self._ping_acked.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            code = _code_name(event.error_code) if event.error_code is not None else "unknown"
            self._goaway = ConnectionLost(f"the server closed the connection (GOAWAY, {code})")
        # Everything else (SETTINGS acks, PINGs, priority, unknown frames) needs
        # no action: h2 already queued any answer.

    def _on_data(self, event: h2.events.DataReceived) -> None:
        size = event.flow_controlled_length
        # Connection window: handed back as soon as the data is buffered.
        self._conn_unacked += size
        if self._conn_unacked >= CONNECTION_WINDOW // 2:
            self._h2.increment_flow_control_window(self._conn_unacked)
            self._conn_unacked = 0
        state = self._streams.get(event.stream_id)
        if state is None or state.error is not None:
            return  # dropped; the stream is being reset
        state.chunks.append((event.data, size))
        state.wake()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        state = self._streams.get(event.stream_id)
        if state is not None and not state.remote_ended:
            error: BaseException
            if event.remote_reset:
                code = _code_name(event.error_code)
                error = ConnectionLost(f"the server reset the stream ({code})")
            else:
                error = ProtocolError("the server broke the protocol on this stream")
            state.reset_sent = True  # closed in h2: nothing more to send
            state.fail(error)
        elif state is not None:
            state.wake()
        self._notify_window()
        self._notify_slots()

    def _notify_window(self) -> None:
        self._window_changed.set()
        self._window_changed = anyio.Event()

    def _notify_slots(self) -> None:
        self._slots_changed.set()
        self._slots_changed = anyio.Event()

    # ------------------------------------------------------------- keepalive

    async def _keepalive(self, interval: float) -> None:
        while True:
            idle = anyio.current_time() - self._last_received
            if idle < interval:
                await anyio.sleep(interval - idle)
                continue
            self._ping_count += 1
            self._ping_payload = struct.pack(">Q", self._ping_count)
            acked = self._ping_acked = anyio.Event()
            try:
                self._h2.ping(self._ping_payload)
            except h2.exceptions.ProtocolError:
                return
            self._queue_output()
            with anyio.move_on_after(self._keepalive_timeout):
                await acked.wait()
            self._ping_acked = None
            if not acked.is_set():
                await self._die(
                    ConnectionLost(
                        f"keepalive: no PING ack from the server within {self._keepalive_timeout} s"
                    )
                )
                return

    # --------------------------------------------------------------- streams

    async def open_stream(self, make_headers: Callable[[], Headers]) -> StreamState:
        """Open a stream (waiting for a free slot) and send its HEADERS."""
        while True:
            self._check_usable()
            async with self._write_lock:
                self._check_usable()
                h2conn = self._h2
                if h2conn.open_outbound_streams < h2conn.remote_settings.max_concurrent_streams:
                    stream_id = h2conn.get_next_available_stream_id()
                    h2conn.send_headers(stream_id, make_headers())
                    state = StreamState(stream_id)
                    self._streams[stream_id] = state
                    try:
                        await self._write(self._take_output())
                    except BaseException:
                        self.release(state)
                        raise
                    return state
                changed = self._slots_changed
            await changed.wait()

    def _check_writable(self, state: StreamState) -> None:
        if state.error is not None:
            raise clone_error(state.error)
        if self._error is not None:
            raise clone_error(self._error)
        if state.local_ended:
            raise anyio.ClosedResourceError("the request stream was already ended")
        if state.remote_ended:
            outcome = state.outcome()
            if outcome is not None:
                raise clone_error(outcome)
            raise anyio.BrokenResourceError("the server has already finished the call")

    async def send_data(self, state: StreamState, data: bytes, *, end_stream: bool) -> None:
        """Send one framed message, in chunks that fit the flow-control windows.

        If the task is interrupted after part of the message went out, the
        stream is reset (the message cannot be completed any more) and
        ``state.reset_sent`` tells the caller so.
        """
        total = len(data)
        if total == 0:
            if end_stream:
                await self.end_stream(state)
            return
        if total <= WRITE_CHUNK and self._queue_whole(state, data, end_stream=end_stream):
            while len(self._pending_output) > _HIGH_WATER and self._error is None:
                if self._drained is None:
                    self._drained = anyio.Event()
                await self._drained.wait()
            return
        sent = 0
        try:
            while sent < total:
                await self._wait_for_window(state)
                async with self._write_lock:
                    self._check_writable(state)
                    h2conn = self._h2
                    window = h2conn.local_flow_control_window(state.stream_id)
                    if window <= 0:
                        continue
                    turn_end = sent + min(window, WRITE_CHUNK, total - sent)
                    frame_size = h2conn.max_outbound_frame_size
                    while sent < turn_end:
                        size = min(frame_size, turn_end - sent)
                        last = end_stream and sent + size == total
                        h2conn.send_data(state.stream_id, data[sent : sent + size], end_stream=last)
                        sent += size
                    if end_stream and sent == total:
                        state.local_ended = True
                    await self._write(self._take_output())
        except BaseException:
            if 0 < sent < total:
                self.reset_stream(state, ErrorCodes.CANCEL)
            raise

    def _queue_whole(self, state: StreamState, data: bytes, *, end_stream: bool) -> bool:
        """Hand a message that fits the flow-control windows to the flusher, without
        waiting: a burst of small messages then leaves in a few socket writes instead
        of one write (and a trip through the write lock) each. False if it must wait
        for window."""
        self._check_writable(state)
        h2conn = self._h2
        total = len(data)
        if h2conn.local_flow_control_window(state.stream_id) < total:
            return False
        frame_size = h2conn.max_outbound_frame_size
        sent = 0
        while sent < total:
            size = min(frame_size, total - sent)
            last = end_stream and sent + size == total
            h2conn.send_data(state.stream_id, data[sent : sent + size], end_stream=last)
            sent += size
        if end_stream:
            state.local_ended = True
        self._queue_output()
        return True

    async def _wait_for_window(self, state: StreamState) -> None:
        while True:
            self._check_writable(state)
            if self._h2.local_flow_control_window(state.stream_id) > 0:
                return
            await self._window_changed.wait()

    async def end_stream(self, state: StreamState) -> None:
        """Half-close the stream from our side (END_STREAM)."""
        if state.local_ended:
            return
        if state.error is not None:
            raise clone_error(state.error)
        async with self._write_lock:
            if state.local_ended:
                return
            if state.error is not None:
                raise clone_error(state.error)
            self._check_usable()
            state.local_ended = True
            if not self._h2_stream_closed(state.stream_id):
                self._h2.end_stream(state.stream_id)
                await self._write(self._take_output())

    def consumed(self, state: StreamState, size: int) -> None:
        """The application consumed ``size`` bytes of the stream: hand the stream
        window back once enough has piled up."""
        state.unacked += size
        if state.unacked < STREAM_WINDOW // 2:
            return
        increment, state.unacked = state.unacked, 0
        if state.remote_ended or state.reset_sent or self._error is not None:
            return
        try:
            self._h2.increment_flow_control_window(increment, stream_id=state.stream_id)
        except (h2.exceptions.ProtocolError, KeyError):
            return
        self._queue_output()

    def _h2_stream_closed(self, stream_id: int) -> bool:
        h2_stream = self._h2.streams.get(stream_id)
        return h2_stream is None or h2_stream.closed

    def reset_stream(self, state: StreamState, error_code: ErrorCodes) -> None:
        """Queue RST_STREAM (synchronous: safe in cancelled or finalizing code)."""
        if state.reset_sent:
            return
        state.reset_sent = True
        state.chunks.clear()
        if self._error is not None or self._h2_stream_closed(state.stream_id):
            return
        try:
            self._h2.reset_stream(state.stream_id, error_code)
        except h2.exceptions.ProtocolError:
            return
        self._queue_output()
        self._notify_slots()
        self._notify_window()

    def abort_stream(self, state: StreamState, error: BaseException) -> None:
        """Fail the call with ``error`` and reset the stream (CANCEL)."""
        state.fail(error)
        self.reset_stream(state, ErrorCodes.CANCEL)

    def release(self, state: StreamState) -> None:
        """Forget a call. An unfinished stream is reset: CANCEL if the response
        is incomplete, NO_ERROR if only our side was still open."""
        self._streams.pop(state.stream_id, None)
        if not state.reset_sent:
            code = ErrorCodes.NO_ERROR if state.remote_ended else ErrorCodes.CANCEL
            self.reset_stream(state, code)
        state.chunks.clear()
        state.wake()
