"""The bridge's gRPC server, end to end over real sockets, with grpclib as the client.

The server is the real :class:`BridgeServer` on an ephemeral port. v1 behaviour is
driven with grpclib's client and the generated betterproto2 messages (``BridgeStub``
for the unary RPCs, a raw ``Channel.request`` for ``EventStream`` so each message can
be sent and read one at a time); the batched ``EventBatchStream`` with hand-built
``FrameBatch`` bytes.

These tests run on asyncio only: grpclib, the reference peer here, works only on
asyncio (and so does the server). The SDK's own client is tested on both anyio
backends elsewhere.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import grpclib.const
import msgspec
import pytest
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError

from loom import _frames as fr
from loom import _pbwire
from loom.bridge._core import BridgeLimits
from loom.bridge._server import AGENT_ID_HEADER, BridgeServer
from loom.envelope import Envelope
from loom.proto.generated.loom import v1 as pb

pytestmark = pytest.mark.anyio

WAIT = 10  # seconds: bound on anything that should happen promptly
BIDI = grpclib.const.Cardinality.STREAM_STREAM
EVENT_STREAM = "/loom.v1.Bridge/EventStream"
BATCH_STREAM = "/loom.v1.Bridge/EventBatchStream"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Codec(ProtoCodec):
    """Protobuf, except that ``bytes`` go through untouched (malformed-input tests,
    and the FrameBatch stream, whose messages are built by hand)."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return data
        return super().decode(data, message_type)


_stamps = itertools.count(1_000)


def flush_topic(agent_id: str) -> str:
    return f"flush.{agent_id}"


class _Abandon(Exception):
    pass


class V1Stream:
    """One open ``EventStream``, read one message at a time with a bound on each wait."""

    def __init__(self, stream: Any, agent_id: str) -> None:
        self.stream = stream
        self.agent_id = agent_id
        self.backlog: deque[pb.ServerEvent] = deque()
        self.ended = False
        self.half_closed = False
        self.clean = False

    async def send(self, message: pb.ClientEvent | bytes) -> None:
        await self.stream.send_message(message)

    async def publish(self, topic: str, event: pb.Event) -> None:
        await self.send(pb.ClientEvent(publish=pb.Publish(topic=topic, event=event)))

    async def recv(self) -> pb.ServerEvent:
        if self.backlog:
            return self.backlog.popleft()
        with anyio.fail_after(WAIT):
            message = await self.stream.recv_message()
        assert message is not None, "the bridge ended the stream"
        return message  # type: ignore[no-any-return]

    async def sync(self) -> list[pb.ServerEvent]:
        """Ping and wait for the pong: everything sent before it has been handled.

        Returns the messages that came before the pong (the backlog first).
        """
        stamp = next(_stamps)
        await self.send(pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=stamp)))
        before: list[pb.ServerEvent] = list(self.backlog)
        self.backlog.clear()
        with anyio.fail_after(WAIT):
            while True:
                message = await self.stream.recv_message()
                assert message is not None, "the bridge ended the stream"
                if message.pong is not None and message.pong.timestamp_ms == stamp:
                    break
                before.append(message)
        return before

    async def deliveries(self) -> list[tuple[str, str]]:
        """(topic, event id) of every delivery queued for this agent so far.

        The agent publishes a marker to its own flush topic (``register`` subscribes
        every agent to it) and reads up to the marker: deliveries share one queue,
        so all that were routed to the agent before the marker come first.
        """
        self.backlog.extend(await self.sync())
        marker = f"flush-{next(_stamps)}"
        await self.publish(flush_topic(self.agent_id), pb.Event(id=marker, type="flush"))
        out = []
        while True:
            message = await self.recv()
            assert message.delivery is not None, message
            if message.delivery.event.id == marker:
                return out
            out.append((message.delivery.topic, message.delivery.event.id))

    async def recv_status(self) -> GRPCError | None:
        """Read until the bridge ends the stream with an error status; return it.

        After error trailers, grpclib's server also resets the stream when the client
        has not half-closed it, and grpclib's client loses the status when the reset
        arrives with the trailers: then this returns None (the stream did end). The
        grpcio compatibility tests check those statuses exactly.
        """
        with anyio.fail_after(WAIT):
            try:
                while await self.stream.recv_message() is not None:
                    pass
            except GRPCError as exc:
                self.ended = True
                return exc
            except StreamTerminatedError:
                self.ended = True
                return None
        raise AssertionError("the stream ended with status OK")

    async def close(self) -> None:
        """Half-close and read what is left until the bridge ends the stream."""
        if self.ended:
            return
        self.ended = True
        with anyio.fail_after(WAIT):
            if not self.half_closed:
                await self.stream.end()
            try:
                while await self.stream.recv_message() is not None:
                    pass
            except (GRPCError, StreamTerminatedError):
                return
        self.clean = True


