"""The SDK's connector to a bridge over gRPC (loom's own client on anyio + h2).

Registration negotiates the wire: a loom bridge accepts ``loom.batch.v1`` and the
agent's events travel as msgpack frame batches on ``EventBatchStream``; a bridge that
speaks only v1 gets one protobuf ``ClientEvent`` per event on ``EventStream``, and
tool calls go through the unary ``ForwardAction``.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskGroup

from loom import _frames as fr
from loom import _pbwire
from loom._grpc import GrpcChannel, GrpcStream
from loom._session import Registration, Session
from loom.errors import (
    BridgeRejected,
    ConfigurationError,
    ConnectionLost,
    LoomError,
    MessageTooLarge,
    ProtocolError,
    RpcError,
)
from loom.proto.generated.loom import v1 as pb

__all__ = ["GrpcConnector", "parse_address"]

log = logging.getLogger("loom")

_PREFIX: Final = "/loom.v1.Bridge/"
TLS_CA_ENV: Final = "LOOM_TLS_CA"
"""PEM file of the CA certificates that ``grpcs://`` addresses are verified against
(default: the system's)."""
_V1_INBOX: Final = 1024
DEFAULT_MAX_SEND_SIZE: Final = 4 * 1024 * 1024
"""Largest message sent to the bridge: the bridge's default ``--max-message-bytes``
(and gRPC's customary receive limit)."""
_BATCH_OVERHEAD: Final = 16
"""Bytes a FrameBatch message adds around its frames, at most (array header, tag,
length)."""


def parse_address(address: str) -> tuple[str, int, bool]:
    """``host:port``, ``grpc://host:port`` or ``grpcs://host:port`` -> (host, port, tls)."""
    tls = False
    rest = address.strip()
    if rest.startswith("grpcs://"):
        tls, rest = True, rest[len("grpcs://") :]
    elif rest.startswith("grpc://"):
        rest = rest[len("grpc://") :]
    host, sep, port_text = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"invalid bridge address {address!r}; expected HOST:PORT, grpc://HOST:PORT or "
            "grpcs://HOST:PORT"
        )
    return host, int(port_text), tls


class GrpcConnector:
    """Connects agents to a bridge at ``address`` over gRPC (TLS with ``grpcs://``).

    ``max_message_size`` bounds the messages received; ``max_send_message_size`` the
    messages sent (the bridge's ``--max-message-bytes``, 4 MiB by default: it discards
    a larger message whole). Frames are split across messages to stay within it, and a
    frame that alone is larger is not sent: its request or tool call fails with
    :class:`~loom.errors.MessageTooLarge`, a dropped event is logged.
    """

    def __init__(
        self,
        address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_interval: float | None = 10.0,
        keepalive_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_message_size: int = 64 * 1024 * 1024,
        max_send_message_size: int = DEFAULT_MAX_SEND_SIZE,
        prefer_batched: bool = True,
    ) -> None:
        self._host, self._port, tls = parse_address(address)
        if max_send_message_size <= 0:
            raise ConfigurationError("max_send_message_size must be positive")
        if tls and ssl_context is None:
            ca_file = os.environ.get(TLS_CA_ENV, "").strip() or None
            try:
                ssl_context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load the CA certificates in ${TLS_CA_ENV} ({ca_file}): {exc}"
                ) from None
        self._address = address
        self._ssl = ssl_context
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._max_message_size = max_message_size
        self._max_send_size = max_send_message_size
        self._prefer_batched = prefer_batched

    @property
    def address(self) -> str:
        return self._address

    def connect(self, registration: Registration) -> AbstractAsyncContextManager[Session]:
        return self._connect(registration)

    def channel(self) -> GrpcChannel:
        return GrpcChannel(
            self._host,
            self._port,
            ssl_context=self._ssl,
            max_message_size=self._max_message_size,
            keepalive_interval=self._keepalive_interval,
            keepalive_timeout=self._keepalive_timeout,
            connect_timeout=self._connect_timeout,
        )

    @asynccontextmanager
    async def _connect(self, registration: Registration) -> AsyncIterator[Session]:
        try:
            async with self.channel() as channel:
                features = await _register(
                    channel, registration, self._prefer_batched, self._connect_timeout
                )
                if fr.FEATURE_BATCH in features:
                    async with channel.stream(
                        _PREFIX + "EventBatchStream",
                        metadata={fr.AGENT_ID_HEADER: registration.agent_id},
                    ) as call:
                        yield _BatchSession(call, self._max_send_size)
                else:
                    session: _V1Session | None = None
                    try:
                        async with (
                            channel.stream(_PREFIX + "EventStream") as call,
                            anyio.create_task_group() as tg,
                        ):
                            ack = pb.ClientEvent(ack=pb.Ack(message_id=registration.agent_id))
                            await call.send(bytes(ack))
                            session = _V1Session(
                                call,
                                channel,
                                tg,
                                fr.FEATURE_SUBSCRIBE in features,
                                self._max_send_size,
                            )
                            tg.start_soon(session.pump)
                            yield session
                            tg.cancel_scope.cancel()
                    finally:
                        if session is not None:
                            session.discard()
        except OSError as exc:
            raise ConnectionLost(f"cannot reach the bridge at {self._address}: {exc}") from None


