"""The bridge's gRPC face: grpclib handlers that move frames between sockets and the core.

Control RPCs (RegisterAgent, ForwardAction, Heartbeat, GetStats) use the generated
betterproto2 messages. The two event streams do not: ``EventStream`` (v1, one
protobuf message per event) is read with loom's hand codec, and a v1 publish is
forwarded to v1 subscribers as the very bytes it arrived in; ``EventBatchStream``
carries msgpack frame batches. grpclib runs on asyncio, so the server does too.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import anyio
import betterproto2
import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from loom import _frames as fr
from loom import _h2patch, _pbwire
from loom._session import CapabilityInfo, Registration
from loom.bridge._core import AgentLink, BridgeCore, BridgeLimits, RoutedEvent
from loom.bridge._queues import QueuedEvent, now_ms
from loom.errors import BridgeRejected, LoomError, ProtocolError
from loom.proto.generated.loom import v1 as pb

AGENT_ID_HEADER = fr.AGENT_ID_HEADER
__all__ = ["AGENT_ID_HEADER", "BridgeServer"]

_h2patch.install()

log = logging.getLogger("loom.bridge")

_PREFIX: Final = "/loom.v1.Bridge/"
_BATCH_BYTES: Final = 256 * 1024
"""Events bytes after which an outgoing batch is cut, so hops pipeline."""
_FRAME_OVERHEAD: Final = 16
"""Upper bound of what a Deliver frame adds to its topic and event, in msgpack bytes."""
_SHUTDOWN_GRACE_S: Final = 5.0
"""How long shutdown waits for handlers to send their last answer before cancelling them."""


class RawMessage:
    """Marker type: grpclib hands these RPCs' messages through as bytes."""


class _Codec(CodecBase):
    """Protobuf for control messages, raw bytes for the event streams."""

    __content_subtype__ = "proto"

    def __init__(self) -> None:
        self._proto = ProtoCodec()

    def encode(self, message: Any, message_type: Any) -> bytes:
        if message_type is RawMessage:
            return message  # type: ignore[no-any-return]
        return self._proto.encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is RawMessage:
            return data
        try:
            message = self._proto.decode(data, message_type)
        except Exception as exc:  # betterproto raises assorted errors on garbage
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed message: {exc}") from None
        if not _well_typed(message):
            raise GRPCError(Status.INVALID_ARGUMENT, _WRONG_WIRE_TYPE)
        return message


_WRONG_WIRE_TYPE: Final = "malformed message: a field has the wrong wire type"
_INT_TYPES: Final = frozenset(
    {"int32", "int64", "uint32", "uint64", "sint32", "sint64"}
    | {"fixed32", "fixed64", "sfixed32", "sfixed64", "enum"}
)


def _well_typed(message: Any) -> bool:
    """True if every field of a parsed betterproto2 message holds its declared type.

    betterproto2 stores whatever a field's wire type decodes to (an int in a string
    field, a list in an int64 field, ...), where the official parser would skip the
    field; such values would break the bridge further on, so they are refused.
    """
    for name, meta in message._betterproto.meta_by_field_name.items():
        value = getattr(message, name)
        if value is None:
            if meta.proto_type == "message" or meta.optional:
                continue  # unset
            return False
        if meta.proto_type == "map":
            key_meta, value_meta = meta.map_meta
            if not isinstance(value, dict) or not all(
                _value_ok(key_meta.proto_type, k) and _value_ok(value_meta.proto_type, v)
                for k, v in value.items()
            ):
                return False
        elif meta.repeated:
            if not isinstance(value, list) or not all(_value_ok(meta.proto_type, v) for v in value):
                return False
        elif not _value_ok(meta.proto_type, value):
            return False
    return True


