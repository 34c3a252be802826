"""Bridge policies seen from agents: a taken-over agent id, and outgoing batches that
respect the message size limit."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from bridge_process import BridgeProcess

from loom import Agent, Context, Envelope
from loom._grpc_connector import GrpcConnector
from loom.testing import EmbeddedBridge

pytestmark = pytest.mark.anyio

FAST = {"reconnect_initial": 0.01, "reconnect_max": 0.05, "stop_grace": 1.0}


async def test_a_second_agent_with_the_same_id_takes_over_and_the_first_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EmbeddedBridge() as bridge:
        got: list[str] = []
        arrived = anyio.Event()

        async def collect(ctx: Context, topic: str, event: Envelope) -> None:
            got.append(event.type)
            arrived.set()

        first = Agent("worker", ["jobs"], address=bridge.address, **FAST)
        await first.start()
        try:
            async with (
                Agent("worker", ["jobs"], on_event=collect, address=bridge.address, **FAST),
                Agent("boss", [], address=bridge.address) as boss,
            ):
                with anyio.fail_after(5):
                    await first.wait_stopped()
                assert not first.running
                assert bridge.connected_agents == ["boss", "worker"]
                await boss.ctx.emit("jobs", type="job")
                with anyio.fail_after(5):
                    await arrived.wait()
                assert got == ["job"]
        finally:
            await first.stop()
    assert "another connection took over this agent id" in caplog.text


@pytest.fixture
def small_message_bridge() -> Iterator[BridgeProcess]:
    with BridgeProcess(extra_args=["--max-message-bytes", "65536"]) as bridge:
        yield bridge


async def test_queued_events_go_out_in_messages_under_the_limit(
    small_message_bridge: BridgeProcess,
) -> None:
    """A subscriber that falls behind gets its backlog in several messages, none over
    the bridge's limit: its own receive limit (just above it) is never hit, so it never
    has to reconnect, and nothing is lost."""
    address = small_message_bridge.address
    count, size = 60, 10_000
    release = anyio.Event()
    done = anyio.Event()
    received: list[int] = []

    async def slow(ctx: Context, topic: str, event: Envelope) -> None:
        await release.wait()
        received.append(int(event.type))
        if len(received) == count:
            done.set()

    receiver = GrpcConnector(address, max_message_size=70_000, max_send_message_size=65_536)
    sender = GrpcConnector(address, max_send_message_size=65_536)
    async with (
        Agent("slow", ["bulk"], on_event=slow, connector=receiver, handler_lanes=1) as sub,
        Agent("fast", [], connector=sender) as pub,
    ):
        for i in range(count):
            await pub.ctx.emit("bulk", type=str(i), payload=b"x" * size)
        release.set()
        with anyio.fail_after(20):
            await done.wait()
        runtime = sub._runtime
        assert runtime is not None and runtime.connections == 1
    assert received == list(range(count))
