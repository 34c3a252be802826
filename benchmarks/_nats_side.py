"""Worker roles on nats-py (asyncio), the NATS baseline:
``python -m benchmarks._nats_side ROLE PARAMS_JSON``.

The roles mirror :mod:`benchmarks._loom_side` one for one, against a real
``nats-server`` at ``params["url"]``.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from benchmarks._child import Params, Progress, command, main, now, report, run_phase, wait_for_go

ADD_ARGS = {"a": 1, "b": 2}
ADD_RESULT = b"3"

# Subscribers may fall behind a fast publisher; the benchmark checks nothing is lost,
# so let the client-side queue grow instead of dropping (the server side is configured
# in benchmarks._procs.start_nats).
_PENDING_MSGS = 10_000_000
_PENDING_BYTES = 4 * 1024**3


async def _error(exc: Exception) -> None:
    print(f"nats error: {exc!r}", file=sys.stderr, flush=True)


async def _connect(params: Params, **options: Any) -> Client:
    options.setdefault("name", params.get("name"))
    return await nats.connect(params["url"], error_cb=_error, allow_reconnect=False, **options)


async def sub(params: Params) -> None:
    progress = Progress(int(params["expect"]))
    hit = progress.hit

    async def on_msg(msg: Msg) -> None:
        hit()

    nc = await _connect(params)
    try:
        await nc.subscribe(
            params["topic"],
            cb=on_msg,
            pending_msgs_limit=_PENDING_MSGS,
            pending_bytes_limit=_PENDING_BYTES,
        )
        await nc.flush()
        report("ready")
        await progress.wait(float(params["idle_timeout"]))
        report("result", **progress.result())
        await command()
    finally:
        await nc.close()


async def pub(params: Params) -> None:
    payload = b"x" * int(params["size"])
    topic, count = params["topic"], int(params["count"])
    nc = await _connect(params)
    try:
        publish = nc.publish
        report("ready")
        if not await wait_for_go():
            return
        t_start = now()
        for _ in range(count):
            await publish(topic, payload)
        await nc.flush()
        report("result", t_start=t_start, t_end=now(), sent=count)
        await command()
    finally:
        await nc.close()


async def responder(params: Params) -> None:
    decode, encode = msgspec.json.decode, msgspec.json.encode

    async def on_msg(msg: Msg) -> None:
        args = decode(msg.data)
        await msg.respond(encode(args["a"] + args["b"]))

    nc = await _connect(params)
    try:
        await nc.subscribe(params["topic"], cb=on_msg)
        await nc.flush()
        report("ready")
        await command()
    finally:
        await nc.close()


async def requester(params: Params) -> None:
    topic = params["topic"]
    encode = msgspec.json.encode
    wrong = 0
    nc = await _connect(params)
    try:

        async def request() -> None:
            nonlocal wrong
            reply = await nc.request(topic, encode(ADD_ARGS), timeout=10)
            wrong += reply.data != ADD_RESULT

        report("ready")
        if not await wait_for_go():
            return
        results = [await run_phase(request, phase) for phase in params["phases"]]
        report("result", phases=results, wrong=wrong)
        await command()
    finally:
        await nc.close()


async def hosts(params: Params) -> None:
    """``count`` connections, each subscribed to ``topics`` subjects of its own."""
    count, per_agent, prefix = int(params["count"]), int(params["topics"]), params["prefix"]
    clients: list[Client] = []

    async def noop(msg: Msg) -> None:
        pass

    async def host(i: int) -> None:
        nc = await _connect(params, name=f"{prefix}-{i}")
        clients.append(nc)
        for k in range(per_agent):
            await nc.subscribe(f"scale.{prefix}.{i}.t{k}", cb=noop)
        await nc.flush()

    report("ready")
    if not await wait_for_go():
        return
    t_go = now()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(host, i)
        report("connected", t_go=t_go, t_done=now(), agents=count)
        await command()
    finally:
        for nc in clients:
            await nc.close()
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