def _value_ok(proto_type: str, value: Any) -> bool:
    if proto_type == "string":
        return isinstance(value, str)
    if proto_type == "bytes":
        return isinstance(value, bytes)
    if proto_type in _INT_TYPES:
        return isinstance(value, int) and not isinstance(value, bool)
    if proto_type == "bool":
        return isinstance(value, bool)
    if proto_type in ("float", "double"):
        return isinstance(value, float)
    if proto_type == "message":
        return isinstance(value, betterproto2.Message) and _well_typed(value)
    return True


_Handler = Callable[[grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]]


class BridgeService:
    """The ``loom.v1.Bridge`` service on top of a :class:`BridgeCore`."""

    def __init__(self, core: BridgeCore) -> None:
        self.core = core
        self.limits: BridgeLimits = core.limits
        self.closing = False
        self._active = 0
        self._idle: anyio.Event | None = None

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        bidi = grpclib.const.Cardinality.STREAM_STREAM

        def handler(
            fn: _Handler, cardinality: grpclib.const.Cardinality, req: Any, rep: Any
        ) -> grpclib.const.Handler:
            return grpclib.const.Handler(self._tracked(fn), cardinality, req, rep)

        return {
            _PREFIX + "RegisterAgent": handler(
                self._register, unary, pb.AgentRegisterRequest, pb.AgentRegisterResponse
            ),
            _PREFIX + "EventStream": handler(self._event_stream, bidi, RawMessage, RawMessage),
            _PREFIX + "EventBatchStream": handler(self._batch_stream, bidi, RawMessage, RawMessage),
            _PREFIX + "ForwardAction": handler(
                self._forward_action, unary, pb.ActionCall, pb.ActionResult
            ),
            _PREFIX + "Heartbeat": handler(
                self._heartbeat, unary, pb.HeartbeatRequest, pb.HeartbeatResponse
            ),
            _PREFIX + "GetStats": handler(
                self._get_stats, unary, pb.StatsRequest, pb.StatsResponse
            ),
        }

    def _tracked(self, fn: _Handler) -> _Handler:
        """Count running handlers, so shutdown can let them answer before cancelling."""

        async def run(stream: grpclib.server.Stream[Any, Any]) -> None:
            if self.closing:
                raise GRPCError(Status.UNAVAILABLE, "the bridge is shutting down")
            self._active += 1
            try:
                await fn(stream)
            finally:
                self._active -= 1
                if not self._active and self._idle is not None:
                    self._idle.set()

        return run

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls; wait (up to ``grace_s`` s) for running handlers to return."""
        self.closing = True
        with anyio.move_on_after(grace_s):
            while self._active:
                self._idle = anyio.Event()
                await self._idle.wait()
        self._idle = None

    # ---- control plane -------------------------------------------------------------

    async def _register(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        assert req is not None
        registration = Registration(
            agent_id=req.agent_id,
            topics=list(req.subscribed_topics),
            capabilities=[
                CapabilityInfo(c.name, c.version, dict(c.metadata)) for c in req.capabilities
            ],
            metadata=dict(req.metadata),
            subscription_qos={k: int(v) for k, v in req.subscription_qos.items()},
        )
        try:
            features = self.core.register(registration, list(req.features))
        except BridgeRejected as exc:
            await stream.send_message(
                pb.AgentRegisterResponse(success=False, error_message=str(exc))
            )
            return
        await stream.send_message(pb.AgentRegisterResponse(success=True, features=features))

    async def _heartbeat(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.HeartbeatResponse(timestamp_ms=now_ms(), status="ok"))

    async def _get_stats(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        await stream.recv_message()
        topics, connected, pending = self.core.stats()
        await stream.send_message(
            pb.StatsResponse(
                topics=[
                    pb.TopicStats(
                        topic=t.topic,
                        published=t.published,
                        delivered=t.delivered,
                        dropped=t.dropped,
                        expired=t.expired,
                        subscribers=t.subscribers,
                        backlog=t.backlog,
                    )
                    for t in topics
                ],
                connected_agents=connected,
                pending_calls=pending,
            )
        )

    async def _forward_action(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        assert req is not None
        call = fr.Call(
            req.id,
            req.capability,
            req.version,
            bytes(req.payload),
            int(req.timeout_ms),
            dict(req.headers),
            req.correlation_id,
        )
        done = anyio.Event()
        results: list[fr.Result] = []

        def on_done(result: fr.Result) -> None:
            results.append(result)
            done.set()

        caller = object()
        bridge_id = self.core.start_call(caller, call, on_done)
        timeout_ms = call.timeout_ms if call.timeout_ms > 0 else self.limits.default_call_timeout_ms
        try:
            with anyio.move_on_after(timeout_ms / 1000):
                await done.wait()
        finally:
            if not results and bridge_id is not None:
                self.core.cancel_call(bridge_id, f"no result within {timeout_ms} ms")
        result = results[0]
        await stream.send_message(_action_result(req.id, result))

    # ---- event streams -------------------------------------------------------------

    async def _event_stream(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        first = await stream.recv_message()
        if first is None:
            return
        try:
            kind, body = _pbwire.parse_client_event(first)
        except ProtocolError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed first message: {exc}") from None
        if kind is not _pbwire.ClientEventKind.ACK:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "the first message on EventStream must be an Ack whose message_id is the agent_id",
            )
        try:
            ack = pb.Ack.parse(bytes(body))  # type: ignore[arg-type]
        except Exception as exc:  # betterproto raises assorted errors on garbage
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed Ack: {exc}") from None
        if not _well_typed(ack):
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed Ack: {_WRONG_WIRE_TYPE}")
        agent_id = ack.message_id
        link = self._attach(agent_id, batched=False)
        await self._run_link(link, stream, self._read_v1, self._write_v1)

    async def _batch_stream(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        agent_id = str(stream.metadata.get(fr.AGENT_ID_HEADER, "")) if stream.metadata else ""
        if not agent_id:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"EventBatchStream needs the {fr.AGENT_ID_HEADER} request header",
            )
        link = self._attach(agent_id, batched=True)
        await self._run_link(link, stream, self._read_batches, self._write_batches)

    def _attach(self, agent_id: str, *, batched: bool) -> AgentLink:
        if not agent_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "agent_id must be a non-empty string")
        try:
            return self.core.attach(agent_id, batched=batched)
        except BridgeRejected as exc:
            raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None

    async def _run_link(
        self,
        link: AgentLink,
        stream: grpclib.server.Stream[Any, Any],
        reader: Callable[[AgentLink, grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]],
        writer: Callable[[AgentLink, grpclib.server.Stream[Any, Any]], Coroutine[Any, Any, None]],
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def read_then_stop() -> None:
                    await reader(link, stream)
                    # The client half-closed: detach now (closing the link with no
                    # reason, so the stream ends with OK) and let the writer stop at its
                    # next wait. Cancelling it instead could cut a message in half.
                    self.core.detach(link, "")

                tg.start_soon(read_then_stop)
                await writer(link, stream)
                tg.cancel_scope.cancel()
        finally:
            reason = link.close_reason
            self.core.detach(link, "stream ended")
        if reason:
            raise GRPCError(Status.UNAVAILABLE, reason)

    def _too_large(self, link: AgentLink, message: bytes) -> bool:
        limit = self.limits.max_message_bytes
        if len(message) <= limit:
            return False
        link.push_control(
            fr.Error(
                "MESSAGE_TOO_LARGE",
                f"message of {len(message)} bytes exceeds the bridge's limit of {limit} bytes;"
                " it was discarded",
            )
        )
        return True

    async def _read_batches(self, link: AgentLink, stream: grpclib.server.Stream[Any, Any]) -> None:
        async for message in stream:
            if self._too_large(link, message):
                continue
            try:
                frames = fr.decode_batch(fr.unwrap_frame_batch(message))
            except ProtocolError as exc:
                link.push_control(fr.Error("MALFORMED", f"{exc}; the batch was discarded"))
                continue
            await link.handle(frames)

    async def _write_batches(
        self, link: AgentLink, stream: grpclib.server.Stream[Any, Any]
    ) -> None:
        limit = self.limits.max_batch_events
        max_bytes = min(self.limits.max_message_bytes, _BATCH_BYTES)
        while True:
            await link.wait()
            if link.closed:
                if link.farewell is not None:
                    await stream.send_message(fr.wrap_frame_batch(fr.encode_batch([link.farewell])))
                return
            events, control = link.take(limit)
            frames: list[fr.Frame] = []
            size = 0
            for q in events:
                try:
                    raw = q.item.batched()  # type: ignore[attr-defined]
                except LoomError as exc:
                    _undeliverable(link, q, exc)
                    continue
                grows = len(raw) + len(q.topic) + _FRAME_OVERHEAD
                if frames and size + grows > max_bytes:
                    await stream.send_message(fr.wrap_frame_batch(fr.encode_batch(frames)))
                    frames, size = [], 0
                frames.append(fr.Deliver(q.topic, raw))
                size += grows
            frames.extend(control)
            if frames:
                await stream.send_message(fr.wrap_frame_batch(fr.encode_batch(frames)))

    async def _read_v1(self, link: AgentLink, stream: grpclib.server.Stream[Any, Any]) -> None:
        core = self.core
        publish = _pbwire.ClientEventKind.PUBLISH
        async for message in stream:
            if self._too_large(link, message):
                continue
            try:
                kind, body = _pbwire.parse_client_event(message)
                if kind is publish:
                    assert isinstance(body, _pbwire.PublishView)
                    # Forwarded as is, so check it all here: an event the official
                    # parser rejects (invalid UTF-8, say) would end every v1
                    # subscriber's stream.
                    _pbwire.decode_event(body.event)
                    if core.topic_ok(link, body.topic):
                        await core.publish(
                            body.topic,
                            body.expires_ms,
                            body.thread_id,
                            RoutedEvent(body.topic, pb_event=body.event, v1_message=message),
                        )
                else:
                    await link.handle(_v1_control_frame(kind, bytes(body)))  # type: ignore[arg-type]
            except ProtocolError as exc:
                link.push_control(fr.Error("MALFORMED", f"{exc}; the message was discarded"))

    async def _write_v1(self, link: AgentLink, stream: grpclib.server.Stream[Any, Any]) -> None:
        limit = self.limits.max_batch_events
        while True:
            await link.wait()
            if link.closed:
                if link.farewell is not None:
                    for message in _v1_server_events(link.farewell):
                        await stream.send_message(message)
                return
            events, control = link.take(limit)
            for frame in control:
                for message in _v1_server_events(frame):
                    await stream.send_message(message)
            for q in events:
                try:
                    message = q.item.v1()  # type: ignore[attr-defined]
                except LoomError as exc:
                    _undeliverable(link, q, exc)
                    continue
                await stream.send_message(message)


def _undeliverable(link: AgentLink, q: QueuedEvent, exc: LoomError) -> None:
    """An event that cannot be put in this link's encoding (a malformed batched event
    for a v1 agent, say): skip it, count it as dropped instead of delivered."""
    q.stats.delivered -= 1
    q.stats.dropped += 1
    log.info("dropped an event on %s for %s: %s", q.topic, link.agent_id, exc)


def _v1_control_frame(kind: _pbwire.ClientEventKind, body: bytes) -> Sequence[fr.Frame]:
    """A v1 control message as the frame the core understands."""
    try:
        if kind is _pbwire.ClientEventKind.PING:
            ping = _parse_control(pb.HeartbeatRequest, body)
            return [fr.Ping(ping.timestamp_ms)]
        if kind is _pbwire.ClientEventKind.ACTION_RESULT:
            res = _parse_control(pb.ActionResult, body)
            err = res.error
            return [
                fr.Result(
                    res.id,
                    int(res.status),
                    bytes(res.output),
                    err.code if err else "",
                    err.message if err else "",
                )
            ]
        if kind is _pbwire.ClientEventKind.SUBSCRIPTION:
            sub = _parse_control(pb.SubscriptionChange, body)
            return [
                fr.Subscribe(
                    sub.id,
                    list(sub.add),
                    list(sub.remove),
                    int(sub.qos) if sub.qos is not None else 1,
                    list(sub.join),
                    list(sub.leave),
                )
            ]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {kind.name.lower()} message: {exc}") from None
    return []  # a repeated Ack after the handshake: nothing to do


def _parse_control(message_type: Any, body: bytes) -> Any:
    message = message_type.parse(body)
    if not _well_typed(message):
        raise ProtocolError(_WRONG_WIRE_TYPE)
    return message


def _v1_server_events(frame: fr.Frame) -> list[bytes]:
    kind = type(frame)
    if kind is fr.Pong:
        assert isinstance(frame, fr.Pong)
        msg = pb.ServerEvent(
            pong=pb.HeartbeatResponse(timestamp_ms=frame.timestamp_ms, status="ok")
        )
    elif kind is fr.Call:
        assert isinstance(frame, fr.Call)
        msg = pb.ServerEvent(
            action_call=pb.ActionCall(
                id=frame.id,
                capability=frame.capability,
                version=frame.version,
                payload=frame.payload,
                headers=frame.headers,
                timeout_ms=frame.timeout_ms,
                correlation_id=frame.correlation_id,
            )
        )
    elif kind is fr.Error:
        assert isinstance(frame, fr.Error)
        msg = pb.ServerEvent(err=pb.Error(code=frame.code, message=frame.message))
    elif kind is fr.Subscribed:
        assert isinstance(frame, fr.Subscribed)
        msg = pb.ServerEvent(subscription=pb.SubscriptionChange(id=frame.id, error=frame.error))
    elif kind is fr.Result:
        assert isinstance(frame, fr.Result)
        msg = pb.ServerEvent(
            err=pb.Error(code=frame.error_code or "RESULT", message=frame.error_message)
        )
    else:
        return []
    return [bytes(msg)]


def _action_result(call_id: str, result: fr.Result) -> pb.ActionResult:
    error = (
        pb.ActionError(code=result.error_code, message=result.error_message)
        if result.error_code or result.status != fr.STATUS_OK
        else None
    )
    return pb.ActionResult(
        id=call_id,
        status=pb.ActionStatus(result.status),
        output=result.output,
        error=error,
    )


class _Server(grpclib.server.Server):
    """grpclib's server, remembering its connections so that closing can end them:
    grpclib's close() stops listening and cancels handlers but leaves connections open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()  # the transport sends what it holds, then closes


class BridgeServer:
    """A running bridge: ``async with BridgeServer(port=0) as server: server.port``.

    Leaving the block stops it gracefully: every agent stream is closed and calls in
    flight are answered with an error.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 50051,
        *,
        limits: BridgeLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.core = BridgeCore(limits)
        self._ssl = ssl_context
        self._server: _Server | None = None
        self._service = BridgeService(self.core)

        self.port = port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def __aenter__(self) -> BridgeServer:
        server = _Server([self._service], codec=_Codec())
        await server.start(self.host, self.requested_port, ssl=self._ssl)
        sockets = getattr(server._server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._server = server
        log.info("bridge listening on %s", self.address)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Answer first, cancel after: closing the core fails calls in flight and ends
        # every link, which lets their handlers send a result or an UNAVAILABLE status;
        # server.close() cancels handlers still running, and a cancelled handler
        # leaves its client waiting with no answer at all.
        self._service.closing = True
        self.core.close_all("the bridge is shutting down")
        await self._service.drain(_SHUTDOWN_GRACE_S)
        server.close()
        server.close_connections()
        with anyio.move_on_after(5):
            await server.wait_closed()