class Client:
    """A grpclib channel to the bridge with the generated stub."""

    def __init__(self, port: int, config: Configuration | None = None) -> None:
        self.channel = Channel("127.0.0.1", port, codec=_Codec(), config=config)
        self.stub = pb.BridgeStub(self.channel, timeout=WAIT)

    async def register(self, agent_id: str, topics: list[str] | None = None, **kw: Any) -> None:
        topics = [*(topics or []), flush_topic(agent_id)]
        response = await self.stub.register_agent(
            pb.AgentRegisterRequest(agent_id=agent_id, subscribed_topics=topics, **kw)
        )
        assert response.success, response.error_message

    @asynccontextmanager
    async def open_stream(
        self, agent_id: str, *, ack: pb.ClientEvent | bytes | None = None, sync: bool = True
    ) -> AsyncIterator[V1Stream]:
        """Open EventStream and send the handshake (``ack``; default: the agent's Ack)."""
        try:
            async with self.channel.request(
                EVENT_STREAM, BIDI, pb.ClientEvent, pb.ServerEvent, timeout=60
            ) as stream:
                await stream.send_request()
                v1 = V1Stream(stream, agent_id)
                if ack is None:
                    await v1.send(pb.ClientEvent(ack=pb.Ack(agent_id)))
                    if sync:
                        await v1.sync()
                else:
                    # a handshake meant to be refused: half-close at once, so the bridge
                    # answers with just the status (see V1Stream.recv_status)
                    await stream.send_message(ack, end=True)
                    v1.half_closed = True
                try:
                    yield v1
                finally:
                    with anyio.CancelScope(shield=True):
                        await v1.close()
                if not v1.clean:
                    raise _Abandon  # let grpclib reset and release the stream
        except _Abandon:
            pass

    @asynccontextmanager
    async def agent(
        self, agent_id: str, topics: list[str] | None = None, **kw: Any
    ) -> AsyncIterator[V1Stream]:
        await self.register(agent_id, topics, **kw)
        async with self.open_stream(agent_id) as v1:
            yield v1

    async def stats(self) -> dict[str, pb.TopicStats]:
        response = await self.stub.get_stats(pb.StatsRequest())
        return {t.topic: t for t in response.topics}

    def close(self) -> None:
        self.channel.close()


@asynccontextmanager
async def running_bridge(**limits: Any) -> AsyncIterator[tuple[BridgeServer, Client]]:
    async with BridgeServer("127.0.0.1", 0, limits=BridgeLimits(**limits)) as server:
        assert server.port != 0
        client = Client(server.port)
        try:
            yield server, client
        finally:
            client.close()


def event(event_id: str, payload: bytes = b"", **metadata: str) -> pb.Event:
    return pb.Event(id=event_id, type="test", payload=payload, metadata=metadata)


# -- unary RPCs ---------------------------------------------------------------------------


async def test_heartbeat_and_register() -> None:
    async with running_bridge() as (_, client):
        beat = await client.stub.heartbeat(pb.HeartbeatRequest(timestamp_ms=5))
        assert beat.status == "ok" and beat.timestamp_ms > 0
        response = await client.stub.register_agent(pb.AgentRegisterRequest(agent_id=""))
        assert not response.success and "non-empty" in response.error_message
        response = await client.stub.register_agent(
            pb.AgentRegisterRequest(agent_id="a", subscribed_topics=["bad topic"])
        )
        assert not response.success and "whitespace" in response.error_message
        response = await client.stub.register_agent(
            pb.AgentRegisterRequest(
                agent_id="a",
                subscribed_topics=["t"],
                features=[fr.FEATURE_SUBSCRIBE, "unknown.feature"],
            )
        )
        assert response.success and response.error_message == ""
        assert response.features == [fr.FEATURE_SUBSCRIBE]
        stats = await client.stub.get_stats(pb.StatsRequest())
        assert (stats.connected_agents, stats.pending_calls, stats.topics) == (0, 0, [])


# -- stream handshake -------------------------------------------------------------------


