"""Every Context primitive end to end, through a real bridge process over gRPC.

The bridge is ``python -m loom bridge`` in a subprocess (tests/bridge_process.py).
Each test runs on both anyio backends (asyncio, trio) and over both wires the SDK's
gRPC connector speaks: the batched wire (``loom.batch.v1`` on ``EventBatchStream``)
and the plain v1 fallback (``EventStream`` plus unary ``ForwardAction``), which
``GrpcConnector(address, prefer_batched=False)`` forces.

The shared bridge process is never killed; the reconnect tests get one of their own.
Nothing here sleeps hoping for luck: every wait is for an event, bounded by
``anyio.fail_after``.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from bridge_process import BridgeProcess, bridge_process, fresh_bridge_process
from tool_capabilities import always_fails, get_weather, get_weather_v2, too_slow

from loom import (
    Agent,
    CapabilityError,
    CapabilityNotFound,
    ConnectionLost,
    Context,
    Envelope,
    InvalidArguments,
    MessageTooLarge,
    RequestTimeout,
    ToolTimeout,
    capability,
)
from loom._grpc_connector import GrpcConnector

__all__ = ["bridge_process", "fresh_bridge_process"]  # fixtures, used by name

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Seconds: the bound on anything that should happen promptly."""
LONG_TIMEOUT_MS = 60_000
"""A timeout_ms far beyond WAIT: errors must come from the answer, not the timeout."""

FAST = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 5.0,
    "reconnect_initial": 0.02,
    "reconnect_max": 0.2,
    "stop_grace": 2.0,
}
"""Agent settings that keep reconnects quick."""

_ids = itertools.count(1)

Received = tuple[str, Envelope]


@pytest.fixture(params=["batched", "v1"])
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Net:
    """Makes agents on one bridge over one wire, with names unique to the test."""

    def __init__(self, address: str, wire: str) -> None:
        self.address = address
        self.wire = wire
        self.prefix = f"t{next(_ids)}{wire[0]}"

    def name(self, base: str) -> str:
        """An agent id, topic or thread id unique to this test."""
        return f"{self.prefix}-{base}"

    def connector(self) -> GrpcConnector:
        return GrpcConnector(self.address, prefer_batched=self.wire == "batched")

    def agent(self, base: str, topics: list[str] | None = None, **options: Any) -> Agent:
        for key, value in FAST.items():
            options.setdefault(key, value)
        options.setdefault("connector", self.connector())
        return Agent(self.name(base), topics or [], **options)

    @asynccontextmanager
    async def inbox(
        self, base: str, topics: list[str], history: list[Received] | None = None, **options: Any
    ) -> AsyncIterator[tuple[Agent, MemoryObjectReceiveStream[Received]]]:
        """An agent whose handler puts every (topic, event) it gets in a stream (and
        appends it to ``history``: complete once the agent has stopped)."""
        send, receive = anyio.create_memory_object_stream[Received](1000)

        async def collect(ctx: Context, topic: str, event: Envelope) -> None:
            if history is not None:
                history.append((topic, event))
            await send.send((topic, event))

        with send, receive:
            async with self.agent(base, topics, on_event=collect, **options) as agent:
                yield agent, receive


@pytest.fixture
def net(bridge_process: BridgeProcess, wire: str) -> Net:
    return Net(bridge_process.address, wire)


async def next_event(inbox: MemoryObjectReceiveStream[Received]) -> Received:
    with anyio.fail_after(WAIT):
        return await inbox.receive()


async def next_events(inbox: MemoryObjectReceiveStream[Received], n: int) -> list[Received]:
    return [await next_event(inbox) for _ in range(n)]


async def until_type(inbox: MemoryObjectReceiveStream[Received], kind: str) -> None:
    """Consume events until one of type ``kind``. Events on other topics may be
    handled in any order, but every event delivered before it has been handed to the
    handler lanes, so once the agent has stopped, its history is complete up to it."""
    while (await next_event(inbox))[1].type != kind:
        pass


def types_in(history: list[Received]) -> set[tuple[str, str]]:
    return {(topic, event.type) for topic, event in history}


def runtime_of(agent: Agent) -> Any:
    runtime = agent._runtime
    assert runtime is not None
    return runtime


