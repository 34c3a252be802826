"""Unit tests of :class:`loom.context.Context` against a scripted bridge (tests/fakes.py)."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any
from unittest.mock import AsyncMock, Mock

import anyio
import msgspec
import pytest
from fakes import FakeConnector, FakeLink, connector, envelope, running_agent
from hypothesis import given
from hypothesis import strategies as st

from loom._frames import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RETRYABLE,
    STATUS_TIMEOUT,
    Call,
    Error,
    Publish,
    Result,
    Subscribe,
    Subscribed,
)
from loom._subscriptions import SubscriptionState
from loom.agent import Agent
from loom.context import Context
from loom.envelope import Envelope, new_id
from loom.errors import (
    CapabilityError,
    CapabilityNotFound,
    ConfigurationError,
    ConnectionLost,
    InvalidArguments,
    RemoteError,
    RequestTimeout,
    ToolTimeout,
)

__all__ = ["connector"]  # a fixture, used by name

pytestmark = pytest.mark.anyio


def runtime_of(agent: Agent) -> Any:
    runtime = agent._runtime
    assert runtime is not None
    return runtime


# ---- emit ---------------------------------------------------------------------------


async def test_emit_builds_the_envelope(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        sent = await agent.ctx.emit(
            "orders.created",
            type="order",
            payload=b"{}",
            thread_id="th",
            ttl_ms=500,
            metadata={"k": "v"},
        )
        topic, event = await link.published()
    assert topic == "orders.created"
    assert event == sent
    assert (event.sender, event.source, event.thread_id, event.ttl_ms) == ("a", "a", "th", 500)
    assert event.metadata == {"k": "v"}
    assert event.timestamp_ms > 0


async def test_emit_with_an_envelope_as_in_the_guide(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        thread_id = f"thread-{uuid.uuid4()}"
        given = Envelope.new(
            event_id=str(uuid.uuid4()),
            event_type="message",
            payload=b"Hello",
            thread_id=thread_id,
        )
        sent = await agent.ctx.emit(
            "conversation.topic", type="message", payload=b"Hello", envelope=given
        )
        _, event = await link.published()
        assert event == sent
        assert (event.id, event.type, event.payload) == (given.id, "message", b"Hello")
        assert event.thread_id == thread_id
        assert event.sender == "a"  # filled in
        assert given.sender is None  # the caller's envelope is not modified

        bare = Envelope(id="e1", type="")
        sent = await agent.ctx.emit("t", type="filled", envelope=bare, metadata={"x": "1"})
        _, event = await link.published()
        assert (event.id, event.type, event.metadata) == ("e1", "filled", {"x": "1"})


@pytest.mark.parametrize("topic", ["", "a.*", "a.>", "a..b", "has space"])
async def test_emit_refuses_invalid_topics(connector: FakeConnector, topic: str) -> None:
    async with running_agent(connector) as (agent, link):
        with pytest.raises(ConfigurationError):
            await agent.ctx.emit(topic, type="x")
        with pytest.raises(ConfigurationError):
            await agent.ctx.request(topic, type="x")
        assert link.drain() == []


async def test_context_needs_a_running_agent(connector: FakeConnector) -> None:
    agent = Agent("a", ["t"], connector=connector)
    with pytest.raises(ConnectionLost, match="not running"):
        await agent.ctx.emit("t", type="x")
    with pytest.raises(ConnectionLost, match="not running"):
        await agent.ctx.tool("x")


# ---- request / reply ---------------------------------------------------------------


async def test_request_gets_the_reply_with_its_correlation_id(connector: FakeConnector) -> None:
    handled: list[Envelope] = []
    stray_seen = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        handled.append(event)
        stray_seen.set()

    async with running_agent(connector, on_event=handler) as (agent, link):
        replies: list[Envelope] = []

        async def ask() -> None:
            replies.append(await agent.ctx.request("svc", type="q", payload=b"?", thread_id="th"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(5):
                topic, request = await link.published()
            assert topic == "svc"
            assert request.correlation_id == request.id
            assert request.reply_to == "agent.a.replies"
            assert (request.sender, request.thread_id, request.payload) == ("a", "th", b"?")
            answer = envelope("r", b"!", correlation_id=request.id)
            await link.deliver("agent.a.replies", answer)
        assert replies == [answer]
        # a second reply to the same request is dropped, a stranger's goes to the handler
        await link.deliver("agent.a.replies", envelope("r2", correlation_id=request.id))
        stray = envelope("stray", correlation_id="someone-else")
        await link.deliver("agent.a.replies", stray)
        with anyio.fail_after(5):
            await stray_seen.wait()
        assert handled == [stray]
        assert len(runtime_of(agent).requests) == 0


async def test_request_times_out(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, _):
        with anyio.fail_after(5), pytest.raises(RequestTimeout) as info:
            await agent.ctx.request("svc", type="q", timeout_ms=50)
        assert isinstance(info.value, TimeoutError)
        assert len(runtime_of(agent).requests) == 0


async def test_cancelled_request_leaves_no_pending_entry(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(agent.ctx.request, "svc", type="q", timeout_ms=60_000))
            with anyio.fail_after(5):
                _, request = await link.published()
            assert len(runtime_of(agent).requests) == 1
            tg.cancel_scope.cancel()
        assert len(runtime_of(agent).requests) == 0
        # a reply arriving after that is dropped, not dispatched
        await link.deliver("agent.a.replies", envelope("r", correlation_id=request.id))


async def test_request_fails_on_an_error_frame(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        async with anyio.create_task_group() as tg:

            async def ask() -> None:
                with pytest.raises(RemoteError, match="DENIED"):
                    await agent.ctx.request("svc", type="q", timeout_ms=60_000)

            tg.start_soon(ask)
            with anyio.fail_after(5):
                _, request = await link.published()
                await link.inject(Error("DENIED", "not allowed", ref=request.id))


async def test_reply_goes_to_reply_to_with_the_correlation_id(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        original = envelope(
            "q", correlation_id="corr", reply_to="custom.replies", thread_id="th", sender="b"
        )
        sent = await agent.ctx.reply(original, type="r", payload=b"ok")
        topic, event = await link.published()
    assert topic == "custom.replies"
    assert event == sent
    assert (event.correlation_id, event.thread_id, event.sender) == ("corr", "th", "a")


async def test_reply_falls_back_to_the_sender_and_the_event_id(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        # what the original client's request() put on the wire: only the sender
        original = envelope("q", sender="requester")
        await agent.ctx.reply(original, type="r")
        topic, event = await link.published()
        assert topic == "agent.requester.replies"
        assert event.correlation_id == original.id
        assert event.thread_id is None
        with pytest.raises(ConfigurationError, match="neither"):
            await agent.ctx.reply(Envelope.new(type="q"), type="r")


# ---- tools --------------------------------------------------------------------------


async def answer_call(link: FakeLink, result: Result) -> Call:
    call = await link.expect(Call)
    result.id = call.id
    await link.inject(result)
    return call


async def test_tool_sends_the_call_and_returns_the_output(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        outputs: list[bytes] = []

        async def call_tool() -> None:
            outputs.append(
                await agent.ctx.tool(
                    "weather.get",
                    version="1.0",
                    payload={"city": "Seattle", "units": "metric"},
                    timeout_ms=60_000,
                    headers={"x-trace": "1"},
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool)
            with anyio.fail_after(5):
                call = await answer_call(link, Result("", STATUS_OK, b'{"temp": 12}'))
    assert outputs == [b'{"temp": 12}']
    assert (call.capability, call.version, call.timeout_ms) == ("weather.get", "1.0", 60_000)
    assert msgspec.json.decode(call.payload) == {"city": "Seattle", "units": "metric"}
    assert call.headers["x-agent-id"] == "a"
    assert call.headers["x-correlation-id"] == call.correlation_id == call.id
    assert call.headers["x-trace"] == "1"


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (
            Result("", STATUS_ERROR, error_code="NOT_FOUND", error_message="none"),
            CapabilityNotFound,
        ),
        (
            Result("", STATUS_ERROR, error_code="INVALID_INPUT", error_message="$.a"),
            InvalidArguments,
        ),
        (
            Result("", STATUS_ERROR, error_code="CAPABILITY_ERROR", error_message="boom"),
            CapabilityError,
        ),
        (Result("", STATUS_TIMEOUT, error_code="TIMEOUT", error_message="slow"), ToolTimeout),
        (Result("", STATUS_ERROR, error_code="PROVIDER_GONE", error_message="bye"), RemoteError),
        (Result("", STATUS_RETRYABLE, error_code="BUSY", error_message="later"), RemoteError),
    ],
)
async def test_tool_errors_are_raised_as_soon_as_they_arrive(
    connector: FakeConnector, result: Result, error: type[Exception]
) -> None:
    async with running_agent(connector) as (agent, link):
        failures: list[Exception] = []

        async def call_tool() -> None:
            try:
                await agent.ctx.tool("x.y", payload={"a": 1}, timeout_ms=60_000)
            except Exception as exc:
                failures.append(exc)

        with anyio.fail_after(5):  # far below timeout_ms: the answer ends the wait
            async with anyio.create_task_group() as tg:
                tg.start_soon(call_tool)
                await answer_call(link, result)
        assert len(runtime_of(agent).calls) == 0
    assert len(failures) == 1
    assert type(failures[0]) is error
    if isinstance(failures[0], RemoteError):
        assert failures[0].code == result.error_code
        assert failures[0].message == result.error_message


async def test_tool_without_result_times_out(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        with anyio.fail_after(5), pytest.raises(ToolTimeout):
            await agent.ctx.tool("x.y", timeout_ms=50)
        await link.expect(Call)
        assert len(runtime_of(agent).calls) == 0


async def test_tool_fails_when_the_connection_drops(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        async with anyio.create_task_group() as tg:

            async def call_tool() -> None:
                with pytest.raises(ConnectionLost):
                    await agent.ctx.tool("x.y", timeout_ms=60_000)

            tg.start_soon(call_tool)
            with anyio.fail_after(5):
                await link.expect(Call)
                link.drop()


async def test_tool_payload_encoding(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(agent.ctx.tool, "x", payload=b'{"raw": true}'))
            tg.start_soon(partial(agent.ctx.tool, "x", payload=bytearray(b"[1]")))
            tg.start_soon(partial(agent.ctx.tool, "x"))
            payloads = set()
            with anyio.fail_after(5):
                for _ in range(3):
                    call = await answer_call(link, Result("", STATUS_OK, b"null"))
                    payloads.add(call.payload)
        assert payloads == {b'{"raw": true}', b"[1]", b""}
        with pytest.raises(ConfigurationError, match="JSON"):
            await agent.ctx.tool("x", payload=object())
        with pytest.raises(ConfigurationError):
            await agent.ctx.tool("", payload={})
        with pytest.raises(ConfigurationError):
            await agent.ctx.tool("x", timeout_ms=0)


async def test_tool_json_decodes_the_output(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        results: list[Any] = []

        async def call_tool() -> None:
            results.append(await agent.ctx.tool_json("x", payload={"a": 1}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_tool)
            with anyio.fail_after(5):
                await answer_call(link, Result("", STATUS_OK, b'{"sum": 3}'))
    assert results == [{"sum": 3}]


async def test_abandoned_call_is_not_sent(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        link.hold_sends()
        await agent.ctx.emit("t", type="first")
        with anyio.fail_after(5):
            await link.send_blocked.wait()
        with anyio.move_on_after(0.01):
            await agent.ctx.tool("x", timeout_ms=60_000)  # queued behind the held send
        await agent.ctx.emit("t", type="second")
        link.release_sends()
        with anyio.fail_after(5):
            _, first = await link.published()
            _, second = await link.published()
        assert (first.type, second.type) == ("first", "second")  # no Call in between
        assert len(runtime_of(agent).calls) == 0


# ---- subscriptions and threads -------------------------------------------------------


async def confirm(link: FakeLink, error: str = "") -> Subscribe:
    change = await link.expect(Subscribe)
    await link.inject(Subscribed(change.id, error))
    return change


async def test_subscribe_and_unsubscribe(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        state = runtime_of(agent).subscriptions
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(agent.ctx.subscribe, "news.>", qos=0))
            with anyio.fail_after(5):
                change = await confirm(link)
        assert (change.add, change.qos) == (["news.>"], 0)
        assert state.topics["news.>"] == 0

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.ctx.unsubscribe, "t")
            with anyio.fail_after(5):
                change = await confirm(link)
        assert change.remove == ["t"]
        assert "t" not in state.topics
        with pytest.raises(ConfigurationError):
            await agent.ctx.subscribe("bad..pattern")
        with pytest.raises(ConfigurationError):
            await agent.ctx.subscribe("ok", qos=7)
        with pytest.raises(ConfigurationError, match="reply topic"):
            await agent.ctx.unsubscribe("agent.a.replies")


async def test_refused_subscription_raises_and_is_undone(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        async with anyio.create_task_group() as tg:

            async def subscribe() -> None:
                with pytest.raises(ConfigurationError, match="too many"):
                    await agent.ctx.subscribe("more")

            tg.start_soon(subscribe)
            with anyio.fail_after(5):
                await confirm(link, error="too many subscriptions")
        assert "more" not in runtime_of(agent).subscriptions.topics


async def test_unconfirmed_subscription_times_out(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        with anyio.fail_after(5), pytest.raises(RequestTimeout):
            await agent.ctx.subscribe("more", timeout_ms=20)
        await link.expect(Subscribe)
        # it went out, so the bridge may have applied it: the agent keeps it
        assert "more" in runtime_of(agent).subscriptions.topics


async def test_join_and_leave_thread(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        threads = runtime_of(agent).subscriptions.threads
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.ctx.join_thread, "conv-1")
            with anyio.fail_after(5):
                change = await confirm(link)
        assert change.join == ["conv-1"]
        assert threads == {"conv-1"}
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.ctx.leave_thread, "conv-1")
            with anyio.fail_after(5):
                change = await confirm(link)
        assert change.leave == ["conv-1"]
        assert threads == set()
        with pytest.raises(ConfigurationError):
            await agent.ctx.join_thread("")


# ---- the guide's testing pattern ------------------------------------------------------


async def my_handler(ctx: Any, topic: str, event: Any) -> None:
    """A handler written as the guide writes them."""
    if event.type == "test.event":
        await ctx.emit("target.topic", type="my.event", payload=event.payload.upper())
    elif event.type == "question":
        await ctx.reply(event, type="answer", payload=b"42")


async def test_handler_with_mocked_context() -> None:
    ctx = Mock()
    ctx.emit = AsyncMock()
    ctx.reply = AsyncMock()

    event = Mock()
    event.type = "test.event"
    event.payload = b"test data"

    await my_handler(ctx, "test.topic", event)

    ctx.emit.assert_called_once()
    ctx.emit.assert_awaited_once_with("target.topic", type="my.event", payload=b"TEST DATA")
    ctx.reply.assert_not_called()


async def test_guide_style_handler_on_a_real_agent(connector: FakeConnector) -> None:
    async with running_agent(connector, on_event=my_handler) as (_, link):
        await link.deliver("t", envelope("question", sender="b"))
        with anyio.fail_after(5):
            topic, event = await link.published()
        assert (topic, event.type, event.payload) == ("agent.b.replies", "answer", b"42")
        await link.deliver("t", envelope("test.event", b"abc"))
        with anyio.fail_after(5):
            frame = await link.expect(Publish)
        assert frame.topic == "target.topic"


# ---- the desired-state bookkeeping behind subscribe() and join_thread() ----------------

_names = st.sampled_from(["a", "b", "c.*", "d.>"])
_changes = st.builds(
    lambda add, remove, qos, join, leave: Subscribe(
        new_id(), add=add, remove=remove, qos=qos, join=join, leave=leave
    ),
    st.lists(_names, max_size=3),
    st.lists(_names, max_size=3),
    st.integers(0, 2),
    st.lists(st.sampled_from(["t1", "t2"]), max_size=2),
    st.lists(st.sampled_from(["t1", "t2"]), max_size=2),
)


@given(st.lists(_changes, max_size=8))
def test_subscription_changes_undo_in_reverse_order(changes: list[Subscribe]) -> None:
    state = SubscriptionState(["a", "agent.x.replies"])
    state.threads.add("t1")
    before = (dict(state.topics), set(state.threads))
    undos = [state.apply(change) for change in changes]
    for undo in reversed(undos):
        undo()
    assert (state.topics, state.threads) == before