async def test_first_message_must_be_an_ack() -> None:
    async with running_bridge() as (_, client):
        await client.register("a")
        ping = pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=1))
        async with client.open_stream("a", ack=ping) as v1:
            error = await v1.recv_status()
        assert error is not None and error.status is Status.INVALID_ARGUMENT
        assert "Ack" in (error.message or "")
        async with client.open_stream("a", ack=b"\xff\xff") as v1:
            error = await v1.recv_status()
        assert error is not None and error.status is Status.INVALID_ARGUMENT
        async with client.open_stream("a", ack=pb.ClientEvent(ack=pb.Ack(""))) as v1:
            error = await v1.recv_status()
        assert error is not None and error.status is Status.INVALID_ARGUMENT


async def test_malformed_ack_is_refused() -> None:
    async with running_bridge() as (_, client):
        await client.register("a")
        # ClientEvent{ack{message_id: b"\xff"}}: not UTF-8
        async with client.open_stream("a", ack=b"\x12\x03\x0a\x01\xff") as v1:
            error = await v1.recv_status()
        assert error is not None and error.status is Status.INVALID_ARGUMENT
        assert "malformed Ack" in (error.message or "")


async def test_ack_for_unregistered_agent_fails_precondition() -> None:
    async with running_bridge() as (_, client):
        async with client.open_stream("x", ack=pb.ClientEvent(ack=pb.Ack("ghost"))) as v1:
            error = await v1.recv_status()
        assert error is not None and error.status is Status.FAILED_PRECONDITION
        assert "RegisterAgent" in (error.message or "")


async def test_duplicate_stream_takes_over() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("a", ["t"]) as first, client.agent("p") as publisher:
            async with client.open_stream("a") as second:
                error = await first.recv_status()
                if error is not None:
                    assert error.status is Status.UNAVAILABLE
                    assert "replaced" in (error.message or "")
                await publisher.publish("t", event("e1"))
                await publisher.sync()
                assert await second.deliveries() == [("t", "e1")]
                stats = await client.stub.get_stats(pb.StatsRequest())
                assert stats.connected_agents == 2


async def test_reregistration_replaces_registration() -> None:
    async with running_bridge() as (_, client):
        await client.register("a", ["old"])
        await client.register("a", ["new"])
        async with client.open_stream("a") as a, client.agent("p") as p:
            await p.publish("old", event("e1"))
            await p.publish("new", event("e2"))
            await p.sync()
            assert await a.deliveries() == [("new", "e2")]


async def test_client_half_close_ends_the_stream_cleanly() -> None:
    async with running_bridge() as (_, client):
        await client.register("a")
        async with client.open_stream("a") as a:
            await a.stream.end()
            with anyio.fail_after(WAIT):
                assert await a.stream.recv_message() is None
            a.ended = True
        stats = await client.stub.get_stats(pb.StatsRequest())
        assert stats.connected_agents == 0


# -- publish and deliver ---------------------------------------------------------------


async def test_publish_deliver_and_own_events() -> None:
    async with running_bridge() as (_, client):
        async with (
            client.agent("a", ["chat.>"]) as a,
            client.agent("b", ["chat.room1"]) as b,
            client.agent("c", ["elsewhere"]) as c,
        ):
            sent = pb.Event(
                id="e1",
                type="msg",
                timestamp_ms=123,
                source="a",
                metadata={"k": "v", "loom.sender": "a"},
                payload=b"\x00\x01",
                confidence=0.5,
                tags=["x", "y"],
                priority=-3,
            )
            await a.publish("chat.room1", sent)
            await a.publish("chat.room2", event("e2"))
            await a.sync()
            got = await b.recv()
            assert got.delivery is not None
            assert got.delivery.topic == "chat.room1"
            assert got.delivery.event == sent  # every field, unchanged
            assert await b.deliveries() == []
            assert await a.deliveries() == [("chat.room1", "e1"), ("chat.room2", "e2")]
            assert await c.deliveries() == []


async def test_events_before_the_stream_opens_are_not_delivered() -> None:
    async with running_bridge() as (_, client):
        await client.register("late", ["t"])
        async with client.agent("p") as p:
            await p.publish("t", event("before"))
            await p.sync()
            async with client.open_stream("late") as late:
                await p.publish("t", event("after"))
                await p.sync()
                assert await late.deliveries() == [("t", "after")]
        stats = await client.stats()
        assert stats["t"].published == 2 and stats["t"].delivered == 1