async def _register(
    channel: GrpcChannel, registration: Registration, batched: bool, deadline_s: float
) -> list[str]:
    request = pb.AgentRegisterRequest(
        agent_id=registration.agent_id,
        subscribed_topics=list(registration.topics),
        capabilities=[
            pb.CapabilityDescriptor(
                name=c.name,
                version=c.version,
                provider=pb.ProviderKind.PROVIDER_NATIVE,
                metadata=dict(c.metadata),
            )
            for c in registration.capabilities
        ],
        metadata=dict(registration.metadata),
        features=[fr.FEATURE_BATCH, fr.FEATURE_SUBSCRIBE] if batched else [fr.FEATURE_SUBSCRIBE],
        subscription_qos={k: pb.QoSLevel(v) for k, v in registration.subscription_qos.items()},
    )
    try:
        raw = await channel.unary(_PREFIX + "RegisterAgent", bytes(request), timeout=deadline_s)
    except RpcError as exc:
        if exc.status_name in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}:
            raise ConnectionLost(f"registration failed: {exc}") from None
        raise BridgeRejected(f"registration failed: {exc}") from None
    response = pb.AgentRegisterResponse.parse(raw)
    if not response.success:
        raise BridgeRejected(response.error_message or "the bridge refused the registration")
    return list(response.features)


async def _finish(call: GrpcStream) -> None:
    """Half-close our side, then wait for the bridge to finish its side: it does once
    it has read everything we sent."""
    try:
        await call.end()
        while True:
            await call.receive()
    except anyio.EndOfStream:
        return
    except (RpcError, anyio.ClosedResourceError) as exc:
        raise _lost(exc) from None


def _lost(exc: BaseException) -> ConnectionLost:
    if isinstance(exc, ConnectionLost):
        return exc
    return ConnectionLost(f"event stream ended: {exc}")


