"""Unit tests of :class:`loom.agent.Agent` against a scripted bridge (tests/fakes.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial

import anyio
import pytest
from fakes import FakeConnector, connector, envelope, running_agent

from loom import _logging
from loom._connect import connector_for
from loom._frames import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RETRYABLE,
    Call,
    Deliver,
    Ping,
    Publish,
    Result,
    Subscribe,
    Subscribed,
    decode_envelope,
    encode_envelope,
)
from loom.agent import Agent
from loom.capability import capability
from loom.context import Context
from loom.envelope import Envelope
from loom.errors import BridgeRejected, ConfigurationError, ConnectionLost, MessageTooLarge

__all__ = ["connector"]  # a fixture, used by name

pytestmark = pytest.mark.anyio


@capability("math.add", version="1.0")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@capability("math.add", version="2.0")
async def add_v2(a: int, b: int) -> int:
    return a + b + 1000


@capability("fail.always")
async def fail_always() -> None:
    raise ValueError("boom")


async def ignore(ctx: Context, topic: str, event: Envelope) -> None:
    pass


# ---- construction ---------------------------------------------------------------------


def test_invalid_arguments_are_refused(connector: FakeConnector) -> None:
    def sync_handler(ctx: Context, topic: str, event: Envelope) -> None:
        pass

    with pytest.raises(ConfigurationError, match="async function"):
        Agent("a", ["t"], on_event=sync_handler, connector=connector)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Agent("", ["t"], connector=connector)
    with pytest.raises(ConfigurationError):
        Agent("a b", ["t"], connector=connector)
    with pytest.raises(ConfigurationError):
        Agent("a", ["bad topic"], connector=connector)
    with pytest.raises(ConfigurationError):
        Agent("a", ["t"], address="not an address")
    with pytest.raises(ConfigurationError):
        Agent("a", ["t"], connector=connector, heartbeat_interval=0)
    with pytest.raises(ConfigurationError):
        Agent("a", ["t"], connector=connector, handler_lanes=0)
    with pytest.raises(ConfigurationError):
        Agent("a", ["t"], capabilities=[ignore], connector=connector)
    with pytest.raises(ConfigurationError):
        Agent("a", ["t"], capabilities=[add, add], connector=connector)


def test_agent_properties(connector: FakeConnector) -> None:
    agent = Agent("a", "t", connector=connector)
    assert agent.agent_id == "a"
    assert agent.ctx.agent_id == "a"
    assert agent.connected is False
    assert agent.running is False
    assert agent.address == "fake:1"


# ---- start ------------------------------------------------------------------------------


async def test_registration_contents(connector: FakeConnector) -> None:
    async with running_agent(
        connector,
        "planner",
        ["orders.created", "orders.*", "orders.created"],
        capabilities=[add, add_v2],
        metadata={"team": "blue"},
    ) as (agent, link):
        assert agent.connected
        assert agent.running
        reg = link.registration
        assert reg.agent_id == "planner"
        assert reg.topics == ["orders.created", "orders.*", "agent.planner.replies"]
        assert [(c.name, c.version) for c in reg.capabilities] == [
            ("math.add", "1.0"),
            ("math.add", "2.0"),
        ]
        assert "input_schema" in reg.capabilities[0].metadata
        assert reg.metadata == {"team": "blue"}
    assert not agent.connected
    assert not agent.running
    assert link.closed.is_set()


async def test_start_refused_raises_bridge_rejected(connector: FakeConnector) -> None:
    connector.fail_next(BridgeRejected("agent_id already taken"))
    agent = Agent("a", ["t"], connector=connector)
    with anyio.fail_after(5), pytest.raises(BridgeRejected, match="already taken"):
        await agent.start()
    assert connector.attempts == 1
    assert not agent.running
    await agent.stop()  # nothing to stop; still fine


@pytest.mark.parametrize("error", [ConnectionLost("refused"), ConnectionRefusedError(111, "no")])
async def test_start_unreachable_raises_connection_lost(
    connector: FakeConnector, error: BaseException
) -> None:
    connector.fail_next(error)
    agent = Agent("a", ["t"], connector=connector)
    with anyio.fail_after(5), pytest.raises(ConnectionLost):
        await agent.start()
    assert connector.attempts == 1
    assert not agent.running


async def test_start_gives_up_on_a_connect_that_hangs(connector: FakeConnector) -> None:
    connector.hang_connects = True
    agent = Agent("a", ["t"], connector=connector, heartbeat_timeout=0.05)
    with anyio.fail_after(5), pytest.raises(ConnectionLost, match="within"):
        await agent.start()


async def test_start_twice_is_an_error(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, _):
        with pytest.raises(RuntimeError, match="already started"):
            await agent.start()


async def test_restart_after_stop(connector: FakeConnector) -> None:
    agent = Agent("a", ["t"], connector=connector)
    for _ in range(2):
        async with agent:
            link = await connector.next_link()
            await agent.ctx.emit("t", type="x")
            await link.expect(Publish)
    assert connector.attempts == 2


# ---- outgoing -------------------------------------------------------------------------


async def test_emit_sends_publish(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        sent = await agent.ctx.emit("orders.created", type="order", payload=b"42")
        frame = await link.expect(Publish)
        assert frame.topic == "orders.created"
        assert decode_envelope(frame.event) == sent
        assert sent.sender == "a"
        assert sent.type == "order"
        assert sent.payload == b"42"


async def test_queued_frames_go_out_in_one_send(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link):
        link.hold_sends()
        await agent.ctx.emit("t", type="e1")
        with anyio.fail_after(5):
            await link.send_blocked.wait()  # the writer holds [e1] in send()
        for kind in ("e2", "e3", "e4"):
            await agent.ctx.emit("t", type=kind)
        link.release_sends()
        with anyio.fail_after(5):
            first = await link.next_batch()
            second = await link.next_batch()
        assert [decode_envelope(f.event).type for f in first if isinstance(f, Publish)] == ["e1"]
        assert [decode_envelope(f.event).type for f in second if isinstance(f, Publish)] == [
            "e2",
            "e3",
            "e4",
        ]


async def test_full_outbox_makes_emit_wait(connector: FakeConnector) -> None:
    async with running_agent(connector, outbox_size=2) as (agent, link):
        link.hold_sends()
        await agent.ctx.emit("t", type="e0")
        with anyio.fail_after(5):
            await link.send_blocked.wait()
        await agent.ctx.emit("t", type="e1")
        await agent.ctx.emit("t", type="e2")
        with anyio.move_on_after(0.05) as scope:
            await agent.ctx.emit("t", type="e3")  # no room: waits
        assert scope.cancelled_caught
        link.release_sends()
        with anyio.fail_after(5):
            types = [decode_envelope(f.event).type for f in await link.next_batch()]  # type: ignore[union-attr]
            types += [decode_envelope(f.event).type for f in await link.next_batch()]  # type: ignore[union-attr]
        assert types == ["e0", "e1", "e2"]


async def test_frame_too_large_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    connector = FakeConnector(max_batch_bytes=1000)
    try:
        with caplog.at_level(logging.ERROR, logger="loom"):
            async with running_agent(connector) as (agent, link):
                link.hold_sends()
                await agent.ctx.emit("t", type="first")
                with anyio.fail_after(5):
                    await link.send_blocked.wait()
                await agent.ctx.emit("t", type="small", payload=b"x" * 600)
                await agent.ctx.emit("t", type="huge", payload=b"x" * 2000)
                await agent.ctx.emit("t", type="small", payload=b"y" * 600)
                async with anyio.create_task_group() as tg:

                    async def too_large_request() -> None:
                        with pytest.raises(MessageTooLarge):
                            await agent.ctx.request("t", type="q", payload=b"z" * 2000)

                    tg.start_soon(too_large_request)
                    await anyio.wait_all_tasks_blocked()
                    link.release_sends()
                with anyio.fail_after(5):
                    types = [(await link.published())[1].type for _ in range(3)]
                assert types == ["first", "small", "small"]
        assert sum("dropped a Publish frame" in r.getMessage() for r in caplog.records) == 2
    finally:
        connector.close()


# ---- incoming events -----------------------------------------------------------------


async def test_events_of_one_topic_are_handled_in_order(connector: FakeConnector) -> None:
    seen: list[str] = []
    all_seen = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event.type)
        if len(seen) == 50:
            all_seen.set()

    async with running_agent(connector, on_event=handler) as (_, link):
        for i in range(50):
            await link.deliver("t", envelope(f"e{i}"))
        with anyio.fail_after(5):
            await all_seen.wait()
    assert seen == [f"e{i}" for i in range(50)]


async def test_different_topics_are_handled_concurrently(connector: FakeConnector) -> None:
    lanes = 4
    slow_topic = "slow"
    fast_topic = next(
        t for t in (f"fast{i}" for i in range(100)) if hash(t) % lanes != hash(slow_topic) % lanes
    )
    release = anyio.Event()
    fast_done = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        if topic == slow_topic:
            await release.wait()
        else:
            fast_done.set()

    async with running_agent(
        connector, topics=[slow_topic, fast_topic], on_event=handler, handler_lanes=lanes
    ) as (_, link):
        await link.deliver(slow_topic, envelope())
        await link.deliver(fast_topic, envelope())
        with anyio.fail_after(5):
            await fast_done.wait()  # while the slow handler still waits
        release.set()


async def test_handler_exception_is_logged_and_agent_continues(
    connector: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    handled = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "bad":
            raise RuntimeError("handler bug")
        handled.set()

    with caplog.at_level(logging.ERROR, logger="loom"):
        async with running_agent(connector, on_event=handler) as (agent, link):
            await link.deliver("t", envelope("bad"))
            await link.deliver("t", envelope("good"))
            with anyio.fail_after(5):
                await handled.wait()
            assert agent.running
    failures = [r for r in caplog.records if r.name == "loom" and r.exc_info]
    assert len(failures) == 1
    assert "handler bug" in str(failures[0].exc_info[1])  # type: ignore[index]


async def test_undecodable_event_is_dropped(
    connector: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    handled = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        handled.set()

    with caplog.at_level(logging.WARNING, logger="loom"):
        async with running_agent(connector, on_event=handler) as (_, link):
            from msgspec import Raw

            await link.inject(Deliver("t", Raw(b"\xc1")), Deliver("t", encode_envelope(envelope())))
            with anyio.fail_after(5):
                await handled.wait()
    assert any("dropped an event" in r.getMessage() for r in caplog.records)


# ---- serving capabilities ---------------------------------------------------------------


async def test_call_frames_are_answered(connector: FakeConnector) -> None:
    async with running_agent(connector, capabilities=[add, add_v2, fail_always]) as (_, link):
        await link.inject(
            Call("c1", "math.add", "1.0", b'{"a": 1, "b": 2}', 5000),
            Call("c2", "math.add", "2.0", b'{"a": 1, "b": 2}', 5000),
            Call("c3", "math.add", "", b'{"a": 1, "b": 2}', 5000),
            Call("c4", "math.add", "1.0", b'{"a": "x", "b": 2}', 5000),
            Call("c5", "fail.always", "1.0", b"", 5000),
            Call("c6", "math.mul", "1.0", b"{}", 5000),
            Call("c7", "math.add", "3.0", b'{"a": 1, "b": 2}', 5000),
        )
        results: dict[str, Result] = {}
        with anyio.fail_after(5):
            while len(results) < 7:
                result = await link.expect(Result)
                results[result.id] = result
    assert (results["c1"].status, results["c1"].output) == (STATUS_OK, b"3")
    assert (results["c2"].status, results["c2"].output) == (STATUS_OK, b"1003")
    assert results["c3"].status == STATUS_OK  # empty version: any version
    assert (results["c4"].status, results["c4"].error_code) == (STATUS_ERROR, "INVALID_INPUT")
    assert "$.a" in results["c4"].error_message
    assert (results["c5"].status, results["c5"].error_code) == (STATUS_ERROR, "CAPABILITY_ERROR")
    assert results["c5"].error_message == "ValueError: boom"
    assert (results["c6"].status, results["c6"].error_code) == (STATUS_ERROR, "NOT_FOUND")
    assert (results["c7"].status, results["c7"].error_code) == (STATUS_ERROR, "NOT_FOUND")


async def test_tool_calls_run_concurrently_but_bounded(connector: FakeConnector) -> None:
    running = 0
    peak = 0
    two_running = anyio.Event()
    release = anyio.Event()

    @capability("slow.op")
    async def slow_op() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await release.wait()
        running -= 1
        return "ok"

    async with running_agent(connector, capabilities=[slow_op], max_concurrent_tools=2) as (
        agent,
        link,
    ):
        await link.inject(*(Call(f"c{i}", "slow.op", "1.0", b"", 5000) for i in range(6)))
        with anyio.fail_after(5):
            await two_running.wait()
        await anyio.wait_all_tasks_blocked()
        assert peak == 2
        runtime = agent._runtime
        assert runtime is not None
        assert runtime.tools.running == 2
        assert runtime.tools.admitted == 6
        release.set()
        with anyio.fail_after(5):
            results = [await link.expect(Result) for _ in range(6)]
        assert {r.id for r in results} == {f"c{i}" for i in range(6)}
        assert all(r.status == STATUS_OK for r in results)
        assert peak == 2


async def test_too_many_waiting_calls_are_refused_as_busy(connector: FakeConnector) -> None:
    release = anyio.Event()

    @capability("slow.op")
    async def slow_op() -> None:
        await release.wait()

    async with running_agent(connector, capabilities=[slow_op], max_concurrent_tools=1) as (
        _,
        link,
    ):
        # one running plus four waiting are admitted; the sixth is refused at once
        await link.inject(*(Call(f"c{i}", "slow.op", "1.0", b"", 5000) for i in range(6)))
        with anyio.fail_after(5):
            busy = await link.expect(Result)
        assert (busy.id, busy.status, busy.error_code) == ("c5", STATUS_RETRYABLE, "BUSY")
        release.set()
        with anyio.fail_after(5):
            results = [await link.expect(Result) for _ in range(5)]
        assert all(r.status == STATUS_OK for r in results)


async def test_capability_past_its_timeout_answers_timeout(connector: FakeConnector) -> None:
    @capability("sleepy")
    async def sleepy() -> None:
        await anyio.sleep_forever()

    async with running_agent(connector, capabilities=[sleepy]) as (_, link):
        await link.inject(Call("c1", "sleepy", "1.0", b"", 20))
        with anyio.fail_after(5):
            result = await link.expect(Result)
        assert (result.status, result.error_code) == (2, "TIMEOUT")


# ---- reconnecting ------------------------------------------------------------------


async def test_reconnect_restores_state_and_sends_what_waited(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link1):
        ctx = agent.ctx
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.subscribe, "news.*")
            change = await link1.expect(Subscribe)
            await link1.inject(Subscribed(change.id))
            tg.start_soon(ctx.join_thread, "th-1")
            change = await link1.expect(Subscribe)
            await link1.inject(Subscribed(change.id))

        failures: list[BaseException] = []

        async def ask() -> None:
            try:
                await ctx.request("svc", type="q", timeout_ms=60_000)
            except ConnectionLost as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(5):
                await link1.expect(Publish)  # the request went out on link 1
            connector.hold_connects()
            link1.drop()
            with anyio.fail_after(5):
                await connector.wait_connect_waiting()
        assert len(failures) == 1  # failed at once, not after 60 s
        assert not agent.connected
        await ctx.emit("t", type="while.away")  # waits in the outbox
        replies: list[Envelope] = []
        async with anyio.create_task_group() as tg:

            async def ask_again() -> None:
                replies.append(await ctx.request("svc", type="q2", timeout_ms=60_000))

            tg.start_soon(ask_again)  # also waits in the outbox, and survives
            await anyio.wait_all_tasks_blocked()
            connector.release_connects()
            with anyio.fail_after(5):
                link2 = await connector.next_link()
                restore = await link2.expect(Subscribe)
                topic, event = await link2.published()
                _, request = await link2.published()
            await link2.deliver("agent.a.replies", envelope("r", correlation_id=request.id))
        assert replies[0].type == "r"
        assert link1.closed.is_set()
        assert link2.registration.topics == ["t", "agent.a.replies", "news.*"]
        assert restore.join == ["th-1"]
        assert (topic, event.type) == ("t", "while.away")
        assert agent.connected
        runtime = agent._runtime
        assert runtime is not None
        assert len(runtime.requests) == 0


async def test_reconnect_after_the_bridge_ends_the_stream(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link1):
        link1.end()
        with anyio.fail_after(5):
            link2 = await connector.next_link()
        await agent.ctx.emit("t", type="again")
        with anyio.fail_after(5):
            _, event = await link2.published()
        assert event.type == "again"


async def test_reconnect_keeps_trying_with_backoff(connector: FakeConnector) -> None:
    async with running_agent(connector) as (agent, link1):
        connector.fail_next(ConnectionLost("down"), BridgeRejected("not yet"), OSError("no"))
        link1.drop()
        with anyio.fail_after(5):
            await connector.next_link()
        assert connector.attempts == 5
        assert agent.connected


async def test_heartbeat_timeout_triggers_reconnect() -> None:
    connector = FakeConnector(auto_pong=False)
    try:
        async with running_agent(connector, heartbeat_interval=0.01, heartbeat_timeout=0.05) as (
            agent,
            link1,
        ):
            with anyio.fail_after(5):
                await link1.closed.wait()
                await connector.next_link()
            assert link1.pings >= 1
            assert agent.running
    finally:
        connector.close()


async def test_pongs_keep_the_connection_alive(connector: FakeConnector) -> None:
    async with running_agent(connector, heartbeat_interval=0.005, heartbeat_timeout=2.0) as (
        _,
        link,
    ):
        with anyio.fail_after(5):
            await link.wait_for_pings(5)
        assert connector.attempts == 1
        assert not link.closed.is_set()


async def test_bridge_ping_is_answered(connector: FakeConnector) -> None:
    async with running_agent(connector) as (_, link):
        await link.inject(Ping(123))
        with anyio.fail_after(5):
            pong = await link.next_frame()
        assert pong.__class__.__name__ == "Pong"


# ---- stopping -----------------------------------------------------------------------


async def test_stop_lets_running_handler_finish_and_flushes(connector: FakeConnector) -> None:
    started = anyio.Event()
    release = anyio.Event()
    finished: list[str] = []

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        started.set()
        await release.wait()
        await ctx.emit("out", type="done")
        finished.append(event.type)

    agent = Agent("a", ["t"], on_event=handler, connector=connector)
    stopped = anyio.Event()

    async def release_later() -> None:
        await anyio.wait_all_tasks_blocked()
        assert not stopped.is_set()  # stop() is waiting for the handler
        release.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await agent.start()
            link = await connector.next_link()
            await link.deliver("t", envelope("work"))
            await started.wait()
            tg.start_soon(release_later)
            await agent.stop()
            stopped.set()
    assert finished == ["work"]
    _, event = await link.published()
    assert event.type == "done"
    assert link.closed.is_set()
    assert not agent.running
    await agent.stop()  # idempotent


async def test_stop_grace_cancels_stragglers(
    connector: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    started = anyio.Event()
    cancelled: list[bool] = []

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    with caplog.at_level(logging.WARNING, logger="loom"):
        agent = Agent("a", ["t"], on_event=handler, connector=connector, stop_grace=0.05)
        async with agent:
            link = await connector.next_link()
            await link.deliver("t", envelope())
            with anyio.fail_after(5):
                await started.wait()
        assert cancelled == [True]
    assert any("cancelled" in r.getMessage() for r in caplog.records)


async def test_stop_while_disconnected_gives_up_after_the_grace(
    connector: FakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="loom"):
        agent = Agent("a", ["t"], connector=connector, stop_grace=0.05)
        await agent.start()
        link = await connector.next_link()
        connector.hold_connects()
        link.drop()
        await connector.wait_connect_waiting()
        await agent.ctx.emit("t", type="never.sent")
        await agent.stop()
        assert not agent.running
    assert any("were not sent" in r.getMessage() for r in caplog.records)


async def test_events_after_stop_are_not_handled(connector: FakeConnector) -> None:
    seen: list[str] = []
    release = anyio.Event()
    started = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        seen.append(event.type)
        started.set()
        await release.wait()

    agent = Agent("a", ["t"], on_event=handler, connector=connector)
    async with anyio.create_task_group() as tg:
        await agent.start()
        link = await connector.next_link()
        await link.deliver("t", envelope("first"))
        await started.wait()
        tg.start_soon(agent.stop)  # another task: asks, then waits for the agent
        await anyio.wait_all_tasks_blocked()
        await link.deliver("u", envelope("late"))
        await anyio.wait_all_tasks_blocked()
        release.set()
        await agent.stop()
    assert seen == ["first"]


async def test_stop_from_another_task_ends_the_owner_block(connector: FakeConnector) -> None:
    agent = Agent("a", ["t"], connector=connector)
    async with anyio.create_task_group() as tg:
        async with agent:
            await connector.next_link()
            tg.start_soon(agent.stop)
            with anyio.fail_after(5):
                await agent.wait_stopped()
    assert not agent.running


async def test_stop_from_a_handler(connector: FakeConnector) -> None:
    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        await agent.stop()  # only asks: it cannot wait for itself

    agent = Agent("a", ["t"], on_event=handler, connector=connector)
    async with agent:
        link = await connector.next_link()
        await link.deliver("t", envelope())
        with anyio.fail_after(5):
            await agent.wait_stopped()
    assert not agent.running


async def test_manual_start_stop_from_another_task(connector: FakeConnector) -> None:
    agent = Agent("a", ["t"], connector=connector)
    await agent.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.stop)
    assert agent._runtime is not None and agent._runtime.done.is_set()
    await agent.stop()  # the owner closes its task group at once
    assert not agent.running


async def test_cancelling_the_agent_scope_leaves_no_tasks(connector: FakeConnector) -> None:
    before = {task.id for task in anyio.get_running_tasks()}
    started = anyio.Event()

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.CancelScope() as scope:
        async with running_agent(connector, on_event=handler) as (agent, link):
            await link.deliver("t", envelope())
            await started.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(agent.ctx.request, "t", type="q"))
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
    assert scope.cancelled_caught
    await anyio.wait_all_tasks_blocked()
    assert {task.id for task in anyio.get_running_tasks()} == before
    assert not agent.running
    with pytest.raises(ConnectionLost, match="not running"):
        await agent.ctx.emit("t", type="x")


async def test_exception_in_the_block_stops_the_agent(connector: FakeConnector) -> None:
    agent = Agent("a", ["t"], connector=connector)
    with pytest.raises(KeyError):
        async with agent:
            await connector.next_link()
            raise KeyError("user bug")
    assert not agent.running


def test_guide_custom_event_loop_example() -> None:
    connector = FakeConnector()

    async def main() -> None:
        agent = Agent("a", ["t"], connector=connector)
        await agent.start()
        await asyncio.sleep(0.01)
        await agent.stop()

    try:
        asyncio.run(main())
    finally:
        connector.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_returns_after_a_handler_stops_the_agent(backend: str) -> None:
    connector = FakeConnector()
    connector.on_connect = [Deliver("t", encode_envelope(envelope("bye")))]
    seen: list[str] = []

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        seen.append(event.type)
        await agent.stop()

    agent = Agent("a", ["t"], on_event=handler, connector=connector)
    try:
        agent.run(backend=backend)
    finally:
        connector.close()
    assert seen == ["bye"]
    assert not agent.running


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_stops_gracefully_on_a_signal(backend: str, signum: signal.Signals) -> None:
    connector = FakeConnector()
    connector.on_connect = [Deliver("t", encode_envelope(envelope("work")))]
    finished: list[str] = []

    async def handler(ctx: Context, topic: str, event: Envelope) -> None:
        signal.raise_signal(signum)
        await anyio.sleep(0.01)  # stop waits for the handler to finish
        await ctx.emit("out", type="done")
        finished.append(event.type)

    agent = Agent("a", ["t"], on_event=handler, connector=connector)
    try:
        agent.run(backend=backend)
        frames = connector.links[0].drain()
    finally:
        connector.close()
    assert finished == ["work"]
    assert [decode_envelope(f.event).type for f in frames if isinstance(f, Publish)] == ["done"]


# ---- addresses and logging -------------------------------------------------------------


def test_connector_for_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    from loom._grpc_connector import GrpcConnector

    for address in ("localhost:50051", "grpc://10.0.0.1:1", "grpcs://bridge.example.com:443"):
        conn = connector_for(address)
        assert isinstance(conn, GrpcConnector)
        assert conn.address == address
    assert connector_for("[::1]:50051").address == "[::1]:50051"
    monkeypatch.setenv("LOOM_BRIDGE_ADDR", "bridge.example.com:6000")
    assert connector_for(None).address == "bridge.example.com:6000"
    monkeypatch.delenv("LOOM_BRIDGE_ADDR")
    assert connector_for(None).address == "127.0.0.1:50051"
    for bad in ("", "localhost", "localhost:0", "localhost:99999", "http://x:1", "x:port", ":1"):
        with pytest.raises(ConfigurationError):
            connector_for(bad)


def test_connector_for_embedded() -> None:
    from loom.testing import EmbeddedBridge

    bridge = EmbeddedBridge("unit-connect")
    bridge.open()
    try:
        assert connector_for("embedded:unit-connect").address == "embedded:unit-connect"
    finally:
        bridge.close()
    with pytest.raises(ConfigurationError):
        connector_for("embedded:unit-connect")
    default = EmbeddedBridge("default")
    default.open()
    try:
        assert connector_for("embedded").address == "embedded:default"
        assert connector_for(" embedded: ").address == "embedded:default"
    finally:
        default.close()


def test_loom_log_configures_the_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("loom")
    handlers, level = list(logger.handlers), logger.level
    monkeypatch.setattr(_logging, "_configured", False)
    monkeypatch.delenv("LOOM_LOG", raising=False)
    assert _logging.configure_from_env() is False
    monkeypatch.setenv("LOOM_LOG", "debug")
    try:
        assert _logging.configure_from_env() is True
        assert logger.level == logging.DEBUG
        assert len(logger.handlers) == len(handlers) + 1
        assert _logging.configure_from_env() is False  # once
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
