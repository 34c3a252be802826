"""Worker roles on the loom SDK: ``python -m benchmarks._loom_side ROLE PARAMS_JSON``.

Every role runs under the anyio backend named in its params (asyncio, trio or
asyncio+uvloop) and connects to the bridge at ``params["address"]``.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from benchmarks._child import Params, Progress, command, main, now, report, run_phase, wait_for_go
from loom import Agent, Envelope, capability

ADD_ARGS = {"a": 1, "b": 2}
ADD_RESULT = b"3"


@capability("bench.add", version="1.0")
async def add(a: int, b: int) -> int:
    """The capability the tool-call benchmark calls."""
    return a + b


async def sub(params: Params) -> None:
    """Subscribe to ``topic`` and count ``expect`` events."""
    progress = Progress(int(params["expect"]))
    hit = progress.hit

    async def on_event(ctx: Any, topic: str, event: Envelope) -> None:
        hit()

    agent = Agent(
        params["agent_id"], [params["topic"]], on_event=on_event, address=params["address"]
    )
    async with agent:
        report("ready")
        await progress.wait(float(params["idle_timeout"]))
        report("result", **progress.result())
        await command()


async def pub(params: Params) -> None:
    """On ``go``, emit ``count`` events of ``size`` bytes on ``topic``."""
    payload = b"x" * int(params["size"])
    topic, count = params["topic"], int(params["count"])
    async with Agent(params["agent_id"], [], address=params["address"]) as agent:
        emit = agent.ctx.emit
        report("ready")
        if not await wait_for_go():
            return
        t_start = now()
        for _ in range(count):
            await emit(topic, type="bench", payload=payload)
        report("result", t_start=t_start, t_end=now(), sent=count)
        await command()


async def responder(params: Params) -> None:
    """Answer requests on ``topic`` (JSON ``{a, b}`` -> ``a + b``) and serve
    ``bench.add``: the same work either way, so only the path differs."""
    decode, encode = msgspec.json.decode, msgspec.json.encode

    async def on_event(ctx: Any, topic: str, event: Envelope) -> None:
        args = decode(event.payload)
        await ctx.reply(event, type="bench.sum", payload=encode(args["a"] + args["b"]))

    agent = Agent(
        params["agent_id"],
        [params["topic"]],
        capabilities=[add],
        on_event=on_event,
        address=params["address"],
    )
    async with agent:
        report("ready")
        await command()


async def requester(params: Params) -> None:
    """On ``go``, run the timed phases (``request`` or ``tool`` calls) one after the
    other and report them; wrong answers are counted, not hidden."""
    topic = params["topic"]
    encode = msgspec.json.encode
    wrong = 0
    async with Agent(params["agent_id"], [], address=params["address"]) as agent:
        ctx = agent.ctx

        async def request() -> None:
            nonlocal wrong
            reply = await ctx.request(topic, type="bench.add", payload=encode(ADD_ARGS))
            wrong += reply.payload != ADD_RESULT

        async def tool() -> None:
            nonlocal wrong
            wrong += await ctx.tool("bench.add", version="1.0", payload=ADD_ARGS) != ADD_RESULT

        calls = {"request": request, "tool": tool}
        report("ready")
        if not await wait_for_go():
            return
        results = [await run_phase(calls[phase["kind"]], phase) for phase in params["phases"]]
        report("result", phases=results, wrong=wrong)
        await command()


async def hosts(params: Params) -> None:
    """On ``go``, connect ``count`` agents, each subscribed to ``topics`` topics of its
    own; report when all are registered, keep them connected until stop."""
    count, per_agent, prefix = int(params["count"]), int(params["topics"]), params["prefix"]
    address = params["address"]
    connected = 0
    all_up, stop = anyio.Event(), anyio.Event()

    async def host(i: int) -> None:
        nonlocal connected
        topics = [f"scale.{prefix}.{i}.t{k}" for k in range(per_agent)]
        async with Agent(f"{prefix}-{i}", topics, address=address):
            connected += 1
            if connected == count:
                all_up.set()
            await stop.wait()

    report("ready")
    if not await wait_for_go():
        return
    t_go = now()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(host, i)
        await all_up.wait()
        report("connected", t_go=t_go, t_done=now(), agents=count)
        await command()
        stop.set()
    report("stopped")


ROLES = {
    "sub": sub,
    "pub": pub,
    "responder": responder,
    "requester": requester,
    "hosts": hosts,
}

if __name__ == "__main__":
    main(ROLES)