async def test_batched_delivery_is_lossless_and_in_order() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("sub", ["t"]) as sub, client.agent("p") as p:
            for i in range(300):
                await p.publish("t", event(f"e{i}", b"x" * 100))
            await p.sync()
            received = [(await sub.recv()).delivery.event.id for _ in range(300)]  # type: ignore[union-attr]
            assert received == [f"e{i}" for i in range(300)]
        t = (await client.stats())["t"]
        assert (t.published, t.delivered, t.dropped) == (300, 300, 0)


async def test_realtime_subscription_drops_when_full() -> None:
    async with BridgeServer("127.0.0.1", 0) as server:
        client = Client(server.port)
        # a small receive window, so the bridge cannot push much to the slow reader
        slow_client = Client(
            server.port,
            Configuration(http2_stream_window_size=65535, http2_connection_window_size=65535),
        )
        try:
            await slow_client.register(
                "slow", ["t"], subscription_qos={"t": pb.QoSLevel.QOS_REALTIME}
            )
            async with slow_client.open_stream("slow") as slow_stream, client.agent("p") as p:
                for i in range(300):
                    await p.publish("t", event(f"e{i}", b"x" * 8192))
                await p.sync()  # the publisher never waited for the slow reader
                t = (await client.stats())["t"]
                assert t.published == 300 and t.dropped > 0
                assert t.delivered + t.dropped + t.backlog == 300
                await slow_stream.close()
                assert slow_stream.clean
        finally:
            client.close()
            slow_client.close()


async def test_publish_without_subscribers_is_counted() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("p") as p:
            await p.publish("nobody.home", event("e1"))
            assert await p.sync() == []
            stats = await client.stub.get_stats(pb.StatsRequest())
            [t] = stats.topics
            assert (t.topic, t.published, t.delivered, t.subscribers) == ("nobody.home", 1, 0, 0)
            assert stats.connected_agents == 1


async def test_two_clients_request_reply_over_reply_topics() -> None:
    """The original client: the request carries only loom.sender; the responder
    replies to agent.{sender}.replies with correlation id = the request's event id."""
    async with running_bridge() as (_, client):
        async with (
            client.agent("asker", ["agent.asker.replies"]) as asker,
            client.agent("answerer", ["questions"]) as answerer,
        ):
            await asker.publish("questions", event("q1", b"2+2", **{"loom.sender": "asker"}))
            request = (await answerer.recv()).delivery
            assert request is not None and request.event.metadata == {"loom.sender": "asker"}
            reply_to = f"agent.{request.event.metadata['loom.sender']}.replies"
            await answerer.publish(
                reply_to,
                event(
                    "r1",
                    b"4",
                    **{"loom.correlation_id": request.event.id, "loom.sender": "answerer"},
                ),
            )
            reply = (await asker.recv()).delivery
            assert reply is not None and reply.topic == "agent.asker.replies"
            assert reply.event.metadata["loom.correlation_id"] == "q1"
            assert reply.event.payload == b"4"


# -- errors on the stream ---------------------------------------------------------------


async def test_malformed_invalid_topic_and_oversize_messages_keep_the_stream() -> None:
    async with running_bridge(max_message_bytes=2048) as (_, client):
        async with client.agent("a", ["ok"]) as a:
            await a.send(b"\x0a\x05ab")  # publish field runs past the end
            await a.send(b"")  # an empty ClientEvent has no message in it
            await a.publish("bad..topic", event("e1"))
            await a.publish("ok", event("big", b"x" * 4096))
            await a.publish("ok", event("e2"))
            before = await a.sync()
            errors = [(m.err.code, m.err.message) for m in before if m.err is not None]
            assert [code for code, _ in errors] == [
                "MALFORMED",
                "MALFORMED",
                "INVALID_TOPIC",
                "MESSAGE_TOO_LARGE",
            ]
            assert "bad..topic" in errors[2][1] and "2048" in errors[3][1]
            a.backlog = deque(m for m in before if m.err is None)
            assert await a.deliveries() == [("ok", "e2")]


