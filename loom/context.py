"""The :class:`Context`: what an agent (and its handlers) can do on the bridge."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
import msgspec

from loom._frames import (
    STATUS_OK,
    STATUS_TIMEOUT,
    Call,
    Result,
    Subscribe,
    Subscribed,
    publish_frame,
)
from loom.bridge._topics import validate_pattern, validate_topic
from loom.envelope import Envelope, new_id, reply_topic
from loom.errors import (
    CapabilityError,
    CapabilityNotFound,
    ConfigurationError,
    InvalidArguments,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    ToolTimeout,
)

if TYPE_CHECKING:
    from loom._runtime import Runtime

__all__ = ["Context", "EventHandler"]

EventHandler: TypeAlias = Callable[["Context", str, Envelope], Awaitable[None]]
"""``async def handler(ctx, topic, event)``: called for each event an agent receives."""

QOS_REALTIME: Final = 0
QOS_BATCHED: Final = 1
QOS_BACKGROUND: Final = 2

_TOOL_TIMEOUT_MARGIN: Final = 0.25
"""Seconds a tool call waits past ``timeout_ms`` for the bridge's own TIMEOUT answer."""


def _enc_hook(obj: object) -> Any:
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"objects of type {type(obj).__qualname__!r} cannot be encoded as JSON")


_json_encoder: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


def _seconds(timeout_ms: int, what: str) -> float:
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or timeout_ms <= 0:
        raise ConfigurationError(
            f"{what}: timeout_ms must be a positive number, got {timeout_ms!r}"
        )
    return timeout_ms / 1000


