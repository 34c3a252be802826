"""Bare gRPC transport: ``python -m benchmarks._transport_side ROLE PARAMS_JSON``.

* ``server``: a grpclib server (asyncio) with a raw-bytes codec, an echo
  bidirectional-stream handler and a unary echo handler, on a free loopback port;
  reports ``{"event": "ready", "port": ...}`` and serves until stdin ends.
* ``loom``: loom's own gRPC client (:class:`loom._grpc.GrpcChannel`) on the anyio
  backend named in the params (asyncio, trio or asyncio+uvloop).
* ``grpclib``: grpclib's own client (``Channel.request`` / ``UnaryUnaryMethod``), on
  plain asyncio: the baseline.

Both clients do the same thing on ``go``: a short untimed warm-up stream, then
``messages`` messages of ``size`` bytes pipelined through ONE bidirectional stream (a
sender task sends them all while a receiver task reads the echoes), then ``calls``
sequential unary calls (after ``warmup`` untimed ones). Every echo and every unary
reply is compared with what was sent; the parent checks the counts.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server, Stream

from benchmarks._child import Params, command, main, report, run_phase, wait_for_go
from loom._grpc import GrpcChannel

SERVICE = "/loom.bench.Transport"
ECHO = f"{SERVICE}/Echo"
UNARY = f"{SERVICE}/Unary"

Clock = Callable[[], float]


class RawCodec(CodecBase):
    """grpclib codec for raw bytes (both sides): messages are already serialized."""

    __content_subtype__ = "proto"  # the server then accepts plain "application/grpc" too

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


def payloads(count: int, size: int) -> list[bytes]:
    """``count`` distinct messages of ``size`` bytes (an index, then filler)."""
    filler = b"x" * max(0, size - 8)
    return [i.to_bytes(8, "big") + filler for i in range(count)]


def stream_result(messages: list[bytes], received: int, wrong: int, seconds: float) -> Params:
    return {
        "messages": len(messages),
        "received": received,
        "wrong": wrong,
        "seconds": seconds,
        "per_second": received / seconds if seconds > 0 else 0.0,
    }


# ---- server -------------------------------------------------------------------------


async def server(params: Params) -> None:
    class Transport:
        async def echo(self, stream: Stream[Any, Any]) -> None:
            async for message in stream:
                await stream.send_message(message)

        async def unary(self, stream: Stream[Any, Any]) -> None:
            await stream.send_message(await stream.recv_message())

        def __mapping__(self) -> dict[str, Handler]:
            return {
                ECHO: Handler(self.echo, Cardinality.STREAM_STREAM, bytes, bytes),
                UNARY: Handler(self.unary, Cardinality.UNARY_UNARY, bytes, bytes),
            }

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and accepted sockets inherit proto 0 from a socket made without it (then
    # Nagle + delayed ACK add ~40 ms to every unary call).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    grpc_server = Server([Transport()], codec=RawCodec())
    await grpc_server.start(sock=sock)
    try:
        report("ready", port=sock.getsockname()[1])
        await command()
    finally:
        grpc_server.close()
        with anyio.move_on_after(5):
            await grpc_server.wait_closed()


# ---- clients ------------------------------------------------------------------------


async def run_client(
    params: Params,
    stream_echo: Callable[[list[bytes]], Awaitable[Params]],
    unary: Callable[[bytes], Awaitable[bytes]],
) -> None:
    """The common part of both clients: warm up, time, check, report."""
    size, warmup = int(params["size"]), int(params["warmup"])
    messages = payloads(int(params["messages"]), size)
    request = payloads(1, size)[0]
    wrong_unary = 0

    async def call() -> None:
        nonlocal wrong_unary
        if await unary(request) != request:
            wrong_unary += 1

    await call()  # the connection works
    report("ready")
    if not await wait_for_go():
        return
    warm = await stream_echo(payloads(warmup, size))
    if warm["received"] != warmup or warm["wrong"]:
        raise AssertionError(f"warm-up stream: {warm}")
    stream = await stream_echo(messages)
    phase = await run_phase(call, {"mode": "seq", "count": int(params["calls"]), "warmup": warmup})
    report("result", stream=stream, unary=phase, wrong_unary=wrong_unary)
    await command()


async def loom_client(params: Params) -> None:
    clock: Clock = time.perf_counter
    async with GrpcChannel("127.0.0.1", int(params["port"])) as channel:

        async def stream_echo(messages: list[bytes]) -> Params:
            received = wrong = 0
            async with channel.stream(ECHO) as call:

                async def sender() -> None:
                    send = call.send
                    for message in messages:
                        await send(message)
                    await call.end()

                t0 = clock()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sender)
                    receive = call.receive
                    for message in messages:
                        if await receive() != message:
                            wrong += 1
                        received += 1
                    seconds = clock() - t0
                try:  # the server ends the call (status OK) after our end: no extras
                    extra = await call.receive()
                except anyio.EndOfStream:
                    pass
                else:
                    raise AssertionError(f"an unexpected extra echo: {extra[:16]!r}")
            return stream_result(messages, received, wrong, seconds)

        async def unary(request: bytes) -> bytes:
            return await channel.unary(UNARY, request)

        await run_client(params, stream_echo, unary)


async def grpclib_client(params: Params) -> None:
    clock: Clock = time.perf_counter
    channel = Channel("127.0.0.1", int(params["port"]), codec=RawCodec())
    try:
        unary_method: UnaryUnaryMethod[bytes, bytes] = UnaryUnaryMethod(
            channel, UNARY, bytes, bytes
        )

        async def stream_echo(messages: list[bytes]) -> Params:
            received = wrong = 0
            async with channel.request(ECHO, Cardinality.STREAM_STREAM, bytes, bytes) as call:
                await call.send_request()

                async def sender() -> None:
                    send = call.send_message
                    for message in messages:
                        await send(message)
                    await call.end()

                t0 = clock()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(sender())
                    receive = call.recv_message
                    for message in messages:
                        if await receive() != message:
                            wrong += 1
                        received += 1
                    seconds = clock() - t0
                extra = await call.recv_message()
                if extra is not None:
                    raise AssertionError(f"an unexpected extra echo: {extra[:16]!r}")
            return stream_result(messages, received, wrong, seconds)

        async def unary(request: bytes) -> bytes:
            reply: bytes = await unary_method(request)
            return reply

        await run_client(params, stream_echo, unary)
    finally:
        channel.close()


ROLES = {"server": server, "loom": loom_client, "grpclib": grpclib_client}

if __name__ == "__main__":
    main(ROLES)