async def test_half_close_with_unsent_events_ends_cleanly() -> None:
    """A client that half-closes while the bridge is blocked sending to it (flow
    control) gets whole messages and then the end of the stream, never half a message."""
    async with BridgeServer("127.0.0.1", 0) as server:
        client = Client(server.port)
        slow = Client(
            server.port,
            Configuration(http2_stream_window_size=65535, http2_connection_window_size=65535),
        )
        try:
            await slow.register("slow", ["t"])
            async with slow.open_stream("slow") as sub, client.agent("p") as p:
                for i in range(40):
                    await p.publish("t", event(f"e{i}", b"x" * 8192))
                await p.sync()
                await sub.close()
                assert sub.clean
            stats = await client.stub.get_stats(pb.StatsRequest())
            assert stats.connected_agents == 0
            t = {t.topic: t for t in stats.topics}["t"]
            assert t.delivered + t.dropped == 40 and t.backlog == 0
        finally:
            client.close()
            slow.close()


async def test_inline_ping_echoes_the_timestamp() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("a") as a:
            await a.send(pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=424242)))
            answer = await a.recv()
            assert answer.pong == pb.HeartbeatResponse(timestamp_ms=424242, status="ok")


# -- dynamic subscriptions and threads --------------------------------------------------


async def test_dynamic_subscriptions_and_threads() -> None:
    async with running_bridge() as (_, client):
        await client.register("a", features=[fr.FEATURE_SUBSCRIBE])
        async with client.open_stream("a") as a, client.agent("p", ["t"]) as p:
            change = pb.SubscriptionChange(
                id="s1", add=["news.*"], join=["th1"], qos=pb.QoSLevel.QOS_BATCHED
            )
            await a.send(pb.ClientEvent(subscription=change))
            answer = await a.recv()
            assert answer.subscription == pb.SubscriptionChange(id="s1")
            await p.publish("news.today", event("n1"))
            await p.publish("t", event("th-event", **{"loom.thread_id": "th1"}))
            await p.publish("t", event("other", **{"loom.thread_id": "th2"}))
            await p.publish("news.x", event("both", **{"loom.thread_id": "th1"}))
            await p.sync()
            assert await a.deliveries() == [
                ("news.today", "n1"),
                ("t", "th-event"),
                ("news.x", "both"),  # once, though it matches twice
            ]
            change = pb.SubscriptionChange(id="s2", remove=["news.*"], leave=["th1"])
            await a.send(pb.ClientEvent(subscription=change))
            assert (await a.recv()).subscription == pb.SubscriptionChange(id="s2")
            await p.publish("news.x", event("n2", **{"loom.thread_id": "th1"}))
            await p.sync()
            assert await a.deliveries() == []
            bad = pb.SubscriptionChange(id="s3", add=["bad topic"])
            await a.send(pb.ClientEvent(subscription=bad))
            answer = await a.recv()
            assert answer.subscription is not None and answer.subscription.id == "s3"
            assert "whitespace" in answer.subscription.error


async def test_subscription_change_is_handled_without_the_feature() -> None:
    async with running_bridge() as (_, client):
        response = await client.stub.register_agent(pb.AgentRegisterRequest(agent_id="a"))
        assert response.success and response.features == []  # not advertised
        async with client.open_stream("a") as a, client.agent("p") as p:
            change = pb.SubscriptionChange(id="s", add=["x"], qos=pb.QoSLevel.QOS_BATCHED)
            await a.send(pb.ClientEvent(subscription=change))
            assert (await a.recv()).subscription == pb.SubscriptionChange(id="s")
            await p.publish("x", event("e1"))
            await p.sync()
            assert (await a.recv()).delivery.event.id == "e1"  # type: ignore[union-attr]


# -- ForwardAction ----------------------------------------------------------------------


async def test_forward_action_runs_on_the_provider() -> None:
    async with running_bridge() as (_, client):
        cap = pb.CapabilityDescriptor(
            name="add", version="1", metadata={"input_schema": "{}", "output_schema": "{}"}
        )
        async with client.agent("prov", capabilities=[cap]) as prov:
            async with anyio.create_task_group() as tg:
                results: list[pb.ActionResult] = []

                async def call() -> None:
                    results.append(
                        await client.stub.forward_action(
                            pb.ActionCall(
                                id="call-1",
                                capability="add",
                                payload=b'{"a": 1, "b": 2}',
                                headers={"x-correlation-id": "c", "x-agent-id": "me"},
                                timeout_ms=WAIT * 1000,
                                correlation_id="corr",
                            )
                        )
                    )

                tg.start_soon(call)
                pushed = (await prov.recv()).action_call
                assert pushed is not None
                assert (pushed.capability, pushed.payload) == ("add", b'{"a": 1, "b": 2}')
                assert pushed.headers == {"x-correlation-id": "c", "x-agent-id": "me"}
                assert pushed.correlation_id == "corr" and pushed.timeout_ms == WAIT * 1000
                stats = await client.stub.get_stats(pb.StatsRequest())
                assert stats.pending_calls == 1
                await prov.send(
                    pb.ClientEvent(
                        action_result=pb.ActionResult(
                            id=pushed.id, status=pb.ActionStatus.ACTION_OK, output=b"3"
                        )
                    )
                )
            [result] = results
            assert (result.id, result.status, result.output) == (
                "call-1",
                pb.ActionStatus.ACTION_OK,
                b"3",
            )
            assert result.error is None