# ---- events ---------------------------------------------------------------------------


async def test_emit_reaches_subscribers(net: Net) -> None:
    topic = net.name("orders.created")
    async with (
        net.inbox("consumer", [topic]) as (_, inbox),
        net.agent("producer") as producer,
    ):
        sent = await producer.ctx.emit(
            topic, type="order", payload=b"42", thread_id="th", metadata={"k": "v"}
        )
        got_topic, event = await next_event(inbox)
    assert got_topic == topic
    assert (event.id, event.type, event.payload) == (sent.id, "order", b"42")
    assert (event.sender, event.thread_id, event.metadata) == (producer.agent_id, "th", {"k": "v"})
    assert event.timestamp_ms == sent.timestamp_ms


async def test_publisher_receives_its_own_event_when_subscribed(net: Net) -> None:
    topic = net.name("echo")
    async with net.inbox("self", [topic]) as (agent, inbox):
        sent = await agent.ctx.emit(topic, type="ping", payload=b"me")
        _, event = await next_event(inbox)
    assert (event.id, event.sender, event.payload) == (sent.id, agent.agent_id, b"me")


async def test_events_of_a_publisher_arrive_in_order(net: Net) -> None:
    topic = net.name("seq")
    async with (
        net.inbox("consumer", [topic]) as (_, inbox),
        net.agent("producer") as producer,
    ):
        for i in range(200):
            await producer.ctx.emit(topic, type="n", payload=str(i).encode())
        got = [int(event.payload) for _, event in await next_events(inbox, 200)]
    assert got == list(range(200))


async def test_pattern_subscriptions(net: Net) -> None:
    base = net.name("metrics")
    marker = net.name("marker")
    history: list[Received] = []
    async with (
        net.inbox("watcher", [f"{base}.*", f"{base}.disk.>", marker], history) as (_, inbox),
        net.agent("producer") as producer,
    ):
        emit = producer.ctx.emit
        await emit(f"{base}.cpu", type="one-segment")
        await emit(f"{base}.cpu.load", type="not-matched")
        await emit(f"{base}.disk.sda.free", type="tail")
        await emit(f"{base}", type="not-matched")
        await emit(f"{base}x.cpu", type="not-matched")
        await emit(marker, type="marker")
        await until_type(inbox, "marker")
    assert types_in(history) == {
        (f"{base}.cpu", "one-segment"),
        (f"{base}.disk.sda.free", "tail"),
        (marker, "marker"),
    }


# ---- request / reply ---------------------------------------------------------------


async def reverse_responder(ctx: Context, topic: str, event: Envelope) -> None:
    if event.type == "data.query":
        await ctx.reply(event, type="data.result", payload=event.payload[::-1])


async def test_request_reply(net: Net) -> None:
    service = net.name("service")
    async with (
        net.agent("service", [service], on_event=reverse_responder) as responder,
        net.agent("client") as client,
    ):
        with anyio.fail_after(WAIT):
            response = await client.ctx.request(
                service, type="data.query", payload=b"abc", timeout_ms=LONG_TIMEOUT_MS
            )
        assert len(runtime_of(client).requests) == 0
    assert (response.type, response.payload) == ("data.result", b"cba")
    assert response.sender == responder.agent_id
    assert response.correlation_id is not None


async def test_fifty_concurrent_requests(net: Net) -> None:
    service = net.name("svc")
    results: dict[int, bytes] = {}

    async def echo(ctx: Context, topic: str, event: Envelope) -> None:
        await ctx.reply(event, type="r", payload=event.payload)

    async with (
        net.agent("service", [service], on_event=echo),
        net.agent("client") as client,
    ):

        async def ask(i: int) -> None:
            reply = await client.ctx.request(
                service, type="q", payload=str(i).encode(), timeout_ms=LONG_TIMEOUT_MS
            )
            results[i] = reply.payload

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(ask, i)
        assert len(runtime_of(client).requests) == 0
    assert results == {i: str(i).encode() for i in range(50)}


async def test_request_without_responder_times_out(net: Net) -> None:
    async with net.agent("client") as client:
        with anyio.fail_after(WAIT), pytest.raises(RequestTimeout):
            await client.ctx.request(net.name("nobody.listens"), type="q", timeout_ms=100)
        assert len(runtime_of(client).requests) == 0