class _BatchSession:
    """Frames as msgpack batches, one gRPC message per batch (or a few, to keep each
    within ``limit`` bytes: the bridge discards a larger message whole)."""

    __slots__ = ("_call", "_limit")

    def __init__(self, call: GrpcStream, limit: int) -> None:
        self._call = call
        self._limit = limit

    @property
    def batched(self) -> bool:
        return True

    async def send(self, frames: Sequence[fr.Frame]) -> None:
        """Send ``frames``; raises MessageTooLarge, before sending any, when one of
        them alone is larger than the limit."""
        batch = list(frames)
        message = fr.wrap_frame_batch(fr.encode_batch(batch))
        messages = [message] if len(message) <= self._limit else _split(batch, self._limit)
        try:
            for message in messages:
                await self._call.send(message)
        except (RpcError, anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise _lost(exc) from None

    async def receive(self) -> list[fr.Frame]:
        try:
            message = await self._call.receive()
        except (RpcError, anyio.EndOfStream, MessageTooLarge) as exc:
            # MessageTooLarge: the stream was aborted, the agent must reconnect
            raise _lost(exc) from None
        return fr.decode_batch(fr.unwrap_frame_batch(message))

    async def close(self) -> None:
        await _finish(self._call)


def _split(frames: list[fr.Frame], limit: int) -> list[bytes]:
    """FrameBatch messages of at most ``limit`` bytes that carry ``frames`` in order."""
    sizes = []
    for frame in frames:
        size = len(fr.encode_batch([frame]))
        if size + _BATCH_OVERHEAD > limit:
            alone = len(fr.wrap_frame_batch(fr.encode_batch([frame])))
            if alone > limit:
                raise MessageTooLarge(alone, limit)
        sizes.append(size)
    messages: list[bytes] = []
    group: list[fr.Frame] = []
    total = 0
    for frame, size in zip(frames, sizes, strict=True):
        if group and total + size + _BATCH_OVERHEAD > limit:
            messages.append(fr.wrap_frame_batch(fr.encode_batch(group)))
            group, total = [], 0
        group.append(frame)
        total += size
    if group:
        messages.append(fr.wrap_frame_batch(fr.encode_batch(group)))
    return messages


class _V1Session:
    """Speaks plain v1 to a bridge that does not batch.

    A pump task turns ServerEvents into frames; tool calls run as unary ForwardAction
    calls in the session's task group and their results join the same inbox.
    """

    def __init__(
        self, call: GrpcStream, channel: GrpcChannel, tg: TaskGroup, subscribe: bool, limit: int
    ) -> None:
        self._call = call
        self._limit = limit
        self._subscribe = subscribe
        self._channel = channel
        self._tg = tg
        self._send_inbox, self._inbox = anyio.create_memory_object_stream[
            "list[fr.Frame] | BaseException"
        ](_V1_INBOX)

    @property
    def batched(self) -> bool:
        return False

    def discard(self) -> None:
        """Close the inbox (its tasks have ended with the session's task group)."""
        self._send_inbox.close()
        self._inbox.close()

    async def pump(self) -> None:
        try:
            while True:
                message = await self._call.receive()
                frames = _server_event_frames(message)
                if frames:
                    await self._send_inbox.send(frames)
        except (LoomError, anyio.EndOfStream) as exc:
            await self._send_inbox.send(exc)

    async def receive(self) -> list[fr.Frame]:
        item = await self._inbox.receive()
        if isinstance(item, BaseException):
            raise _lost(item) from None
        return item

    async def close(self) -> None:
        try:
            await self._call.end()
        except (RpcError, anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise _lost(exc) from None
        while True:  # the pump ends (EndOfStream) once the bridge finished the stream
            item = await self._inbox.receive()
            if isinstance(item, anyio.EndOfStream):
                return
            if isinstance(item, BaseException):
                raise _lost(item) from None

    async def send(self, frames: Sequence[fr.Frame]) -> None:
        """Send ``frames``; raises MessageTooLarge, before sending any, when one of
        them is larger than the limit."""
        limit = self._limit
        items: list[tuple[fr.Frame, bytes | None]] = []
        for frame in frames:
            if isinstance(frame, fr.Call):
                message: bytes | None = None
                size = len(frame.payload)  # the ActionCall adds a few hundred bytes at most
            else:
                message = _client_event(frame)
                size = len(message) if message is not None else 0
            if size > limit:
                raise MessageTooLarge(size, limit)
            items.append((frame, message))
        try:
            for frame, message in items:
                if isinstance(frame, fr.Call):
                    self._tg.start_soon(self._forward, frame)
                elif isinstance(frame, fr.Subscribe) and not self._subscribe:
                    # The bridge has no dynamic subscriptions; answer locally.
                    await self._send_inbox.send(
                        [fr.Subscribed(frame.id, "the bridge does not support subscribe()")]
                    )
                elif message is not None:
                    await self._call.send(message)
        except (RpcError, anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise _lost(exc) from None

    async def _forward(self, call: fr.Call) -> None:
        request = pb.ActionCall(
            id=call.id,
            capability=call.capability,
            version=call.version,
            payload=call.payload,
            headers=call.headers,
            timeout_ms=call.timeout_ms,
            correlation_id=call.correlation_id,
        )
        try:
            raw = await self._channel.unary(
                _PREFIX + "ForwardAction",
                bytes(request),
                timeout=call.timeout_ms / 1000 + 1 if call.timeout_ms > 0 else None,
            )
            result = _action_result(call.id, raw)
        except RpcError as exc:
            result = fr.Result(
                call.id, fr.STATUS_ERROR, error_code=exc.status_name, error_message=exc.message
            )
        except ConnectionLost as exc:
            if self._channel.closed:
                # The whole connection died: the session ends with it, and the agent
                # fails the call with ConnectionLost.
                return
            # Only this call's stream was reset.
            result = fr.Result(
                call.id, fr.STATUS_ERROR, error_code="UNAVAILABLE", error_message=str(exc)
            )
        except (ProtocolError, MessageTooLarge) as exc:
            code = "MESSAGE_TOO_LARGE" if isinstance(exc, MessageTooLarge) else "PROTOCOL_ERROR"
            result = fr.Result(call.id, fr.STATUS_ERROR, error_code=code, error_message=str(exc))
        await self._send_inbox.send([result])


def _action_result(call_id: str, raw: bytes) -> fr.Result:
    try:
        res = pb.ActionResult.parse(raw)
    except Exception as exc:  # betterproto raises assorted errors on garbage
        raise ProtocolError(f"malformed ActionResult: {exc}") from None
    return fr.Result(
        call_id,
        int(res.status),
        bytes(res.output),
        res.error.code if res.error else "",
        res.error.message if res.error else "",
    )


def _client_event(frame: fr.Frame) -> bytes | None:
    if isinstance(frame, fr.Publish):
        event = _pbwire.encode_event(fr.decode_envelope(frame.event))
        return _pbwire.encode_publish_event(frame.topic, event)
    if isinstance(frame, fr.Subscribe):
        change = pb.SubscriptionChange(
            id=frame.id,
            add=frame.add,
            remove=frame.remove,
            qos=pb.QoSLevel(frame.qos),
            join=frame.join,
            leave=frame.leave,
        )
        return bytes(pb.ClientEvent(subscription=change))
    if isinstance(frame, fr.Ping):
        return bytes(pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=frame.timestamp_ms)))
    if isinstance(frame, fr.Result):
        error = (
            pb.ActionError(code=frame.error_code, message=frame.error_message)
            if frame.error_code
            else None
        )
        return bytes(
            pb.ClientEvent(
                action_result=pb.ActionResult(
                    id=frame.id,
                    status=pb.ActionStatus(frame.status),
                    output=frame.output,
                    error=error,
                )
            )
        )
    return None


# ServerEvent and ClientEvent share their top-level layout (field 1 is a Publish/Delivery
# sub-message), so the client-event parser reads server events too; only the names of
# fields 2-5 differ.
_PONG, _ERR, _ACTION_CALL, _SUBSCRIPTION = 2, 3, 4, 5


def _server_event_frames(message: bytes) -> list[fr.Frame]:
    try:
        kind, body = _pbwire.parse_client_event(message)
        if kind == _pbwire.ClientEventKind.PUBLISH:
            assert isinstance(body, _pbwire.PublishView)
            envelope = _pbwire.decode_event(body.event)
            return [fr.Deliver(body.topic, fr.encode_envelope(envelope))]
        data = bytes(body)  # type: ignore[arg-type]
        if kind == _PONG:
            return [fr.Pong(pb.HeartbeatResponse.parse(data).timestamp_ms)]
        if kind == _ERR:
            err = pb.Error.parse(data)
            return [fr.Error(err.code, err.message)]
        if kind == _ACTION_CALL:
            c = pb.ActionCall.parse(data)
            return [
                fr.Call(
                    c.id,
                    c.capability,
                    c.version,
                    bytes(c.payload),
                    int(c.timeout_ms),
                    dict(c.headers),
                    c.correlation_id,
                )
            ]
        if kind == _SUBSCRIPTION:
            change = pb.SubscriptionChange.parse(data)
            return [fr.Subscribed(change.id, change.error)]
    except ProtocolError as exc:
        log.warning("discarding a malformed message from the bridge: %s", exc)
    except (msgspec.DecodeError, ValueError) as exc:
        log.warning("discarding a malformed message from the bridge: %s", exc)
    return []