async def test_forward_action_errors_answered_at_once() -> None:
    async with running_bridge() as (_, client):
        cap = pb.CapabilityDescriptor(name="echo", version="1")
        async with client.agent("prov", capabilities=[cap]) as prov:
            for call, code in [
                (pb.ActionCall(id="1", capability="missing", payload=b"{}"), "NOT_FOUND"),
                (pb.ActionCall(id="2", capability="echo", version="2"), "NOT_FOUND"),
                (pb.ActionCall(id="3", capability="echo", payload=b"{nope"), "INVALID_INPUT"),
            ]:
                result = await client.stub.forward_action(call)
                assert result.id == call.id
                assert result.status == pb.ActionStatus.ACTION_ERROR
                assert result.error is not None and result.error.code == code
            assert await prov.sync() == []  # nothing was pushed to the provider


async def test_forward_action_timeout() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("prov", capabilities=[pb.CapabilityDescriptor(name="slow")]) as p:
            result = await client.stub.forward_action(
                pb.ActionCall(id="t1", capability="slow", payload=b"{}", timeout_ms=100)
            )
            assert result.id == "t1" and result.status == pb.ActionStatus.ACTION_TIMEOUT
            pushed = (await p.recv()).action_call
            assert pushed is not None
            # a late result is ignored and does not disturb the stream
            await p.send(pb.ClientEvent(action_result=pb.ActionResult(id=pushed.id, output=b"1")))
            assert await p.sync() == []
            stats = await client.stub.get_stats(pb.StatsRequest())
            assert stats.pending_calls == 0


async def test_forward_action_provider_gone() -> None:
    async with running_bridge() as (_, client):
        await client.register("prov", capabilities=[pb.CapabilityDescriptor(name="echo")])
        async with anyio.create_task_group() as tg:
            results: list[pb.ActionResult] = []

            async def call() -> None:
                results.append(
                    await client.stub.forward_action(
                        pb.ActionCall(id="g1", capability="echo", payload=b"1")
                    )
                )

            async with client.open_stream("prov") as prov:
                tg.start_soon(call)
                assert (await prov.recv()).action_call is not None
            # the provider's stream ended without answering
        [result] = results
        assert result.status == pb.ActionStatus.ACTION_ERROR
        assert result.error is not None and result.error.code == "PROVIDER_GONE"


async def test_forward_action_round_robin_any_version() -> None:
    async with running_bridge() as (_, client):
        v1 = pb.CapabilityDescriptor(name="echo", version="1")
        v2 = pb.CapabilityDescriptor(name="echo", version="2")
        async with (
            client.agent("p1", capabilities=[v1]) as p1,
            client.agent("p2", capabilities=[v2]) as p2,
        ):

            async def serve(provider: V1Stream, count: int) -> None:
                for _ in range(count):
                    pushed = (await provider.recv()).action_call
                    assert pushed is not None
                    output = f"{provider.agent_id}:{pushed.version}".encode()
                    await provider.send(
                        pb.ClientEvent(action_result=pb.ActionResult(id=pushed.id, output=output))
                    )

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, p1, 1)
                tg.start_soon(serve, p2, 2)
                outputs = []
                for version in ["", "", "2"]:
                    result = await client.stub.forward_action(
                        pb.ActionCall(id="x", capability="echo", version=version, payload=b"1")
                    )
                    outputs.append(result.output)
            assert sorted(outputs[:2]) == [b"p1:", b"p2:"]
            assert outputs[2] == b"p2:2"