# ---- tools ---------------------------------------------------------------------------


@asynccontextmanager
async def tool_agents(net: Net, *extra: Any) -> AsyncIterator[Context]:
    async with (
        net.agent(
            "provider", capabilities=[get_weather, get_weather_v2, always_fails, too_slow, *extra]
        ),
        net.agent("caller") as caller,
    ):
        yield caller.ctx


async def test_tool_success(net: Net) -> None:
    async with tool_agents(net) as ctx:
        with anyio.fail_after(WAIT):
            raw = await ctx.tool(
                "weather.get", version="1.0", payload={"city": "Seattle", "units": "metric"}
            )
            v2 = await ctx.tool_json("weather.get", version="2.0", payload={"city": "Oslo"})
            any_version = await ctx.tool_json("weather.get", version="", payload={"city": "Rome"})
    assert json.loads(raw) == {"city": "Seattle", "temp": 12}
    assert v2 == {"city": "Oslo", "temp": 12, "version": 2}
    assert any_version["city"] == "Rome"


async def test_tool_errors_are_raised_at_once(net: Net) -> None:
    async with tool_agents(net) as ctx:
        # every answer but the timeout must come long before timeout_ms
        with anyio.fail_after(WAIT):
            with pytest.raises(CapabilityNotFound):
                await ctx.tool("no.such.tool", timeout_ms=LONG_TIMEOUT_MS)
            with pytest.raises(CapabilityNotFound):
                await ctx.tool(
                    "weather.get", version="9.9", payload={"city": "x"}, timeout_ms=LONG_TIMEOUT_MS
                )
            with pytest.raises(InvalidArguments) as invalid:
                await ctx.tool("weather.get", payload={"town": "x"}, timeout_ms=LONG_TIMEOUT_MS)
            assert "city" in invalid.value.message or "town" in invalid.value.message
            with pytest.raises(InvalidArguments):
                await ctx.tool("weather.get", payload={"city": 42}, timeout_ms=LONG_TIMEOUT_MS)
            with pytest.raises(InvalidArguments):
                await ctx.tool("weather.get", payload=b"not json", timeout_ms=LONG_TIMEOUT_MS)
            with pytest.raises(CapabilityError) as failed:
                await ctx.tool("always.fails", timeout_ms=LONG_TIMEOUT_MS)
            assert failed.value.message == "ValueError: boom"
            with pytest.raises(ToolTimeout):
                await ctx.tool("too.slow", timeout_ms=200)
            # the agent is fine afterwards
            assert (await ctx.tool_json("weather.get", payload={"city": "Lima"}))["temp"] == 12


# ---- subscriptions and threads -------------------------------------------------------


async def test_join_and_leave_thread(net: Net) -> None:
    marker = net.name("marker")
    elsewhere = net.name("anywhere.at.all")
    conv = net.name("conv-1")
    history: list[Received] = []
    async with (
        net.inbox("member", [marker], history) as (member, inbox),
        net.agent("producer") as producer,
    ):
        with anyio.fail_after(WAIT):
            await member.ctx.join_thread(conv)
        await producer.ctx.emit(elsewhere, type="in.thread", thread_id=conv)
        await producer.ctx.emit(elsewhere, type="other.thread", thread_id=net.name("conv-2"))
        await producer.ctx.emit(marker, type="marker")
        # different topics are handled on different lanes: no order between them
        got = {(topic, event.type) for topic, event in await next_events(inbox, 2)}
        assert got == {(elsewhere, "in.thread"), (marker, "marker")}

        with anyio.fail_after(WAIT):
            await member.ctx.leave_thread(conv)
        await producer.ctx.emit(elsewhere, type="left.thread", thread_id=conv)
        await producer.ctx.emit(marker, type="marker2")
        await until_type(inbox, "marker2")
    assert types_in(history) == {
        (elsewhere, "in.thread"),
        (marker, "marker"),
        (marker, "marker2"),
    }


