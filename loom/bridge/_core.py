"""The bridge's brain: registrations, links, routing, capability calls. No I/O.

Transports (the grpclib server, the in-memory embedded bridge) turn what arrives on
a connection into calls on :class:`BridgeCore` / :class:`AgentLink`, and send what an
:class:`AgentLink` hands out. Nothing here touches a socket or encodes for a wire;
the only awaiting is back-pressure (a publisher waits for room in a lossless queue)
and a link's writer waiting for work.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from loom import _frames as fr
from loom import _pbwire
from loom._session import Registration
from loom.bridge._capabilities import CapabilityRegistry, PendingCall, PendingCalls
from loom.bridge._queues import (
    OfferResult,
    Outbox,
    QoS,
    QueuedEvent,
    StatsTable,
    TopicSnapshot,
    now_ms,
)
from loom.bridge._topics import SubscriptionIndex, validate_pattern, validate_topic
from loom.envelope import new_id
from loom.errors import BridgeRejected, ConfigurationError, ProtocolError

__all__ = ["AgentLink", "BridgeCore", "BridgeLimits", "RoutedEvent"]

log = logging.getLogger("loom.bridge")

_FULL: Final = OfferResult.FULL


@dataclass(frozen=True)
class BridgeLimits:
    """Bounds the bridge enforces. Every one is a policy decision, documented in README."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message (one event, or one batch of frames) the bridge accepts."""
    max_pending_calls: int = 10_000
    """Capability calls in flight across the bridge; beyond it calls fail at once."""
    max_registrations: int = 100_000
    """Registered agent ids remembered (connected or not)."""
    max_batch_events: int = 512
    """Events a link's writer takes at once (a batched writer also cuts its messages at
    256 KiB, and never above ``max_message_bytes``)."""
    default_call_timeout_ms: int = 30_000
    """Deadline of a capability call that names none."""


class RoutedEvent:
    """One published event in the encodings its subscribers need, each made at most once.

    ``raw`` is the msgpack-encoded Envelope of the batched wire; ``pb_event`` the
    protobuf ``Event`` of the v1 wire; ``v1_message`` the complete v1 ``ServerEvent``
    delivery (for a v1 publish these are the very bytes the publisher sent).
    """

    __slots__ = ("pb_event", "raw", "topic", "v1_message")

    def __init__(
        self,
        topic: str,
        raw: msgspec.Raw | None = None,
        pb_event: bytes | memoryview | None = None,
        v1_message: bytes | None = None,
    ) -> None:
        self.topic = topic
        self.raw = raw
        self.pb_event = pb_event
        self.v1_message = v1_message

    def batched(self) -> msgspec.Raw:
        raw = self.raw
        if raw is None:
            assert self.pb_event is not None
            raw = self.raw = fr.encode_envelope(_pbwire.decode_event(self.pb_event))
        return raw

    def v1(self) -> bytes:
        msg = self.v1_message
        if msg is None:
            pb = self.pb_event
            if pb is None:
                assert self.raw is not None
                try:
                    envelope = fr.decode_envelope(self.raw)
                except UnicodeDecodeError as exc:  # msgspec's error for invalid UTF-8
                    raise ProtocolError(f"malformed event: {exc}") from None
                pb = self.pb_event = _pbwire.encode_event(envelope)
            msg = self.v1_message = _pbwire.encode_delivery(self.topic, bytes(pb))
        return msg


