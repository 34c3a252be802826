"""Every Context primitive end to end, through the in-process bridge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from tool_capabilities import always_fails, get_weather, get_weather_v2, too_slow

from loom.agent import Agent
from loom.capability import capability
from loom.context import Context
from loom.envelope import Envelope
from loom.errors import (
    CapabilityError,
    CapabilityNotFound,
    InvalidArguments,
    RequestTimeout,
    ToolTimeout,
)
from loom.testing import EmbeddedBridge

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bridge() -> AsyncIterator[EmbeddedBridge]:
    async with EmbeddedBridge() as bridge:
        yield bridge


Received = tuple[str, Envelope]


@asynccontextmanager
async def inbox_agent(
    bridge: EmbeddedBridge, agent_id: str, topics: list[str], **options: Any
) -> AsyncIterator[tuple[Agent, MemoryObjectReceiveStream[Received]]]:
    """An agent whose handler puts every (topic, event) it gets in a stream."""
    send, receive = anyio.create_memory_object_stream[Received](100)

    async def collect(ctx: Context, topic: str, event: Envelope) -> None:
        await send.send((topic, event))

    options.setdefault("reconnect_initial", 0.001)
    options.setdefault("reconnect_max", 0.01)
    # One lane: events are handled in arrival order across topics, so a "marker" event
    # proves that everything the bridge delivered before it was handled.
    options.setdefault("handler_lanes", 1)
    with send, receive:
        async with Agent(
            agent_id, topics, on_event=collect, address=bridge.address, **options
        ) as agent:
            yield agent, receive


async def next_event(inbox: MemoryObjectReceiveStream[Received]) -> Received:
    with anyio.fail_after(5):
        return await inbox.receive()


# ---- events ---------------------------------------------------------------------------


async def test_emit_reaches_subscribers(bridge: EmbeddedBridge) -> None:
    async with (
        inbox_agent(bridge, "consumer", ["orders.created"]) as (_, inbox),
        Agent("producer", [], address=bridge.address) as producer,
    ):
        sent = await producer.ctx.emit(
            "orders.created", type="order", payload=b"42", thread_id="th", metadata={"k": "v"}
        )
        topic, event = await next_event(inbox)
    assert topic == "orders.created"
    assert event == sent
    assert (event.sender, event.thread_id, event.metadata) == ("producer", "th", {"k": "v"})


async def test_publisher_receives_its_own_event_when_subscribed(bridge: EmbeddedBridge) -> None:
    async with inbox_agent(bridge, "self", ["echo"]) as (agent, inbox):
        sent = await agent.ctx.emit("echo", type="ping")
        _, event = await next_event(inbox)
    assert event.id == sent.id


async def test_events_of_a_publisher_arrive_in_order(bridge: EmbeddedBridge) -> None:
    async with (
        inbox_agent(bridge, "consumer", ["seq"]) as (_, inbox),
        Agent("producer", [], address=bridge.address) as producer,
    ):
        for i in range(200):
            await producer.ctx.emit("seq", type="n", payload=str(i).encode())
        got = [int((await next_event(inbox))[1].payload) for _ in range(200)]
    assert got == list(range(200))


# ---- request / reply ---------------------------------------------------------------


async def test_request_reply(bridge: EmbeddedBridge) -> None:
    async def responder(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "data.query":
            await ctx.reply(event, type="data.result", payload=event.payload[::-1])

    async with (
        Agent("service", ["service.topic"], on_event=responder, address=bridge.address),
        Agent("client", [], address=bridge.address) as client,
    ):
        with anyio.fail_after(5):
            response = await client.ctx.request(
                "service.topic", type="data.query", payload=b"abc", timeout_ms=3000
            )
    assert (response.type, response.payload, response.sender) == ("data.result", b"cba", "service")


async def test_request_without_responder_times_out(bridge: EmbeddedBridge) -> None:
    async with Agent("client", [], address=bridge.address) as client:
        with anyio.fail_after(5), pytest.raises(RequestTimeout):
            await client.ctx.request("nobody.listens", type="q", timeout_ms=50)


async def test_many_concurrent_requests(bridge: EmbeddedBridge) -> None:
    async def responder(ctx: Context, topic: str, event: Envelope) -> None:
        await ctx.reply(event, type="r", payload=event.payload)

    results: dict[int, bytes] = {}
    async with (
        Agent("service", ["svc"], on_event=responder, address=bridge.address),
        Agent("client", [], address=bridge.address) as client,
    ):

        async def ask(i: int) -> None:
            reply = await client.ctx.request("svc", type="q", payload=str(i).encode())
            results[i] = reply.payload

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(ask, i)
    assert results == {i: str(i).encode() for i in range(100)}


# ---- tools ---------------------------------------------------------------------------


@asynccontextmanager
async def tool_agents(bridge: EmbeddedBridge) -> AsyncIterator[Context]:
    async with (
        Agent(
            "provider",
            [],
            capabilities=[get_weather, get_weather_v2, always_fails, too_slow],
            address=bridge.address,
        ),
        Agent("caller", [], address=bridge.address) as caller,
    ):
        yield caller.ctx


async def test_tool_success_as_in_the_guide(bridge: EmbeddedBridge) -> None:
    async with tool_agents(bridge) as ctx:
        with anyio.fail_after(5):
            weather_data = await ctx.tool(
                "weather.get", version="1.0", payload={"city": "Seattle", "units": "metric"}
            )
            v2 = await ctx.tool_json("weather.get", version="2.0", payload={"city": "Oslo"})
            any_version = await ctx.tool_json("weather.get", version="", payload={"city": "Rome"})
    assert json.loads(weather_data) == {"city": "Seattle", "temp": 12}
    assert v2 == {"city": "Oslo", "temp": 12, "version": 2}
    assert any_version["city"] == "Rome"


async def test_tool_errors(bridge: EmbeddedBridge) -> None:
    async with tool_agents(bridge) as ctx:
        with anyio.fail_after(5):
            with pytest.raises(CapabilityNotFound):
                await ctx.tool(
                    "weather.get", version="9.9", payload={"city": "x"}, timeout_ms=60_000
                )
            with pytest.raises(CapabilityNotFound):
                await ctx.tool("no.such.tool", timeout_ms=60_000)
            with pytest.raises(InvalidArguments) as invalid:
                await ctx.tool("weather.get", payload={"town": "x"}, timeout_ms=60_000)
            assert "city" in invalid.value.message or "town" in invalid.value.message
            with pytest.raises(InvalidArguments):
                await ctx.tool("weather.get", payload=b"not json", timeout_ms=60_000)
            with pytest.raises(CapabilityError) as failed:
                await ctx.tool("always.fails", timeout_ms=60_000)
            assert failed.value.message == "ValueError: boom"
            with pytest.raises(ToolTimeout):
                await ctx.tool("too.slow", timeout_ms=50)


async def test_provider_may_call_tools_itself(bridge: EmbeddedBridge) -> None:
    @capability("weather.summary")
    async def summary(city: str) -> str:
        data = await provider.ctx.tool_json("weather.get", payload={"city": city})
        return f"{data['city']}: {data['temp']}"

    provider = Agent("provider", [], capabilities=[get_weather, summary], address=bridge.address)
    async with provider, Agent("caller", [], address=bridge.address) as caller:
        with anyio.fail_after(5):
            assert await caller.ctx.tool_json("weather.summary", payload={"city": "Lima"}) == (
                "Lima: 12"
            )


# ---- subscriptions and threads -------------------------------------------------------


async def test_join_and_leave_thread(bridge: EmbeddedBridge) -> None:
    async with (
        inbox_agent(bridge, "member", ["marker"]) as (member, inbox),
        Agent("producer", [], address=bridge.address) as producer,
    ):
        await member.ctx.join_thread("conv-1")
        await producer.ctx.emit("anywhere.at.all", type="in.thread", thread_id="conv-1")
        await producer.ctx.emit("anywhere.at.all", type="other.thread", thread_id="conv-2")
        await producer.ctx.emit("marker", type="marker")
        assert [(await next_event(inbox))[1].type for _ in range(2)] == ["in.thread", "marker"]

        await member.ctx.leave_thread("conv-1")
        await producer.ctx.emit("anywhere.at.all", type="in.thread", thread_id="conv-1")
        await producer.ctx.emit("marker", type="marker")
        assert (await next_event(inbox))[1].type == "marker"


async def test_subscribe_and_unsubscribe_patterns(bridge: EmbeddedBridge) -> None:
    async with (
        inbox_agent(bridge, "watcher", ["marker"]) as (watcher, inbox),
        Agent("producer", [], address=bridge.address) as producer,
    ):
        ctx = watcher.ctx
        emit = producer.ctx.emit
        await ctx.subscribe("metrics.*")
        await ctx.subscribe("logs.>", qos=2)
        await emit("metrics.cpu", type="a")
        await emit("metrics.cpu.load", type="not-matched")
        await emit("logs.app.error", type="b")
        await emit("marker", type="marker")
        got = [await next_event(inbox) for _ in range(3)]
        # one publisher's events arrive in order per QoS queue; logs.> uses another queue
        assert sorted((topic, event.type) for topic, event in got) == [
            ("logs.app.error", "b"),
            ("marker", "marker"),
            ("metrics.cpu", "a"),
        ]

        await ctx.unsubscribe("metrics.*")
        await ctx.unsubscribe("marker")
        await ctx.subscribe("marker2")
        await emit("metrics.cpu", type="gone")
        await emit("marker", type="gone")
        await emit("marker2", type="marker2")
        assert (await next_event(inbox))[1].type == "marker2"


async def test_state_survives_a_reconnect(bridge: EmbeddedBridge) -> None:
    async with (
        inbox_agent(bridge, "member", ["static"]) as (member, inbox),
        Agent("producer", [], address=bridge.address) as producer,
    ):
        await member.ctx.join_thread("conv-1")
        await member.ctx.subscribe("dynamic.*")
        runtime = member._runtime
        assert runtime is not None
        assert bridge.disconnect("member")
        # Sent after the drop, this goes out on the next connection right after the
        # frame that rejoins the thread: once it comes back, all state is restored.
        await member.ctx.emit("static", type="sync")
        assert (await next_event(inbox))[1].type == "sync"
        assert runtime.connections == 2
        await producer.ctx.emit("elsewhere", type="t", thread_id="conv-1")
        await producer.ctx.emit("static", type="s")
        await producer.ctx.emit("dynamic.x", type="d")
        # Three topics, three handler lanes: no order is promised between them.
        assert sorted([(await next_event(inbox))[1].type for _ in range(3)]) == ["d", "s", "t"]


# ---- the guide's examples --------------------------------------------------------------


@capability("greet.user", version="1.0")
def greet(name: str) -> dict[str, str]:
    """Greet a user by name."""
    return {"message": f"Hello, {name}!"}


async def handle_event(ctx: Context, topic: str, event: Envelope) -> None:
    if event.type == "greet.request":
        name = event.payload.decode()
        result = greet(name)
        await ctx.reply(event, type="greet.response", payload=str(result).encode())


async def test_guide_quick_start(bridge: EmbeddedBridge) -> None:
    agent = Agent(
        agent_id="greeter",
        topics=["greet.topic"],
        capabilities=[greet],
        on_event=handle_event,
        address=bridge.address,
    )
    async with agent, Agent("user", [], address=bridge.address) as user:
        with anyio.fail_after(5):
            reply = await user.ctx.request("greet.topic", type="greet.request", payload=b"Ada")
            tool_output = await user.ctx.tool("greet.user", payload={"name": "Bo"})
    assert reply.payload == str({"message": "Hello, Ada!"}).encode()
    assert json.loads(tool_output) == {"message": "Hello, Bo!"}


async def test_guide_multi_agent_collaboration(bridge: EmbeddedBridge) -> None:
    send, receive = anyio.create_memory_object_stream[bytes](1)

    async def planner_handler(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "user.question":
            await ctx.emit("topic.research", type="research.request", payload=event.payload)

    @capability("research.search", version="1.0")
    def search(query: str) -> dict[str, Any]:
        return {"results": ["https://example.com/doc1"]}

    async def researcher_handler(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "research.request":
            results = search(query=event.payload.decode())
            await ctx.emit("topic.writer", type="writer.draft", payload=str(results).encode())

    async def writer_handler(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "writer.draft":
            await send.send(event.payload + b"\nSUMMARY: Complete")

    address = bridge.address
    with send, receive:
        async with (
            Agent("planner", ["topic.planner"], on_event=planner_handler, address=address),
            Agent(
                "researcher",
                ["topic.research"],
                capabilities=[search],
                on_event=researcher_handler,
                address=address,
            ),
            Agent("writer", ["topic.writer"], on_event=writer_handler, address=address),
            Agent("user", [], address=address) as user,
        ):
            await user.ctx.emit("topic.planner", type="user.question", payload=b"why?")
            with anyio.fail_after(5):
                final = await receive.receive()
    assert final.endswith(b"SUMMARY: Complete")
    assert b"example.com" in final