async def test_subscribe_and_unsubscribe(net: Net) -> None:
    metrics = net.name("metrics")
    logs = net.name("logs")
    marker = net.name("marker")
    marker2 = net.name("marker2")
    history: list[Received] = []
    async with (
        net.inbox("watcher", [marker], history) as (watcher, inbox),
        net.agent("producer") as producer,
    ):
        ctx = watcher.ctx
        emit = producer.ctx.emit
        with anyio.fail_after(WAIT):
            await ctx.subscribe(f"{metrics}.*")
            await ctx.subscribe(f"{logs}.>", qos=2)
        await emit(f"{metrics}.cpu", type="a")
        await emit(f"{metrics}.cpu.load", type="not-matched")
        await emit(f"{logs}.app.error", type="b")
        await emit(marker, type="marker")
        got = {(topic, event.type) for topic, event in await next_events(inbox, 3)}
        assert got == {(f"{logs}.app.error", "b"), (marker, "marker"), (f"{metrics}.cpu", "a")}

        with anyio.fail_after(WAIT):
            await ctx.unsubscribe(f"{metrics}.*")
            await ctx.unsubscribe(marker)
            await ctx.subscribe(marker2)
        await emit(f"{metrics}.cpu", type="gone")
        await emit(marker, type="gone")
        await emit(marker2, type="marker2")
        await until_type(inbox, "marker2")
    assert types_in(history) == {
        (f"{metrics}.cpu", "a"),
        (f"{logs}.app.error", "b"),
        (marker, "marker"),
        (marker2, "marker2"),
    }


# ---- handler failures and cancellation -----------------------------------------------