class AgentLink:
    """One connected agent's open stream, as the bridge sees it.

    Inbound frames go to :meth:`handle`; the transport's writer loops on
    :meth:`wait` and :meth:`take`. ``batched`` says which encoding the transport uses;
    the link itself is encoding-agnostic.
    """

    __slots__ = (
        "_core",
        "agent_id",
        "batched",
        "close_reason",
        "closed",
        "control",
        "farewell",
        "outbox",
    )

    def __init__(self, core: BridgeCore, agent_id: str, *, batched: bool) -> None:
        self._core = core
        self.agent_id = agent_id
        self.batched = batched
        self.outbox = Outbox()
        self.control: deque[fr.Frame] = deque()
        self.closed = False
        self.close_reason = ""
        self.farewell: fr.Error | None = None

    def __repr__(self) -> str:
        return f"AgentLink({self.agent_id!r}, batched={self.batched}, closed={self.closed})"

    def push_control(self, frame: fr.Frame) -> None:
        """Queue a control frame (reply, call, pong, error) for this agent."""
        if not self.closed:
            self.control.append(frame)
            self.outbox.notify()

    async def wait(self) -> None:
        """Return when there is something to send or the link has closed."""
        outbox = self.outbox
        while not self.closed and not self.control and not len(outbox):
            await outbox.wait_changed()  # queued events wake it as they arrive

    def take(self, limit: int) -> tuple[list[QueuedEvent], list[fr.Frame]]:
        """Everything ready to send now: up to ``limit`` events, and all control frames."""
        control: list[fr.Frame] = []
        if self.control:
            control = list(self.control)
            self.control.clear()
        return self.outbox.take(limit), control

    async def handle(self, frames: Sequence[fr.Frame]) -> None:
        """Act on frames that arrived from the agent (in order)."""
        await self._core.handle_frames(self, frames)

    def close(self, reason: str, farewell: fr.Error | None = None) -> None:
        """End the link; ``farewell`` is the last frame its writer sends, if any."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self.farewell = farewell
            self.outbox.close()  # wakes the writer
            self.control.clear()


class _Registered(msgspec.Struct):
    registration: Registration
    features: list[str]


class BridgeCore:
    """Registrations, subscriptions, thread membership, capability calls and counters."""

    def __init__(self, limits: BridgeLimits | None = None) -> None:
        self.limits = limits or BridgeLimits()
        self._registrations: dict[str, _Registered] = {}
        self._links: dict[str, AgentLink] = {}
        self._index: SubscriptionIndex[AgentLink, QoS] = SubscriptionIndex()
        self._threads: dict[str, dict[AgentLink, None]] = {}
        self._link_threads: dict[AgentLink, set[str]] = {}
        self._stats = StatsTable()
        self._capabilities = CapabilityRegistry()
        self._pending = PendingCalls()

    # ---- registration and links ------------------------------------------------

    def register(self, registration: Registration, features: Sequence[str] = ()) -> list[str]:
        """Record an agent's registration; returns the wire features accepted.

        Raises :class:`BridgeRejected` with a message for the client when refused.
        Registering an id again replaces the earlier registration (it takes effect
        when the agent's next stream opens).
        """
        agent_id = registration.agent_id
        if not agent_id or not agent_id.strip():
            raise BridgeRejected("agent_id must be a non-empty string")
        if len(agent_id) > 256:
            raise BridgeRejected("agent_id is longer than 256 characters")
        try:
            for pattern in registration.topics:
                validate_pattern(pattern)
            for pattern in registration.subscription_qos:
                validate_pattern(pattern)
            qos_values = [QoS(q) for q in registration.subscription_qos.values()]
        except ConfigurationError as exc:
            raise BridgeRejected(str(exc)) from None
        except ValueError as exc:
            raise BridgeRejected(f"invalid QoS level: {exc}") from None
        del qos_values
        for cap in registration.capabilities:
            if not cap.name:
                raise BridgeRejected("a capability descriptor has an empty name")
        if (
            agent_id not in self._registrations
            and len(self._registrations) >= self.limits.max_registrations
        ):
            self._forget_one_disconnected()
            if len(self._registrations) >= self.limits.max_registrations:
                raise BridgeRejected("the bridge has too many registered agents")
        accepted = [f for f in dict.fromkeys(features) if f in fr.SUPPORTED_FEATURES]
        self._registrations[agent_id] = _Registered(registration, accepted)
        log.debug("registered %s (features %s)", agent_id, accepted)
        return accepted

    def _forget_one_disconnected(self) -> None:
        for agent_id in self._registrations:
            if agent_id not in self._links:
                del self._registrations[agent_id]
                return

    def is_registered(self, agent_id: str) -> bool:
        return agent_id in self._registrations

    def features_of(self, agent_id: str) -> list[str]:
        reg = self._registrations.get(agent_id)
        return list(reg.features) if reg else []

    def attach(self, agent_id: str, *, batched: bool) -> AgentLink:
        """Open an agent's stream: its subscriptions and capabilities take effect now.

        An agent id that already has an open stream is taken over: the older stream
        is closed (newest wins), so a reconnecting agent never waits for the bridge
        to notice its old, half-open connection.
        """
        reg = self._registrations.get(agent_id)
        if reg is None:
            raise BridgeRejected(
                f"agent {agent_id!r} is not registered; call RegisterAgent before EventStream"
            )
        old = self._links.get(agent_id)
        if old is not None:
            log.info("agent %s reconnected; closing its older stream", agent_id)
            reason = f"replaced by a newer stream of agent {agent_id!r}"
            self.detach(old, reason, fr.Error(fr.REPLACED, reason))
        link = AgentLink(self, agent_id, batched=batched)
        self._links[agent_id] = link
        registration = reg.registration
        for pattern in registration.topics:
            qos = QoS(registration.subscription_qos.get(pattern, QoS.BATCHED))
            self._index.add(pattern, link, qos)
        for pattern, qos_value in registration.subscription_qos.items():
            self._index.add(pattern, link, QoS(qos_value))
        for cap in registration.capabilities:
            self._capabilities.add(agent_id, cap.name, cap.version, cap)
        log.debug("attached %r", link)
        return link

    def detach(
        self, link: AgentLink, reason: str = "stream closed", farewell: fr.Error | None = None
    ) -> None:
        """The agent's stream ended: undo what attach did and fail its pending calls."""
        if link.closed and self._links.get(link.agent_id) is not link:
            return
        if self._links.get(link.agent_id) is link:
            del self._links[link.agent_id]
            self._capabilities.remove_provider(link.agent_id)
        self._index.remove_key(link)
        for thread_id in self._link_threads.pop(link, ()):
            self._leave_thread(link, thread_id)
        self._pending.fail_caller(link)
        self._pending.fail_provider(
            link.agent_id,
            lambda call: fr.Result(
                call.id,
                fr.STATUS_ERROR,
                error_code="PROVIDER_GONE",
                error_message=f"agent {link.agent_id!r} disconnected before answering",
            ),
        )
        link.close(reason, farewell)
        log.debug("detached %r: %s", link, reason)

    def close_all(self, reason: str) -> None:
        """Bridge shutdown: fail every pending call, close every link."""
        self._pending.fail_all(
            lambda call: fr.Result(
                call.id, fr.STATUS_ERROR, error_code="UNAVAILABLE", error_message=reason
            )
        )
        for link in list(self._links.values()):
            self.detach(link, reason)

    @property
    def connected(self) -> int:
        return len(self._links)

    # ---- inbound frames --------------------------------------------------------

    async def handle_frames(self, link: AgentLink, frames: Sequence[fr.Frame]) -> None:
        for frame in frames:
            if link.closed:
                return
            kind = type(frame)
            if kind is fr.Publish:
                assert isinstance(frame, fr.Publish)
                if not self.topic_ok(link, frame.topic):
                    continue
                await self.publish(
                    frame.topic,
                    frame.expires_ms,
                    frame.thread_id,
                    RoutedEvent(frame.topic, raw=frame.event),
                )
            elif kind is fr.Result:
                assert isinstance(frame, fr.Result)
                self.finish_call(link, frame)
            elif kind is fr.Call:
                assert isinstance(frame, fr.Call)
                self.start_call(link, frame, link.push_control)
            elif kind is fr.Ping:
                assert isinstance(frame, fr.Ping)
                link.push_control(fr.Pong(frame.timestamp_ms))
            elif kind is fr.Subscribe:
                assert isinstance(frame, fr.Subscribe)
                link.push_control(self.subscribe(link, frame))
            else:
                link.push_control(
                    fr.Error(
                        "UNEXPECTED_FRAME",
                        f"an agent may not send {kind.__name__} frames",
                    )
                )

    def topic_ok(self, link: AgentLink, topic: str) -> bool:
        """Validate a publish topic; tell the agent when it is invalid."""
        try:
            validate_topic(topic)
        except ConfigurationError as exc:
            link.push_control(fr.Error("INVALID_TOPIC", str(exc), ref=topic))
            return False
        return True

    async def publish(
        self, topic: str, expires_ms: int, thread_id: str, event: RoutedEvent
    ) -> None:
        """Route one event to every matching subscription and thread member.

        Lossless (batched, background) subscriptions make the publisher wait for room:
        that is the bridge's back-pressure. Realtime subscriptions drop and count.
        """
        targets: Sequence[tuple[AgentLink, QoS]] = self._index.match(topic)
        if thread_id and self._threads:
            members = self._threads.get(thread_id)
            if members:
                seen = {link for link, _ in targets}
                extra = [(m, QoS.BATCHED) for m in members if m not in seen]
                if extra:
                    targets = [*targets, *extra]
        stats = self._stats.record_publish(topic, len(targets))
        if not targets:
            return
        queued = QueuedEvent(topic, stats, expires_ms, event)
        for link, qos in targets:
            queue = link.outbox.queue(qos)
            result = queue.offer(queued)
            while result is _FULL:
                await queue.wait_for_space()
                result = queue.offer(queued)

    # ---- subscriptions and threads -----------------------------------------------

    def subscribe(self, link: AgentLink, change: fr.Subscribe) -> fr.Subscribed:
        try:
            qos = QoS(change.qos)
        except ValueError:
            return fr.Subscribed(change.id, f"invalid QoS level {change.qos}")
        try:
            for pattern in (*change.add, *change.remove):
                validate_pattern(pattern)
        except ConfigurationError as exc:
            return fr.Subscribed(change.id, str(exc))
        for thread_id in (*change.join, *change.leave):
            if not thread_id:
                return fr.Subscribed(change.id, "thread_id must be non-empty")
        for pattern in change.remove:
            self._index.remove(pattern, link)
        for pattern in change.add:
            self._index.remove(pattern, link)
            self._index.add(pattern, link, qos)
        joined = self._link_threads.setdefault(link, set())
        for thread_id in change.leave:
            if thread_id in joined:
                joined.discard(thread_id)
                self._leave_thread(link, thread_id)
        for thread_id in change.join:
            if thread_id not in joined:
                joined.add(thread_id)
                self._threads.setdefault(thread_id, {})[link] = None
        if not joined:
            del self._link_threads[link]
        return fr.Subscribed(change.id)

    def _leave_thread(self, link: AgentLink, thread_id: str) -> None:
        members = self._threads.get(thread_id)
        if members is not None:
            members.pop(link, None)
            if not members:
                del self._threads[thread_id]

    def subscriptions_of(self, link: AgentLink) -> list[str]:
        return self._index.patterns_of(link)

    # ---- capability calls ----------------------------------------------------------

    def start_call(
        self, caller: object, call: fr.Call, on_done: Callable[[fr.Result], None]
    ) -> str | None:
        """Route a capability call to a provider; ``on_done`` gets the caller's Result.

        Errors known at once (no provider, invalid JSON arguments, too many calls in
        flight) are answered at once. ``caller`` identifies who asked (an AgentLink,
        or any object for a unary ForwardAction); its calls are dropped if it goes.
        Returns the bridge's id of the routed call, or None if it was answered at once.
        """
        now = now_ms()
        self.expire_calls(now)

        def answer(status: int, code: str, message: str) -> str | None:
            on_done(fr.Result(call.id, status, error_code=code, error_message=message))
            return None

        if not call.capability:
            return answer(fr.STATUS_ERROR, "INVALID_INPUT", "capability name is empty")
        if call.payload:
            try:
                msgspec.json.decode(call.payload)
            except msgspec.DecodeError as exc:
                return answer(
                    fr.STATUS_ERROR, "INVALID_INPUT", f"arguments are not valid JSON: {exc}"
                )
        if len(self._pending) >= self.limits.max_pending_calls:
            return answer(
                fr.STATUS_RETRYABLE,
                "RESOURCE_EXHAUSTED",
                f"the bridge has {len(self._pending)} calls in flight; try again later",
            )
        provider = self._capabilities.pick(call.capability, call.version)
        link = self._links.get(provider) if provider is not None else None
        if link is None:
            version = f" version {call.version}" if call.version else ""
            return answer(
                fr.STATUS_ERROR,
                "NOT_FOUND",
                f"no connected agent provides capability {call.capability!r}{version}",
            )
        timeout_ms = call.timeout_ms if call.timeout_ms > 0 else self.limits.default_call_timeout_ms
        bridge_id = new_id()
        caller_id = call.id

        def done(result: object) -> None:
            assert isinstance(result, fr.Result)
            result.id = caller_id
            on_done(result)

        self._pending.start(bridge_id, caller, link.agent_id, now + timeout_ms, done)
        link.push_control(
            fr.Call(
                bridge_id,
                call.capability,
                call.version,
                call.payload,
                timeout_ms,
                call.headers,
                call.correlation_id,
            )
        )
        return bridge_id

    def expire_calls(self, now: int | None = None) -> int:
        """Answer every call past its deadline with ACTION_TIMEOUT; returns how many.

        Run whenever a call starts or finishes (no timer task: the core does no I/O);
        callers also keep their own deadline, so a late sweep delays nobody.
        """
        if not self._pending:
            return 0
        now = now_ms() if now is None else now
        deadline = self._pending.next_deadline_ms()
        if deadline is None or deadline > now:
            return 0
        return self._pending.expire(now, _timeout_result)

    def finish_call(self, provider: AgentLink, result: fr.Result) -> None:
        self.expire_calls()
        if not self._pending.finish(result.id, provider.agent_id, result):
            log.debug("ignoring result for unknown or finished call %s", result.id)

    def cancel_call(self, call_id: str, reason: str) -> None:
        """Give up on a call whose caller stopped waiting (unary deadline, cancel)."""
        call = self._pending.get(call_id)
        if call is not None:
            self._pending.finish(
                call_id,
                call.provider,
                fr.Result(call_id, fr.STATUS_TIMEOUT, error_code="TIMEOUT", error_message=reason),
            )

    # ---- introspection ------------------------------------------------------------

    def stats(self) -> tuple[list[TopicSnapshot], int, int]:
        """Per-topic counters, connected agents, calls in flight."""
        return self._stats.snapshot(), len(self._links), len(self._pending)

    def capabilities(self) -> list[tuple[str, str, str, object]]:
        return self._capabilities.describe()


def _timeout_result(call: PendingCall) -> fr.Result:
    return fr.Result(
        call.id,
        fr.STATUS_TIMEOUT,
        error_code="TIMEOUT",
        error_message=f"no result from {call.provider!r} before the deadline",
    )