class Context:
    """Event primitives of one agent: emit, request/reply, tool calls, subscriptions
    and threads.

    Every agent has one context, ``agent.ctx``; handlers receive it as their first
    argument. It can be used from any task while the agent runs (between ``start()``
    and ``stop()``); used when the agent is not running, its methods raise
    :class:`~loom.errors.ConnectionLost`.

    While the agent is reconnecting, frames wait in its outbox and go out once it is
    connected again; a request or tool call whose message went out on a connection
    that dropped fails with :class:`~loom.errors.ConnectionLost` (it is never
    silently waited out).
    """

    __slots__ = ("_agent_id", "_reply_topic", "_runtime_of")

    def __init__(self, agent_id: str, runtime_of: Callable[[], Runtime]) -> None:
        self._agent_id = agent_id
        self._reply_topic = reply_topic(agent_id)
        self._runtime_of = runtime_of

    def __repr__(self) -> str:
        return f"Context(agent_id={self._agent_id!r})"

    @property
    def agent_id(self) -> str:
        """The id of the agent this context belongs to."""
        return self._agent_id

    @property
    def reply_topic(self) -> str:
        """The agent's private reply topic, ``agent.{agent_id}.replies``."""
        return self._reply_topic

    # ---- events ------------------------------------------------------------------

    async def emit(
        self,
        topic: str,
        *,
        type: str,
        payload: bytes = b"",
        envelope: Envelope | None = None,
        thread_id: str | None = None,
        ttl_ms: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Publish an event on ``topic`` and return the envelope sent.

        Builds a new envelope from ``type``, ``payload``, ``thread_id`` (groups the
        event with others of a conversation or workflow), ``ttl_ms`` (how long it stays
        deliverable) and ``metadata``; ``sender`` is this agent. When ``envelope`` is
        given it is sent instead: its fields win, and the keyword arguments only fill
        what it leaves empty (``type``, ``sender``, ``thread_id``, ``ttl_ms``,
        ``timestamp_ms``, metadata keys).

        Returns once the event is queued for the bridge (waiting while the outbox is
        full). Raises :class:`~loom.errors.ConfigurationError` for an invalid topic
        (empty, or with a wildcard segment ``*``/``>``).
        """
        validate_topic(topic)
        if envelope is None:
            event = Envelope.new(
                type=type,
                payload=payload,
                sender=self._agent_id,
                source=self._agent_id,
                thread_id=thread_id,
                ttl_ms=ttl_ms,
                metadata=metadata,
            )
        else:
            event = self._complete(envelope, type, thread_id, ttl_ms, metadata)
        await self._runtime_of().put(publish_frame(topic, event))
        return event

    def _complete(
        self,
        envelope: Envelope,
        type: str,
        thread_id: str | None,
        ttl_ms: int | None,
        metadata: Mapping[str, str] | None,
    ) -> Envelope:
        if not isinstance(envelope, Envelope):
            raise TypeError(f"envelope must be an Envelope, not {envelope.__class__.__name__}")
        changes: dict[str, Any] = {}
        if not envelope.type:
            changes["type"] = type
        if envelope.sender is None:
            changes["sender"] = self._agent_id
        if not envelope.source:
            changes["source"] = self._agent_id
        if envelope.thread_id is None and thread_id is not None:
            changes["thread_id"] = thread_id
        if envelope.ttl_ms is None and ttl_ms is not None:
            changes["ttl_ms"] = ttl_ms
        if not envelope.timestamp_ms:
            changes["timestamp_ms"] = time.time_ns() // 1_000_000
        if metadata:
            changes["metadata"] = {**metadata, **envelope.metadata}
        if not changes:
            return envelope
        return msgspec.structs.replace(envelope, **changes)

    async def request(
        self,
        topic: str,
        *,
        type: str,
        payload: bytes = b"",
        timeout_ms: int = 5000,
        thread_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Publish a request on ``topic`` and wait for the first reply.

        The request carries ``correlation_id`` (its own event id) and ``reply_to``
        (this agent's reply topic); a responder answers with :meth:`reply`. Later
        replies to the same request are dropped.

        Raises :class:`~loom.errors.RequestTimeout` (a ``TimeoutError``) when no reply
        arrives within ``timeout_ms`` and :class:`~loom.errors.ConnectionLost` when the
        connection drops while waiting. Cancelling the caller abandons the request.
        """
        validate_topic(topic)
        timeout = _seconds(timeout_ms, "request()")
        event_id = new_id()
        event = Envelope.new(
            type=type,
            payload=payload,
            id=event_id,
            correlation_id=event_id,
            reply_to=self._reply_topic,
            sender=self._agent_id,
            source=self._agent_id,
            thread_id=thread_id,
            metadata=metadata,
        )
        runtime = self._runtime_of()
        waiter = runtime.requests.add(event_id)
        try:
            with anyio.move_on_after(timeout):
                await runtime.put(publish_frame(topic, event), waiter)
                return await waiter.wait()
        finally:
            runtime.requests.discard(event_id)
        raise RequestTimeout(f"no reply to {type!r} on {topic!r} within {timeout_ms} ms")

    async def reply(
        self,
        original: Envelope,
        *,
        type: str,
        payload: bytes = b"",
        metadata: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Answer ``original`` (an event received by a handler); returns the reply sent.

        The reply goes to ``original.reply_to``, or else to the sender's reply topic
        ``agent.{sender}.replies``; it carries ``original.correlation_id`` (or else
        ``original.id``) and ``original.thread_id``. Raises
        :class:`~loom.errors.ConfigurationError` when ``original`` has neither
        ``reply_to`` nor ``sender``.
        """
        if original.reply_to:
            topic = original.reply_to
        elif original.sender:
            topic = reply_topic(original.sender)
        else:
            raise ConfigurationError(
                f"cannot reply to event {original.id!r}: it has neither reply_to nor sender"
            )
        validate_topic(topic)
        event = Envelope.new(
            type=type,
            payload=payload,
            correlation_id=original.correlation_id or original.id,
            thread_id=original.thread_id,
            sender=self._agent_id,
            source=self._agent_id,
            metadata=metadata,
        )
        await self._runtime_of().put(publish_frame(topic, event))
        return event

    # ---- tools -------------------------------------------------------------------

    async def tool(
        self,
        name: str,
        *,
        version: str = "1.0",
        payload: Any = None,
        timeout_ms: int = 5000,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> bytes:
        """Call capability ``name`` (at ``version``; ``""`` means any version) on
        whichever agent provides it, and return its JSON-encoded output.

        ``payload`` holds the keyword arguments: ``bytes`` are sent as they are
        (already JSON), anything else is JSON-encoded (a ``dict``, a msgspec Struct, a
        dataclass, a pydantic model, ...); ``None`` means no arguments.

        Raises, as soon as the answer arrives:
        :class:`~loom.errors.CapabilityNotFound` (no agent provides it),
        :class:`~loom.errors.InvalidArguments` (the arguments did not validate),
        :class:`~loom.errors.CapabilityError` (the capability raised),
        :class:`~loom.errors.ToolTimeout` (it did not finish within ``timeout_ms``),
        :class:`~loom.errors.RemoteError` (any other error answer) and
        :class:`~loom.errors.ConnectionLost` (the connection dropped while waiting).
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"tool name must be a non-empty string, got {name!r}")
        if not isinstance(version, str):
            raise ConfigurationError(f"tool version must be a string, got {version!r}")
        timeout = _seconds(timeout_ms, "tool()")
        data = self._encode_arguments(name, payload)
        call_id = new_id()
        correlation = correlation_id or call_id
        call_headers = dict(headers) if headers else {}
        call_headers.setdefault("x-agent-id", self._agent_id)
        call_headers.setdefault("x-correlation-id", correlation)
        call = Call(
            id=call_id,
            capability=name,
            version=version,
            payload=data,
            timeout_ms=int(timeout_ms),
            headers=call_headers,
            correlation_id=correlation,
        )
        runtime = self._runtime_of()
        waiter = runtime.calls.add(call_id)
        try:
            with anyio.move_on_after(timeout + _TOOL_TIMEOUT_MARGIN):
                await runtime.put(call, waiter)
                return _tool_output(name, await waiter.wait())
        finally:
            runtime.calls.discard(call_id)
        raise ToolTimeout(f"tool {name!r} gave no result within {timeout_ms} ms")

    async def tool_json(
        self,
        name: str,
        *,
        version: str = "1.0",
        payload: Any = None,
        timeout_ms: int = 5000,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
    ) -> Any:
        """Like :meth:`tool`, returning the output decoded from JSON (``None`` when
        empty). Raises :class:`~loom.errors.ProtocolError` when it is not JSON."""
        output = await self.tool(
            name,
            version=version,
            payload=payload,
            timeout_ms=timeout_ms,
            headers=headers,
            correlation_id=correlation_id,
        )
        if not output:
            return None
        try:
            return msgspec.json.decode(output)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"tool {name!r} returned output that is not JSON: {exc}") from None

    @staticmethod
    def _encode_arguments(name: str, payload: Any) -> bytes:
        if payload is None:
            return b""
        if isinstance(payload, bytes):
            return payload
        if isinstance(payload, bytearray | memoryview):
            return bytes(payload)
        try:
            return _json_encoder.encode(payload)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise ConfigurationError(
                f"arguments of tool {name!r} cannot be encoded as JSON: {exc}"
            ) from exc

    # ---- subscriptions and threads -------------------------------------------------

    async def subscribe(
        self, topic: str, *, qos: int = QOS_BATCHED, timeout_ms: int = 5000
    ) -> None:
        """Start receiving events on ``topic``, a topic or a pattern (``*`` matches one
        segment, ``>`` one or more trailing segments: ``orders.*.created``,
        ``orders.>``).

        ``qos``: 0 realtime (may drop when the agent falls behind), 1 batched
        (lossless, the default), 2 background (lossless, larger queue).

        Returns once the bridge has applied it; the subscription is kept across
        reconnects. Raises :class:`~loom.errors.ConfigurationError` for an invalid
        pattern or QoS, or when the bridge refuses it;
        :class:`~loom.errors.RequestTimeout` when the bridge does not confirm it
        within ``timeout_ms``; :class:`~loom.errors.ConnectionLost` when the
        connection drops first. After a timeout or a drop the subscription stays
        recorded and is applied again on the next connection (the same holds for
        :meth:`unsubscribe`, :meth:`join_thread` and :meth:`leave_thread`).
        """
        validate_pattern(topic)
        if isinstance(qos, bool) or qos not in (QOS_REALTIME, QOS_BATCHED, QOS_BACKGROUND):
            raise ConfigurationError(f"qos must be 0, 1 or 2, got {qos!r}")
        await self._change(Subscribe(new_id(), add=[topic], qos=qos), timeout_ms)

    async def unsubscribe(self, topic: str, *, timeout_ms: int = 5000) -> None:
        """Stop receiving events on ``topic`` (as given to :meth:`subscribe` or to the
        agent's ``topics``)."""
        validate_pattern(topic)
        if topic == self._reply_topic:
            raise ConfigurationError("an agent cannot unsubscribe from its own reply topic")
        await self._change(Subscribe(new_id(), remove=[topic]), timeout_ms)

    async def join_thread(self, thread_id: str, *, timeout_ms: int = 5000) -> None:
        """Join thread ``thread_id``: from now on the agent receives every event
        published with that ``thread_id``, on any topic (until :meth:`leave_thread`).

        Returns once the bridge has applied it; membership is kept across reconnects.
        """
        _check_thread(thread_id)
        await self._change(Subscribe(new_id(), join=[thread_id]), timeout_ms)

    async def leave_thread(self, thread_id: str, *, timeout_ms: int = 5000) -> None:
        """Leave a thread joined with :meth:`join_thread`."""
        _check_thread(thread_id)
        await self._change(Subscribe(new_id(), leave=[thread_id]), timeout_ms)

    async def _change(self, change: Subscribe, timeout_ms: int) -> None:
        """Record the change (so reconnects restore it), send it and wait until the
        bridge applied it. The change is undone if the bridge refuses it, or if the
        caller stops waiting before it was sent."""
        timeout = _seconds(timeout_ms, "subscription change")
        runtime = self._runtime_of()
        undo = runtime.subscriptions.apply(change)
        waiter = runtime.changes.add(change.id)
        answer: Subscribed | None = None
        try:
            with anyio.move_on_after(timeout):
                await runtime.put(change, waiter)
                answer = await waiter.wait()
        finally:
            runtime.changes.discard(change.id)
            if answer is None and not waiter.sent:
                undo()
        if answer is None:
            raise RequestTimeout(f"the bridge did not confirm the change within {timeout_ms} ms")
        if answer.error:
            undo()
            raise ConfigurationError(answer.error)


def _check_thread(thread_id: str) -> None:
    if not isinstance(thread_id, str) or not thread_id:
        raise ConfigurationError(f"thread_id must be a non-empty string, got {thread_id!r}")


def _tool_output(name: str, result: Result) -> bytes:
    """The output of a successful result; the matching exception otherwise."""
    if result.status == STATUS_OK:
        return result.output
    code = result.error_code
    message = result.error_message
    if result.status == STATUS_TIMEOUT:
        raise ToolTimeout(message or f"tool {name!r} timed out")
    if code == "NOT_FOUND":
        raise CapabilityNotFound(code, message)
    if code == "INVALID_INPUT":
        raise InvalidArguments(code, message)
    if code == "CAPABILITY_ERROR":
        raise CapabilityError(code, message)
    raise RemoteError(code or _STATUS_NAMES.get(result.status, str(result.status)), message)


_STATUS_NAMES: Final = {1: "ERROR", 2: "TIMEOUT", 3: "RETRYABLE"}