async def test_shutdown_ends_streams_and_answers_calls() -> None:
    server = BridgeServer("127.0.0.1", 0)
    await server.__aenter__()
    client = Client(server.port)
    results: list[pb.ActionResult] = []
    try:
        await client.register("prov", capabilities=[pb.CapabilityDescriptor(name="echo")])
        async with client.open_stream("prov") as prov:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    results.append(
                        await client.stub.forward_action(
                            pb.ActionCall(id="s1", capability="echo", payload=b"1")
                        )
                    )

                tg.start_soon(call)
                assert (await prov.recv()).action_call is not None
                with anyio.fail_after(WAIT):
                    await server.aclose()
            error = await prov.recv_status()
            if error is not None:
                assert error.status is Status.UNAVAILABLE
                assert "shutting down" in (error.message or "")
    finally:
        await server.aclose()
        client.close()
    [result] = results
    assert result.id == "s1" and result.status == pb.ActionStatus.ACTION_ERROR
    assert result.error is not None and result.error.code == "UNAVAILABLE"


async def test_shutdown_closes_connections() -> None:
    async with BridgeServer("127.0.0.1", 0) as server:
        client = Client(server.port)
        assert (await client.stub.heartbeat(pb.HeartbeatRequest())).status == "ok"
    try:
        # the connection is gone (not left open to a stopped bridge): a call fails at once
        with anyio.fail_after(WAIT), pytest.raises((OSError, StreamTerminatedError, GRPCError)):
            await client.stub.heartbeat(pb.HeartbeatRequest())
    finally:
        client.close()


# -- EventBatchStream ---------------------------------------------------------------------


class BatchStream:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending: deque[fr.Frame] = deque()

    async def send(self, frames: list[fr.Frame]) -> None:
        await self.stream.send_message(fr.wrap_frame_batch(fr.encode_batch(frames)))

    async def send_raw(self, message: bytes) -> None:
        await self.stream.send_message(message)

    async def recv(self) -> fr.Frame:
        while not self.pending:
            with anyio.fail_after(WAIT):
                message = await self.stream.recv_message()
            assert message is not None, "the bridge ended the stream"
            self.pending.extend(fr.decode_batch(fr.unwrap_frame_batch(message)))
        return self.pending.popleft()

    async def recv_until(self, done: Callable[[fr.Frame], bool]) -> list[fr.Frame]:
        seen = []
        while True:
            frame = await self.recv()
            if done(frame):
                return seen
            seen.append(frame)

    async def sync(self) -> list[fr.Frame]:
        stamp = next(_stamps)
        await self.send([fr.Ping(stamp)])
        return await self.recv_until(lambda f: f == fr.Pong(stamp))


@asynccontextmanager
async def batch_stream(client: Client, agent_id: str) -> AsyncIterator[BatchStream]:
    """An open EventBatchStream; half-closed and read to its end on exit."""
    try:
        async with client.channel.request(
            BATCH_STREAM, BIDI, bytes, bytes, metadata={AGENT_ID_HEADER: agent_id}, timeout=60
        ) as stream:
            await stream.send_request()
            yield BatchStream(stream)
            with anyio.fail_after(WAIT):
                await stream.end()
                try:
                    while await stream.recv_message() is not None:
                        pass
                except (GRPCError, StreamTerminatedError):
                    raise _Abandon from None
    except _Abandon:
        pass


async def batch_stream_status(client: Client, metadata: dict[str, str] | None) -> GRPCError:
    """Open EventBatchStream, half-closed at once; the status the bridge ends it with."""
    async with client.channel.request(
        BATCH_STREAM, BIDI, bytes, bytes, metadata=metadata, timeout=60
    ) as stream:
        await stream.send_request(end=True)
        with anyio.fail_after(WAIT), pytest.raises(GRPCError) as info:
            await stream.recv_message()
    return info.value


def envelope(event_id: str, payload: bytes = b"payload", **kw: Any) -> Envelope:
    return Envelope.new("test", payload, event_id=event_id, **kw)


async def test_batch_stream_needs_header_and_registration() -> None:
    async with running_bridge() as (_, client):
        error = await batch_stream_status(client, None)
        assert error.status is Status.INVALID_ARGUMENT and AGENT_ID_HEADER in (error.message or "")
        error = await batch_stream_status(client, {AGENT_ID_HEADER: "ghost"})
        assert error.status is Status.FAILED_PRECONDITION


async def test_batch_and_v1_peers_exchange_events() -> None:
    async with running_bridge() as (_, client):
        await client.register("batched", ["from.v1"], features=[fr.FEATURE_BATCH])
        async with batch_stream(client, "batched") as b, client.agent("old", ["from.batch"]) as v1:
            assert await b.sync() == []
            sent = envelope("b1", thread_id="th", sender="batched", metadata={"k": "v"})
            await b.send([fr.publish_frame("from.batch", sent)])
            got = (await v1.recv()).delivery
            assert got is not None and got.topic == "from.batch"
            assert Envelope.from_proto(got.event) == sent
            original = envelope("v1", correlation_id="c").to_proto()
            await v1.publish("from.v1", original)
            frame = await b.recv()
            assert isinstance(frame, fr.Deliver) and frame.topic == "from.v1"
            assert fr.decode_envelope(frame.event) == Envelope.from_proto(original)