async def test_handler_exception_is_logged_and_the_agent_keeps_running(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    topic = net.name("fragile")
    send, receive = anyio.create_memory_object_stream[str](10)

    async def fragile(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "boom":
            raise RuntimeError("handler exploded")
        await send.send(event.type)

    caplog.set_level(logging.ERROR, logger="loom")
    with send, receive:
        async with net.agent("fragile", [topic], on_event=fragile) as agent:
            await agent.ctx.emit(topic, type="boom")
            await agent.ctx.emit(topic, type="ok")
            with anyio.fail_after(WAIT):
                assert await receive.receive() == "ok"
            assert agent.running and agent.connected
    failures = [r for r in caplog.records if "event handler failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "handler exploded" in str(failures[0].exc_info[1])


async def test_cancelling_a_request_midway_leaves_a_consistent_state(net: Net) -> None:
    service = net.name("slow.service")
    arrived = anyio.Event()
    release = anyio.Event()

    async def slow_then_fast(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "slow":
            arrived.set()
            await release.wait()
        await ctx.reply(event, type="answer", payload=event.payload)

    async with (
        net.agent("service", [service], on_event=slow_then_fast),
        net.agent("client") as client,
    ):
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:

                async def ask_slowly() -> None:
                    await client.ctx.request(
                        service, type="slow", payload=b"1", timeout_ms=LONG_TIMEOUT_MS
                    )
                    pytest.fail("the cancelled request returned")

                tg.start_soon(ask_slowly)
                await arrived.wait()
                tg.cancel_scope.cancel()
        assert len(runtime_of(client).requests) == 0
        release.set()  # its late reply is dropped
        with anyio.fail_after(WAIT):
            answers = [
                await client.ctx.request(
                    service, type="fast", payload=str(i).encode(), timeout_ms=LONG_TIMEOUT_MS
                )
                for i in range(3)
            ]
        assert [a.payload for a in answers] == [b"0", b"1", b"2"]
        assert len(runtime_of(client).requests) == 0


async def test_cancelling_a_tool_call_midway_leaves_a_consistent_state(net: Net) -> None:
    started = anyio.Event()
    release = anyio.Event()

    @capability("blocking.op")
    async def blocking_op(n: int) -> int:
        if n == 0:
            started.set()
            await release.wait()
        return n * 2

    async with tool_agents(net, blocking_op) as ctx:
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:

                async def call_slowly() -> None:
                    await ctx.tool("blocking.op", payload={"n": 0}, timeout_ms=LONG_TIMEOUT_MS)
                    pytest.fail("the cancelled call returned")

                tg.start_soon(call_slowly)
                await started.wait()
                tg.cancel_scope.cancel()
        release.set()  # its late result is dropped
        with anyio.fail_after(WAIT):
            outputs = [
                await ctx.tool_json("blocking.op", payload={"n": n}, timeout_ms=LONG_TIMEOUT_MS)
                for n in (1, 2, 3)
            ]
            with pytest.raises(CapabilityError):
                await ctx.tool("always.fails", timeout_ms=LONG_TIMEOUT_MS)
    assert outputs == [2, 4, 6]


# ---- large payloads --------------------------------------------------------------------

MIB = 1024 * 1024


async def test_one_mib_event_request_and_tool(net: Net) -> None:
    topic = net.name("big")
    service = net.name("big.service")
    payload = bytes(range(256)) * (MIB // 256)

    @capability("blob.size")
    def blob_size(blob: str) -> int:
        return len(blob)

    async def echo(ctx: Context, topic: str, event: Envelope) -> None:
        await ctx.reply(event, type="echo", payload=event.payload)

    async with (
        net.inbox("consumer", [topic]) as (_, inbox),
        net.agent("service", [service], on_event=echo, capabilities=[blob_size]),
        net.agent("producer") as producer,
    ):
        await producer.ctx.emit(topic, type="big", payload=payload)
        _, event = await next_event(inbox)
        assert event.payload == payload
        with anyio.fail_after(WAIT):
            reply = await producer.ctx.request(
                service, type="q", payload=payload, timeout_ms=LONG_TIMEOUT_MS
            )
            assert reply.payload == payload
            size = await producer.ctx.tool_json(
                "blob.size", payload={"blob": "x" * MIB}, timeout_ms=LONG_TIMEOUT_MS
            )
            assert size == MIB


async def test_event_over_the_message_limit_is_refused_and_the_agent_keeps_working(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    topic = net.name("huge")
    service = net.name("huge.service")
    too_big = b"x" * (5 * MIB)  # the bridge takes messages up to 4 MiB

    @capability("huge.output")
    def huge_output() -> str:
        return "x" * (5 * MIB)

    caplog.set_level(logging.WARNING, logger="loom")
    async with (
        net.inbox("consumer", [topic]) as (_, inbox),
        net.agent("service", [service], on_event=reverse_responder, capabilities=[huge_output]),
        net.agent("producer") as producer,
    ):
        await producer.ctx.emit(topic, type="before")
        await producer.ctx.emit(topic, type="huge", payload=too_big)
        await producer.ctx.emit(topic, type="after")
        got = [event.type for _, event in await next_events(inbox, 2)]
        assert got == ["before", "after"]
        # a request or tool call that is too large fails at once with a clear error
        with anyio.fail_after(WAIT):
            with pytest.raises(MessageTooLarge):
                await producer.ctx.request(
                    service, type="data.query", payload=too_big, timeout_ms=LONG_TIMEOUT_MS
                )
            with pytest.raises(MessageTooLarge):
                await producer.ctx.tool(
                    "anything", payload={"blob": "x" * (5 * MIB)}, timeout_ms=LONG_TIMEOUT_MS
                )
            # so does a tool call whose result is too large to send back
            with pytest.raises(CapabilityError) as failed:
                await producer.ctx.tool("huge.output", timeout_ms=LONG_TIMEOUT_MS)
            assert "exceeds" in failed.value.message
            reply = await producer.ctx.request(
                service, type="data.query", payload=b"ok", timeout_ms=LONG_TIMEOUT_MS
            )
        assert reply.payload == b"ko"
        assert producer.connected
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("exceeds" in m and "Publish" in m for m in messages), messages


async def test_incoming_message_over_the_agent_s_limit_costs_a_reconnect_not_the_agent(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """A message larger than the agent's own receive limit aborts the stream: the
    agent reconnects (in-flight requests fail with ConnectionLost) and carries on."""
    topic = net.name("inbound")
    sink = net.name("sink")
    arrived = anyio.Event()

    async def never_answer(ctx: Context, topic: str, event: Envelope) -> None:
        arrived.set()

    caplog.set_level(logging.WARNING, logger="loom")
    connector = GrpcConnector(
        net.address, prefer_batched=net.wire == "batched", max_message_size=256 * 1024
    )
    async with (
        net.agent("sink", [sink], on_event=never_answer),
        net.inbox("small", [topic], connector=connector) as (small, inbox),
        net.agent("producer") as producer,
    ):
        await producer.ctx.emit(topic, type="fits")
        assert (await next_event(inbox))[1].type == "fits"
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:

                async def pending() -> None:
                    with pytest.raises(ConnectionLost):
                        await small.ctx.request(sink, type="q", timeout_ms=LONG_TIMEOUT_MS)

                tg.start_soon(pending)
                await arrived.wait()
                await producer.ctx.emit(topic, type="too-big", payload=b"x" * (512 * 1024))
        await small.ctx.emit(topic, type="after")
        assert (await next_event(inbox))[1].type == "after"
        assert small.running
        assert runtime_of(small).connections == 2
    assert any("exceeds the limit" in r.getMessage() for r in caplog.records)


# ---- reconnect ---------------------------------------------------------------------------
#
# The bridge keeps no state across a restart and delivers an event only to agents
# attached when it is published. So before it is killed, every agent that must emit
# afterwards has a request in flight (to an agent that never answers): that request
# failing with ConnectionLost shows the agent saw the connection drop, so what it emits
# next waits in its outbox for the next connection. After the restart, an agent that
# receives an event it sent itself is attached again.


async def hang_until_killed(bridge: BridgeProcess, arrived: anyio.Event, *asks: Any) -> None:
    """Run the requests/calls ``asks`` (zero-argument async callables); once
    ``arrived`` is set (they reached their targets), SIGKILL the bridge. Each must then
    fail with ConnectionLost."""
    errors: list[BaseException] = []

    async def ask(fn: Any) -> None:
        try:
            await fn()
        except ConnectionLost as exc:
            errors.append(exc)
        else:
            pytest.fail("a request pending when the bridge died returned")

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for fn in asks:
                tg.start_soon(ask, fn)
            await arrived.wait()
            bridge.kill()
    assert len(errors) == len(asks)


@pytest.mark.timeout(120)
async def test_agents_come_back_after_the_bridge_is_killed(
    fresh_bridge_process: BridgeProcess, wire: str
) -> None:
    bridge = fresh_bridge_process
    net = Net(bridge.address, wire)
    static = net.name("static")
    dynamic = net.name("dynamic")
    service = net.name("service")
    conv = net.name("conv")
    late = net.name("late")
    hung: list[Envelope] = []
    all_hung = anyio.Event()
    back = anyio.Event()

    async def service_handler(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "hang":  # never answered
            hung.append(event)
            if len(hung) == 3:
                all_hung.set()
        elif event.type == "back":
            back.set()
        else:
            await ctx.reply(event, type="answer", payload=event.payload[::-1])

    async with (
        net.inbox("member", [static]) as (member, inbox),
        net.agent(
            "service", [service], on_event=service_handler, capabilities=[get_weather]
        ) as server,
        net.agent("client") as client,
    ):
        with anyio.fail_after(WAIT):
            await member.ctx.join_thread(conv)
            await member.ctx.subscribe(f"{dynamic}.*")
        await client.ctx.emit(f"{dynamic}.x", type="before")
        assert (await next_event(inbox))[1].type == "before"

        def hang(agent: Agent) -> Any:
            return lambda: agent.ctx.request(service, type="hang", timeout_ms=LONG_TIMEOUT_MS)

        await hang_until_killed(bridge, all_hung, hang(client), hang(member), hang(server))
        for agent in (member, server, client):
            assert not agent.connected
            assert len(runtime_of(agent).requests) == 0

        # sent while the bridge is down: they wait in the outbox
        await member.ctx.emit(static, type="while-down-1")
        await member.ctx.emit(static, type="while-down-2")
        await server.ctx.emit(service, type="back")

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                # a subscription made while down is confirmed once the bridge is back
                tg.start_soon(partial(member.ctx.subscribe, late, timeout_ms=LONG_TIMEOUT_MS))
                await bridge.restart_async()
        got = [event.type for _, event in await next_events(inbox, 2)]
        assert got == ["while-down-1", "while-down-2"]
        with anyio.fail_after(WAIT):
            await back.wait()

        # everything works again, including the dynamic subscription and the thread
        with anyio.fail_after(WAIT):
            reply = await client.ctx.request(
                service, type="q", payload=b"abc", timeout_ms=LONG_TIMEOUT_MS
            )
            assert reply.payload == b"cba"
            weather = await client.ctx.tool_json(
                "weather.get", payload={"city": "Oslo"}, timeout_ms=LONG_TIMEOUT_MS
            )
            assert weather["city"] == "Oslo"
        await client.ctx.emit(net.name("elsewhere"), type="in-thread", thread_id=conv)
        await client.ctx.emit(static, type="static")
        await client.ctx.emit(f"{dynamic}.y", type="dynamic")
        await client.ctx.emit(late, type="late")
        got = [event.type for _, event in await next_events(inbox, 4)]
        assert sorted(got) == ["dynamic", "in-thread", "late", "static"]
        for agent in (member, server, client):
            assert runtime_of(agent).connections == 2
            assert agent.connected


@pytest.mark.timeout(120)
async def test_pending_tool_call_fails_with_connection_lost(
    fresh_bridge_process: BridgeProcess, wire: str
) -> None:
    bridge = fresh_bridge_process
    net = Net(bridge.address, wire)
    own = net.name("provider.own")
    started = anyio.Event()
    release = anyio.Event()

    @capability("hangs")
    async def hangs() -> None:
        started.set()
        await release.wait()

    async with (
        net.inbox("provider", [own], capabilities=[hangs, get_weather]) as (provider, inbox),
        net.agent("caller") as caller,
    ):
        provider_hangs = anyio.Event()

        async def both_hang() -> None:
            await started.wait()
            assert (await next_event(inbox))[1].type == "hang"
            provider_hangs.set()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(both_hang)
                await hang_until_killed(
                    bridge,
                    provider_hangs,
                    lambda: caller.ctx.tool("hangs", timeout_ms=LONG_TIMEOUT_MS),
                    lambda: provider.ctx.request(own, type="hang", timeout_ms=LONG_TIMEOUT_MS),
                )
        assert len(runtime_of(caller).calls) == 0
        release.set()  # its result goes nowhere: the call is gone

        await provider.ctx.emit(own, type="back")
        await bridge.restart_async()
        assert (await next_event(inbox))[1].type == "back"
        with anyio.fail_after(WAIT):
            weather = await caller.ctx.tool_json(
                "weather.get", payload={"city": "Rome"}, timeout_ms=LONG_TIMEOUT_MS
            )
        assert weather["city"] == "Rome"
        assert runtime_of(caller).connections == 2


@pytest.mark.timeout(120)
async def test_a_hung_bridge_is_detected_by_the_heartbeat(
    fresh_bridge_process: BridgeProcess, wire: str
) -> None:
    """SIGSTOP leaves the connection open but silent: the heartbeat declares it dead
    (the pending request fails with ConnectionLost), and once the bridge runs again
    the agent is back on a new connection."""
    bridge = fresh_bridge_process
    net = Net(bridge.address, wire)
    own = net.name("own")
    async with net.inbox("agent", [own], heartbeat_timeout=1.0) as (agent, inbox):
        await agent.ctx.emit(own, type="before")
        assert (await next_event(inbox))[1].type == "before"
        bridge.pause()
        try:
            with anyio.fail_after(WAIT), pytest.raises(ConnectionLost):
                await agent.ctx.request(own + ".nobody", type="q", timeout_ms=LONG_TIMEOUT_MS)
            await agent.ctx.emit(own, type="after")
        finally:
            bridge.resume()
        assert (await next_event(inbox))[1].type == "after"
        assert runtime_of(agent).connections >= 2


# ---- unreachable bridge ------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_start_fails_fast_when_the_bridge_is_unreachable(wire: str) -> None:
    address = f"127.0.0.1:{unused_port()}"
    agent = Agent(
        "lonely",
        ["t"],
        connector=GrpcConnector(address, prefer_batched=wire == "batched"),
        heartbeat_timeout=30.0,
    )
    with anyio.fail_after(WAIT), pytest.raises(ConnectionLost):
        await agent.start()
    assert not agent.running
    # the address form goes through the same path
    with anyio.fail_after(WAIT), pytest.raises(ConnectionLost):
        await Agent("lonely", ["t"], address=address, heartbeat_timeout=30.0).start()