async def test_batch_stream_control_frames_and_errors() -> None:
    async with running_bridge(max_message_bytes=4096) as (_, client):
        await client.register("b", ["t"])
        async with batch_stream(client, "b") as b:
            await b.sync()
            await b.send_raw(b"\x0a\x03\xc1\xc1\xc1")  # FrameBatch of msgpack garbage
            await b.send_raw(b"\xff")  # not even a FrameBatch
            await b.send([fr.publish_frame("bad..t", envelope("e0"))])
            await b.send([fr.publish_frame("t", envelope("big", payload=b"x" * 8192))])
            await b.send([fr.Subscribe("s1", add=["u"]), fr.publish_frame("u", envelope("e1"))])
            frames = await b.sync()
            errors = [f for f in frames if isinstance(f, fr.Error)]
            assert [e.code for e in errors] == [
                "MALFORMED",
                "MALFORMED",
                "INVALID_TOPIC",
                "MESSAGE_TOO_LARGE",
            ]
            assert errors[2].ref == "bad..t" and "4096" in errors[3].message
            rest = [f for f in frames if not isinstance(f, fr.Error)]
            assert fr.Subscribed("s1") in rest and len(rest) == 2
            [deliver] = [f for f in rest if isinstance(f, fr.Deliver)]
            assert deliver.topic == "u" and fr.decode_envelope(deliver.event).id == "e1"


async def test_batched_caller_and_v1_provider() -> None:
    async with running_bridge() as (_, client):
        await client.register("caller")
        async with (
            client.agent("prov", capabilities=[pb.CapabilityDescriptor(name="echo")]) as prov,
            batch_stream(client, "caller") as caller,
        ):
            await caller.sync()
            await caller.send([fr.Call("c1", "echo", "", b'"hi"', 5000)])
            pushed = (await prov.recv()).action_call
            assert pushed is not None and pushed.payload == b'"hi"'
            await prov.send(
                pb.ClientEvent(
                    action_result=pb.ActionResult(
                        id=pushed.id,
                        status=pb.ActionStatus.ACTION_ERROR,
                        error=pb.ActionError(code="CAPABILITY_ERROR", message="boom"),
                    )
                )
            )
            result = await caller.recv()
            assert result == fr.Result(
                "c1", fr.STATUS_ERROR, b"", error_code="CAPABILITY_ERROR", error_message="boom"
            )


async def test_batch_stream_takes_over_a_v1_stream() -> None:
    async with running_bridge() as (_, client):
        async with client.agent("a", ["t"]) as old:
            async with batch_stream(client, "a") as new:
                error = await old.recv_status()
                assert error is None or error.status is Status.UNAVAILABLE
                assert await new.sync() == []


async def test_events_one_wire_cannot_carry_do_not_break_streams() -> None:
    """A batched event that is not a valid envelope cannot be sent to a v1 agent, and
    a v1 event with invalid UTF-8 is refused: no subscriber's stream ends over them."""
    async with running_bridge() as (_, client):
        await client.register("batched", ["t"])
        async with batch_stream(client, "batched") as b, client.agent("old", ["t"]) as v1:
            await b.sync()
            # valid msgpack (the integer 5), but not an envelope
            await b.send([fr.Publish("t", 0, msgspec.Raw(b"\x05"))])
            [own] = await b.sync()  # batched agents get it as is; their SDK skips it
            assert isinstance(own, fr.Deliver) and bytes(own.event) == b"\x05"
            assert await v1.deliveries() == []  # skipped for the v1 agent
            t = (await client.stats())["t"]
            assert (t.published, t.dropped) == (1, 1)
            await v1.send(_pbwire.encode_publish_event("t", b"\x0a\x02\xff\xfe"))
            [refused] = await v1.sync()
            assert refused.err is not None and refused.err.code == "MALFORMED"
            await v1.publish("t", event("fine"))
            frames = await b.recv_until(lambda f: isinstance(f, fr.Deliver))
            assert frames == []
            assert await v1.deliveries() == [("t", "fine")]
